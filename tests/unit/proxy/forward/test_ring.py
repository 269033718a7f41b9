"""Consistent hashing with bounded loads: pure functions, checked on their own."""

from __future__ import annotations

from collections import Counter
from functools import lru_cache

from cachelayer.proxy.forward.ring import Ring, build_ring, capacity, choose, walk

BACKENDS = ["http://a:1", "http://b:1", "http://c:1"]
KEYS = [f"prefix-{i}" for i in range(3000)]


@lru_cache
def _ring(backends: tuple[str, ...]) -> Ring:
    # Built once per backend list, not once per key (3000 keys): build_ring is pure.
    return build_ring(backends)


def owner(ring_backends: list[str], key: str, healthy: list[str] | None = None) -> str:
    ring = _ring(tuple(ring_backends))
    return choose(ring, key, healthy=healthy or ring_backends, loads={})[0]


def test_keys_spread_evenly_over_backends() -> None:
    counts = Counter(owner(BACKENDS, k) for k in KEYS)
    assert set(counts) == set(BACKENDS)
    assert all(800 <= n <= 1200 for n in counts.values()), counts


def test_same_backends_always_give_the_same_owner() -> None:
    assert [owner(BACKENDS, k) for k in KEYS[:50]] == [
        owner(list(reversed(BACKENDS)), k) for k in KEYS[:50]]


def test_a_dead_backend_moves_only_its_own_keys_and_gets_them_back() -> None:
    before = {k: owner(BACKENDS, k) for k in KEYS}
    alive = BACKENDS[:2]
    during = {k: owner(BACKENDS, k, healthy=alive) for k in KEYS}
    for key in KEYS:
        if before[key] in alive:
            assert during[key] == before[key]  # nobody else's keys move
        else:
            assert during[key] in alive
    after = {k: owner(BACKENDS, k) for k in KEYS}
    assert after == before


def test_walk_lists_every_backend_once_starting_at_the_owner() -> None:
    ring = build_ring(BACKENDS)
    order = walk(ring, "some prefix")
    assert sorted(order) == sorted(BACKENDS)
    assert order[0] == owner(BACKENDS, "some prefix")


def test_capacity_is_the_fair_share_times_balance_rounded_up() -> None:
    assert capacity(0, 3, 1.25) == 1
    assert capacity(11, 3, 1.25) == 5  # ceil(1.25 * 12 / 3)
    assert capacity(5, 0, 1.25) == 8  # no healthy backend: no division by zero


def test_a_full_backend_passes_the_key_to_the_next_on_its_walk() -> None:
    ring = build_ring(BACKENDS)
    first, second, third = walk(ring, "hot prefix")
    loads = {first: 4, second: 0, third: 0}  # capacity ceil(1.25 * 5 / 3) = 3: first is full
    assert choose(ring, "hot prefix", healthy=BACKENDS, loads=loads, balance=1.25) == [
        second, first, third]
    loads = {first: 4, second: 4, third: 0}  # capacity 4: first and second are full
    assert choose(ring, "hot prefix", healthy=BACKENDS, loads=loads,
                  balance=1.25)[0] == third


def test_under_capacity_the_owner_keeps_the_key_and_the_rest_follow() -> None:
    ring = build_ring(BACKENDS)
    order = walk(ring, "k")
    # capacity ceil(2 * 3 / 3) = 2: the owner may take a second request in flight
    assert choose(ring, "k", healthy=BACKENDS, loads={order[0]: 1, order[1]: 1},
                  balance=2.0) == order


def test_no_healthy_backend_gives_no_choice() -> None:
    ring = build_ring(BACKENDS)
    assert choose(ring, "k", healthy=[], loads={}) == []


def test_hot_prefix_spreads_under_load_but_no_backend_exceeds_its_bound() -> None:
    ring = build_ring(BACKENDS)
    loads: Counter[str] = Counter()
    for n in range(30):  # 30 concurrent requests of one prefix
        chosen = choose(ring, "one hot prefix", healthy=BACKENDS, loads=loads,
                        balance=1.25)[0]
        assert loads[chosen] < capacity(n, 3, 1.25)
        loads[chosen] += 1
    assert max(loads.values()) <= capacity(29, 3, 1.25)
    assert len(loads) == 3
