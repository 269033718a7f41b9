"""Concurrency: identical concurrent misses coalesce into one upstream call (and only
identical ones, within one tenant); a bounded soak of 200 concurrent clients with mixed
traffic gets no 5xx and the proxy's memory stays bounded."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.hardening.helpers import (
    SUMMARY,
    Upstream,
)
from tests.support import http
from tests.support.fake_upstream import Reply
from tests.support.proxy_process import (
    running_proxy,
)
from tests.support.servers import RunningServer

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
MESSAGES = "/v1/messages"
COUNT = "/v1/messages/count_tokens"
N = 20


def body_for(path: str, text: str, *, stream: bool = False) -> dict[str, Any]:
    """A small valid request for an OpenAI chat or an Anthropic Messages route."""
    if path == MESSAGES:
        return {"model": "claude-x", "max_tokens": 64, "stream": stream,
                "messages": [{"role": "user", "content": text}]}
    return {"model": "m", "stream": stream, "messages": [{"role": "user", "content": text}]}


def all_at_once(requests: list[tuple[str, dict[str, Any], dict[str, str]]]) -> list[http.Answer]:
    """Send every (url, body, headers) request from its own thread, released together."""
    barrier = threading.Barrier(len(requests))

    def send(item: tuple[str, dict[str, Any], dict[str, str]]) -> http.Answer:
        url, body, headers = item
        barrier.wait(10)
        return http.post(url, json=body, headers=headers, timeout=60)

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(send, requests))


def completion_calls(fake: Any) -> int:
    """Completions the upstream was asked for."""
    return len(fake.calls)


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
def test_identical_concurrent_misses_coalesce_into_one_upstream_call(
    proxy: RunningServer, upstream: Upstream, path: str
) -> None:
    fake, _ = upstream
    fake.delay_s = 0.5  # a slow model: all N arrive while the first is in flight
    body = body_for(path, "the same question, twenty times")
    answers = all_at_once([(proxy.url + path, body, {})] * N)
    assert [a.status for a in answers] == [200] * N
    # One answer; the followers' usage says they computed nothing (all read from cache).
    first = http.answer_of(answers[0].content)
    assert all(http.answer_of(a.content) == first for a in answers), (
        "the N clients got different answers")
    assert completion_calls(fake) == 1, (
        f"{completion_calls(fake)} upstream calls for {N} identical concurrent misses "
        "(no request coalescing)")


def test_identical_concurrent_streamed_misses_coalesce_into_one_upstream_call(
    proxy: RunningServer, upstream: Upstream
) -> None:
    fake, _ = upstream
    text = " ".join(f"token{i}" for i in range(20))
    fake.script = lambda body: Reply(text=text, delay_s=0.05)  # 1 s of streaming
    body = body_for(CHAT, "stream me the same thing", stream=True)
    answers = all_at_once([(proxy.url + CHAT, body, {})] * N)
    assert [a.status for a in answers] == [200] * N
    assert {http.sse_text(a.content) for a in answers} == {text}
    assert all(a.content.endswith(b"data: [DONE]\n\n") for a in answers)
    assert completion_calls(fake) == 1, (
        f"{completion_calls(fake)} upstream calls for {N} identical concurrent streamed "
        "misses (no request coalescing)")


def test_concurrent_distinct_requests_are_never_merged(
    proxy: RunningServer, upstream: Upstream
) -> None:
    fake, _ = upstream
    fake.delay_s = 0.3
    requests = [(proxy.url + CHAT, body_for(CHAT, f"question {i}"), {}) for i in range(N)]
    answers = all_at_once(requests)
    assert completion_calls(fake) == N
    for i, answer in enumerate(answers):
        assert answer.status == 200
        assert f"question {i}" in answer.json()["choices"][0]["message"]["content"]


def test_concurrent_identical_requests_never_coalesce_across_tenants(
    proxy: RunningServer, upstream: Upstream
) -> None:
    """Ten clients with key A and ten with key B ask the same thing at once: A's answer
    is never handed to B (at most one upstream call per tenant, at least one each)."""
    fake, _ = upstream
    fake.delay_s = 0.5
    body = body_for(MESSAGES, "same prompt, two tenants")
    tenants = [{"x-api-key": "tenant-a-key"}, {"Authorization": "Bearer tenant-b-key"}]
    requests = [(proxy.url + MESSAGES, body, tenants[i % 2]) for i in range(N)]
    answers = all_at_once(requests)
    assert all(a.status == 200 for a in answers)
    ids_a = {answers[i].json()["id"] for i in range(0, N, 2)}
    ids_b = {answers[i].json()["id"] for i in range(1, N, 2)}
    assert not ids_a & ids_b, "one tenant was handed an answer made for the other"
    assert 2 <= completion_calls(fake) <= N


# -- the soak ------------------------------------------------------------------------------

SOAK_SECONDS = 60.0
SOAK_CLIENTS = 200
RSS_GROWTH_LIMIT_MIB = 200
HOT_PROMPTS = [f"hot prompt {i}" for i in range(40)]
KINDS = ["hit-chat", "hit-chat-stream", "hit-messages", "hit-messages-stream", "miss-chat",
         "miss-messages-stream", "miss-text", "count", "bad-json", "bad-messages", "health"]
WEIGHTS = [20, 10, 15, 10, 12, 8, 5, 5, 3, 2, 2]


@dataclass
class SoakTally:
    """What the soak saw."""

    requests: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: int = 0
    unexpected: list[str] = field(default_factory=list)
    exceptions: Counter[str] = field(default_factory=Counter)


def soak_request(kind: str, serial: int, rng: random.Random) -> tuple[str, str, bytes, int]:
    """(method, path, body, expected status) for one request of a kind."""
    hot = rng.choice(HOT_PROMPTS)
    unique = f"unique {serial} {rng.random()}"
    plan: dict[str, tuple[str, dict[str, Any] | bytes, int]] = {
        "hit-chat": (CHAT, body_for(CHAT, hot), 200),
        "hit-chat-stream": (CHAT, body_for(CHAT, hot, stream=True), 200),
        "hit-messages": (MESSAGES, body_for(MESSAGES, hot), 200),
        "hit-messages-stream": (MESSAGES, body_for(MESSAGES, hot, stream=True), 200),
        "miss-chat": (CHAT, body_for(CHAT, unique), 200),
        "miss-messages-stream": (MESSAGES, body_for(MESSAGES, unique, stream=True), 200),
        "miss-text": (TEXT, {"model": "m", "prompt": unique}, 200),
        "count": (COUNT, {"model": "claude-x", "messages": [{"role": "user",
                                                              "content": unique}]}, 200),
        "bad-json": (CHAT, b'{"messages": [', 400),
        "bad-messages": (MESSAGES, {"model": "claude-x", "messages": []}, 400),
    }
    if kind == "health":
        return "GET", "/health", b"", 200
    path, body, status = plan[kind]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return "POST", path, raw, status


def complete_stream(path: str, content: bytes) -> bool:
    """A streamed answer that ended cleanly in its API."""
    if path == MESSAGES:
        return b"message_stop" in content and b"event: error" not in content
    return content.endswith(b"data: [DONE]\n\n")


async def soak(url: str, seconds: float, clients: int) -> SoakTally:
    """`clients` concurrent clients sending weighted mixed traffic for `seconds`."""
    tally = SoakTally()
    serial = itertools.count()
    deadline = time.monotonic() + seconds  # the soak's length, not a wait
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=clients)

    async def client(worker: int) -> None:
        rng = random.Random(worker)
        while time.monotonic() < deadline:
            kind = rng.choices(KINDS, WEIGHTS)[0]
            method, path, raw, expected = soak_request(kind, next(serial), rng)
            tally.requests += 1
            tally.by_kind[kind] += 1
            try:
                async with session.request(method, url + path, data=raw or None,
                                           headers={"Content-Type": "application/json"}) as r:
                    content = await r.read()
                    status = r.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                tally.exceptions[type(exc).__name__] += 1
                continue
            tally.statuses[status] += 1
            if status >= 500:
                tally.server_errors += 1
            broken_stream = (status == 200 and b'"stream": true' in raw
                             and not complete_stream(path, content))
            if (status != expected or broken_stream) and len(tally.unexpected) < 20:
                tally.unexpected.append(f"{kind} {path} -> {status} {content[:160]!r}")

    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(client(w) for w in range(clients)))
    return tally


@pytest.mark.slow
def test_soak_200_clients_60s_mixed_traffic_no_5xx_and_bounded_memory(
    upstream: Upstream, tmp_path: Path
) -> None:
    _, server = upstream
    with running_proxy(tmp_path, server.url, "--log-level", "warning", name="soak") as child:
        rss_start = child.rss_kib()
        started = time.monotonic()
        tally = asyncio.run(soak(child.url, SOAK_SECONDS, SOAK_CLIENTS))
        elapsed = time.monotonic() - started
        rss_end = child.rss_kib()
        assert child.proc.poll() is None, "the proxy died during the soak"
        stats = http.get(child.url + "/cache/stats").json()["layers"]["response"]
    growth_mib = (rss_end - rss_start) / 1024
    SUMMARY.append(
        f"soak: {SOAK_CLIENTS} clients x {elapsed:.0f}s, {tally.requests} requests "
        f"({tally.requests / elapsed:.0f}/s), statuses {dict(tally.statuses)}, "
        f"5xx {tally.server_errors}, client exceptions {sum(tally.exceptions.values())}, "
        f"unexpected {len(tally.unexpected)}, store entries {stats['entries']}, "
        f"RSS {rss_start / 1024:.0f} -> {rss_end / 1024:.0f} MiB (+{growth_mib:.0f})")
    assert tally.requests > SOAK_CLIENTS * 5
    assert tally.server_errors == 0, tally.unexpected
    assert not tally.exceptions, dict(tally.exceptions)
    assert not tally.unexpected, tally.unexpected
    assert growth_mib < RSS_GROWTH_LIMIT_MIB
