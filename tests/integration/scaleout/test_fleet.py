"""Two `cachelayer serve` processes on one real redis-server act as one cache: identical
requests in flight at both make one upstream call, an answer one proxy sent is a hit on
the other at once, a proxy killed mid-answer blocks the other no longer than its lease,
and a streamed request waiting on another's answer hears keep-alives meanwhile."""

from __future__ import annotations

import contextlib
import http.client as http_client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import anthropic
import openai
import pytest

from cachelayer.config import Settings
from tests.integration.scaleout.conftest import SpawnProxies
from tests.support import http
from tests.support.fake_upstream import FakeUpstream, Reply, default_reply
from tests.support.proxy_chat import ROUTE, chat, send
from tests.support.proxy_process import ProxyProcess
from tests.support.recording import RecordingTransport, keepalives
from tests.support.redis_server import RedisServer
from tests.support.servers import serve_app
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow
LEASE_S = Settings().fleet_lease_s


def text_of(answer: http.Answer) -> str:
    """The answer's text, streamed or not."""
    if answer.headers.get("Content-Type", "").startswith("text/event-stream"):
        return http.sse_text(answer.content)
    return str(answer.json()["choices"][0]["message"]["content"])


def markers(redis_server: RedisServer) -> list[bytes]:
    """The fleet's in-flight markers now in Redis."""
    return list(redis_server.client().scan_iter(match="cachelayer:f:*"))


def fleet_waits(proxy: ProxyProcess) -> int:
    """How often this proxy waited on another proxy's marker (its /cache/stats)."""
    return int(http.get(proxy.url + "/cache/stats").json()["layers"]["response"]
               .get("fleetWaits", 0))


def test_twenty_identical_requests_across_two_proxies_make_one_upstream_call(
        redis_server: RedisServer, proxies: SpawnProxies) -> None:
    upstream = FakeUpstream(lambda body: Reply(text="the one answer", headers_delay_s=1.5))
    with serve_app(upstream.make_app) as server:
        a, b = proxies(2, server.url, "--store", redis_server.url())
        body = chat("asked twenty times at once")
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda n: send((a, b)[n % 2], body), range(20)))
    assert len(upstream.calls) == 1
    assert {text_of(answer) for answer in answers} == {"the one answer"}
    statuses = sorted(answer.headers["X-Cache-Status"] for answer in answers)
    assert statuses == ["HIT"] * 19 + ["MISS"]


class KeptAlive:
    """One kept-alive connection to a proxy: a request leaves the moment it is asked
    for, with no connection set-up to give a write in flight time to land."""

    def __init__(self, proxy: ProxyProcess) -> None:
        parts = urlsplit(proxy.url)
        self.conn = http_client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)

    def post(self, body: dict[str, Any]) -> tuple[str, bytes]:
        """(X-Cache-Status, raw body) of one request that must succeed."""
        self.conn.request("POST", ROUTE, body=json.dumps(body),
                          headers={"Content-Type": "application/json"})
        response = self.conn.getresponse()
        content = response.read()
        assert response.status == 200, content
        return response.getheader("X-Cache-Status", ""), content


def answer_text(raw: bytes) -> str:
    """The text of a raw answer, streamed or not."""
    if raw.startswith(b"data:") or b"\ndata:" in raw:
        return http.sse_text(raw)
    return str(json.loads(raw)["choices"][0]["message"]["content"])


def test_an_answer_one_proxy_sent_is_a_hit_on_the_other_on_the_very_next_request(
        redis_server: RedisServer, proxies: SpawnProxies) -> None:
    upstream = FakeUpstream()
    with serve_app(upstream.make_app) as server:
        a, b = (KeptAlive(p) for p in proxies(2, server.url, "--store", redis_server.url()))
        misses = []
        for n in range(40):
            body = chat(f"read after write {n}", stream=n % 2 == 1)
            first_status, first = a.post(body)
            assert first_status == "MISS"
            then_status, then = b.post(body)  # at once: a's write may still be in flight
            if then_status != "HIT":
                misses.append(n)
            assert answer_text(then) == answer_text(first)
    assert misses == []
    assert len(upstream.calls) == 40


