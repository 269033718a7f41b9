"""The message rules of each API, enforced at the edge: every violation is a 400 in the
client's API shape naming the field at fault, nothing is forwarded or stored, and the
proxy keeps serving; conversations that follow the rules still go through."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from cachelayer.proxy.app import make_app
from cachelayer.proxy.store.layer import STORE
from tests.hardening.helpers import CountingUpstream, error_message, hardened_settings
from tests.support import http
from tests.support.servers import RunningServer, serve_app
from tests.support.store_writes import wait_for_writes

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "ls", "arguments": '{"path": "."}'}}
ASKED: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [CALL]}
TOOL_USE: dict[str, Any] = {"role": "assistant", "content": [
    {"type": "tool_use", "id": "toolu_1", "name": "ls", "input": {"path": "."}}]}


def result(tool_use_id: str) -> dict[str, Any]:
    """An Anthropic user turn carrying one tool_result."""
    return {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": tool_use_id, "content": "a.txt"}]}


def oa(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"model": "m", "messages": list(messages)}


def an(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"model": "claude-x", "max_tokens": 16, "messages": list(messages)}


USER = {"role": "user", "content": "list the files"}


@dataclass(frozen=True)
class Rule:
    """One violation and the field its 400 must name."""

    name: str
    path: str
    body: dict[str, Any]
    field: str


RULES = [
    Rule("user-without-content", CHAT, oa({"role": "user"}), "messages[0].content"),
    Rule("user-null-content", CHAT, oa({"role": "user", "content": None}),
         "messages[0].content"),
    Rule("user-empty-parts", CHAT, oa({"role": "user", "content": []}), "messages[0].content"),
    Rule("system-without-content", CHAT, oa({"role": "system"}, USER), "messages[0].content"),
    Rule("developer-without-content", CHAT, oa({"role": "developer"}, USER),
         "messages[0].content"),
    Rule("assistant-without-content-or-calls", CHAT, oa(USER, {"role": "assistant"}, USER),
         "messages[1]"),
    Rule("assistant-empty-calls-no-content", CHAT,
         oa(USER, {"role": "assistant", "content": None, "tool_calls": []}, USER),
         "messages[1]"),
    Rule("tool-call-without-id", CHAT,
         oa(USER, {"role": "assistant", "tool_calls": [{**CALL, "id": None}]}),
         "messages[1].tool_calls[0].id"),
    Rule("tool-call-arguments-object", CHAT,
         oa(USER, {"role": "assistant", "tool_calls": [
             {**CALL, "function": {"name": "ls", "arguments": {"path": "."}}}]}),
         "messages[1].tool_calls[0].function.arguments"),
    Rule("tool-without-tool-call-id", CHAT,
         oa(USER, ASKED, {"role": "tool", "content": "a.txt"}), "messages[2].tool_call_id"),
    Rule("tool-without-content", CHAT,
         oa(USER, ASKED, {"role": "tool", "tool_call_id": "call_1"}), "messages[2].content"),
    Rule("tool-answering-no-call", CHAT,
         oa(USER, ASKED, {"role": "tool", "tool_call_id": "call_9", "content": "x"}),
         "messages[2].tool_call_id"),
    Rule("tool-before-any-call", CHAT,
         oa(USER, {"role": "tool", "tool_call_id": "call_1", "content": "x"}),
         "messages[1].tool_call_id"),
    Rule("an-user-without-content", MESSAGES, an({"role": "user"}), "messages[0].content"),
    Rule("an-system-turn-empty", MESSAGES, an(USER, {"role": "system", "content": []}),
         "messages[1].content"),
    Rule("an-assistant-empty", MESSAGES, an(USER, {"role": "assistant", "content": []}, USER),
         "messages[1].content"),
    Rule("an-tool-result-wrong-id", MESSAGES, an(USER, TOOL_USE, result("toolu_9")),
         "messages[2].content[0].tool_use_id"),
    Rule("an-tool-result-not-right-after-its-tool-use", MESSAGES,
         an(USER, TOOL_USE, result("toolu_1"), {"role": "assistant", "content": "ok"},
            result("toolu_1")),
         "messages[4].content[0].tool_use_id"),
    Rule("an-tool-result-without-tool-use", MESSAGES, an(result("toolu_1")),
         "messages[0].content[0].tool_use_id"),
]
# Conversations that follow the rules: they must still be answered.
VALID = [
    ("oa-tool-loop", CHAT, oa({"role": "system", "content": "S"}, USER, ASKED,
                              {"role": "tool", "tool_call_id": "call_1", "content": ""})),
    ("oa-empty-answer-text", CHAT, oa(USER, {"role": "assistant", "content": ""}, USER)),
    ("an-tool-loop-with-a-system-turn", MESSAGES,
     an(USER, {"role": "system", "content": "agent list"}, TOOL_USE, result("toolu_1"))),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer,
                                                                      CountingUpstream]]:
    """One proxy in front of a counting upstream for every case."""
    fake = CountingUpstream()
    with serve_app(fake.make_app) as upstream:
        settings = hardened_settings(tmp_path_factory.mktemp("rules"), upstream=upstream.url)
        with serve_app(lambda: make_app(settings)) as proxy:
            yield proxy, fake


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_violation_is_a_400_naming_the_field_with_nothing_stored(
    env: tuple[RunningServer, CountingUpstream], rule: Rule
) -> None:
    proxy, fake = env
    store = proxy.app[STORE]
    entries, posts = len(store), fake.posts()
    answer = http.post(proxy.url + rule.path, json=rule.body, timeout=30)
    assert answer.status == 400, answer.content[:300]
    api = "anthropic" if rule.path == MESSAGES else "openai"
    message = error_message(answer, api)
    assert re.match(re.escape(rule.field) + "[: ]", message), message
    if api == "openai":
        assert answer.json()["error"]["param"] == rule.field
    else:
        assert answer.json()["error"]["type"] == "invalid_request_error"
    wait_for_writes(proxy)
    assert len(store) == entries and fake.posts() == posts
    assert http.get(proxy.url + "/health", timeout=10).status == 200


@pytest.mark.parametrize(("name", "path", "body"), VALID, ids=[v[0] for v in VALID])
def test_conversations_following_the_rules_are_answered(
    env: tuple[RunningServer, CountingUpstream], name: str, path: str, body: dict[str, Any]
) -> None:
    proxy, fake = env
    completions = fake.completions()
    answer = http.post(proxy.url + path, json=body, timeout=30)
    assert answer.status == 200, (name, answer.content[:300])
    assert fake.completions() == completions + 1
