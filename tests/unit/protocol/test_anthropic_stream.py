"""Neutral results and stream events -> Anthropic messages and SSE events."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from cachelayer.errors import UpstreamProtocolError
from cachelayer.protocol.anthropic_stream import (
    AnthropicStream,
    message_id,
    render_message,
    stop_reason,
    usage_dict,
)
from cachelayer.protocol.chat import (
    ChatRequest,
    ChatResult,
    Choice,
    Finish,
    ResultBuilder,
    Start,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageReport,
    result_events,
)

TEXT = "Hello there, friend. This answer is long enough to stream in several pieces."
REQUEST = ChatRequest(kind="chat", body={"model": "up", "messages": []}, stream=True,
                      client_api="anthropic", client_model="claude-x")


def _result(text: str = TEXT, finish: str | None = "stop",
            calls: tuple[ToolCall, ...] = (), usage: Usage | None = None) -> ChatResult:
    return ChatResult(kind="chat", id="chatcmpl-1", created=1, model="up",
                      choices=(Choice(0, text, finish, calls),),
                      usage=usage or Usage(prompt_tokens=100, completion_tokens=5,
                                           cached_tokens=60))


def _events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for frame in raw.decode().split("\n\n"):
        if not frame:
            continue
        name_line, data_line = frame.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        data = orjson.loads(data_line[6:])
        assert data["type"] == name_line[7:]
        out.append((name_line[7:], data))
    return out


def _stream(events: list[StreamEvent], request: ChatRequest = REQUEST) -> bytes:
    renderer = AnthropicStream(request)
    return b"".join(renderer.render(e) for e in events) + renderer.close()


def test_message_has_the_anthropic_shape_and_echoes_the_client_model() -> None:
    message = render_message(_result(), REQUEST)
    assert message == {
        "id": message_id("chatcmpl-1"), "type": "message", "role": "assistant",
        "model": "claude-x", "content": [{"type": "text", "text": TEXT}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 0, "cache_creation_input_tokens": 40,
                  "cache_read_input_tokens": 60, "output_tokens": 5},
    }


def test_same_result_renders_the_same_message_id() -> None:
    assert message_id("chatcmpl-1") == message_id("chatcmpl-1")
    assert message_id("chatcmpl-1") != message_id("chatcmpl-2")
    assert message_id("chatcmpl-1").startswith("msg_")


def test_tool_calls_become_tool_use_blocks_with_parsed_input() -> None:
    calls = (ToolCall("call_a", "ls", '{"path": "."}'), ToolCall("call_b", "pwd", ""))
    message = render_message(_result("Let me look.", "tool_calls", calls), REQUEST)
    assert message["content"] == [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "call_a", "name": "ls", "input": {"path": "."}},
        {"type": "tool_use", "id": "call_b", "name": "pwd", "input": {}},
    ]
    assert message["stop_reason"] == "tool_use"


@pytest.mark.parametrize("arguments", ['{"path": ', "[1, 2]", "null"])
def test_unusable_tool_arguments_become_text_and_a_warning(
    arguments: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls = (ToolCall("call_a", "ls", arguments),)
    with caplog.at_level(logging.WARNING):
        message = render_message(_result("", "tool_calls", calls), REQUEST)
    assert message["content"] == [
        {"type": "text", "text": f"[tool call ls with invalid arguments: {arguments}]"}]
    assert message["stop_reason"] == "end_turn"
    assert "not a JSON object" in caplog.text


@pytest.mark.parametrize(
    ("finish", "tools", "text", "stops", "expected"),
    [
        ("stop", False, "done", [], ("end_turn", None)),
        (None, False, "done", [], ("end_turn", None)),
        ("length", False, "cut", [], ("max_tokens", None)),
        ("length", True, "cut", [], ("max_tokens", None)),
        ("tool_calls", True, "", [], ("tool_use", None)),
        ("stop", True, "", [], ("tool_use", None)),
        ("tool_calls", False, "", [], ("end_turn", None)),
        ("stop", False, "answer END", ["STOP", "END"], ("stop_sequence", "END")),
        ("stop", False, "answer", ["END"], ("end_turn", None)),
        ("content_filter", False, "", [], ("refusal", None)),
    ],
)
def test_finish_reason_maps_to_the_anthropic_stop_reason_and_stop_sequence(
    finish: str | None, tools: bool, text: str, stops: list[str],
    expected: tuple[str, str | None],
) -> None:
    assert stop_reason(finish, tools, text, stops) == expected


def test_stop_sequence_from_the_request_is_reported_when_the_text_keeps_it() -> None:
    request = ChatRequest(kind="chat", body={"stop": ["###"]}, stream=False,
                          client_api="anthropic", client_model="c")
    message = render_message(_result("the end ###"), request)
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "###")


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (Usage(100, 5, 60), (0, 40, 60, 5)),
        (Usage(100, 5, 0), (0, 100, 0, 5)),
        (Usage(100, 5, None), (100, 0, 0, 5)),
        (Usage(10, 1, 50), (0, 0, 10, 1)),
        (None, (0, 0, 0, 0)),
    ],
)
def test_usage_mapping_adds_up_to_the_whole_prompt(
    usage: Usage | None, expected: tuple[int, int, int, int]
) -> None:
    out = usage_dict(usage)
    assert (out["input_tokens"], out["cache_creation_input_tokens"],
            out["cache_read_input_tokens"], out["output_tokens"]) == expected


def test_stream_event_order_for_text() -> None:
    events = _events(_stream(list(result_events(_result()))))
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-4:] == ["content_block_delta", "content_block_stop", "message_delta",
                          "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == TEXT
    assert len(names) > 8  # streamed in pieces, all in one block
    start = events[0][1]["message"]
    assert start["model"] == "claude-x" and start["id"] == message_id("chatcmpl-1")
    assert start["usage"]["input_tokens"] == 0 and start["content"] == []


def test_stream_message_delta_carries_stop_reason_and_full_usage() -> None:
    events = _events(_stream(list(result_events(_result()))))
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"] == usage_dict(Usage(100, 5, 60))


def test_stream_gives_one_block_per_text_run_and_per_tool_call() -> None:
    events: list[StreamEvent] = [
        Start("id-1", "up", 1),
        TextDelta(0, "Let me "), TextDelta(0, "check."),
        ToolCallDelta(0, 0, "call_a", "ls", '{"pa'), ToolCallDelta(0, 0, None, None, 'th": 1}'),
        ToolCallDelta(0, 1, "call_b", "pwd", "{}"),
        TextDelta(0, "after"),
        Finish(0, "tool_calls"), UsageReport(Usage(10, 3, None)),
    ]
    parsed = _events(_stream(events))
    starts = [d for n, d in parsed if n == "content_block_start"]
    assert [(s["index"], s["content_block"]["type"]) for s in starts] == [
        (0, "text"), (1, "tool_use"), (2, "tool_use"), (3, "text")]
    assert starts[1]["content_block"] == {"type": "tool_use", "id": "call_a", "name": "ls",
                                          "input": {}}
    json_deltas = [d for n, d in parsed if n == "content_block_delta"
                   and d["delta"]["type"] == "input_json_delta"]
    assert [(d["index"], d["delta"]["partial_json"]) for d in json_deltas] == [
        (1, '{"path":1}'), (2, "{}")]
    stops = [d["index"] for n, d in parsed if n == "content_block_stop"]
    assert stops == [0, 1, 2, 3]
    assert parsed[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_stream_turns_unusable_tool_arguments_into_a_text_block() -> None:
    events: list[StreamEvent] = [Start("id-1", "up", 1),
                                 ToolCallDelta(0, 0, "call_a", "ls", "{broken"),
                                 Finish(0, "tool_calls")]
    parsed = _events(_stream(events))
    blocks = [d["content_block"]["type"] for n, d in parsed if n == "content_block_start"]
    assert blocks == ["text"]
    assert parsed[-2][1]["delta"]["stop_reason"] == "end_turn"


def test_stream_ignores_reasoning_and_other_choices() -> None:
    events: list[StreamEvent] = [Start("id-1", "up", 1), TextDelta(0, "thinking", True),
                                 TextDelta(1, "other choice"), TextDelta(0, "answer"),
                                 Finish(0, "stop")]
    parsed = _events(_stream(events))
    texts = [d["delta"]["text"] for n, d in parsed if n == "content_block_delta"]
    assert texts == ["answer"]


def test_live_stream_and_replay_of_its_result_carry_the_same_content() -> None:
    calls = (ToolCall("call_a", "ls", '{"b": 2, "a": 1}'),)
    result = _result("Looking now.", "tool_calls", calls)
    builder = ResultBuilder("chat")
    for event in result_events(result):
        builder.add(event)
    replayed = _events(_stream(list(result_events(builder.result()))))
    live = _events(_stream(list(result_events(result))))
    assert replayed == live
    tool = [d for n, d in live if n == "content_block_start"][1]["content_block"]
    assert tool["id"] == "call_a"


def test_close_without_any_event_still_makes_a_complete_message() -> None:
    names = [n for n, _ in _events(AnthropicStream(REQUEST).close())]
    assert names == ["message_start", "ping", "message_delta", "message_stop"]


def test_close_twice_emits_the_ending_once() -> None:
    renderer = AnthropicStream(REQUEST)
    renderer.render(Start("x", "up", 1))
    assert renderer.close() and renderer.close() == b""


def test_fail_emits_an_anthropic_error_event_and_nothing_after() -> None:
    renderer = AnthropicStream(REQUEST)
    renderer.render(Start("x", "up", 1))
    renderer.render(TextDelta(0, "partial"))
    failed = _events(renderer.fail(UpstreamProtocolError("upstream cut the stream")))
    assert failed == [("error", {"type": "error", "error": {
        "type": "api_error", "message": "upstream cut the stream"}})]
    assert renderer.close() == b"" and renderer.render(TextDelta(0, "more")) == b""


def test_keepalive_is_a_comment_before_message_start_and_a_ping_after() -> None:
    stream = AnthropicStream(REQUEST)
    assert stream.keepalive("keepalive 3/10") == b": keepalive 3/10\n\n"
    stream.render(Start(id="abc", created=0, model="up"))
    assert stream.keepalive("keepalive 10/10") == (
        b'event: ping\ndata: {"type":"ping"}\n\n')
    stream.close()
    assert stream.keepalive("keepalive") == b": keepalive\n\n"  # nothing after message_stop
