"""A long prefill on a real `cachelayer backend`, through the proxy, with real SDK clients:
keep-alives reach the client until its first token, and the progress is visible in
`/cache/stats` and the log while it runs."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.integration.stack.conftest import stack_backend, stack_proxy
from tests.support import http
from tests.support.processes import ServerProcess
from tests.support.recording import RecordingTransport, keepalives
from tests.support.servers import RunningServer
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow
# ~4,000 tokens in 16-token prefill steps: a few seconds of prefill on the tiny model,
# hundreds of progress reports, against keep-alives every 0.2 s.
LONG = " ".join(f"line {i} of the long file says hello." for i in range(300))


@pytest.fixture
def stepping_backend(stack_model: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    """A real backend that prefills in 16-token steps (one progress report each)."""
    with stack_backend(stack_model, tmp_path, "--prefill-step-size", "16") as server:
        yield server


@pytest.fixture
def proxy(stepping_backend: ServerProcess, tmp_path: Path) -> Iterator[RunningServer]:
    """The proxy with keep-alives every 0.2 s and a progress line every 0.3 s."""
    with stack_proxy(tmp_path, stepping_backend.url, keepalive_interval_s=0.2,
                     progress_log_interval_s=0.3) as server:
        yield server


def _watch_prefills(proxy: RunningServer, request_id: str, running: Any) -> dict[str, Any]:
    """Poll /cache/stats until it lists this request's prefill with progress."""
    def listed() -> dict[str, Any] | None:
        assert not running.done(), "the answer came before any progress was listed"
        for entry in http.get(proxy.url + "/cache/stats").json()["prefills"]:
            if entry["requestId"] == request_id and entry["doneTokens"] > 0:
                return dict(entry)
        return None

    return wait_until(listed, f"/cache/stats to list request {request_id}'s prefill with "
                      "progress", timeout=120, interval=0.05)


def test_keepalives_and_progress_reach_an_openai_client_during_a_long_prefill(
    proxy: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cachelayer.proxy.forward.progress")
    recorder = RecordingTransport()
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0,
                           http_client=recorder.client())

    def answer() -> list[Any]:
        return list(client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": LONG}], stream=True,
            max_tokens=4, temperature=0, stream_options={"include_usage": True},
            extra_headers={"X-Request-Id": "long-prefill-1"}))

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(answer)
        listed = _watch_prefills(proxy, "long-prefill-1", running)
        chunks = running.result(timeout=300)
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens > 3000
    assert 0 < listed["doneTokens"] <= listed["totalTokens"] <= usage.prompt_tokens
    # Before the first token: keep-alives every 0.2 s, carrying the backend's progress
    # over the whole (cold) prompt.
    waiting = recorder.before(b"data:")
    progress = [p for p in keepalives(waiting) if p is not None]
    assert len(keepalives(waiting)) >= 5 and progress
    assert {total for _, total in progress} == {usage.prompt_tokens}
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
    lines = [r.getMessage() for r in caplog.records]
    assert any(re.fullmatch(r"prefill \d+/\d+ tokens, \d+ tok/s, eta \d+ s", m) for m in lines)
    assert http.get(proxy.url + "/cache/stats").json()["prefills"] == []


def test_keepalives_reach_an_anthropic_client_during_a_long_prefill(
    proxy: RunningServer,
) -> None:
    recorder = RecordingTransport()
    client = anthropic.Anthropic(base_url=proxy.url, api_key="k", max_retries=0,
                                 http_client=recorder.client())
    with client.messages.stream(model="claude-x", max_tokens=4,
                                messages=[{"role": "user", "content": LONG}]) as stream:
        message = stream.get_final_message()
    usage = message.usage
    prompt = (usage.input_tokens + (usage.cache_creation_input_tokens or 0)
              + (usage.cache_read_input_tokens or 0))
    assert prompt > 3000
    waiting = recorder.before(b"event: message_start")
    assert len(keepalives(waiting)) >= 5
    assert b"event: ping" not in waiting
    assert message.stop_reason in ("end_turn", "max_tokens")
