"""`--store rediss://`: two proxies share answers and counts through a real redis-server
that listens on TLS only (`--port 0 --tls-port`), with a certificate made at test time.

The proxy trusts the server the way a deployment would: its CA in the system store or
named by SSL_CERT_FILE (read by OpenSSL, not by cachelayer). Without that trust, or over
plain redis:// against the TLS port, the store stays unavailable and answers pass through.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.scaleout.conftest import SpawnProxies
from tests.support import http
from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy_chat import chat, status_of
from tests.support.redis_server import RedisServer, running_redis
from tests.support.servers import RunningServer
from tests.support.tls import make_tls_files
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """redis-server on TLS only, its certificate signed by a CA made for this test."""
    files = make_tls_files(tmp_path / "tls")
    with running_redis(tmp_path / "redis-tls", tls=files) as server:
        yield server


def test_two_proxies_share_answers_and_counts_over_rediss(
        tls_redis: RedisServer, fake: tuple[FakeUpstream, RunningServer],
        proxies: SpawnProxies, monkeypatch: pytest.MonkeyPatch) -> None:
    upstream, server = fake
    assert tls_redis.tls is not None and tls_redis.url().startswith("rediss://")
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_redis.tls.ca))  # the children inherit it
    a, b = proxies(2, server.url, "--store", tls_redis.url())
    assert http.get(a.url + "/health").json()["status"] == "ok"
    body = chat("over TLS")
    assert status_of(a, body)[0] == "MISS"
    status, on_b = status_of(b, body)
    assert status == "HIT" and b"You said:" in on_b and len(upstream.calls) == 1
    for child in (a, b):
        child.stop_cleanly()  # flushes the counts to Redis
    shared = {k.decode(): int(v) for k, v in tls_redis.client().hgetall(
        "cachelayer:counters").items()}
    assert shared["requests"] == 2 and shared["response.hits"] == 1


@pytest.mark.parametrize("case", ["untrusted-ca", "plain-redis-url"])
def test_without_tls_trust_the_store_is_unavailable_and_answers_pass_through(
        tls_redis: RedisServer, fake: tuple[FakeUpstream, RunningServer],
        proxies: SpawnProxies, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    upstream, server = fake
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    url = tls_redis.url()
    if case == "plain-redis-url":
        assert tls_redis.tls is not None
        monkeypatch.setenv("SSL_CERT_FILE", str(tls_redis.tls.ca))
        url = url.replace("rediss://", "redis://", 1)
    (proxy,) = proxies(1, server.url, "--store", url)
    body = chat(f"no trust: {case}")
    assert [status_of(proxy, body)[0] for _ in range(2)] == ["MISS", "MISS"]
    wait_until(lambda: http.get(proxy.url + "/health").json()["status"] == "degraded",
               "the proxy to report the untrusted redis", timeout=10)
    assert len(upstream.calls) == 2
    assert list(tls_redis.client().scan_iter(match="cachelayer:r:*")) == []
