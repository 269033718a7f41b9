"""Responses requests -> neutral chat bodies, on hand-made bodies and on what Codex
0.171 really sent (tests/fixtures/codex/, captured through a scripted upstream)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from cachelayer.config import Settings
from cachelayer.errors import InvalidRequest
from cachelayer.protocol.responses import translate, with_history
from cachelayer.protocol.responses_codec import ResponsesCodec

CAPTURE = Path(__file__).resolve().parents[2] / "fixtures" / "codex" / "codex-0.171-exec.jsonl"


def codex_requests() -> list[dict[str, Any]]:
    """The three /v1/responses bodies Codex sent: a turn, its tool follow-up, a resume."""
    return [json.loads(line)["body"] for line in CAPTURE.read_text().splitlines()]


def codec() -> ResponsesCodec:
    return ResponsesCodec(Settings(upstream="http://127.0.0.1:9"))


def test_codex_turn_becomes_a_chat_body_with_its_function_tools_only() -> None:
    c = codec()
    first = c.parse_request("chat", json.dumps(codex_requests()[0]).encode())
    body = first.body
    assert [m["role"] for m in body["messages"]] == ["system", "system", "user", "user"]
    assert body["messages"][-1] == {"role": "user", "content": "please run the echo command"}
    names = [t["function"]["name"] for t in body["tools"]]
    assert "exec_command" in names and len(names) == 7
    # hosted and grouped tools Codex declares are dropped and counted, never sent on
    assert c.dropped["tool:web_search"] == 1 and c.dropped["tool:namespace"] == 1
    for field in ("store", "include", "prompt_cache_key", "client_metadata", "reasoning"):
        assert field not in body
    assert first.stream and first.client_api == "responses"
    assert first.extra is not None and first.extra["store"] is False
    assert first.extra["prompt_cache_key"] == codex_requests()[0]["prompt_cache_key"]


def test_codex_tool_follow_up_pairs_the_call_and_its_output() -> None:
    body = codec().parse_request("chat", json.dumps(codex_requests()[1]).encode()).body
    call, output = body["messages"][-2:]
    assert call["role"] == "assistant" and call["content"] is None
    assert call["tool_calls"] == [{"id": "call_1", "type": "function", "function": {
        "name": "exec_command", "arguments": json.dumps({"cmd": "echo marker-$((40+2))"})}}]
    assert output["role"] == "tool" and output["tool_call_id"] == "call_1"
    assert "marker-42" in output["content"]


def test_every_codex_turn_extends_the_previous_one() -> None:
    """Item ids change, the prompt must not: each turn's messages start with the last's."""
    bodies = [codec().parse_request("chat", json.dumps(b).encode()).body
              for b in codex_requests()]
    for before, after in itertools.pairwise(bodies):
        assert after["messages"][:len(before["messages"])] == before["messages"]
        assert after["tools"] == before["tools"]


def test_instructions_come_first_and_consecutive_calls_share_one_assistant_turn() -> None:
    body, dropped = translate({"model": "m", "instructions": "Be brief.", "input": [
        {"role": "user", "content": "go"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text",
                                                               "text": "calling"}]},
        {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "b", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "a", "output": "1"},
        {"type": "function_call_output", "call_id": "b", "output": [
            {"type": "input_text", "text": "2"}]},
        {"type": "reasoning", "id": "rs", "summary": []},
    ]}, "up")
    messages = with_history(body, "Be brief.", [])["messages"]
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[2]["content"] == "calling"
    assert [c["id"] for c in messages[2]["tool_calls"]] == ["a", "b"]
    assert messages[3:] == [{"role": "tool", "tool_call_id": "a", "content": "1"},
                            {"role": "tool", "tool_call_id": "b", "content": "2"}]
    assert dropped["item:reasoning"] == 1


def test_sampling_format_and_tool_choice_map_to_chat_fields() -> None:
    body, _ = translate({"model": "m", "input": "x", "max_output_tokens": 5,
                         "temperature": 0, "top_p": 0.5, "parallel_tool_calls": False,
                         "tools": [{"type": "function", "name": "f"}],
                         "tool_choice": {"type": "function", "name": "f"},
                         "text": {"format": {"type": "json_schema", "name": "s",
                                             "schema": {"type": "object"}}}}, "up")
    assert body["max_tokens"] == 5 and body["temperature"] == 0 and body["top_p"] == 0.5
    assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert body["parallel_tool_calls"] is False
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "s", "schema": {"type": "object"}}}


def test_a_chained_request_is_checked_once_its_history_is_known() -> None:
    new = {"model": "m", "previous_response_id": "resp_1",
           "input": [{"type": "function_call_output", "call_id": "a", "output": "1"}]}
    body, _ = translate(new, "up")  # the call may be in the stored conversation
    history = [{"role": "user", "content": "go"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "a", "type": "function",
                    "function": {"name": "f", "arguments": "{}"}}]}]
    assert with_history(body, None, history)["messages"][-1]["tool_call_id"] == "a"
    with pytest.raises(InvalidRequest):
        with_history(body, None, [{"role": "user", "content": "go"}])
