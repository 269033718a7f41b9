"""Policy: what is looked up and what is stored, per mode, directive and answer."""

from __future__ import annotations

import pytest

from cachelayer.config import ResponseCacheMode
from cachelayer.protocol.chat import ChatResult, Choice, ToolCall
from cachelayer.proxy.store.policy import (
    CacheControl,
    decide,
    parse_cache_control,
    unstorable_reason,
)

GREEDY = {"temperature": 0}
SAMPLED = {"temperature": 0.7}


def result(*choices: Choice) -> ChatResult:
    return ChatResult(kind="chat", id="x", created=0, model="m", choices=choices)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, CacheControl()),
        ("no-cache", CacheControl(no_cache=True)),
        ("no-store", CacheControl(no_store=True)),
        ("max-age=60", CacheControl(max_age=60.0)),
        ("No-Cache, max-age=5", CacheControl(no_cache=True, max_age=5.0)),
        ("private, must-revalidate", CacheControl()),
    ],
)
def test_parse_cache_control(header: str | None, expected: CacheControl) -> None:
    assert parse_cache_control(header) == expected


def test_mode_all_looks_up_and_stores_sampled_requests() -> None:
    d = decide(ResponseCacheMode.ALL, CacheControl(), SAMPLED)
    assert (d.lookup, d.store) == (True, True)


def test_mode_deterministic_skips_sampled_requests_only() -> None:
    assert not decide(ResponseCacheMode.DETERMINISTIC, CacheControl(), SAMPLED).store
    assert decide(ResponseCacheMode.DETERMINISTIC, CacheControl(), GREEDY).store
    assert decide(ResponseCacheMode.DETERMINISTIC, CacheControl(), {"seed": 3}).lookup


def test_mode_off_never_touches_the_store() -> None:
    d = decide(ResponseCacheMode.OFF, CacheControl(), GREEDY)
    assert (d.lookup, d.store) == (False, False)


def test_no_cache_stores_without_lookup_and_no_store_does_neither() -> None:
    d = decide(ResponseCacheMode.ALL, CacheControl(no_cache=True), GREEDY)
    assert (d.lookup, d.store) == (False, True)
    d = decide(ResponseCacheMode.ALL, CacheControl(no_store=True), GREEDY)
    assert (d.lookup, d.store) == (False, False)


def test_max_age_is_passed_on() -> None:
    assert decide(ResponseCacheMode.ALL, CacheControl(max_age=9), GREEDY).max_age == 9


@pytest.mark.parametrize(
    ("res", "reason"),
    [
        (result(), "no choices"),
        (result(Choice(0, "", "stop")), "empty answer"),
        (result(Choice(0, "partial", None)), "a choice never finished"),
        (result(Choice(0, "cut", "length")), "truncated at max_tokens"),
        (result(Choice(0, "x", "error")), "upstream reported an error"),
    ],
)
def test_failures_are_never_stored(res: ChatResult, reason: str) -> None:
    assert unstorable_reason(res, store_truncated=False) == reason


def test_complete_answers_and_tool_calls_are_storable() -> None:
    assert unstorable_reason(result(Choice(0, "ok", "stop")), store_truncated=False) is None
    calls = (ToolCall("c1", "ls", "{}"),)
    assert unstorable_reason(result(Choice(0, "", "tool_calls", calls)),
                             store_truncated=False) is None


def test_truncated_answers_are_storable_when_asked() -> None:
    assert unstorable_reason(result(Choice(0, "cut", "length")), store_truncated=True) is None
