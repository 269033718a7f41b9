"""The fast path for byte-identical repeats, through a real proxy and a scripted upstream.

A fast HIT must be indistinguishable from a normal HIT: the same bytes and headers, and
the same counts in every place a user looks. A normal HIT is made here by sending the
same request with its JSON keys in another order: a different raw key (the fast path has
not seen it) that the normal path keys to the same stored answer.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from http.client import HTTPConnection
from typing import Any
from urllib.parse import urlsplit

import pytest

from cachelayer.proxy.fast_path import FAST_PATH
from tests.support import http
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import RunningServer
from tests.support.wait import wait_until

MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "say hi"}]
KEY = {"Authorization": "Bearer alice-key-123456"}
ANTHROPIC_KEY = {"x-api-key": "alice-key-123456", "anthropic-version": "2023-06-01"}

CASES: dict[str, tuple[str, dict[str, Any], dict[str, str]]] = {
    "chat": ("/v1/chat/completions", {"model": "m", "messages": MESSAGES}, KEY),
    "chat-stream": ("/v1/chat/completions",
                    {"model": "m", "messages": MESSAGES, "stream": True,
                     "stream_options": {"include_usage": True}}, KEY),
    "messages": ("/v1/messages", {"model": "claude-x", "max_tokens": 64, "system": "Be terse.",
                                  "messages": [{"role": "user", "content": "say hi"}]},
                 ANTHROPIC_KEY),
    "messages-stream": ("/v1/messages",
                        {"model": "claude-x", "max_tokens": 64, "stream": True,
                         "system": "Be terse.",
                         "messages": [{"role": "user", "content": "say hi"}]},
                        ANTHROPIC_KEY),
    "responses": ("/v1/responses", {"model": "m", "input": "say hi",
                                    "instructions": "Be terse."}, KEY),
    "responses-stream": ("/v1/responses", {"model": "m", "input": "say hi", "stream": True,
                                           "instructions": "Be terse."}, KEY),
}
# Numbers in /cache/stats that say when, not how many: they differ between any two
# requests. Rates and percentages are left out too: they are ratios of counts compared.
_CLOCK_FIELDS = {"exportedAt", "runtime", "firstSeen", "lastSeen", "t", "bytes",
                 "hitRate", "reusedPercent", "prefillSecondsSaved"}


def _send(proxy: RunningServer, route: str, body: bytes, headers: dict[str, str],
          rid: str) -> http.Answer:
    return http.request("POST", proxy.url + route, data=body,
                        headers={**headers, "X-Request-Id": rid})


def _reordered(body: dict[str, Any]) -> bytes:
    """The same request with its top-level keys in reverse order: another raw key."""
    return json.dumps(dict(reversed(list(body.items())))).encode()


def _calls(upstream: tuple[FakeUpstream, RunningServer]) -> int:
    """Upstream calls for this test's requests (the box is shared: a stray client of
    another run may reach a port this fake reuses)."""
    return sum("say hi" in json.dumps(call) for call in upstream[0].calls)


def _fast_hits(proxy: RunningServer) -> int:
    return int(proxy.app[FAST_PATH].hits)


def _numbers(value: Any, path: str = "") -> dict[str, float]:
    """The numeric leaves of a stats document by path, clock fields left out."""
    out: dict[str, float] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            if k not in _CLOCK_FIELDS:
                out.update(_numbers(v, f"{path}.{k}"))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.update(_numbers(v, f"{path}[{i}]"))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[path] = float(value)
    return out


def _stats(proxy: RunningServer) -> dict[str, float]:
    return _numbers(http.get(proxy.url + "/cache/stats").json())


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0)
            for k in before.keys() | after.keys() if after.get(k, 0.0) != before.get(k, 0.0)}


def _comparable(answer: http.Answer) -> tuple[int, dict[str, str], bytes]:
    headers = {k.lower(): v for k, v in answer.headers.items() if k.lower() != "date"}
    return answer.status, headers, answer.content


@pytest.mark.parametrize("case", list(CASES))
def test_a_fast_hit_is_byte_identical_to_a_normal_hit_and_counted_the_same(
    proxy: RunningServer, upstream: tuple[FakeUpstream, RunningServer], case: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    route, body, headers = CASES[case]
    raw, other = json.dumps(body).encode(), _reordered(body)
    first = _send(proxy, route, raw, headers, "rid-first")
    assert first.status == 200, first.content
    assert first.headers["X-Cache-Status"] == "MISS"
    wait_until(lambda: _stats(proxy).get(".layers.response.stored") == 1,
               "the MISS's answer to be written to the store")

    caplog.set_level(logging.INFO, logger="cachelayer.access")
    before_normal, hits = _stats(proxy), _fast_hits(proxy)
    normal = _send(proxy, route, other, headers, "rid-same")  # unseen raw key: normal path
    after_normal = _stats(proxy)
    assert _fast_hits(proxy) == hits
    fast = _send(proxy, route, raw, headers, "rid-same")  # learned from the MISS
    after_fast = _stats(proxy)
    assert _fast_hits(proxy) == hits + 1

    assert normal.headers["X-Cache-Status"] == "HIT"
    assert fast.headers["X-Request-Id"] == "rid-same"
    assert _comparable(fast) == _comparable(normal)
    assert _calls(upstream) == 1
    # Every number a user sees (ledger, prefix records, sessions, timeline) moves alike.
    normal_delta = _delta(before_normal, after_normal)
    assert normal_delta and _delta(after_normal, after_fast) == normal_delta
    lines = [r.getMessage().split(" ms=")[0] for r in caplog.records
             if r.name == "cachelayer.access" and "cache=HIT" in r.getMessage()]
    assert len(lines) == 2 and lines[0] == lines[1]


def _raw_exchange(proxy: RunningServer, route: str, body: bytes, headers: dict[str, str],
                  version: str) -> bytes:
    """The proxy's whole answer to one raw request on its own connection, read until the
    proxy closes it (a connection left open fails the read's timeout)."""
    where = urlsplit(proxy.url)
    head = "".join(f"{k}: {v}\r\n" for k, v in {
        "Host": where.netloc, "Content-Type": "application/json", **headers,
        "Content-Length": str(len(body))}.items())
    address = (where.hostname or "127.0.0.1", where.port or 80)
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(f"POST {route} {version}\r\n{head}\r\n".encode() + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _framed(raw: bytes) -> tuple[bytes, list[bytes], bytes]:
    """Status line, header lines (sorted, Date left out) and the body as framed."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    return status, sorted(x for x in lines if not re.match(rb"(?i)date:", x)), body


@pytest.mark.parametrize("case", ["chat", "chat-stream"])
@pytest.mark.parametrize("version, close", [("HTTP/1.0", {}),
                                            ("HTTP/1.1", {"Connection": "close"})])
def test_a_fast_hit_is_framed_and_closed_as_the_application_frames_it(
    proxy: RunningServer, case: str, version: str, close: dict[str, str],
) -> None:
    route, body, headers = CASES[case]
    raw, other = json.dumps(body).encode(), _reordered(body)
    assert _send(proxy, route, raw, headers, "a").headers["X-Cache-Status"] == "MISS"
    hits = _fast_hits(proxy)
    asked = {**headers, **close, "X-Request-Id": "rid-same"}
    normal = _framed(_raw_exchange(proxy, route, other, asked, version))
    fast = _framed(_raw_exchange(proxy, route, raw, asked, version))
    assert _fast_hits(proxy) == hits + 1
    assert b"X-Cache-Status: HIT" in fast[1]
    # Byte for byte, chunked framing (or none, on HTTP/1.0) included.
    assert fast == normal


def test_fast_hits_keep_the_connection_alive(proxy: RunningServer) -> None:
    route, body, headers = CASES["chat-stream"]
    raw = json.dumps(body).encode()
    _send(proxy, route, raw, headers, "a")
    wait_until(lambda: _stats(proxy).get(".layers.response.stored") == 1,
               "the MISS's answer to be written to the store")
    where = urlsplit(proxy.url)
    connection = HTTPConnection(where.hostname or "127.0.0.1", where.port or 80, timeout=10)
    answers, sockets = [], []
    try:
        for rid in ("k1", "k2", "k3"):
            connection.request("POST", route, body=raw, headers={
                "Content-Type": "application/json", **headers, "X-Request-Id": rid})
            response = connection.getresponse()
            answers.append((response.getheader("X-Cache-Status"), response.read()))
            sockets.append(connection.sock)  # None once a server closed it
    finally:
        connection.close()
    assert sockets[0] is not None and sockets.count(sockets[0]) == 3  # one connection
    assert [status for status, _ in answers] == ["HIT"] * 3
    assert answers[0][1] == answers[1][1] == answers[2][1]
    assert _fast_hits(proxy) == 3


def test_a_clear_sends_the_next_repeat_upstream(
    proxy: RunningServer, upstream: tuple[FakeUpstream, RunningServer]
) -> None:
    route, body, headers = CASES["chat"]
    raw = json.dumps(body).encode()
    assert _send(proxy, route, raw, headers, "a").headers["X-Cache-Status"] == "MISS"
    assert _send(proxy, route, raw, headers, "b").headers["X-Cache-Status"] == "HIT"
    assert _fast_hits(proxy) == 1
    # At once: a clear also removes an answer whose write is still on its way.
    cleared = http.post(proxy.url + "/cache/clear", json={})
    assert cleared.status == 200 and cleared.json()["cleared"]["responses"] >= 1
    again = _send(proxy, route, raw, headers, "c")
    assert again.headers["X-Cache-Status"] == "MISS"
    assert _calls(upstream) == 2
    assert _send(proxy, route, raw, headers, "d").headers["X-Cache-Status"] == "HIT"
    assert _fast_hits(proxy) == 2


def test_another_tenant_never_gets_the_first_tenants_answer(
    proxy: RunningServer, upstream: tuple[FakeUpstream, RunningServer]
) -> None:
    route, body, _ = CASES["chat"]
    raw = json.dumps(body).encode()
    alice = KEY
    _send(proxy, route, raw, alice, "a1")
    assert _send(proxy, route, raw, alice, "a2").headers["X-Cache-Status"] == "HIT"
    assert _fast_hits(proxy) == 1
    for other in ({"Authorization": "Bearer bob-key-987654"}, {}):  # bob, then no key
        assert _send(proxy, route, raw, other, "b").headers["X-Cache-Status"] == "MISS"
    assert _calls(upstream) == 3
    assert _fast_hits(proxy) == 1
    # bob's x-api-key names the same tenant as his Bearer token: his own answer, fast.
    again = _send(proxy, route, raw, {"x-api-key": "bob-key-987654"}, "b2")
    assert again.headers["X-Cache-Status"] == "HIT" and _fast_hits(proxy) == 2
    assert _calls(upstream) == 3


@pytest.mark.parametrize("directive", ["no-store", "no-cache"])
def test_a_repeat_that_must_bypass_never_takes_the_fast_path(
    proxy: RunningServer, upstream: tuple[FakeUpstream, RunningServer], directive: str
) -> None:
    route, body, headers = CASES["chat"]
    raw = json.dumps(body).encode()
    _send(proxy, route, raw, headers, "a")
    for _ in range(2):
        answer = _send(proxy, route, raw, {**headers, "Cache-Control": directive}, "b")
        assert answer.headers["X-Cache-Status"] == "BYPASS"
    assert _fast_hits(proxy) == 0
    assert _calls(upstream) == 3


def test_a_max_age_older_than_the_answer_is_expired_not_a_fast_hit(
    proxy: RunningServer, upstream: tuple[FakeUpstream, RunningServer]
) -> None:
    route, body, headers = CASES["chat"]
    raw = json.dumps(body).encode()
    stale = {**headers, "Cache-Control": "max-age=0"}
    _send(proxy, route, raw, stale, "a")  # a MISS whose raw key (max-age=0) is learned
    # Any answer stored before this request is older than 0 s.
    assert _send(proxy, route, raw, stale, "b").headers["X-Cache-Status"] == "EXPIRED"
    assert _fast_hits(proxy) == 0
    assert _calls(upstream) == 2


def test_a_deleted_stored_response_is_kept_again_by_a_fast_hit(proxy: RunningServer) -> None:
    route, body, headers = CASES["responses"]
    raw = json.dumps(body).encode()
    ident = _send(proxy, route, raw, headers, "a").json()["id"]
    assert http.request("DELETE", f"{proxy.url}/v1/responses/{ident}",
                        headers=headers).status == 200
    assert http.get(f"{proxy.url}/v1/responses/{ident}", headers=headers).status == 404
    hit = _send(proxy, route, raw, headers, "b")
    assert hit.headers["X-Cache-Status"] == "HIT" and _fast_hits(proxy) == 1
    # A normal HIT keeps the response it replays under its id; so does a fast one.
    assert http.get(f"{proxy.url}/v1/responses/{ident}", headers=headers).status == 200


def test_switched_off_every_repeat_takes_the_normal_path(
    proxy: RunningServer, upstream: tuple[FakeUpstream, RunningServer]
) -> None:
    route, body, headers = CASES["chat"]
    raw = json.dumps(body).encode()
    _send(proxy, route, raw, headers, "a")
    proxy.call(lambda: setattr(proxy.app[FAST_PATH], "enabled", False))
    assert _send(proxy, route, raw, headers, "b").headers["X-Cache-Status"] == "HIT"
    assert _fast_hits(proxy) == 0
    proxy.call(lambda: setattr(proxy.app[FAST_PATH], "enabled", True))
    assert _send(proxy, route, raw, headers, "c").headers["X-Cache-Status"] == "HIT"
    assert _fast_hits(proxy) == 1 and _calls(upstream) == 1


@pytest.mark.parametrize("case", ["chat", "responses"])
def test_fast_hits_answered_together_count_as_many_normal_hits(
    proxy: RunningServer, upstream: tuple[FakeUpstream, RunningServer], case: str,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    route, body, headers = CASES[case]
    raw = json.dumps(body).encode()
    assert _send(proxy, route, raw, headers, "a").headers["X-Cache-Status"] == "MISS"
    wait_until(lambda: _stats(proxy).get(".layers.response.stored") == 1,
               "the MISS's answer to be written to the store")
    before = _stats(proxy)
    assert _send(proxy, route, _reordered(body), headers, "n").headers["X-Cache-Status"] == "HIT"
    one = _delta(before, _stats(proxy))
    before, hits = _stats(proxy), _fast_hits(proxy)
    # Sent at once, they are accounted in groups (proxy/hit_tally.py), not one by one.
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: _send(proxy, route, raw, headers, f"r{i}"), range(24)))
    assert {a.headers["X-Cache-Status"] for a in answers} == {"HIT"}
    assert _fast_hits(proxy) == hits + 24
    many = _delta(before, _stats(proxy))
    assert many == {k: 24 * v for k, v in one.items()}
    assert _calls(upstream) == 1
