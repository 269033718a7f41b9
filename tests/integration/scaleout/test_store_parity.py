"""Layer 2's rules hold the same on both store backends: tenants apart, the per-entry
cap, failures never stored, Cache-Control honoured (diskcache and a real Redis)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cachelayer.config import Settings
from cachelayer.proxy.app import make_app
from cachelayer.proxy.prefix.ledger import LEDGER
from cachelayer.proxy.store.layer import STORE
from cachelayer.telemetry import counters as c
from tests.support import http
from tests.support.fake_upstream import FakeUpstream, Reply, default_reply
from tests.support.redis_server import running_redis
from tests.support.servers import RunningServer, serve_app
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow
ROUTE = "/v1/chat/completions"


def script(body: dict[str, Any]) -> Reply:
    """Fail where the prompt asks for it; otherwise the default echo."""
    text = str(body["messages"][-1]["content"])
    if "fail" in text:
        return Reply(status=500)
    if "cut" in text:
        return Reply(text="a b c d e f", cut_after=2)
    if "big" in text:
        return Reply(text="y" * 3000)
    return default_reply(body)


@pytest.fixture(params=["diskcache", "redis"])
def proxy(request: pytest.FixtureRequest, tmp_path: Path
          ) -> Iterator[tuple[FakeUpstream, RunningServer, Settings]]:
    """A proxy on either store backend, in front of the scripted upstream."""
    fake = FakeUpstream(script)
    with serve_app(fake.make_app) as upstream:
        settings = Settings(upstream=upstream.url, data_dir=tmp_path / "data",
                            metrics_file=tmp_path / "metrics.json", entry_max_bytes=1024,
                            connect_timeout_s=2.0, read_timeout_s=5.0)
        if request.param == "redis":
            with running_redis(tmp_path / "redis") as server:
                redis_settings = replace(settings, store_url=server.url())
                with serve_app(lambda: make_app(redis_settings)) as proxy_server:
                    yield fake, proxy_server, redis_settings
        else:
            with serve_app(lambda: make_app(settings)) as proxy_server:
                yield fake, proxy_server, settings


def send(server: RunningServer, text: str, *, key: str = "k", stream: bool = False,
         headers: dict[str, str] | None = None) -> http.Answer:
    """One chat request as tenant `key`."""
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    return http.post(server.url + ROUTE, body,
                     headers={"Authorization": f"Bearer {key}", **(headers or {})})


def decided(server: RunningServer, answers: int) -> None:
    """Wait until layer 2 has settled this many answers: stored (its write landed), not
    stored, or failed. A streamed answer's last bytes leave before that happens."""
    def settled() -> int:
        totals = server.call(lambda: server.app[LEDGER].totals())
        assert isinstance(totals, dict)
        done = sum(totals.get(name, 0) for name in
                   (c.RESPONSE_STORED, c.RESPONSE_NOT_STORED, c.RESPONSE_ERRORS))
        return done >= answers and not server.app[STORE].pending_writes

    wait_until(settled, f"layer 2 to settle {answers} answers")


def status(answer: http.Answer) -> str:
    """X-Cache-Status of an answer."""
    return answer.headers.get("X-Cache-Status", "")


def test_repeat_is_a_hit_and_another_tenant_misses(
        proxy: tuple[FakeUpstream, RunningServer, Settings]) -> None:
    fake, server, _ = proxy
    assert status(send(server, "hello", key="alice")) == "MISS"
    # No wait: an answer is visible to lookups before its response leaves.
    assert status(send(server, "hello", key="alice")) == "HIT"
    assert status(send(server, "hello", key="bob")) == "MISS"
    assert len(fake.calls) == 2


def test_answer_over_the_entry_cap_is_never_stored(
        proxy: tuple[FakeUpstream, RunningServer, Settings]) -> None:
    fake, server, _ = proxy
    big = "a big answer, please"  # 3000 characters: over --entry-max-size (1 KiB)
    send(server, big)
    decided(server, 1)  # counted as not stored
    assert status(send(server, big)) == "MISS"
    assert len(fake.calls) == 2


def test_failures_and_cut_streams_are_never_stored(
        proxy: tuple[FakeUpstream, RunningServer, Settings]) -> None:
    fake, server, _ = proxy
    assert send(server, "please fail").status == 500
    send(server, "cut this stream", stream=True)
    decided(server, 2)  # both counted as failed or not stored
    assert send(server, "please fail").status == 500
    assert status(send(server, "cut this stream", stream=True)) == "MISS"
    assert len(fake.calls) == 4


def test_cache_control_no_store_no_cache_and_max_age(
        proxy: tuple[FakeUpstream, RunningServer, Settings]) -> None:
    _, server, _ = proxy
    send(server, "private", headers={"Cache-Control": "no-store"})
    # A non-streamed response leaves once layer 2 is done with it (no-store: nothing).
    assert status(send(server, "private")) == "MISS"
    decided(server, 1)  # that one stored
    assert status(send(server, "private", headers={"Cache-Control": "no-cache"})) == "BYPASS"
    # max-age=0: any stored answer is already older than that.
    assert status(send(server, "private", headers={"Cache-Control": "max-age=0"})) == "EXPIRED"
    assert status(send(server, "private", headers={"Cache-Control": "max-age=60"})) == "HIT"


def test_redis_evictions_under_maxmemory_are_counted_where_they_can_be_seen(
        tmp_path: Path) -> None:
    fake = FakeUpstream(lambda body: Reply(text="z" * 60_000))
    with serve_app(fake.make_app) as upstream, \
            running_redis(tmp_path / "redis", maxmemory="3mb") as server:
        settings = Settings(upstream=upstream.url, store_url=server.url(),
                            data_dir=tmp_path / "data", metrics_file=tmp_path / "m.json")
        with serve_app(lambda: make_app(settings)) as proxy:
            for n in range(80):  # about 5 MB of answers into 3 MB
                assert send(proxy, f"answer {n}").status == 200
            def evictions() -> dict[str, Any] | None:
                found = http.get(proxy.url + "/cache/stats").json()["layers"]["response"]
                return found if found.get("evictedKeys") else None

            # Redis's INFO is read every 2 s: wait for the numbers that show evictions.
            response = wait_until(evictions, "evictions in the proxy's stats", timeout=10)
            assert response["evictedKeys"] > 0
            assert response["evictionPolicy"] == "allkeys-lru"
            assert response["limitBytes"] == 3 * 1024 * 1024
            metrics = http.get(proxy.url + "/metrics").content.decode()
            assert "cachelayer_redis_evicted_keys " in metrics
            assert "cachelayer_redis_evicted_keys 0\n" not in metrics
