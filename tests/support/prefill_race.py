"""A long prompt and a short one racing on a backend: when does each get its first token?

Used by the tests that prove a long prefill shares the machine (attention-only and
stateful models alike).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from tests.support.processes import ServerProcess
from tests.support.wait import wait_until

SHORT = "What is in README.md?"


def first_token_at(server: ServerProcess, text: str,
                   progress: threading.Event | None = None) -> float:
    """Stream a request; the monotonic time its first token arrived. `progress` is set at
    the backend's first prefill progress comment."""
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


def race(server: ServerProcess, long_text: str, timeout: float = 600) -> tuple[float, float]:
    """(first token of the long request, first token of a short one sent once the long
    one is verifiably prefilling)."""
    first_token_at(server, "warm up")
    started = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        long = pool.submit(first_token_at, server, long_text, started)
        wait_until(started.is_set, "the long prompt's first prefill progress", timeout=120)
        short_first = first_token_at(server, SHORT)
        return long.result(timeout=timeout), short_first