def test_a_proxy_killed_while_computing_blocks_the_other_no_longer_than_its_lease(
        redis_server: RedisServer, proxies: SpawnProxies) -> None:
    calls = []

    def script(body: dict[str, Any]) -> Reply:
        calls.append(body)  # the first call never answers in time: its proxy dies
        return Reply(text="computed again", headers_delay_s=60 if len(calls) == 1 else 0)

    upstream = FakeUpstream(script)
    with serve_app(upstream.make_app) as server:
        a, b = proxies(2, server.url, "--store", redis_server.url())
        body = chat("the proxy computing this dies")
        doomed = threading.Thread(target=lambda: _swallow(a, body), daemon=True)
        doomed.start()
        wait_until(lambda: markers(redis_server) and upstream.calls, "a to hold the marker")
        a.kill9()
        killed_at = time.monotonic()
        answer = send(b, body)
        waited = time.monotonic() - killed_at
        doomed.join(30)
    assert text_of(answer) == "computed again"
    assert fleet_waits(b) == 1  # b found a's marker and waited on it
    assert waited <= LEASE_S + 2.0, f"b answered {waited:.1f} s after the kill"
    assert len(upstream.calls) == 2


def _swallow(proxy: ProxyProcess, body: dict[str, Any]) -> None:
    """Send a request whose proxy is about to die; its failure is the point."""
    with contextlib.suppress(Exception):  # the connection dies with the proxy
        http.post(proxy.url + ROUTE, body, timeout=30)


@pytest.mark.parametrize("where", ["other proxy", "same proxy"])
def test_a_streamed_request_waiting_on_a_coalesced_one_hears_keepalives(
        where: str, redis_server: RedisServer, proxies: SpawnProxies) -> None:
    upstream = FakeUpstream(lambda body: Reply(text=default_reply(body).text,
                                               headers_delay_s=2.5))
    with serve_app(upstream.make_app) as server:
        a, b = proxies(2, server.url, "--store", redis_server.url(),
                       "--keepalive-interval", "0.5")
        waiter = b if where == "other proxy" else a
        body = chat(f"a slow answer waited for on the {where}", stream=True)
        with ThreadPoolExecutor(2) as pool:
            leader = pool.submit(send, a, body)
            wait_until(lambda: upstream.calls, "the leader to reach the upstream")
            follower = pool.submit(send, waiter, body).result(30)
            first = leader.result(30)
    assert len(upstream.calls) == 1
    assert follower.headers["X-Cache-Status"] == "HIT"
    raw = follower.content.decode()
    assert raw.startswith(": keepalive"), raw[:200]  # before any event
    assert raw.count(": keepalive") >= 2
    assert text_of(follower) == text_of(first)


@pytest.mark.parametrize("api", ["anthropic", "responses"])
def test_a_waiter_on_another_proxy_hears_its_apis_keepalives_then_one_well_formed_stream(
        api: str, redis_server: RedisServer, proxies: SpawnProxies) -> None:
    upstream = FakeUpstream(lambda body: Reply(text="Hello there.", headers_delay_s=2.5))
    with serve_app(upstream.make_app) as server:
        a, b = proxies(2, server.url, "--store", redis_server.url(),
                       "--keepalive-interval", "0.3")
        recorders = {"a": RecordingTransport(), "b": RecordingTransport()}

        def ask(name: str, proxy: ProxyProcess) -> Any:
            http_client = recorders[name].client()
            if api == "anthropic":
                client = anthropic.Anthropic(base_url=proxy.url, api_key="k", max_retries=0,
                                             http_client=http_client)
                with client.messages.stream(model="m", max_tokens=16, messages=[
                        {"role": "user", "content": "hello"}]) as stream:
                    return stream.get_final_message()
            sdk = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0,
                                http_client=http_client)
            return list(sdk.responses.create(model="m", input="hello", stream=True))

        with ThreadPoolExecutor(2) as pool:
            leader = pool.submit(ask, "a", a)
            wait_until(lambda: upstream.calls, "the leader to reach the upstream")
            waited = pool.submit(ask, "b", b).result(30)
            leader.result(30)
    assert len(upstream.calls) == 1
    assert fleet_waits(b) == 1
    recorder = recorders["b"]
    if api == "anthropic":
        assert waited.content[0].text == "Hello there."
        before = recorder.before(b"event: message_start")
        assert len(keepalives(before)) >= 2
        assert b"event: ping" not in before  # never a ping before message_start
    else:
        types = [event.type for event in waited]
        assert types[0] == "response.created" and types[-1] == "response.completed"
        assert types.count("response.created") == 1  # the stream began once, not twice
        before = recorder.before(b"event: response.output_item.added")
        assert before.count(b"event: response.in_progress") >= 2
        assert waited[-1].response.id == waited[0].response.id
        text = "".join(e.delta for e in waited if e.type == "response.output_text.delta")
        assert text == "Hello there."
