"""The upstream pool without a network: candidate order, failures, accounting."""

from __future__ import annotations

from cachelayer.config import RoutingMode, Settings
from cachelayer.protocol.chat import Usage
from cachelayer.proxy.forward.pool import UpstreamPool

URLS = ("http://a:1", "http://b:1", "http://c:1")


def pool(mode: RoutingMode = RoutingMode.PREFIX) -> UpstreamPool:
    return UpstreamPool(Settings(upstream=URLS[0], upstreams=URLS, routing=mode))


def test_one_upstream_is_never_routed_or_taken_out() -> None:
    single = UpstreamPool(Settings(upstream="http://only:1/"))
    assert not single.routed
    only = single.candidates("any")[0]
    single.failed(only, "refused")
    assert only.healthy and [b.url for b in single.candidates("any")] == ["http://only:1"]


def test_a_failed_backend_goes_last_and_others_keep_their_keys() -> None:
    p = pool()
    owners = {k: p.candidates(k)[0].url for k in (f"prefix-{i}" for i in range(60))}
    victim = p.upstreams[owners["prefix-0"]]
    p.failed(victim, "connection refused")
    for key, owner in owners.items():
        order = [b.url for b in p.candidates(key)]
        assert order[-1] == victim.url  # still tried last, when all else failed
        if owner != victim.url:
            assert order[0] == owner
    assert p.first_healthy() != victim.url


def test_round_robin_takes_turns_over_healthy_backends() -> None:
    p = pool(RoutingMode.ROUND_ROBIN)
    firsts = [p.candidates("same prefix")[0].url for _ in range(6)]
    assert firsts == [*URLS, *URLS]


def test_accounting_counts_requests_errors_and_reused_tokens() -> None:
    p = pool()
    backend = p.candidates("k")[0]
    p.account(backend, Usage(prompt_tokens=100, completion_tokens=5, cached_tokens=80), ok=True)
    p.account(backend, None, ok=False)
    row = next(r for r in p.snapshot() if r["url"] == backend.url)
    assert (row["requests"], row["errors"], row["kvTokensReused"]) == (2, 1, 80)
