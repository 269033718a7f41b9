"""Two and three `cachelayer serve` processes on one real redis-server: shared answers,
exact shared counts, clear reaching every proxy, and Redis dying mid-run."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.integration.scaleout.conftest import SpawnProxies
from tests.support import http
from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy_chat import ROUTE, chat, hit, status_of
from tests.support.proxy_process import REPO_ROOT, ProxyProcess
from tests.support.redis_server import RedisServer, running_redis
from tests.support.servers import RunningServer
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow


def wait_stored(redis_server: RedisServer, entries: int, timeout_s: float = 5.0) -> None:
    """Wait until Redis holds this many answers (a proxy writes just after answering)."""
    client = redis_server.client()
    wait_until(lambda: len(list(client.scan_iter(match="cachelayer:r:*"))) >= entries,
               f"{entries} answers in Redis", timeout=timeout_s)


def wait_cleared(redis_server: RedisServer, fleet: list[ProxyProcess]) -> None:
    """Wait until every proxy has seen the store's current generation: a clear made
    anywhere has emptied its memory."""
    generation = redis_server.client().get("cachelayer:generation")
    assert generation is not None
    now = generation.decode()

    def seen() -> bool:
        return all(http.get(p.url + "/cache/stats").json()["layers"]["response"]
                   .get("generation") == now for p in fleet)

    wait_until(seen, f"every proxy to see generation {now}", timeout=5)


def health_of(proxy: ProxyProcess) -> dict[str, Any]:
    """The proxy's /health document."""
    return dict(http.get(proxy.url + "/health").json())


def test_answer_stored_through_one_proxy_is_a_hit_on_the_other_byte_identical(
        redis_server: RedisServer, fake: tuple[FakeUpstream, RunningServer],
        proxies: SpawnProxies) -> None:
    upstream, server = fake
    a, b = proxies(2, server.url, "--store", redis_server.url())
    for stream in (False, True):
        body = chat(f"shared answer, stream={stream}", stream=stream)
        first_status, _ = status_of(a, body)
        assert first_status == "MISS"
        status, on_b = status_of(b, body)
        assert status == "HIT"  # the first time b sees it
        status, again_on_a = status_of(a, body)
        assert status == "HIT" and on_b == again_on_a
        if stream:
            assert http.sse_text(on_b).startswith("You said:")
        else:
            assert json.loads(on_b)["choices"][0]["message"]["content"].startswith("You said:")
    assert len(upstream.calls) == 2  # one upstream call per distinct request, not per proxy


def test_without_a_hot_tier_every_hit_asks_redis_and_sees_a_delete_at_once(
        redis_server: RedisServer, fake: tuple[FakeUpstream, RunningServer],
        proxies: SpawnProxies) -> None:
    upstream, server = fake
    a, b = proxies(2, server.url, "--store", redis_server.url(), "--hot-tier-size", "0")
    body = chat("no hot tier")
    assert status_of(a, body)[0] == "MISS"
    answers = {status_of(p, body) for p in (b, b, a, b)}  # repeats: the fast path's too
    assert {status for status, _ in answers} == {"HIT"} and len(answers) == 1
    client = redis_server.client()
    getranges = int(client.info("commandstats")["cmdstat_getrange"]["calls"])
    assert getranges >= 4  # each hit read the entry's header in Redis
    (name,) = client.scan_iter(match="cachelayer:r:*")
    client.delete(name)  # gone from Redis: no proxy may answer it from memory
    assert status_of(b, body)[0] == "MISS"
    assert len(upstream.calls) == 2


def _load(proxy: ProxyProcess, bodies: list[dict[str, Any]], seen: Counter[str],
          lock: threading.Lock) -> None:
    for body in bodies:
        answer = http.post(proxy.url + ROUTE, body)
        with lock:
            seen[str(answer.status)] += 1
            seen[answer.headers.get("X-Cache-Status", "-")] += 1


def _metrics(proxy: ProxyProcess) -> dict[str, Any]:
    return dict(json.loads(proxy.metrics_file.read_text()))


