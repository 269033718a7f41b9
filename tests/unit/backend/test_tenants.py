"""Which tenants a prompt cache may be kept for: those that sent its tokens, else the one
whose prompt it extends (its own answer); never a tenant that did not send them."""

from __future__ import annotations

import pytest

from cachelayer.backend.tenants import TenantRegistry, parse_tenant, scoped

SYSTEM = list(range(100, 140))
A_PROMPT = [*SYSTEM, 1, 2, 3]
B_PROMPT = [*SYSTEM, 7, 8, 9]


def test_a_shared_prefix_is_kept_for_every_tenant_that_sent_it() -> None:
    registry = TenantRegistry()
    registry.begin("aa" * 8, A_PROMPT)
    registry.begin("bb" * 8, B_PROMPT)
    assert registry.owners(SYSTEM) == sorted(["aa" * 8, "bb" * 8])
    assert registry.owners(A_PROMPT) == ["aa" * 8]


def test_an_answer_belongs_to_the_one_tenant_whose_prompt_it_extends() -> None:
    registry = TenantRegistry()
    registry.begin("aa" * 8, A_PROMPT)
    registry.begin("bb" * 8, B_PROMPT)
    assert registry.owners([*A_PROMPT, 55, 56]) == ["aa" * 8]


def test_an_answer_two_tenants_could_own_is_kept_for_neither() -> None:
    registry = TenantRegistry()
    registry.begin("aa" * 8, A_PROMPT)
    registry.begin("bb" * 8, A_PROMPT)
    assert registry.owners([*A_PROMPT, 55]) == []
    assert registry.owners(A_PROMPT) == sorted(["aa" * 8, "bb" * 8])


def test_tokens_no_tenant_sent_are_kept_for_nobody() -> None:
    registry = TenantRegistry()
    registry.begin("aa" * 8, A_PROMPT)
    assert registry.owners([1, 2, 3]) == []


def test_a_prompt_that_sent_more_of_the_tokens_wins_over_one_it_extends() -> None:
    # B's prompt is a prefix of A's later turn: A sent all of these tokens, B did not.
    registry = TenantRegistry()
    registry.begin("bb" * 8, SYSTEM)
    registry.begin("aa" * 8, A_PROMPT)
    assert registry.owners(A_PROMPT[:-1]) == ["aa" * 8]


def test_the_current_tenant_is_the_last_one_to_begin_and_keys_differ() -> None:
    registry = TenantRegistry()
    registry.begin("aa" * 8, A_PROMPT)
    assert registry.current == "aa" * 8
    assert scoped("model", "") == "model"
    assert scoped("model", "aa" * 8) != scoped("model", "bb" * 8)


@pytest.mark.parametrize("value", ["nothex!", "ab", "a" * 65, "Bearer x"])
def test_a_malformed_tenant_header_is_refused(value: str) -> None:
    with pytest.raises(ValueError):
        parse_tenant(value)


def test_no_header_is_the_shared_namespace() -> None:
    assert parse_tenant(None) == "" and parse_tenant("ABCDEF0123") == "abcdef0123"
