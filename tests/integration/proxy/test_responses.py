"""POST /v1/responses through the real openai SDK, in front of a scripted chat upstream.

The proxy translates to chat completions upstream, so this is also cachelayer in front
of a server with no /v1/responses at all (stock mlx_lm.server)."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.integration.conftest import ProxyFactory
from tests.support import http as httpx
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.servers import RunningServer, serve_app

TOOLS: list[Any] = [{
    "type": "function", "name": "exec_command", "description": "Run a shell command",
    "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}},
                   "required": ["cmd"]}}]


def _client(proxy: RunningServer, key: str = "k1") -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0)


def tool_script(body: dict[str, Any]) -> Reply:
    """A call to exec_command first; once its output is back, an answer quoting it."""
    last = body["messages"][-1]
    if last["role"] == "tool":
        return Reply(text=f"The command printed {last['content']}.")
    call = {"id": "call_echo_1", "type": "function",
            "function": {"name": "exec_command", "arguments": json.dumps({"cmd": "echo hi"})}}
    return Reply(text="", tool_calls=[call], finish_reason="tool_calls", split_arguments=3)


def test_non_streamed_response_has_a_message_item_and_usage(
    proxy: RunningServer, upstream: tuple[FakeUpstream, RunningServer]
) -> None:
    fake, _ = upstream
    response = _client(proxy).responses.create(model="m", instructions="Be terse.",
                                               input="hello there")
    assert response.status == "completed"
    assert response.output_text.startswith("You said:")
    assert response.output[0].type == "message"
    assert response.usage is not None and response.usage.input_tokens == 42
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert fake.calls[0]["messages"] == [{"role": "system", "content": "Be terse."},
                                         {"role": "user", "content": "hello there"}]


def test_streamed_answer_equals_the_non_streamed_one_and_repeat_is_a_hit(
    proxy: RunningServer, upstream: tuple[FakeUpstream, RunningServer]
) -> None:
    fake, _ = upstream
    client = _client(proxy)
    events = list(client.responses.create(model="m", input="tell me a story about caches",
                                          stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "response.output_text.delta" in kinds and "response.output_text.done" in kinds
    streamed = events[-1].response  # type: ignore[union-attr]
    raw = client.responses.with_raw_response.create(model="m",
                                                    input="tell me a story about caches")
    assert raw.headers["X-Cache-Status"] == "HIT"
    whole, miss = raw.parse().model_dump(), streamed.model_dump()
    # The same response; the replay's usage says it read its whole input from cache.
    assert {**whole, "usage": None} == {**miss, "usage": None}
    assert whole["usage"]["input_tokens_details"]["cached_tokens"] == 42
    assert miss["usage"]["input_tokens_details"]["cached_tokens"] == 0
    assert len(fake.calls) == 1


def test_a_tool_call_round_trip_by_call_id(start_proxy: ProxyFactory) -> None:
    fake = FakeUpstream(tool_script)
    with serve_app(fake.make_app) as up, start_proxy(upstream=up.url) as proxy:
        client = _client(proxy)
        stream = list(client.responses.create(model="m", input="run it", tools=TOOLS,
                                              stream=True))
        call = stream[-1].response.output[0]  # type: ignore[union-attr]
        assert call.type == "function_call" and call.name == "exec_command"
        assert json.loads(call.arguments) == {"cmd": "echo hi"}
        deltas = [e for e in stream if e.type == "response.function_call_arguments.delta"]
        assert len(deltas) == 3
        second = client.responses.create(
            model="m", tools=TOOLS, previous_response_id=stream[-1].response.id,  # type: ignore[union-attr]
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "hi"}])
    assert second.output_text == "The command printed hi."
    sent = fake.calls[1]["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == "call_echo_1"
    assert sent[-1] == {"role": "tool", "tool_call_id": "call_echo_1", "content": "hi"}


def test_previous_response_id_chains_the_stored_conversation(
    proxy: RunningServer, upstream: tuple[FakeUpstream, RunningServer]
) -> None:
    fake, _ = upstream
    client = _client(proxy)
    first = client.responses.create(model="m", instructions="Be terse.", input="one")
    second = client.responses.create(model="m", instructions="Be terse.", input="two",
                                     previous_response_id=first.id)
    assert second.previous_response_id == first.id
    assert fake.calls[1]["messages"] == [
        {"role": "system", "content": "Be terse."}, {"role": "user", "content": "one"},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "two"}]
    # GET returns the stored object; DELETE forgets it; a later chain is a 404
    assert client.responses.retrieve(first.id).output_text == first.output_text
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="m", input="three", previous_response_id=first.id)


def test_another_tenants_response_id_is_not_found(
    proxy: RunningServer, upstream: tuple[FakeUpstream, RunningServer]
) -> None:
    fake, _ = upstream
    mine = _client(proxy, "alice").responses.create(model="m", input="secret plans")
    other = _client(proxy, "mallory")
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError) as caught:
        other.responses.create(model="m", input="tell me", previous_response_id=mine.id)
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert len(fake.calls) == 1


def test_store_false_keeps_nothing(
    proxy: RunningServer, upstream: tuple[FakeUpstream, RunningServer]
) -> None:
    client = _client(proxy)
    response = client.responses.create(model="m", input="ephemeral", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_codex_shaped_request_drops_hosted_tools_and_reasoning_items(
    proxy: RunningServer, upstream: tuple[FakeUpstream, RunningServer]
) -> None:
    fake, _ = upstream
    body = {
        "model": "m", "stream": False, "store": False, "tool_choice": "auto",
        "parallel_tool_calls": True, "reasoning": {"summary": "auto"},
        "include": ["reasoning.encrypted_content"], "prompt_cache_key": "conv-1",
        "client_metadata": {"turn": "x"},
        "tools": [*TOOLS, {"type": "web_search", "external_web_access": False},
                  {"type": "namespace", "name": "multi_agent_v1", "tools": []}],
        "input": [
            {"type": "message", "id": "msg_a", "role": "developer",
             "content": [{"type": "input_text", "text": "You are Codex."}]},
            {"type": "message", "id": "msg_b", "role": "user",
             "content": [{"type": "input_text", "text": "hi"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": None},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "hello"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text",
                                                              "text": "again"}]},
        ],
    }
    answer = httpx.post(proxy.url + "/v1/responses", json=body)
    assert answer.status == 200, answer.content
    sent = fake.calls[0]
    assert [t["function"]["name"] for t in sent["tools"]] == ["exec_command"]
    assert sent["messages"] == [
        {"role": "system", "content": "You are Codex."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"}]
    for field in ("prompt_cache_key", "include", "client_metadata", "store", "reasoning"):
        assert field not in sent


def test_the_same_conversation_over_chat_completions_is_the_same_stored_answer(
    proxy: RunningServer, upstream: tuple[FakeUpstream, RunningServer]
) -> None:
    fake, _ = upstream
    client = _client(proxy)
    response = client.responses.create(model="m", instructions="Be terse.", input="hi",
                                       temperature=0)
    chat = client.chat.completions.with_raw_response.create(
        model="m", temperature=0, messages=[{"role": "system", "content": "Be terse."},
                                            {"role": "user", "content": "hi"}])
    assert chat.headers["X-Cache-Status"] == "HIT"
    assert chat.parse().choices[0].message.content == response.output_text
    assert len(fake.calls) == 1


def test_a_stream_cut_by_the_upstream_ends_with_response_failed_and_is_not_kept(
    start_proxy: ProxyFactory
) -> None:
    fake = FakeUpstream(lambda body: Reply(text="one two three four five", cut_after=2))
    with serve_app(fake.make_app) as up, start_proxy(upstream=up.url) as proxy:
        client = _client(proxy)
        events = list(client.responses.create(model="m", input="go", stream=True))
        assert events[-1].type == "response.failed"
        failed = events[-1].response  # type: ignore[union-attr]
        assert failed.error is not None and "[DONE]" in failed.error.message
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(failed.id)
        again = client.responses.with_raw_response.create(model="m", input="go")
        assert again.headers["X-Cache-Status"] == "MISS"


def test_the_sdks_stream_helper_accumulates_our_events_into_the_final_response(
    start_proxy: ProxyFactory
) -> None:
    fake = FakeUpstream(lambda body: Reply(text="Let me check. ", tool_calls=[
        {"id": "call_a", "type": "function",
         "function": {"name": "exec_command", "arguments": '{"cmd": "ls"}'}}],
        finish_reason="tool_calls", split_arguments=2))
    with serve_app(fake.make_app) as up, start_proxy(upstream=up.url) as proxy:
        client = _client(proxy)
        with client.responses.stream(model="m", input="go", tools=TOOLS) as stream:
            texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
            final = stream.get_final_response()
    assert "".join(texts) == final.output_text == "Let me check. "
    assert [item.type for item in final.output] == ["message", "function_call"]
    assert final.output[1].arguments == '{"cmd": "ls"}'  # type: ignore[union-attr]
