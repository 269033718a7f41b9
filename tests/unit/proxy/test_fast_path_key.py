"""The fast path's raw key: everything that can change the answer changes it, nothing else.

Raw means raw: two requests that mean the same but differ in a byte are two keys (the
normal path keys them to one stored answer). What must hold is the other direction: no
two requests that can be answered differently ever share a raw key.
"""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from cachelayer.proxy.fast_path import ANSWER_HEADERS, FastPath, raw_key
from cachelayer.proxy.identity import request_tenant

ROUTE = "/v1/messages"
BODY = b'{"model":"claude-x","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}'
HEADERS = {"content-type": "application/json", "anthropic-version": "2023-06-01",
           "Authorization": "Bearer alice-key"}


def _key(route: str = ROUTE, body: bytes = BODY, headers: dict[str, str] | None = None) -> str:
    # As aiohttp hands them over: names in any case.
    hdrs = CIMultiDict(HEADERS if headers is None else headers)
    return raw_key(route, body, request_tenant(hdrs), hdrs)


def test_the_same_request_has_the_same_key() -> None:
    assert _key() == _key(headers=dict(HEADERS))


@pytest.mark.parametrize("index", range(0, len(BODY), 7))
def test_every_body_byte_changes_the_key(index: int) -> None:
    changed = BODY[:index] + bytes([BODY[index] ^ 0x01]) + BODY[index + 1:]
    assert _key(body=changed) != _key()


def test_a_body_with_a_trailing_space_is_another_key() -> None:
    assert _key(body=BODY + b" ") != _key()


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions", "/v1/responses"])
def test_the_route_changes_the_key(route: str) -> None:
    assert _key(route=route) != _key()


@pytest.mark.parametrize("credential", [
    {"Authorization": "Bearer bob-key"}, {"x-api-key": "bob-key"}, {}])
def test_another_credential_changes_the_key(credential: dict[str, str]) -> None:
    headers = {k: v for k, v in HEADERS.items() if k != "Authorization"} | credential
    assert _key(headers=headers) != _key()


def test_one_credential_sent_in_either_header_is_one_tenant_and_one_key() -> None:
    as_api_key = {k: v for k, v in HEADERS.items() if k != "Authorization"}
    as_api_key["x-api-key"] = "alice-key"
    assert _key(headers=as_api_key) == _key()


@pytest.mark.parametrize(("name", "value"), [
    ("Content-Type", "text/plain"),
    ("Cache-Control", "no-store"),
    ("Cache-Control", "no-cache"),
    ("cache-control", "max-age=5"),
    ("Anthropic-Version", "2024-01-01"),
    ("anthropic-beta", "prompt-caching-2024-07-31"),
])
def test_each_header_that_matters_changes_the_key(name: str, value: str) -> None:
    assert name.lower() in ANSWER_HEADERS
    headers = {k: v for k, v in HEADERS.items() if k.lower() != name.lower()}
    assert _key(headers={**headers, name: value}) != _key()


def test_a_header_that_matters_sent_empty_is_not_the_header_absent() -> None:
    headers = {**HEADERS, "anthropic-beta": ""}
    assert _key(headers=headers) != _key()


@pytest.mark.parametrize(("name", "value"), [
    ("User-Agent", "claude-cli/2.0"),
    ("X-Request-Id", "req-123"),
    ("Content-Length", "000123"),
    ("accept", "text/event-stream"),
    ("x-claude-code-session-id", "session-9"),
    ("x-session-id", "conv-1"),
])
def test_a_header_that_does_not_change_the_answer_keeps_the_key(name: str, value: str) -> None:
    assert _key(headers={**HEADERS, name: value}) == _key()


def test_parts_cannot_slide_into_each_other() -> None:
    # Without length prefixes, "/v1/messages" + "x..." and "/v1/messagesx" + "..." would
    # hash the same bytes.
    assert raw_key("/v1/a", b"bc", "t", {}) != raw_key("/v1/ab", b"c", "t", {})


def test_the_index_keeps_the_most_recently_used_entries() -> None:
    fast: FastPath = FastPath(entries=2)
    learned = [object() for _ in range(3)]
    fast.learn("a", learned[0])  # type: ignore[arg-type]
    fast.learn("b", learned[1])  # type: ignore[arg-type]
    assert fast.get("a") is learned[0]  # "a" is now the most recent
    fast.learn("c", learned[2])  # type: ignore[arg-type]
    assert fast.get("b") is None
    assert fast.get("a") is learned[0] and fast.get("c") is learned[2]
    fast.forget("a")
    assert fast.get("a") is None and len(fast) == 1
