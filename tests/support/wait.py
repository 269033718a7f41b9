"""The one way a test waits: poll a condition until it holds, or fail loudly saying what.

Tests never sleep for a fixed time and never check an absence after a fixed settle time;
they wait for the condition that makes the next assertion meaningful. On timeout the
failure names what was awaited and the last value seen, so a red run says why.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 30.0


class WaitTimeout(AssertionError):
    """A condition a test waited for did not hold in time."""


def _fail(what: str, timeout: float, last: object, error: BaseException | None) -> WaitTimeout:
    detail = f"; last error: {error!r}" if error is not None else ""
    return WaitTimeout(f"timed out after {timeout:g} s waiting for {what}; last value: "
                       f"{last!r}{detail}")


def wait_until(condition: Callable[[], T], what: str, *, timeout: float = DEFAULT_TIMEOUT_S,
               interval: float = 0.02, errors: tuple[type[BaseException], ...] = ()) -> T:
    """Call `condition` until it returns a truthy value and return that value.

    `errors` are exceptions that mean "not yet" (a server still starting); any other
    exception propagates at once. Raises WaitTimeout naming `what` on timeout.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            last = condition()
            error = None
        except errors as exc:
            error = exc
        else:
            if last:
                return last  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise _fail(what, timeout, last, error)
        time.sleep(interval)


async def async_wait_until(condition: Callable[[], T | Awaitable[T]], what: str, *,
                           timeout: float = DEFAULT_TIMEOUT_S, interval: float = 0.02,
                           errors: tuple[type[BaseException], ...] = ()) -> T:
    """Like wait_until, inside an event loop; `condition` may be sync or async."""
    deadline = time.monotonic() + timeout
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            value = condition()
            last = await value if isinstance(value, Awaitable) else value
            error = None
        except errors as exc:
            error = exc
        else:
            if last:
                return last  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise _fail(what, timeout, last, error)
        await asyncio.sleep(interval)
