"""Restores read on an I/O thread as requests arrive: a request restoring a long prefix
from disk does not hold up a short one behind its read, and answers as a cold one does."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cachelayer.backend.settings import BackendSettings
from tests.integration.backend.conftest import StartBackend
from tests.support.processes import free_port, stop_server

pytestmark = pytest.mark.slow
LONG = " ".join(f"line {i} of the long file says hello." for i in range(200))
ASK = {"max_tokens": 6, "logprobs": True, "top_logprobs": 3, "temperature": 0}


def _chat(url: str, text: str) -> Any:
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    return client.chat.completions.create(model="m", messages=[{"role": "user",  # type: ignore[call-overload]
                                                                "content": text}], **ASK)


def _answer(response: Any) -> list[tuple[str, float, list[tuple[str, float]]]]:
    return [(t.token, t.logprob, [(top.token, top.logprob) for top in t.top_logprobs])
            for t in response.choices[0].logprobs.content]


def test_a_restore_is_read_off_the_generation_thread_and_holds_nobody_up(
    demo_model: Path, tmp_path: Path, start_backend: StartBackend, api: Any,
) -> None:
    from cachelayer.backend.server import BackendServer

    # A first process leaves the long prompt on disk, and gives the cold answer.
    first = start_backend(demo_model, tmp_path / "kv")
    cold = _chat(first.url, LONG)
    api.wait_for_writes(first)
    assert stop_server(first) == 0

    settings = BackendSettings(model=str(demo_model), kv_dir=tmp_path / "kv", port=free_port(),
                               kv_min_tokens=256, kv_max_bytes=1 << 30)
    backend = BackendServer(settings)
    store = backend.prompt_cache.store
    readers: list[str] = []
    reading, release = threading.Event(), threading.Event()
    original_read, original_load = store.read, store.load

    def gated_read(match: Any, kinds: Any) -> Any:
        readers.append(threading.current_thread().name)
        if match.n_tokens >= 1024:  # the long prompt's restore waits to be released
            reading.set()
            assert release.wait(60)
        return original_read(match, kinds)

    def load(*args: Any) -> Any:
        readers.append(threading.current_thread().name)
        return original_load(*args)

    store.read, store.load = gated_read, load  # type: ignore[method-assign]
    server = threading.Thread(target=backend.serve_forever, daemon=True)
    server.start()
    url = f"http://127.0.0.1:{settings.port}"
    try:
        with ThreadPoolExecutor(1) as pool:
            restoring = pool.submit(_chat, url, LONG)
            assert reading.wait(60), "the restore was never read"
            short = _chat(url, "What is in README.md?")  # answered while the read waits
            assert not restoring.done() and short.choices[0].message.content is not None
            release.set()
            warm = restoring.result(timeout=120)
    finally:
        release.set()
        backend.shutdown()
        server.join(10)
    assert warm.usage.prompt_tokens_details.cached_tokens >= 2048
    assert _answer(warm) == _answer(cold)
    assert readers and all(name.startswith("kv-read") for name in readers)
