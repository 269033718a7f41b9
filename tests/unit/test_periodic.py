"""Periodic: ticks on its interval, survives a failing tick, lets a running tick finish
when stopped, and stops in bounded time even when a tick swallows the cancel (as
redis-py's asyncio client sometimes does mid-command)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from cachelayer.periodic import Periodic
from tests.support.wait import async_wait_until


async def test_ticks_every_interval_until_stopped() -> None:
    ticks: list[float] = []

    async def tick() -> None:
        ticks.append(time.monotonic())

    control: list[float] = []

    async def control_tick() -> None:
        control.append(time.monotonic())

    loop = Periodic(tick, 0.01, name="counter")
    loop.start()
    await async_wait_until(lambda: len(ticks) >= 3, "three ticks")
    await loop.stop()
    seen = len(ticks)
    assert not loop.running
    # Nothing after stop(): a loop still running at the same interval ticks three times
    # meanwhile, so a tick of the stopped one would have come by then.
    other = Periodic(control_tick, 0.01, name="control")
    other.start()
    await async_wait_until(lambda: len(control) >= 3, "three ticks of the control loop")
    await other.stop()
    assert len(ticks) == seen


async def test_first_tick_waits_an_interval_unless_immediately() -> None:
    waited: list[str] = []
    at_once: list[str] = []

    async def tick_waited() -> None:
        waited.append("tick")

    async def tick_at_once() -> None:
        at_once.append("tick")

    later, now = (Periodic(tick_waited, 10.0, name="later"),
                  Periodic(tick_at_once, 10.0, name="now", immediately=True))
    later.start()
    now.start()
    # Started first, `later` would have ticked before `now` if it did not wait.
    await async_wait_until(lambda: at_once, "the immediate tick")
    await later.stop()
    await now.stop()
    assert waited == [] and at_once == ["tick"]


async def test_stop_lets_a_running_tick_finish_instead_of_cancelling_it() -> None:
    events: list[str] = []
    release = asyncio.Event()

    async def slow_tick() -> None:
        events.append("began")
        try:
            await release.wait()  # the scenario: a tick still running when stop() comes
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        events.append("ended")

    loop = Periodic(slow_tick, 0.001, name="slow")
    loop.start()
    await async_wait_until(lambda: events, "the tick to begin", interval=0.001)
    stopping = asyncio.create_task(loop.stop(grace_s=2.0))
    # The tick ends only once stop() is waiting on it: a stop that cancelled it would
    # have done so by then.
    await async_wait_until(lambda: loop._wake.is_set(), "stop() to wake the loop")
    assert not stopping.done()
    release.set()
    await stopping
    assert events == ["began", "ended"]
    assert not loop.running


async def test_stop_wakes_a_loop_waiting_out_a_long_interval() -> None:
    ticks: list[str] = []

    async def tick() -> None:
        ticks.append("tick")

    loop = Periodic(tick, 3600.0, name="hourly", immediately=True)
    loop.start()
    # Its immediate tick done, the loop waits out its hour.
    await async_wait_until(lambda: ticks, "the immediate tick")
    assert loop.running
    started = time.monotonic()
    await loop.stop()
    assert time.monotonic() - started < 0.5
    assert not loop.running
    assert ticks == ["tick"]  # woken to stop, not to tick again


async def test_stop_cancels_a_tick_still_running_after_the_grace() -> None:
    events: list[str] = []
    began = asyncio.Event()

    async def endless_tick() -> None:
        began.set()
        try:
            await asyncio.Event().wait()  # the scenario: a tick that never ends by itself
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    loop = Periodic(endless_tick, 0.0, name="endless", immediately=True)
    loop.start()
    await async_wait_until(began.is_set, "the endless tick to begin")
    started = time.monotonic()
    await loop.stop(grace_s=0.1)
    assert time.monotonic() - started < 1.0
    assert events == ["cancelled"] and not loop.running


async def test_stop_returns_even_when_the_tick_swallows_every_cancel(
        caplog: pytest.LogCaptureFixture) -> None:
    release, began = asyncio.Event(), asyncio.Event()

    async def stubborn_tick() -> None:
        began.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # as redis-py sometimes does mid-command

    loop = Periodic(stubborn_tick, 0.0, name="stubborn", immediately=True)
    loop.start()
    await async_wait_until(began.is_set, "the stubborn tick to begin")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="cachelayer.periodic"):
        await loop.stop(grace_s=0.1)
    assert time.monotonic() - started < 2.0
    assert loop.running and "stubborn did not stop" in caplog.text
    release.set()  # let it end so the test leaves no task behind
    await async_wait_until(lambda: not loop.running, "the released loop to end")


async def test_a_failing_tick_is_logged_and_the_loop_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def flaky_tick() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("first tick fails")

    loop = Periodic(flaky_tick, 0.005, name="flaky", immediately=True)
    with caplog.at_level(logging.ERROR, logger="cachelayer.periodic"):
        loop.start()
        await async_wait_until(lambda: calls >= 3, "three ticks, the first failing")
        await loop.stop()
    assert calls >= 3
    assert "flaky: a background tick failed" in caplog.text


async def test_stop_before_start_is_a_no_op() -> None:
    async def tick() -> None:
        raise AssertionError("never runs")

    loop = Periodic(tick, 0.01, name="idle")
    await loop.stop()
    assert not loop.running
