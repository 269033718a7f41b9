"""Long prefills on a real backend, driven the way the tests need them: a long prompt
and a short one racing for their first tokens, a client hanging up half-way through a
prefill, and the answer (tokens with top logprobs) to compare a resumed one with cold.

Used by the tests that prove a long prefill shares the machine and is kept
(attention-only and stateful models alike).
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

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


def hang_up_half_way(server: ServerProcess, text: str, *, then: Callable[[], None] = lambda: None,
                     tenant: str = "") -> tuple[int, int]:
    """Stream `text`; once half of it is prefilled (the backend's `: keepalive N/M`
    progress) call `then` and hang up. Returns (tokens done then, tokens in all)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
    body = {"model": "m", "temperature": 0, "stream": True, "max_tokens": 6,
            "messages": [{"role": "user", "content": text}]}
    headers = {"Content-Type": "application/json"}
    if tenant:
        headers["X-Cachelayer-Tenant"] = tenant
    conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
    response = conn.getresponse()
    try:
        for line in response:
            match = re.match(rb": keepalive (\d+)/(\d+)", line)
            if match and int(match[1]) * 2 >= int(match[2]):
                then()
                return int(match[1]), int(match[2])
            assert not line.startswith(b"data:"), "the prefill ended before half-way"
        raise AssertionError("the stream ended before half-way")
    finally:
        response.close()
        conn.close()


def answer_with_top(response: Any) -> list[tuple[str, float, list[tuple[str, float]]]]:
    """An openai SDK answer's tokens, logprobs and top logprobs: what a wrong reuse moves."""
    return [(t.token, t.logprob, [(top.token, top.logprob) for top in t.top_logprobs])
            for t in response.choices[0].logprobs.content]
