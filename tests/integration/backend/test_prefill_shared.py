"""Prefill that shares the machine: a short request sent while a long prompt prefills gets
its first token before that prefill ends, even when the long prompt fits in one of
mlx-lm's fixed steps (the backend sizes its steps by time instead)."""

from __future__ import annotations

import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.integration.backend.conftest import StartBackend
from tests.support.processes import ServerProcess

pytestmark = pytest.mark.slow
# ~8,000 tokens: one step of 8192 for mlx-lm's fixed steps, seconds of prefill here.
LONG = " ".join(f"line {i} of the long file says hello." for i in range(600))


def _first_token(server: ServerProcess, text: str, progress: Any = None) -> float:
    """Stream a request; the monotonic time its first token arrived. `progress` (an
    Event) is set at the first prefill progress comment."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
    body = {"model": "m", "temperature": 0, "stream": True, "max_tokens": 2,
            "messages": [{"role": "user", "content": text}]}
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    response = conn.getresponse()
    try:
        for line in response:
            if line.startswith(b": keepalive") and progress is not None:
                progress.set()
            if line.startswith(b"data:"):
                return time.monotonic()
        raise AssertionError("no token")
    finally:
        response.close()
        conn.close()


def _race(server: ServerProcess) -> tuple[float, float]:
    """(first token of the long request, first token of a short one sent during its
    prefill)."""
    import threading

    _first_token(server, "warm up")
    started = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        long = pool.submit(_first_token, server, LONG, started)
        assert started.wait(120), "the long prompt never started prefilling"
        short = _first_token(server, "What is in README.md?")
        return long.result(timeout=300), short


def test_a_short_request_gets_its_first_token_before_a_long_prefill_ends(
    demo_model: Path, tmp_path: Path, start_backend: StartBackend,
) -> None:
    server = start_backend(demo_model, tmp_path / "kv", "--prefill-step-size", "8192",
                           "--prefill-step-seconds", "0.3")
    long_first, short_first = _race(server)
    assert short_first < long_first, server.log()[-2000:]


def test_with_fixed_steps_the_short_request_waits_for_the_whole_prefill(
    demo_model: Path, tmp_path: Path, start_backend: StartBackend,
) -> None:
    # The reference: mlx-lm's own scheduling (one 8192-token step) holds it up.
    server = start_backend(demo_model, tmp_path / "kv", "--prefill-step-size", "8192",
                           "--prefill-step-seconds", "0")
    long_first, short_first = _race(server)
    assert short_first >= long_first
