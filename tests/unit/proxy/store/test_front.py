"""The store front (staging, hot tier, bounded write queue) behaves alike over both cold
tiers: a real diskcache directory and a real Redis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from cachelayer.protocol.chat import ChatResult, Choice, ToolCall, Usage
from cachelayer.proxy.store.backends.base import ColdTier, PutOutcome, StoredAnswer
from cachelayer.proxy.store.backends.disk import DiskTier
from cachelayer.proxy.store.front import StoreFront
from tests.support.wait import async_wait_until
from tests.unit.proxy.store.conftest import ColdFactory, GatedTier

RESULT = ChatResult(kind="chat", id="c1", created=5, model="m",
                    choices=(Choice(0, "hello", "stop", (ToolCall("t", "ls", "{}"),)),),
                    usage=Usage(10, 2, 4))


async def front_over(cold: ColdTier, **kw: Any) -> StoreFront:
    """A started front with test-sized limits."""
    opts: dict[str, Any] = {"ttl_s": 3600.0, "entry_max_bytes": 1 << 20} | kw
    front = StoreFront(cold, **opts)
    await front.start()
    return front


async def test_save_then_lookup_round_trips_through_the_cold_tier(
        cold_factory: ColdFactory) -> None:
    front = await front_over(cold_factory())
    assert (await front.save("k", RESULT)).stored
    front.hot.forget_all()  # read it back from the cold tier, not from memory
    found = await front.lookup("k")
    assert found is not None and found.result == RESULT
    other = await front_over(cold_factory())  # another process on the same store
    again = await other.lookup("k")
    assert again is not None and again.stored_at == found.stored_at


async def test_staged_answer_is_visible_before_its_write_lands(
        cold_factory: ColdFactory) -> None:
    gated = GatedTier(cold_factory())
    front = await front_over(gated)  # type: ignore[arg-type]
    outcomes: list[PutOutcome] = []
    assert not await front.keep("k", RESULT, outcomes.append)  # queued, not waited for
    await async_wait_until(lambda: gated.entered == 1, "the write to reach the cold tier")
    found = await front.lookup("k")
    assert found is not None and found.result == RESULT
    assert await gated.inner.read("k") is None  # not written yet: served from staging
    gated.gate.set()
    await front.drain()
    assert outcomes and outcomes[0].stored
    assert await gated.inner.read("k") is not None


async def test_a_full_write_queue_makes_the_caller_wait_for_its_own_write(
        cold_factory: ColdFactory) -> None:
    gated = GatedTier(cold_factory())
    front = await front_over(gated, max_pending_writes=2)  # type: ignore[arg-type]
    outcomes: list[PutOutcome] = []
    assert not await front.keep("a", RESULT, outcomes.append)
    assert not await front.keep("b", RESULT, outcomes.append)
    third = asyncio.create_task(front.keep("c", RESULT, outcomes.append))
    # All three writes are at the gate: two queued, the third written by its caller.
    await async_wait_until(lambda: gated.entered == 3, "three writes at the cold tier")
    assert front.pending_writes == 2 and not third.done()
    gated.gate.set()
    assert await third is True  # it waited: the caller counts a write wait
    await front.drain()
    assert front.pending_writes == 0
    assert len(outcomes) == 3 and all(o.stored for o in outcomes)


async def test_memory_answers_until_a_clear_anywhere_empties_it(
        cold_factory: ColdFactory) -> None:
    front = await front_over(cold_factory())
    await front.save("k", RESULT)
    await _drop_underneath(front.cold, "k")  # gone from the cold tier, not cleared
    assert await front.lookup("k") is not None  # memory still answers
    other = await front_over(cold_factory())
    await other.wipe()  # a clear from another process: the generation moves
    await async_wait_until(_gone(front, "k"), "the clear to empty this front's memory",
                           timeout=5)


async def _drop_underneath(cold: ColdTier, key: str) -> None:
    if isinstance(cold, DiskTier):
        cold.delete(key)
    else:
        await cold.client.delete(cold.prefix + key)  # type: ignore[attr-defined]
    assert await cold.read(key) is None


def _gone(front: StoreFront, key: str) -> Any:
    async def check() -> bool:
        if front.cold.kind == "redis":
            await front.cold.poll()  # type: ignore[attr-defined]
        return await front.lookup(key) is None
    return check


async def test_entry_over_the_cap_is_not_stored(cold_factory: ColdFactory) -> None:
    front = await front_over(cold_factory(), entry_max_bytes=64)
    assert not (await front.save("k", RESULT)).stored
    assert await front.lookup("k") is None


async def test_expired_answers_are_misses_even_from_memory(cold_factory: ColdFactory) -> None:
    front = await front_over(cold_factory(), ttl_s=60.0)
    front.hot.put("old", StoredAnswer(RESULT, time.time() - 120), 100)
    assert await front.lookup("old") is None
    front._staged["k"] = StoredAnswer(RESULT, time.time() - 120)
    assert not (await front.save("k", RESULT)).stored  # nothing left of its TTL


async def test_wipe_removes_every_answer_for_every_process(cold_factory: ColdFactory) -> None:
    front = await front_over(cold_factory())
    other = await front_over(cold_factory())
    await front.save("a", RESULT)
    await front.save("b", RESULT)
    assert await other.lookup("a") is not None  # now also in the other's memory
    assert await front.wipe() == 2
    assert await front.lookup("a") is None
    await async_wait_until(_gone(other, "a"), "the wipe to reach the other's memory",
                           timeout=5)


async def test_wipe_removes_an_answer_whose_write_was_on_its_way(
        cold_factory: ColdFactory) -> None:
    gated = GatedTier(cold_factory())
    front = await front_over(gated)  # type: ignore[arg-type]
    await front.keep("k", RESULT, lambda outcome: None)
    await async_wait_until(lambda: gated.entered == 1, "the write to reach the cold tier")
    wipe = asyncio.ensure_future(front.wipe())
    gated.gate.set()  # the write lands while the clear is under way
    await wipe
    assert await front.lookup("k") is None
    assert await gated.inner.read("k") is None
