"""Prefix ids: the billing line and other volatile segments never change a prefix."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cachelayer.proxy.prefix.rules import apply_rules, compile_rules
from cachelayer.proxy.prefix.rules import stabilize_body as stabilize
from cachelayer.proxy.prefix.stabilize import prefix_ids, system_text
from cachelayer.proxy.store.keys import response_key

RULES = compile_rules([])
SYSTEM = "You are Claude Code, Anthropic's official CLI for Claude."
TOOLS = [{"type": "function", "function": {"name": f"t{i}", "parameters": {}}} for i in range(12)]


def claude_body(billing: str, user: str = "hi") -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "messages": [
            {"role": "system", "content": billing + "\n\n" + SYSTEM},
            {"role": "user", "content": user},
        ],
        "tools": TOOLS,
    }


billing_lines = st.builds(
    "x-anthropic-billing-header: cc_version={}; cc_entrypoint={}; cch={};".format,
    st.from_regex(r"[0-9]\.[0-9]\.[0-9]{1,3}(\.[0-9a-f]{3})?", fullmatch=True),
    st.sampled_from(["cli", "sdk-ts", "vscode"]),
    st.from_regex(r"[0-9a-f]{5,16}", fullmatch=True),
)


@given(billing_lines, billing_lines)
def test_billing_line_variants_map_to_one_prefix_and_one_key(a: str, b: str) -> None:
    body_a, removed_a = stabilize(claude_body(a), RULES)
    body_b, _ = stabilize(claude_body(b), RULES)
    assert removed_a and removed_a[0].before.startswith("x-anthropic-billing-header:")
    assert prefix_ids(body_a) == prefix_ids(body_b)
    assert body_a["messages"][0]["content"] == SYSTEM
    assert response_key("chat", body_a, tenant="t", upstream="u") == response_key(
        "chat", body_b, tenant="t", upstream="u")


def test_billing_line_in_a_text_block_list_is_stripped_too() -> None:
    body = claude_body("")
    body["messages"][0]["content"] = [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.3; cch=ab12;"},
        {"type": "text", "text": SYSTEM},
    ]
    stable, removed = stabilize(body, RULES)
    assert len(removed) == 1
    assert system_text(stable["messages"]) == SYSTEM


def test_text_elsewhere_mentioning_the_header_is_left_alone() -> None:
    text = "Explain what x-anthropic-billing-header: means"
    assert apply_rules(text, RULES) == (text, [])


def test_user_messages_are_never_stripped() -> None:
    body = claude_body("x-anthropic-billing-header: cch=1;",
                       user="x-anthropic-billing-header: cch=2;\nkeep me")
    stable, _ = stabilize(body, RULES)
    assert stable["messages"][1]["content"].startswith("x-anthropic-billing-header")


def test_extra_volatile_patterns_are_applied() -> None:
    rules = compile_rules([r"Today's date is \d{4}-\d{2}-\d{2}\.\n?"])
    a = claude_body("", user="q")
    a["messages"][0]["content"] = "Today's date is 2026-11-21.\n" + SYSTEM
    b = copy.deepcopy(a)
    b["messages"][0]["content"] = "Today's date is 2026-11-22.\n" + SYSTEM
    assert prefix_ids(stabilize(a, rules)[0]) == prefix_ids(stabilize(b, rules)[0])
    assert prefix_ids(stabilize(a, RULES)[0]) != prefix_ids(stabilize(b, RULES)[0])


def test_a_changed_tool_changes_tools_hash_only() -> None:
    base = prefix_ids(claude_body(""))
    changed = claude_body("")
    changed["tools"] = [*TOOLS[:-1], {"type": "function", "function": {"name": "new"}}]
    ids = prefix_ids(changed)
    assert ids.prefix_id != base.prefix_id
    assert ids.tools_hash != base.tools_hash and ids.system_hash == base.system_hash
    assert ids.tools == 12


def test_the_conversation_does_not_change_the_prefix() -> None:
    assert prefix_ids(claude_body("", "one")) == prefix_ids(claude_body("", "two"))


def test_tool_key_order_does_not_change_the_prefix() -> None:
    reordered = claude_body("")
    reordered["tools"] = [{"function": t["function"], "type": t["type"]} for t in TOOLS]
    assert prefix_ids(reordered) == prefix_ids(claude_body(""))


def test_system_text_stops_at_the_first_non_system_message() -> None:
    messages = [{"role": "system", "content": "a"}, {"role": "user", "content": "b"},
                {"role": "system", "content": "env details"}]
    assert system_text(messages) == "a"
