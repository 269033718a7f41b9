"""Layer 1's rules on Claude Code's real variations: many variants -> one prefix, one key;
each semantic change -> a different one. Pure functions, no server."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachelayer.proxy.prefix.placement import hoist_body
from cachelayer.proxy.prefix.rules import (
    BILLING_LINE,
    CONTEXT_SIZE,
    MODEL_ID_SUFFIX,
    RuleSet,
    apply_rules,
    compile_rules,
    stabilize_body,
)
from cachelayer.proxy.prefix.stabilize import prefix_ids
from cachelayer.proxy.store.keys import response_key

RULES = compile_rules([])
# Shapes as Claude Code 2.1.197 sends them (after translation to the OpenAI body).
ENV_NEW = ("- You are powered by the model named Opus 4.8 (1M context). "
           "The exact model ID is claude-opus-4-8[1m].\n")
ENV_RESUMED = ("- You are powered by the model named Opus 4.8. "
               "The exact model ID is claude-opus-4-8.\n")
TRAILER_NEW = "End commit messages with:\nCo-Authored-By: Claude Opus 4.8 (1M context) <x@y>\n"
TRAILER_RESUMED = "End commit messages with:\nCo-Authored-By: Claude Opus 4.8 <x@y>\n"
PROSE = "Never guess model ids (`claude-*`, `us.anthropic.*`, `[1m]`) for the user.\n"


def body(billing: str, env: str, trailer: str, user: str = "Say hello.") -> dict[str, Any]:
    """A Claude Code request: billing line, system prompt, Bash tool with its trailer."""
    return {
        "model": "local",
        "messages": [
            {"role": "system", "content": billing + "\n\nYou are a Claude agent.\n\n"
             + PROSE + env},
            {"role": "user", "content": user},
            {"role": "system", "content": "Available agent types for the Agent tool: ..."},
        ],
        "tools": [
            {"type": "function", "function": {"name": "Agent", "description": "Run agents.",
                                              "parameters": {"type": "object"}}},
            {"type": "function", "function": {"name": "Bash", "description": "Run bash.\n"
                                              + trailer, "parameters": {
                                                  "type": "object", "properties": {
                                                      "command": {"type": "string",
                                                                  "description": trailer}}}}},
        ],
    }


def stable(raw: dict[str, Any]) -> dict[str, Any]:
    out, _ = stabilize_body(raw, RULES)
    return hoist_body(out)[0]


def key(raw: dict[str, Any]) -> str:
    return response_key("chat", raw, tenant="t", upstream="u")


billing_lines = st.builds(
    "x-anthropic-billing-header: cc_version=2.1.{}.{}; cc_entrypoint={};{}".format,
    st.integers(0, 999), st.from_regex(r"[0-9a-f]{3}", fullmatch=True),
    st.sampled_from(["cli", "sdk-cli"]), st.sampled_from(["", " cc_is_subagent=true;"]),
)


@given(billing_lines, billing_lines, st.booleans(), st.booleans())
def test_new_and_resumed_sessions_with_any_billing_line_share_one_prefix_and_key(
    a: str, b: str, a_new: bool, b_new: bool
) -> None:
    first = stable(body(a, *((ENV_NEW, TRAILER_NEW) if a_new else (ENV_RESUMED,
                                                                    TRAILER_RESUMED))))
    second = stable(body(b, *((ENV_NEW, TRAILER_NEW) if b_new else (ENV_RESUMED,
                                                                     TRAILER_RESUMED))))
    assert prefix_ids(first) == prefix_ids(second)
    assert key(first) == key(second)
    assert first == second  # byte for byte what the backend receives


def test_each_rule_is_named_and_counted_where_it_fired() -> None:
    raw = body("x-anthropic-billing-header: cc_version=2.1.197.1c0;", ENV_NEW, TRAILER_NEW)
    _, done = stabilize_body(raw, RULES)
    fired = sorted(d.rule for d in done)
    # billing line; context size in the env line, the tool description, the parameter's
    # description; the id suffix once.
    assert fired == sorted([BILLING_LINE, CONTEXT_SIZE, CONTEXT_SIZE, CONTEXT_SIZE,
                            MODEL_ID_SUFFIX])
    assert {d.before for d in done if d.rule == MODEL_ID_SUFFIX} == {"claude-opus-4-8[1m]"}


def test_resumed_text_is_left_exactly_as_it_was() -> None:
    text = "x" + ENV_RESUMED + TRAILER_RESUMED + PROSE
    assert apply_rules(text, RULES) == (text, [])


@pytest.mark.parametrize("text", [
    PROSE,                                           # a bare [1m] is not a model id
    "Use a model with a large window (1M context) when you can.",  # no version before it
    "The id claude-opus-4-8[2x] is not a context size.",
])
def test_prose_that_only_looks_like_a_variant_is_not_rewritten(text: str) -> None:
    assert apply_rules(text, RULES) == (text, [])


@pytest.mark.parametrize("change", [
    lambda b: b["messages"][0].update(content=b["messages"][0]["content"].replace(
        "Opus 4.8", "Sonnet 4.5")),                         # another model named
    lambda b: b["messages"][0].update(content=b["messages"][0]["content"].replace(
        "claude-opus-4-8", "claude-opus-4-7")),             # another model id
    lambda b: b["tools"][1]["function"].update(description="Run zsh."),  # another tool text
    lambda b: b["messages"][2].update(content="Other agent types."),     # moved block text
    lambda b: b["messages"][1].update(content="Say goodbye."),           # the prompt
])
def test_each_semantic_change_gives_another_key(change: Any) -> None:
    base = body("x-anthropic-billing-header: cc_version=1;", ENV_NEW, TRAILER_NEW)
    changed = copy.deepcopy(base)
    change(changed)
    assert key(stable(base)) != key(stable(changed))


def test_user_and_assistant_turns_are_never_rewritten() -> None:
    raw = body("", ENV_NEW, TRAILER_NEW, user="Opus 4.8 (1M context) is claude-opus-4-8[1m]")
    raw["messages"].append({"role": "assistant", "content": "Opus 4.8 (1M context)"})
    out, _ = stabilize_body(raw, RULES)
    assert out["messages"][1:] == raw["messages"][1:]


def test_custom_pattern_is_one_more_named_rule() -> None:
    rules = compile_rules([r"Today's date is \d{4}-\d{2}-\d{2}\.\n?"])
    raw = body("", ENV_RESUMED, TRAILER_RESUMED)
    raw["messages"][0]["content"] += "Today's date is 2026-11-23.\n"
    out, done = stabilize_body(raw, rules)
    assert [d.rule for d in done] == [rules[-1].name]
    assert rules[-1].name.startswith("custom:")
    assert "Today's date" not in out["messages"][0]["content"]


@given(billing_lines, st.booleans(), st.sampled_from([[], [r"Today is \d+\.\n?"]]))
def test_the_memoised_rule_set_gives_what_the_pure_rules_give(
    billing: str, new: bool, extra: list[str]
) -> None:
    rules = compile_rules(extra)
    raw = body(billing, *((ENV_NEW, TRAILER_NEW) if new else (ENV_RESUMED, TRAILER_RESUMED)))
    raw["messages"][0]["content"] += "Today is 23.\n"
    rule_set = RuleSet(rules)
    for _ in range(2):  # the second time from the memos
        out, done, tools_hash = rule_set.stabilize(raw)
        expected, expected_done = stabilize_body(raw, rules)
        assert out == expected
        assert sorted(d.rule for d in done) == sorted(d.rule for d in expected_done)
        assert tools_hash == prefix_ids(expected).tools_hash
