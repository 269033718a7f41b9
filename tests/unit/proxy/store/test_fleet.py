"""Coalescing across proxies: two fronts, each with its own Redis client and fleet, on
one real redis-server (as two proxies would be)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from cachelayer.config import Settings
from cachelayer.protocol.chat import ChatResult, Choice, Usage
from cachelayer.proxy.store.backends import redis as redis_tier
from cachelayer.proxy.store.backends.base import PutOutcome
from cachelayer.proxy.store.backends.redis_fleet import RedisFleet
from cachelayer.proxy.store.front import StoreFront
from tests.support.redis_server import RedisServer
from tests.support.wait import async_wait_until

pytestmark = pytest.mark.slow  # a redis-server child
RESULT = ChatResult(kind="chat", id="c1", created=5, model="m",
                    choices=(Choice(0, "hello", "stop"),), usage=Usage(10, 2, 4))
Proxy = Callable[..., StoreFront]


@pytest.fixture
async def proxy(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Proxy]:
    """make(lease_s=, wait_s=): a started front over Redis with its own fleet."""
    redis_server.client().flushall()
    settings = Settings(store_url=redis_server.url(), data_dir=tmp_path)
    fronts: list[StoreFront] = []

    async def make(lease_s: float = 5.0, wait_s: float = 30.0) -> StoreFront:
        client = redis_tier.connect(settings)
        front = StoreFront(redis_tier.RedisTier(client, settings), ttl_s=3600.0,
                           entry_max_bytes=1 << 20,
                           fleet=RedisFleet(client, "cachelayer", lease_s=lease_s),
                           fleet_wait_s=wait_s)
        await front.start()
        fronts.append(front)
        return front

    yield make  # type: ignore[misc]
    for front in fronts:
        await front.aclose()


def ignore(outcome: PutOutcome) -> None:
    """A write's outcome nobody counts."""


def waiting(front: StoreFront) -> Callable[[], bool]:
    assert front.fleet is not None
    fleet = front.fleet
    return lambda: fleet.snapshot()["fleetWaits"] >= 1


async def test_the_second_proxy_waits_for_the_first_ones_answer(proxy: Proxy) -> None:
    a, b = await proxy(), await proxy()
    assert await a.await_fleet("k") is None  # a computes, holding the marker
    waiter = asyncio.create_task(b.await_fleet("k"))
    await async_wait_until(waiting(b), "b to wait on a's marker")
    await a.keep("k", RESULT, ignore)  # the answer is written, then the marker released
    found = await asyncio.wait_for(waiter, 10)
    assert found is not None and found.result == RESULT
    assert b.snapshot()["fleetHits"] == 1


async def test_an_answer_that_landed_after_the_lookup_is_a_hit_not_a_second_computation(
        proxy: Proxy) -> None:
    a, b = await proxy(), await proxy()
    assert await a.await_fleet("k") is None
    await a.save("k", RESULT)
    found = await b.await_fleet("k")  # b's lookup missed before a's write: claim sees it
    assert found is not None and found.result == RESULT
    assert b.fleet is not None and not b.fleet.holds("k")


async def test_a_holder_that_stores_nothing_lets_the_waiter_compute(proxy: Proxy) -> None:
    a, b = await proxy(), await proxy()
    assert await a.await_fleet("k") is None
    waiter = asyncio.create_task(b.await_fleet("k"))
    await async_wait_until(waiting(b), "b to wait on a's marker")
    a.release("k")  # a's answer failed: nothing stored
    assert await asyncio.wait_for(waiter, 10) is None
    assert b.fleet is not None and b.fleet.holds("k")  # b computes, holding the marker


async def test_a_dead_holders_marker_stops_blocking_after_its_lease(proxy: Proxy) -> None:
    lease = 1.0
    a, b = await proxy(lease_s=lease), await proxy(lease_s=lease)
    assert await a.await_fleet("k") is None
    assert a.fleet is not None
    await a.fleet._renewer.stop()  # a dies: no renewals, no release
    started = time.monotonic()
    assert await asyncio.wait_for(b.await_fleet("k"), 10) is None
    waited = time.monotonic() - started
    assert b.fleet is not None and b.fleet.holds("k")
    assert waited <= lease + 1.0, f"waited {waited:.2f} s on a {lease} s lease"


async def test_a_live_holder_keeps_its_marker_past_the_lease(proxy: Proxy) -> None:
    lease = 0.6
    a, b = await proxy(lease_s=lease), await proxy(lease_s=lease)
    assert await a.await_fleet("k") is None
    assert a.fleet is not None
    fleet = a.fleet
    await async_wait_until(lambda: fleet.renewals >= 6, "six renewals (two leases and more)")
    assert b.fleet is not None
    assert (await b.fleet.claim("k")).value == "other"


async def test_the_wait_is_bounded_then_the_waiter_computes_without_the_marker(
        proxy: Proxy) -> None:
    a, b = await proxy(), await proxy(wait_s=0.5)
    assert await a.await_fleet("k") is None
    assert await asyncio.wait_for(b.await_fleet("k"), 10) is None
    assert b.fleet is not None and not b.fleet.holds("k")
    assert a.fleet is not None and a.fleet.holds("k")
