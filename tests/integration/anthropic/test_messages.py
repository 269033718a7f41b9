"""/v1/messages through the real anthropic SDK, the real proxy and a scripted upstream."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import orjson
import pytest

from cachelayer.proxy.store.layer import STORE
from tests.integration.conftest import ProxyFactory
from tests.support import http
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.servers import RunningServer
from tests.support.store_writes import wait_for_writes

Upstream = tuple[FakeUpstream, RunningServer]
MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]
TOOLS: list[Any] = [{"name": "ls", "description": "List files",
                     "input_schema": {"type": "object",
                                      "properties": {"path": {"type": "string"}}}}]
LS_CALL = {"id": "call_1", "type": "function",
           "function": {"name": "ls", "arguments": '{"path": "."}'}}
LONG_TEXT = "Here is a longer answer that the proxy will replay in several stream pieces."


def _streamed_text(raw: bytes) -> str:
    """The text an Anthropic SSE body adds up to."""
    events = [orjson.loads(line[len("data: "):]) for line in raw.decode().split("\n")
              if line.startswith("data: ")]
    return "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")


def _tool_reply(body: dict[str, Any]) -> Reply:
    return Reply(text="Let me look.", tool_calls=[LS_CALL], finish_reason="tool_calls")


def test_non_streamed_text_answer_has_the_anthropic_shape(
    client: anthropic.Anthropic, upstream: Upstream
) -> None:
    message = client.messages.create(model="claude-x", max_tokens=64, system="Be terse.",
                                     messages=MESSAGES)
    assert message.type == "message" and message.role == "assistant"
    assert message.model == "claude-x" and message.id.startswith("msg_")
    assert message.content[0].type == "text" and message.content[0].text == 'You said: "hi"'
    assert message.stop_reason == "end_turn"
    usage = message.usage
    assert (usage.input_tokens, usage.cache_creation_input_tokens,
            usage.cache_read_input_tokens, usage.output_tokens) == (0, 42, 0, 7)
    sent = upstream[0].calls[0]
    assert sent["messages"] == [{"role": "system", "content": "Be terse."},
                                {"role": "user", "content": "hi"}]
    assert sent["max_tokens"] == 64 and sent["stream"] is False


def test_model_map_sends_the_local_name_and_answers_with_the_clients(
    start_proxy: ProxyFactory, upstream: Upstream
) -> None:
    with start_proxy(upstream=upstream[1].url, model_map={"claude-x": "local-qwen"}) as proxy:
        client = anthropic.Anthropic(base_url=proxy.url, api_key="k", max_retries=0)
        message = client.messages.create(model="claude-x", max_tokens=16, messages=MESSAGES)
    assert upstream[0].calls[0]["model"] == "local-qwen"
    assert message.model == "claude-x"


def test_non_streamed_tool_call_becomes_a_tool_use_block(
    client: anthropic.Anthropic, upstream: Upstream
) -> None:
    upstream[0].script = _tool_reply
    message = client.messages.create(model="claude-x", max_tokens=64, messages=MESSAGES,
                                     tools=TOOLS)
    assert [block.type for block in message.content] == ["text", "tool_use"]
    tool = message.content[1]
    assert tool.type == "tool_use"
    assert (tool.id, tool.name, tool.input) == ("call_1", "ls", {"path": "."})
    assert message.stop_reason == "tool_use"
    assert upstream[0].calls[0]["tools"][0]["function"]["name"] == "ls"


def test_tool_round_trip_sends_the_result_as_a_tool_message(
    client: anthropic.Anthropic, upstream: Upstream
) -> None:
    upstream[0].script = _tool_reply
    first = client.messages.create(model="claude-x", max_tokens=64, messages=MESSAGES,
                                   tools=TOOLS)
    tool = first.content[1]
    assert tool.type == "tool_use"
    upstream[0].script = lambda body: Reply(text="Two files.")
    follow_up: list[Any] = [
        *MESSAGES,
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool.id,
                                      "content": "a.txt\nb.txt"}]},
    ]
    second = client.messages.create(model="claude-x", max_tokens=64, messages=follow_up,
                                    tools=TOOLS)
    assert second.content[0].type == "text" and second.content[0].text == "Two files."
    sent = upstream[0].calls[1]["messages"]
    assert sent[1]["tool_calls"][0]["function"] == {"name": "ls", "arguments": '{"path":"."}'}
    assert sent[2] == {"role": "tool", "tool_call_id": "call_1", "content": "a.txt\nb.txt"}


def test_stream_helper_builds_the_final_message_with_text(
    client: anthropic.Anthropic, upstream: Upstream
) -> None:
    upstream[0].script = lambda body: Reply(text=LONG_TEXT)
    with client.messages.stream(model="claude-x", max_tokens=64, messages=MESSAGES) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 3 and "".join(pieces) == LONG_TEXT
    assert final.content[0].type == "text" and final.content[0].text == LONG_TEXT
    assert final.stop_reason == "end_turn" and final.model == "claude-x"
    assert (final.usage.cache_creation_input_tokens, final.usage.output_tokens) == (42, 7)
    assert upstream[0].calls[0]["stream"] is True


def test_streamed_tool_call_arrives_as_parsed_input(
    client: anthropic.Anthropic, upstream: Upstream
) -> None:
    upstream[0].script = _tool_reply
    with client.messages.stream(model="claude-x", max_tokens=64, messages=MESSAGES,
                                tools=TOOLS) as stream:
        final = stream.get_final_message()
    assert [block.type for block in final.content] == ["text", "tool_use"]
    tool = final.content[1]
    assert tool.type == "tool_use" and tool.input == {"path": "."}
    assert final.stop_reason == "tool_use"


def test_raw_stream_events_come_in_anthropic_order(
    client: anthropic.Anthropic, upstream: Upstream
) -> None:
    upstream[0].script = _tool_reply
    events = list(client.messages.create(model="claude-x", max_tokens=64, messages=MESSAGES,
                                         tools=TOOLS, stream=True))
    kinds = [event.type for event in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 2


def test_repeat_is_a_hit_with_the_same_answer(
    client: anthropic.Anthropic, upstream: Upstream, proxy: RunningServer
) -> None:
    create = client.messages.with_raw_response.create
    first = create(model="claude-x", max_tokens=64, messages=MESSAGES,
                   extra_body={"temperature": 0})
    wait_for_writes(proxy)
    second = create(model="claude-x", max_tokens=64, messages=MESSAGES,
                   extra_body={"temperature": 0})
    assert (first.headers["X-Cache-Status"], second.headers["X-Cache-Status"]) == (
        "MISS", "HIT")
    miss, hit = first.parse().model_dump(), second.parse().model_dump()
    assert {**miss, "usage": None} == {**hit, "usage": None}
    assert hit["usage"]["cache_read_input_tokens"] == miss["usage"][
        "cache_creation_input_tokens"] + miss["usage"]["cache_read_input_tokens"]
    assert hit["usage"]["cache_creation_input_tokens"] == 0
    assert len(upstream[0].calls) == 1


def test_streamed_miss_then_streamed_hit_give_the_same_final_message(
    client: anthropic.Anthropic, upstream: Upstream, proxy: RunningServer
) -> None:
    upstream[0].script = _tool_reply
    finals = []
    for _ in range(2):
        with client.messages.stream(model="claude-x", max_tokens=64, messages=MESSAGES,
                                    tools=TOOLS) as stream:
            finals.append(stream.get_final_message().model_dump())
        wait_for_writes(proxy)
    assert {**finals[0], "usage": None} == {**finals[1], "usage": None}
    assert finals[1]["usage"]["cache_creation_input_tokens"] == 0
    assert len(upstream[0].calls) == 1


def test_claude_code_extras_do_not_change_the_cache_key(
    client: anthropic.Anthropic, upstream: Upstream, proxy: RunningServer
) -> None:
    system: list[Any] = [{"type": "text", "text": "You are Claude Code."}]
    client.messages.create(model="claude-x", max_tokens=64, system=system, messages=MESSAGES)
    wait_for_writes(proxy)
    cached_system: list[Any] = [{"type": "text", "text": "You are Claude Code.",
                                 "cache_control": {"type": "ephemeral"}}]
    raw = http.post(proxy.url + "/v1/messages?beta=true", headers={"x-api-key": "k1"}, json={
        "model": "claude-x", "max_tokens": 64, "system": cached_system, "messages": MESSAGES,
        "metadata": {"user_id": "session-2"}, "thinking": {"type": "enabled",
                                                           "budget_tokens": 1024},
        "context_management": {"edits": []}, "output_config": {"effort": "medium"},
    })
    assert raw.status == 200 and raw.headers["X-Cache-Status"] == "HIT"
    assert raw.json()["content"][0]["text"] == 'You said: "hi"'
    assert len(upstream[0].calls) == 1


def test_one_stored_answer_serves_both_apis(
    client: anthropic.Anthropic, upstream: Upstream, proxy: RunningServer
) -> None:
    oa = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k1", max_retries=0)
    answer = oa.chat.completions.create(model="m", max_tokens=64, messages=[
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi"}])
    wait_for_writes(proxy)
    raw = client.messages.with_raw_response.create(model="m", max_tokens=64,
                                                   system="You are terse.", messages=MESSAGES)
    assert raw.headers["X-Cache-Status"] == "HIT"
    message = raw.parse()
    assert message.content[0].type == "text"
    assert message.content[0].text == answer.choices[0].message.content
    assert len(upstream[0].calls) == 1


def test_malformed_request_gets_a_400_in_anthropic_shape_and_nothing_is_stored(
    proxy: RunningServer, upstream: Upstream
) -> None:
    raw = http.post(proxy.url + "/v1/messages", json={"model": "claude-x",
                                                      "messages": MESSAGES})
    assert raw.status == 400
    body = raw.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    assert len(proxy.app[STORE]) == 0 and upstream[0].calls == []


def test_sdk_sees_bad_request_error_for_an_unknown_role(client: anthropic.Anthropic) -> None:
    robot: list[Any] = [{"role": "robot", "content": "x"}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="claude-x", max_tokens=8, messages=robot)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("status", "error_class", "error_type"),
    [
        (500, anthropic.InternalServerError, "api_error"),
        (503, anthropic.ServiceUnavailableError, "overloaded_error"),
        (400, anthropic.BadRequestError, "invalid_request_error"),
    ],
)
def test_upstream_error_status_becomes_an_anthropic_error(
    client: anthropic.Anthropic, upstream: Upstream, proxy: RunningServer,
    status: int, error_class: type[anthropic.APIStatusError], error_type: str,
) -> None:
    upstream[0].script = lambda body: Reply(status=status)
    with pytest.raises(error_class) as caught:
        client.messages.create(model="claude-x", max_tokens=8, messages=MESSAGES)
    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == error_type
    assert "scripted failure" in caught.value.body["error"]["message"]
    wait_for_writes(proxy)
    assert len(proxy.app[STORE]) == 0


def test_stream_cut_upstream_ends_with_an_error_event_and_is_not_stored(
    proxy: RunningServer, upstream: Upstream
) -> None:
    upstream[0].script = lambda body: Reply(text=LONG_TEXT, cut_after=3)
    raw = http.post(proxy.url + "/v1/messages", headers={"x-api-key": "k1"},
                    json={"model": "claude-x", "max_tokens": 64, "messages": MESSAGES,
                          "stream": True})
    frames = [f for f in raw.content.decode().split("\n\n") if f]
    assert frames[0].startswith("event: message_start")
    name, data = frames[-1].split("\n")
    assert name == "event: error"
    error = orjson.loads(data[len("data: "):])
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert not any(f.startswith("event: message_stop") for f in frames)
    wait_for_writes(proxy)
    assert len(proxy.app[STORE]) == 0


def test_sdk_stream_raises_when_the_upstream_cuts_the_stream(
    client: anthropic.Anthropic, upstream: Upstream
) -> None:
    upstream[0].script = lambda body: Reply(text=LONG_TEXT, cut_after=3)
    with pytest.raises(anthropic.APIStatusError) as caught, client.messages.stream(
            model="claude-x", max_tokens=64, messages=MESSAGES) as stream:
        stream.get_final_message()
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "api_error"


def test_claude_code_billing_block_never_reaches_the_upstream_or_the_key(
    proxy: RunningServer, upstream: Upstream
) -> None:
    def body(cch: str) -> dict[str, Any]:
        return {"model": "claude-x", "max_tokens": 128000, "stream": True, "messages": MESSAGES,
                "system": [{"type": "text", "text": "x-anthropic-billing-header: "
                            f"cc_version=2.1.330; cc_entrypoint=cli; cch={cch};"},
                           {"type": "text", "text": "You are Claude Code.",
                            "cache_control": {"type": "ephemeral"}}]}

    first = http.post(proxy.url + "/v1/messages?beta=true", json=body("aaa"))
    wait_for_writes(proxy)
    second = http.post(proxy.url + "/v1/messages?beta=true", json=body("bbb"))
    assert (first.headers["X-Cache-Status"], second.headers["X-Cache-Status"]) == (
        "MISS", "HIT")
    assert _streamed_text(first.content) == _streamed_text(second.content) == 'You said: "hi"'
    sent = upstream[0].calls[0]
    assert sent["messages"][0] == {"role": "system", "content": "You are Claude Code."}
    assert sent["max_tokens"] == 8192
