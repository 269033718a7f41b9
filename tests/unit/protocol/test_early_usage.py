"""Usage known before content: the backend's comment, message_start, and a replay's usage."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from cachelayer.config import Settings
from cachelayer.protocol.anthropic import AnthropicCodec
from cachelayer.protocol.anthropic_stream import AnthropicStream, usage_dict
from cachelayer.protocol.chat import (
    ChatRequest,
    ChatResult,
    Choice,
    Finish,
    Start,
    TextDelta,
    Usage,
    UsageReport,
)
from cachelayer.protocol.early_usage import (
    announce,
    as_replayed,
    parse_usage_comment,
    usage_comment,
)
from cachelayer.protocol.openai import OpenAICodec, render_response
from cachelayer.protocol.sse import render_sse

REQUEST = ChatRequest(kind="chat", body={"model": "up", "messages": []}, stream=True,
                      client_api="anthropic", client_model="claude-x")
INPUT_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def _events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for frame in raw.decode().split("\n\n"):
        if frame:
            name_line, data_line = frame.split("\n")
            out.append((name_line[7:], orjson.loads(data_line[6:])))
    return out


def test_the_comment_round_trips_and_is_an_sse_comment_line() -> None:
    raw = usage_comment(1335, 1200)
    assert raw.startswith(b": ") and raw.endswith(b"\n\n")
    assert parse_usage_comment(raw.strip()) == Usage(prompt_tokens=1335, cached_tokens=1200)


@pytest.mark.parametrize("line", [
    b": keepalive 10/20",
    b": cachelayer-usage not json",
    b": cachelayer-usage [1, 2]",
    b': cachelayer-usage {"prompt_tokens": -1, "cached_tokens": 0}',
    b': cachelayer-usage {"cached_tokens": 3}',
])
def test_anything_but_a_well_formed_usage_comment_is_ignored(line: bytes) -> None:
    assert parse_usage_comment(line) is None


def test_a_comment_claiming_more_cached_than_prompt_tokens_is_capped() -> None:
    usage = parse_usage_comment(b': cachelayer-usage {"prompt_tokens": 10, "cached_tokens": 99}')
    assert usage == Usage(prompt_tokens=10, cached_tokens=10)


def test_message_start_carries_the_announced_usage_and_equals_the_final_input_fields() -> None:
    renderer = AnthropicStream(REQUEST)
    announce(renderer, Usage(prompt_tokens=1335, cached_tokens=1200))
    body = renderer.render(Start("chatcmpl-1", "up", 1)) + renderer.render(TextDelta(0, "hi"))
    body += renderer.render(Finish(0, "stop"))
    body += renderer.render(UsageReport(Usage(1335, 4, 1200))) + renderer.close()
    events = _events(body)
    start = events[0][1]["message"]["usage"]
    final = events[-2][1]["usage"]
    assert start == {"input_tokens": 0, "cache_creation_input_tokens": 135,
                     "cache_read_input_tokens": 1200, "output_tokens": 0}
    assert {k: start[k] for k in INPUT_FIELDS} == {k: final[k] for k in INPUT_FIELDS}
    assert final["output_tokens"] == 4


def test_without_a_final_usage_message_delta_repeats_the_announced_input() -> None:
    renderer = AnthropicStream(REQUEST)
    announce(renderer, Usage(prompt_tokens=50, cached_tokens=20))
    body = renderer.render(Start("x", "up", 1)) + renderer.close()
    final = _events(body)[-2][1]["usage"]
    assert final == {"input_tokens": 0, "cache_creation_input_tokens": 30,
                     "cache_read_input_tokens": 20, "output_tokens": 0}


def _stored(cached: int | None = 7) -> ChatResult:
    return ChatResult(kind="chat", id="chatcmpl-9", created=1, model="up",
                      choices=(Choice(0, "stored answer", "stop"),),
                      usage=Usage(prompt_tokens=1335, completion_tokens=5, cached_tokens=cached))


@pytest.mark.parametrize("cached", [None, 0, 7, 1335])
def test_a_replayed_answer_reports_its_whole_prompt_read_and_nothing_created(
    cached: int | None,
) -> None:
    replay = as_replayed(_stored(cached))
    assert replay.usage == Usage(prompt_tokens=1335, completion_tokens=5, cached_tokens=1335)
    anthropic = usage_dict(replay.usage)
    assert anthropic["cache_read_input_tokens"] == 1335
    assert anthropic["cache_creation_input_tokens"] == 0 and anthropic["input_tokens"] == 0
    openai_usage = orjson.loads(render_response(replay))["usage"]
    assert openai_usage["prompt_tokens_details"] == {"cached_tokens": 1335}


def test_a_replayed_anthropic_stream_starts_with_the_replay_usage() -> None:
    codec = AnthropicCodec(Settings())
    events = _events(render_sse(codec, REQUEST, as_replayed(_stored())))
    start = events[0][1]["message"]["usage"]
    final = events[-2][1]["usage"]
    assert start["cache_read_input_tokens"] == 1335 == final["cache_read_input_tokens"]
    assert start["cache_creation_input_tokens"] == 0 == final["cache_creation_input_tokens"]


def test_openai_streams_ignore_the_announcement_and_report_usage_at_the_end() -> None:
    request = ChatRequest(kind="chat", body={}, stream=True, include_usage=True)
    body = render_sse(OpenAICodec(), request, as_replayed(_stored()))
    chunks = [orjson.loads(line[6:]) for line in body.decode().split("\n\n")
              if line.startswith("data: {")]
    assert chunks[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 1335}
    assert all("usage" not in chunk for chunk in chunks[:-1])
