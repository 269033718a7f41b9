"""The wait helper returns the value, takes listed errors as "not yet", and fails loudly."""

from __future__ import annotations

import itertools

import pytest

from tests.support.wait import WaitTimeout, async_wait_until, wait_until


def test_wait_until_returns_the_first_truthy_value() -> None:
    calls = itertools.count()
    assert wait_until(lambda: max(0, next(calls) - 2), "third call", interval=0) == 1


def test_wait_until_fails_naming_what_and_the_last_value() -> None:
    with pytest.raises(WaitTimeout, match=r"waiting for the queue to empty; last value: \[3\]"):
        wait_until(lambda: _Falsy([3]), "the queue to empty", timeout=0.05)


class _Falsy(list[int]):
    def __bool__(self) -> bool:
        return False


def test_listed_errors_mean_not_yet_and_others_propagate() -> None:
    calls = itertools.count()

    def flaky() -> bool:
        if next(calls) < 2:
            raise ConnectionError("still starting")
        return True

    assert wait_until(flaky, "server up", errors=(ConnectionError,), interval=0)
    with pytest.raises(KeyError):
        wait_until(lambda: {}["missing"], "never", timeout=1)


def test_timeout_reports_the_last_error() -> None:
    def down() -> bool:
        raise ConnectionError("refused")

    with pytest.raises(WaitTimeout, match="last error: ConnectionError"):
        wait_until(down, "server up", errors=(ConnectionError,), timeout=0.05)


async def test_async_wait_until_accepts_sync_and_async_conditions() -> None:
    calls = itertools.count()

    async def ready() -> int:
        return max(0, next(calls) - 1)

    assert await async_wait_until(ready, "second call", interval=0) == 1
    assert await async_wait_until(lambda: "yes", "sync value") == "yes"
    with pytest.raises(WaitTimeout, match="never true"):
        await async_wait_until(lambda: False, "never true", timeout=0.05)
