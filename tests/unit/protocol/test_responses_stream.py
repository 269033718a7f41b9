"""Neutral results and stream events -> Responses objects and SSE events."""

from __future__ import annotations

from typing import Any

import orjson

from cachelayer.errors import UpstreamProtocolError
from cachelayer.protocol.chat import (
    ChatRequest,
    ChatResult,
    Choice,
    Finish,
    Start,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    result_events,
)
from cachelayer.protocol.responses_stream import ResponsesStream, render_object, response_id

REQUEST = ChatRequest(kind="chat", body={"model": "up", "messages": []}, stream=True,
                      client_api="responses", client_model="demo",
                      extra={"echo": {"instructions": "Be brief.", "store": False}})
CALL = ToolCall("call_1", "exec_command", '{"cmd": "ls"}')


def _result(text: str = "Hello there, this answer streams in pieces.",
            calls: tuple[ToolCall, ...] = (), finish: str = "stop",
            reasoning: str = "") -> ChatResult:
    return ChatResult(kind="chat", id="chatcmpl-1", created=1700000000, model="up",
                      choices=(Choice(0, text, finish, calls, reasoning),),
                      usage=Usage(100, 7, 80))


def _events(stream: bytes) -> list[dict[str, Any]]:
    out = []
    for block in stream.decode().strip().split("\n\n"):
        name, data = block.split("\n", 1)
        event = orjson.loads(data.removeprefix("data: "))
        assert name == "event: " + event["type"]
        out.append(event)
    return out


def _stream(result: ChatResult) -> list[dict[str, Any]]:
    renderer = ResponsesStream(REQUEST)
    raw = b"".join(renderer.render(e) for e in result_events(result)) + renderer.close()
    return _events(raw)


def test_streamed_completion_equals_the_complete_object_with_every_item_kind() -> None:
    result = _result(calls=(CALL,), reasoning="thinking it over")
    events = _stream(result)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"] == render_object(result, REQUEST)
    kinds = [item["type"] for item in events[-1]["response"]["output"]]
    assert kinds == ["reasoning", "message", "function_call"]


def test_event_sequence_is_the_one_the_sdk_and_codex_wait_for() -> None:
    types = [e["type"] for e in _stream(_result(calls=(CALL,)))]
    text_deltas = types.count("response.output_text.delta")
    assert text_deltas >= 2  # replayed in pieces, not one lump
    assert types == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        *["response.output_text.delta"] * text_deltas,
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]


def test_usage_reports_what_the_backend_reused_and_ids_are_stable() -> None:
    obj = render_object(_result(), REQUEST)
    assert obj["usage"]["input_tokens"] == 100
    assert obj["usage"]["input_tokens_details"] == {"cached_tokens": 80}
    assert obj["id"] == response_id("chatcmpl-1") == render_object(_result(), REQUEST)["id"]
    assert obj["instructions"] == "Be brief." and obj["store"] is False
    assert obj["model"] == "demo"


def test_call_arguments_split_over_chunks_arrive_as_deltas_and_whole_at_done() -> None:
    renderer = ResponsesStream(REQUEST)
    raw = renderer.render(Start("chatcmpl-2", "up", 1))
    raw += renderer.render(ToolCallDelta(0, 0, "call_9", "f", '{"a"'))
    raw += renderer.render(ToolCallDelta(0, 0, None, None, ": 1}"))
    raw += renderer.render(Finish(0, "tool_calls")) + renderer.close()
    events = _events(raw)
    deltas = [e["delta"] for e in events if e["type"].endswith("arguments.delta")]
    assert deltas == ['{"a"', ": 1}"]
    done = next(e for e in events if e["type"] == "response.output_item.done")["item"]
    assert done["arguments"] == '{"a": 1}' and done["call_id"] == "call_9"


def test_an_answer_cut_at_max_output_tokens_is_incomplete() -> None:
    events = _stream(_result(finish="length"))
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_a_stream_failing_midway_ends_with_response_failed() -> None:
    renderer = ResponsesStream(REQUEST)
    raw = renderer.render(Start("chatcmpl-3", "up", 1)) + renderer.render(TextDelta(0, "hi"))
    raw += renderer.fail(UpstreamProtocolError("upstream cut the stream"))
    events = _events(raw)
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["message"] == "upstream cut the stream"
    assert renderer.close() == b""


def test_an_empty_answer_is_one_empty_message_both_ways() -> None:
    result = _result(text="")
    assert _stream(result)[-1]["response"]["output"] == render_object(result,
                                                                      REQUEST)["output"]


def test_a_silent_upstream_is_kept_alive_with_events_under_the_proxys_own_id() -> None:
    from cachelayer.protocol.chat import ChatRequest, Start, TextDelta
    from cachelayer.protocol.responses_stream import ResponsesStream

    stream = ResponsesStream(ChatRequest(kind="chat", body={"model": "m", "messages": []},
                                         stream=True, client_api="responses",
                                         client_model="m"))
    first = _events(stream.keepalive("keepalive 1/2"))
    assert [e["type"] for e in first] == ["response.created", "response.in_progress"]
    rid = first[0]["response"]["id"]
    assert rid == stream.early_id and rid.startswith("resp_")
    # The upstream's own start adds nothing: the response was already created.
    assert stream.render(Start(id="abc", model="m", created=0)) == b""
    again = stream.keepalive("keepalive 2/2")
    assert again.startswith(b"event: response.in_progress\ndata: ")
    assert b'"status":"in_progress"' in again
    raw = stream.render(TextDelta(index=0, text="hi")) + stream.close()
    assert _events(raw)[-1]["response"]["id"] == rid
    other = ResponsesStream(ChatRequest(kind="chat", body={"model": "m", "messages": []},
                                        stream=True, client_api="responses", client_model="m"))
    other.keepalive("keepalive")
    assert other.early_id != rid  # each early response has an id of its own
