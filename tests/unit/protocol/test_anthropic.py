"""Anthropic Messages requests -> neutral OpenAI chat bodies: translation and validation."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from cachelayer.config import Settings
from cachelayer.errors import InvalidRequest, NotFound, UpstreamStatusError
from cachelayer.protocol.anthropic import AnthropicCodec, estimate_tokens, upstream_model
from cachelayer.protocol.chat import ChatRequest
from cachelayer.proxy.store.keys import response_key

SETTINGS = Settings(max_tokens_cap=4096)


def _parse(body: dict[str, Any], settings: Settings = SETTINGS) -> ChatRequest:
    return AnthropicCodec(settings).parse_request("chat", orjson.dumps(body))


def _body(**extra: Any) -> dict[str, Any]:
    return {"model": "claude-x", "max_tokens": 100,
            "messages": [{"role": "user", "content": "hi"}], **extra}


def _tool_turns() -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "list files"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Looking."},
            {"type": "tool_use", "id": "toolu_1", "name": "ls", "input": {"z": 1, "a": "."}},
        ]},
    ]


def test_minimal_request_becomes_an_openai_chat_body() -> None:
    chat = _parse(_body())
    assert chat.kind == "chat" and chat.client_api == "anthropic"
    assert chat.client_model == "claude-x" and chat.stream is False
    assert chat.body == {"model": "claude-x", "max_tokens": 100,
                         "messages": [{"role": "user", "content": "hi"}]}


def test_stream_flag_sets_stream_and_stays_out_of_the_body() -> None:
    chat = _parse(_body(stream=True))
    assert chat.stream is True and chat.include_usage is True
    assert "stream" not in chat.body


def test_system_string_becomes_a_leading_system_message() -> None:
    chat = _parse(_body(system="Be brief."))
    assert chat.body["messages"][0] == {"role": "system", "content": "Be brief."}


def test_system_blocks_join_with_blank_lines_and_lose_cache_control() -> None:
    blocks = [{"type": "text", "text": "one"},
              {"type": "text", "text": "two", "cache_control": {"type": "ephemeral"}}]
    chat = _parse(_body(system=blocks))
    assert chat.body["messages"][0] == {"role": "system", "content": "one\n\ntwo"}


def test_empty_system_adds_no_message() -> None:
    assert _parse(_body(system="")).body == _parse(_body()).body


def test_system_role_inside_messages_stays_in_place() -> None:
    messages = [{"role": "user", "content": "hi"},
                {"role": "system", "content": [{"type": "text", "text": "env: linux"}]},
                {"role": "user", "content": "go"}]
    chat = _parse(_body(messages=messages))
    assert [m["role"] for m in chat.body["messages"]] == ["user", "system", "user"]
    assert chat.body["messages"][1]["content"] == "env: linux"


def test_text_only_block_list_equals_the_plain_string() -> None:
    blocks = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    chat = _parse(_body(messages=[{"role": "user", "content": blocks}]))
    assert chat.body["messages"] == [{"role": "user", "content": "a\nb"}]
    same = _parse(_body(messages=[{"role": "user", "content": "a\nb"}]))
    assert chat.body == same.body


def test_base64_image_becomes_a_data_url_part() -> None:
    content = [{"type": "text", "text": "what is this?"},
               {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                            "data": "AAAA"}}]
    chat = _parse(_body(messages=[{"role": "user", "content": content}]))
    assert chat.body["messages"][0]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]


def test_tool_use_becomes_tool_calls_with_sorted_json_arguments() -> None:
    chat = _parse(_body(messages=_tool_turns()))
    assistant = chat.body["messages"][1]
    assert assistant == {"role": "assistant", "content": "Looking.", "tool_calls": [
        {"id": "toolu_1", "type": "function",
         "function": {"name": "ls", "arguments": '{"a":".","z":1}'}}]}


def test_tool_use_without_text_has_null_content() -> None:
    turns = [{"role": "user", "content": "x"}, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]
    assert _parse(_body(messages=turns)).body["messages"][1]["content"] is None


def test_tool_results_become_tool_messages_before_the_users_text() -> None:
    turns = [*_tool_turns(), {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1",
         "content": [{"type": "text", "text": "a.txt"}, {"type": "text", "text": "b.txt"}]},
        {"type": "text", "text": "now summarise"},
    ]}]
    messages = _parse(_body(messages=turns)).body["messages"]
    assert messages[2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "a.txt\nb.txt"},
        {"role": "user", "content": "now summarise"},
    ]


def test_several_tool_results_keep_their_order() -> None:
    turns = [{"role": "user", "content": "x"}, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "a", "name": "f", "input": {}},
        {"type": "tool_use", "id": "b", "name": "f", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "b", "content": "B"},
            {"type": "tool_result", "tool_use_id": "a", "content": "A"}]}]
    messages = _parse(_body(messages=turns)).body["messages"]
    assert [(m["role"], m.get("tool_call_id")) for m in messages[2:]] == [
        ("tool", "b"), ("tool", "a")]


def test_error_tool_result_is_marked_in_its_content() -> None:
    turns = [*_tool_turns(), {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "no such dir",
         "is_error": True}]}]
    assert _parse(_body(messages=turns)).body["messages"][2]["content"] == "Error: no such dir"


def test_image_in_a_tool_result_follows_in_a_user_message() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                         "data": "BBBB"}}
    turns = [*_tool_turns(), {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1",
         "content": [{"type": "text", "text": "shot"}, image]}]}]
    messages = _parse(_body(messages=turns)).body["messages"]
    assert messages[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "shot"}
    assert messages[3]["content"][0]["image_url"]["url"] == "data:image/jpeg;base64,BBBB"


def test_thinking_blocks_in_history_are_dropped() -> None:
    turns = [{"role": "user", "content": "x"}, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "text", "text": "y"}]}, {"role": "user", "content": "z"}]
    assert _parse(_body(messages=turns)).body["messages"][1] == {"role": "assistant",
                                                                 "content": "y"}


def test_tools_become_openai_functions() -> None:
    tools = [{"name": "ls", "description": "list", "input_schema": {"type": "object"},
              "cache_control": {"type": "ephemeral"}},
             {"name": "pwd", "input_schema": {"type": "object"}}]
    assert _parse(_body(tools=tools)).body["tools"] == [
        {"type": "function", "function": {"name": "ls", "description": "list",
                                          "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "pwd", "parameters": {"type": "object"}}},
    ]


def test_server_tools_are_dropped() -> None:
    tools = [{"type": "web_search_20250305", "name": "web_search"}]
    assert "tools" not in _parse(_body(tools=tools)).body


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "ls"}, {"type": "function", "function": {"name": "ls"}}),
    ],
)
def test_each_anthropic_tool_choice_maps_to_its_openai_tool_choice(
    choice: dict[str, Any], expected: Any
) -> None:
    tools = [{"name": "ls", "input_schema": {"type": "object"}}]
    body = _parse(_body(tools=tools, tool_choice=choice)).body
    assert body["tool_choice"] == expected
    assert "parallel_tool_calls" not in body


def test_disable_parallel_tool_use_turns_parallel_calls_off() -> None:
    tools = [{"name": "ls", "input_schema": {"type": "object"}}]
    choice = {"type": "any", "disable_parallel_tool_use": True}
    assert _parse(_body(tools=tools, tool_choice=choice)).body["parallel_tool_calls"] is False


def test_tool_choice_without_tools_is_dropped() -> None:
    assert "tool_choice" not in _parse(_body(tool_choice={"type": "auto"})).body


def test_sampling_and_stop_sequences_carry_over() -> None:
    body = _parse(_body(temperature=0, top_p=0.9, top_k=40, stop_sequences=["END"])).body
    assert (body["temperature"], body["top_p"], body["top_k"], body["stop"]) == (
        0, 0.9, 40, ["END"])


def test_max_tokens_over_the_limit_is_capped_at_4096() -> None:
    assert _parse(_body(max_tokens=128000)).body["max_tokens"] == 4096


def test_model_map_renames_upstream_but_client_model_is_kept() -> None:
    settings = replace(SETTINGS, model_map={"claude-x": "local/qwen"})
    chat = _parse(_body(), settings)
    assert chat.body["model"] == "local/qwen" and chat.client_model == "claude-x"


def test_unmapped_model_uses_a_default_model_when_settings_have_one() -> None:
    with_default = SimpleNamespace(model_map={}, default_model="local/default")
    assert upstream_model(with_default, "claude-x") == "local/default"  # type: ignore[arg-type]
    assert upstream_model(SETTINGS, "claude-x") == "claude-x"


def test_client_only_fields_do_not_change_the_neutral_body_or_key() -> None:
    plain = _parse(_body(system=[{"type": "text", "text": "s"}]))
    decorated = _parse(_body(
        system=[{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
        thinking={"type": "enabled", "budget_tokens": 1000},
        context_management={"edits": []}, output_config={"effort": "high"},
        metadata={"user_id": "u"}, service_tier="auto", container="c", mcp_servers=[],
        stream=True,
    ))
    assert decorated.body == plain.body
    key = lambda c: response_key("chat", c.body, tenant="t", upstream="u")  # noqa: E731
    assert key(decorated) == key(plain)


def test_dropped_fields_are_counted_on_the_codec() -> None:
    codec = AnthropicCodec(SETTINGS)
    codec.parse_request("chat", orjson.dumps(_body(thinking={"type": "enabled"},
                                                    metadata={})))
    assert codec.dropped["field:thinking"] == 1 and codec.dropped["field:metadata"] == 1


def test_count_request_does_not_need_max_tokens() -> None:
    body = AnthropicCodec(SETTINGS).parse_count_request(
        orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
    assert "max_tokens" not in body and body["messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (orjson.dumps({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
         "'model'"),
        (orjson.dumps({"model": "m", "max_tokens": 5}), "'messages'"),
        (orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
         "'max_tokens'"),
        (orjson.dumps(_body(max_tokens=0)), "'max_tokens'"),
        (orjson.dumps(_body(max_tokens=-3)), "'max_tokens'"),
        (orjson.dumps(_body(max_tokens="9")), "'max_tokens'"),
        (orjson.dumps(_body(model=7)), "'model'"),
        (orjson.dumps(_body(stream="yes")), "'stream'"),
        (orjson.dumps(_body(messages=[{"role": "robot", "content": "x"}])), "role"),
        (orjson.dumps(_body(messages=["hi"])), "messages[0]"),
        (orjson.dumps(_body(messages=[{"role": "user", "content": 5}])), "content"),
        (orjson.dumps(_body(messages=[{"role": "user", "content": []}])), "empty"),
        (orjson.dumps(_body(messages=[{"role": "user", "content": [{"type": "video"}]}])),
         "'video'"),
        (orjson.dumps(_body(messages=[{"role": "user", "content": [{"text": "x"}]}])),
         "'type'"),
        (orjson.dumps(_body(messages=[{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "nope", "content": "x"}]}])), "nope"),
        (orjson.dumps(_body(messages=[{"role": "user", "content": [
            {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}])), "'tool_use'"),
        (orjson.dumps(_body(messages=[{"role": "user", "content": "x"}, {
            "role": "assistant", "content": [
                {"type": "tool_use", "id": "t", "name": "f", "input": [1]}]}])), "input"),
        (orjson.dumps(_body(messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "file", "file_id": "f"}}]}])), "source"),
        (orjson.dumps(_body(system=[{"type": "image"}])), "text block"),
        (orjson.dumps(_body(tools=[{"name": "x"}])), "input_schema"),
        (orjson.dumps(_body(tools={"name": "x"})), "'tools'"),
        (orjson.dumps(_body(tools=[{"name": "x", "input_schema": {}}],
                            tool_choice={"type": "tool", "name": "y"})), "'y'"),
        (orjson.dumps(_body(tool_choice={"type": "sometimes"})), "tool_choice"),
        (orjson.dumps(_body(temperature="hot")), "'temperature'"),
        (orjson.dumps(_body(top_k=1.5)), "'top_k'"),
        (orjson.dumps(_body(stop_sequences="END")), "'stop_sequences'"),
    ],
)
def test_malformed_requests_are_rejected_with_a_clear_message(raw: bytes, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        AnthropicCodec(SETTINGS).parse_request("chat", raw)
    assert fragment in caught.value.message


def test_text_completions_are_not_a_messages_kind() -> None:
    with pytest.raises(InvalidRequest):
        AnthropicCodec(SETTINGS).parse_request("text", orjson.dumps(_body()))


@pytest.mark.parametrize(
    ("error", "kind", "status"),
    [
        (InvalidRequest("bad"), "invalid_request_error", 400),
        (NotFound("gone"), "not_found_error", 404),
        (UpstreamStatusError("boom", status=500), "api_error", 500),
        (UpstreamStatusError("busy", status=503), "overloaded_error", 503),
    ],
)
def test_errors_render_in_anthropic_shape(error: Any, kind: str, status: int) -> None:
    body = orjson.loads(AnthropicCodec(SETTINGS).render_error(error))
    assert body == {"type": "error", "error": {"type": kind, "message": error.message}}
    assert error.status == status


def test_estimate_is_a_quarter_of_the_canonical_json_bytes() -> None:
    body = {"messages": [{"role": "user", "content": "x" * 400}], "model": "ignored"}
    size = len(orjson.dumps({"messages": body["messages"]}, option=orjson.OPT_SORT_KEYS))
    assert estimate_tokens(body) == (size + 3) // 4
    assert estimate_tokens({"messages": [], "tools": [{"a": 1}]}) > estimate_tokens(
        {"messages": []})
