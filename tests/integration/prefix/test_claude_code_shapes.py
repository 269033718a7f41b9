"""Layer 1 on Claude Code 2.1.197's request shapes, through the real anthropic SDK, the real
proxy and a scripted upstream that records what it is sent."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from cachelayer.proxy.prefix.ledger import LEDGER
from tests.integration.conftest import ProxyFactory
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import RunningServer
from tests.support.store_writes import wait_for_writes

Upstream = tuple[FakeUpstream, RunningServer]
MAIN = "You are a Claude agent.\n - You are powered by the model named Opus 4.8{ctx}. " \
       "The exact model ID is claude-opus-4-8{id}.\n"
AGENTS = "Available agent types for the Agent tool:\n- claude: catch-all."
SKILLS = "The following skills are available for use with the Skill tool: deep-research."


def billing(n: int) -> str:
    return f"x-anthropic-billing-header: cc_version=2.1.197.{n:03x}; cc_entrypoint=sdk-cli;"


def tools(new_session: bool) -> list[dict[str, Any]]:
    trailer = "Claude Opus 4.8 (1M context)" if new_session else "Claude Opus 4.8"
    return [{"name": "Bash", "description": f"Run bash.\nCo-Authored-By: {trailer} <x@y>",
             "input_schema": {"type": "object"}}]


def claude_code_turn(client: anthropic.Anthropic, n: int, *, new_session: bool,
                     messages: list[dict[str, Any]]) -> None:
    """One request as Claude Code's default model sends it (the shape, not its text)."""
    ctx, mid = (" (1M context)", "[1m]") if new_session else ("", "")
    client.messages.create(
        model="claude-opus-4-8", max_tokens=4096,
        system=[{"type": "text", "text": billing(n)},
                {"type": "text", "text": MAIN.format(ctx=ctx, id=mid),
                 "cache_control": {"type": "ephemeral"}}],
        tools=tools(new_session),  # type: ignore[arg-type]
        messages=messages,  # type: ignore[arg-type]
        extra_headers={"X-Claude-Code-Session-Id": f"session-{n}"},
    )


def first_turn(prompt: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "<system-reminder>ctx"},
                                         {"type": "text", "text": prompt}]},
            {"role": "system", "content": AGENTS + "\n\n" + SKILLS}]


def test_every_instruction_reaches_the_model_only_its_place_changes(
    client: anthropic.Anthropic, upstream: Upstream
) -> None:
    claude_code_turn(client, 1, new_session=True, messages=first_turn("Say hello."))
    sent = upstream[0].calls[0]["messages"]
    assert [m["role"] for m in sent] == ["system", "user"]
    leading = sent[0]["content"]
    # the main prompt, then the moved block: every instruction, in the order it came
    assert leading.index("You are a Claude agent.") < leading.index(AGENTS)
    assert leading.endswith(AGENTS + "\n\n" + SKILLS)
    assert "x-anthropic-billing-header" not in leading
    assert "(1M context)" not in leading and "[1m]" not in leading
    assert sent[1]["content"] == "<system-reminder>ctx\nSay hello."
    assert "(1M context)" not in upstream[0].calls[0]["tools"][0]["function"]["description"]


def test_new_resumed_and_next_sessions_send_one_prefix(
    client: anthropic.Anthropic, upstream: Upstream, proxy: RunningServer
) -> None:
    claude_code_turn(client, 1, new_session=True, messages=first_turn("Say hello."))
    resumed = [*first_turn("Say hello."), {"role": "assistant", "content": "Hi."},
               {"role": "user", "content": "Say more."}]
    claude_code_turn(client, 2, new_session=False, messages=resumed)
    claude_code_turn(client, 3, new_session=True, messages=first_turn("Another session."))
    calls = upstream[0].calls
    prefixes = {(str(c["tools"]), c["messages"][0]["content"]) for c in calls}
    assert len(prefixes) == 1
    # the resumed conversation is the first one extended: same bytes up to its new turns
    assert calls[1]["messages"][:2] == calls[0]["messages"]
    wait_for_writes(proxy)
    totals = proxy.call(lambda: proxy.app[LEDGER].totals())
    assert isinstance(totals, dict)
    assert totals["prefix.system_moved"] == 3 and totals["prefix.reordered_requests"] == 3
    assert totals["prefix.rewrites.billing-line"] == 3
    # " (1M context)" in the system prompt and the tool, "[1m]" in the id: two new sessions
    assert totals["prefix.rewrites.context-size"] == 4
    assert totals["prefix.rewrites.model-id-suffix"] == 2


def test_keep_system_order_leaves_the_system_turn_where_it_was(
    start_proxy: ProxyFactory, upstream: Upstream
) -> None:
    with start_proxy(upstream=upstream[1].url, keep_system_order=True) as proxy:
        client = anthropic.Anthropic(base_url=proxy.url, api_key="k", max_retries=0)
        claude_code_turn(client, 1, new_session=True, messages=first_turn("Say hello."))
    sent = upstream[0].calls[0]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "system"]
    assert sent[2]["content"] == AGENTS + "\n\n" + SKILLS


@pytest.mark.parametrize("route", ["/v1/chat/completions"])
def test_the_openai_route_is_never_reordered(
    proxy: RunningServer, upstream: Upstream, route: str
) -> None:
    from tests.support import http

    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "u"},
                {"role": "system", "content": "A"}]
    answer = http.post(proxy.url + route, json={"model": "m", "messages": messages})
    assert answer.status == 200
    assert upstream[0].calls[0]["messages"] == messages


def test_a_subagent_is_a_client_of_its_own_within_the_session(
    client: anthropic.Anthropic, proxy: RunningServer
) -> None:
    for billing_line, system in ((billing(1), "Main agent prompt."),
                                 (billing(2) + " cc_is_subagent=true;", "Sub-agent prompt.")):
        client.messages.create(
            model="claude-opus-4-8", max_tokens=64,
            system=[{"type": "text", "text": billing_line}, {"type": "text", "text": system}],
            messages=[{"role": "user", "content": "Go."}],
            extra_headers={"X-Claude-Code-Session-Id": "one-session"},
        )
    wait_for_writes(proxy)
    totals = proxy.call(lambda: proxy.app[LEDGER].totals())
    assert isinstance(totals, dict)
    # both first requests of their prefix, neither "system changed" from the other
    assert totals["prefix.miss.new_session"] == 2
    assert "prefix.miss.system_changed" not in totals
