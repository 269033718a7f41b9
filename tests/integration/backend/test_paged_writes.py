"""A growing conversation writes each distinct token's KV about once, measured at the writer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cachelayer.backend.settings import BackendSettings
from tests.support.processes import free_port
from tests.support.wait import wait_until


@dataclass
class InProcess:
    """A `BackendServer` served from a thread of the test process, so its writer can be observed."""

    backend: Any
    url: str


@pytest.fixture
def in_process_backend(demo_model: Path, tmp_path: Path) -> Iterator[InProcess]:
    from cachelayer.backend.server import BackendServer

    settings = BackendSettings(model=str(demo_model), kv_dir=tmp_path / "kv", port=free_port(),
                               kv_min_tokens=256, kv_max_bytes=1 << 30, max_tokens=16)
    backend = BackendServer(settings)
    thread = threading.Thread(target=backend.serve_forever, daemon=True)
    thread.start()
    try:
        yield InProcess(backend, f"http://127.0.0.1:{settings.port}")
    finally:
        backend.shutdown()
        thread.join(10)


def _distinct(sequences: list[tuple[int, ...]]) -> int:
    """Nodes of the token trie of all sequences: tokens that differ in value or history."""
    root: dict[int, Any] = {}
    count = 0
    for seq in sequences:
        node = root
        for token in seq:
            if token not in node:
                node[token] = {}
                count += 1
            node = node[token]
    return count


@pytest.mark.slow
def test_a_ten_turn_conversation_writes_at_most_1_1x_its_distinct_tokens_kv(
    in_process_backend: InProcess, api: Any
) -> None:
    from openai import OpenAI

    cache = in_process_backend.backend.prompt_cache
    saved: list[tuple[int, ...]] = []
    original = cache.store.save

    def spy(tokens: tuple[int, ...], snapshot: Any, kinds: Any, **options: Any) -> int:
        saved.append(tokens)
        return int(original(tokens, snapshot, kinds, **options))

    cache.store.save = spy
    client = OpenAI(base_url=f"{in_process_backend.url}/v1", api_key="unused", max_retries=0)
    messages: list[dict[str, str]] = [{"role": "system", "content": api.system}]
    reused = []
    for turn in range(10):
        text = " ".join(f"In turn {turn} please look at file {turn}_{i}.py" for i in range(12))
        messages.append({"role": "user", "content": text})
        answer = client.chat.completions.create(
            model="x", messages=messages, max_tokens=16, temperature=0  # type: ignore[arg-type]
        )
        reused.append(answer.usage.prompt_tokens_details.cached_tokens)  # type: ignore[union-attr]
        messages.append({"role": "assistant", "content": answer.choices[0].message.content or ""})
    # mlx-lm inserts the answer's cache after replying: two inserts per turn (system, all).
    wait_until(lambda: len(saved) >= 20 and cache.flush(), "20 saves on disk")
    stats = cache.stats()
    per_token = 2 * 2 * 2 * 32 * 4  # demo llama: layers x (k, v) x kv heads x head_dim x fp32
    distinct = _distinct(saved)
    assert distinct > 2000 and len(saved) >= 10
    assert stats["bytes_written"] <= 1.1 * distinct * per_token, (stats, distinct)
    # And every turn after the first reuses the conversation so far.
    assert all(r > 1000 for r in reused[1:])