def test_counts_from_three_proxies_add_up_exactly_across_restarts(
        tmp_path: Path, redis_server: RedisServer, fake: tuple[FakeUpstream, RunningServer],
        proxies: SpawnProxies) -> None:
    _, server = fake
    fleet = proxies(3, server.url, "--store", redis_server.url())
    # Each proxy: 20 requests over 8 distinct prompts shared by all three (misses, hits
    # and coalesced repeats, concurrently).
    plans = [[chat(f"prompt {(i * 7 + n) % 8}") for i in range(20)] for n in range(3)]
    seen: Counter[str] = Counter()
    lock = threading.Lock()
    threads = [threading.Thread(target=_load, args=(p, plan, seen, lock))
               for p, plan in zip(fleet, plans, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert seen["200"] == 60
    for child in fleet:
        child.stop_cleanly()  # SIGTERM flushes the last counts to Redis
    # One proxy restarts (same data dir) and answers 10 more.
    again = proxies(1, server.url, "--store", redis_server.url(), first=0)[0]
    assert again.data_dir == fleet[0].data_dir
    _load(again, [chat(f"prompt {n % 8}") for n in range(10)], seen, lock)
    again.stop_cleanly()
    shared = {k.decode(): int(v) for k, v in
              redis_server.client().hgetall("cachelayer:counters").items()}
    assert shared["requests"] == 70
    assert (shared.get("response.hits", 0) + shared.get("response.misses", 0)
            + shared.get("response.coalesced", 0)) == 70
    assert shared["response.hits"] + shared.get("response.coalesced", 0) == seen["HIT"]
    doc = _metrics(again)
    assert doc["metrics"]["totalRequests"] == 70
    assert sum(e["requests"] for e in doc["topEntries"]) == 70  # prefix records, merged
    assert doc["thisProxy"]["metrics"]["totalRequests"] == 30  # its 20, then its 10
    own = [_metrics(p)["thisProxy"]["metrics"]["totalRequests"] for p in fleet[1:]]
    assert own == [20, 20]
    stats = subprocess.run([sys.executable, "-m", "cachelayer", "stats", "--metrics-file",
                            str(again.metrics_file)], capture_output=True, text=True,
                           cwd=str(REPO_ROOT), check=True).stdout
    assert "this proxy" in stats and "shared store" in stats
    from_redis = subprocess.run([sys.executable, "-m", "cachelayer", "stats", "--json",
                                 "--store", redis_server.url()], capture_output=True,
                                text=True, cwd=str(REPO_ROOT), check=True).stdout
    assert json.loads(from_redis)["metrics"]["totalRequests"] == 70  # no proxy running


def test_clear_on_one_proxy_reaches_every_proxys_hot_tier_within_a_second(
        redis_server: RedisServer, fake: tuple[FakeUpstream, RunningServer],
        proxies: SpawnProxies) -> None:
    _, server = fake
    fleet = proxies(3, server.url, "--store", redis_server.url())
    for how in ("admin route", "cli"):
        body = chat(f"to be cleared via {how}")
        status_of(fleet[0], body)
        for child in fleet:
            hit(child, body)  # now in every proxy's hot tier
        if how == "admin route":
            assert http.post(fleet[1].url + "/cache/clear", {}).status == 200
        else:
            subprocess.run([sys.executable, "-m", "cachelayer", "clear", "--yes",
                            "--store", redis_server.url()], cwd=str(REPO_ROOT), check=True,
                           capture_output=True)
        wait_cleared(redis_server, fleet)
        for n, child in enumerate(fleet):
            assert status_of(child, body)[0] != "HIT", (how, f"proxy {n}")
            # That miss stores the answer again, off the request path: once it has landed
            # in Redis, clear it again so the next proxy starts from a cleared store (a
            # clear sent before the write lands would leave the write standing).
            wait_stored(redis_server, 1)
            http.post(fleet[1].url + "/cache/clear", {})
            wait_cleared(redis_server, fleet)


def test_redis_killed_and_restarted_mid_run_serves_throughout_and_recovers(
        redis_server: RedisServer, fake: tuple[FakeUpstream, RunningServer],
        proxies: SpawnProxies) -> None:
    _, server = fake
    a, b = proxies(2, server.url, "--store", redis_server.url())
    statuses: Counter[int] = Counter()
    stop = threading.Event()

    def load(proxy: ProxyProcess, n: int) -> None:
        i = 0
        while not stop.is_set():
            statuses[http.post(proxy.url + ROUTE, chat(f"load {n}-{i % 5}")).status] += 1
            i += 1

    known = chat("answered before the outage")
    status_of(a, known)
    hit(a, known)  # now in a's hot tier
    threads = [threading.Thread(target=load, args=(p, n)) for n, p in enumerate((a, b))]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: sum(statuses.values()) >= 20, "20 answers under load")
        redis_server.kill()
        health = wait_until(lambda: (h := health_of(a))["status"] == "degraded" and h,
                            "a to notice redis is gone", timeout=5)
        assert "unavailable" in health["store"]["error"]
        assert status_of(a, known)[0] == "HIT"  # the hot tier needs no Redis
        served = sum(statuses.values())
        # Requests keep flowing, as a pass-through.
        wait_until(lambda: sum(statuses.values()) >= served + 20,
                   "20 more answers while redis is down")
        redis_server.start()
        wait_until(lambda: all(health_of(p)["status"] == "ok" for p in (a, b)),
                   "both proxies to use redis again", timeout=5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert set(statuses) == {200}, statuses  # no 5xx, not even during the outage
    # Redis came back empty: every proxy dropped what it remembered with it.
    assert status_of(a, known)[0] == "MISS"
    body = chat("after the outage")
    status_of(a, body)
    hit(b, body)  # the shared store works again, across proxies


def test_redis_password_never_appears_in_logs_or_health(
        tmp_path: Path, fake: tuple[FakeUpstream, RunningServer],
        proxies: SpawnProxies) -> None:
    _, server = fake
    secret = "pw-Secr3t-4-redis"
    with running_redis(tmp_path / "redis-auth", password=secret) as redis_auth:
        (proxy,) = proxies(1, server.url, "--store", redis_auth.url(), "--log-level", "debug")
        status_of(proxy, chat("with a password"))
        hit(proxy, chat("with a password"))
        redis_auth.kill()  # errors get logged now
        wait_until(lambda: health_of(proxy)["status"] == "degraded",
                   "the proxy to notice redis is gone", timeout=5)
        health = http.get(proxy.url + "/health")
        assert secret not in health.content.decode()
        assert "***" in health.json()["store"]["url"]
        proxy.stop()
    output = proxy.output()
    assert "unavailable" in output and secret not in output


def test_foreign_or_garbage_redis_values_are_misses(
        redis_server: RedisServer, fake: tuple[FakeUpstream, RunningServer],
        proxies: SpawnProxies) -> None:
    _, server = fake
    a, b = proxies(2, server.url, "--store", redis_server.url())
    garbage, wrong_type = chat("garbage value"), chat("wrong type")
    for body in (garbage, wrong_type):
        status_of(a, body)
        hit(a, body)
    client = redis_server.client()
    keys = sorted(client.scan_iter(match="cachelayer:r:*"))
    assert len(keys) == 2
    client.set(keys[0], b"\x00not ours at all")
    client.delete(keys[1])
    client.hset(keys[1], "field", "value")
    for body in (garbage, wrong_type):  # b never saw them: it must read Redis
        assert status_of(b, body)[0] == "MISS"
    assert http.get(b.url + "/health").json()["status"] == "ok"


def test_redis_down_at_start_is_a_pass_through_until_it_comes_up(
        tmp_path: Path, fake: tuple[FakeUpstream, RunningServer],
        proxies: SpawnProxies) -> None:
    upstream, server = fake
    late = RedisServer(tmp_path / "redis-late")  # not started yet
    try:
        (proxy,) = proxies(1, server.url, "--store", late.url())
        health = http.get(proxy.url + "/health").json()
        assert health["status"] == "degraded" and "unavailable" in health["store"]["error"]
        body = chat("before redis exists")
        assert [status_of(proxy, body)[0] for _ in range(2)] == ["MISS", "MISS"]
        late.start()
        wait_until(lambda: health_of(proxy)["status"] == "ok", "the proxy to recover",
                   timeout=5)
        status_of(proxy, body)
        hit(proxy, body)
        assert len(upstream.calls) == 3
    finally:
        late.stop()
