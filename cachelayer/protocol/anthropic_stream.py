"""The answer side of the Anthropic edge: neutral results and stream events -> Messages API.

Both the complete message (`render_message`) and the SSE stream (`AnthropicStream`) are
built from the same helpers, so one stored result reads the same either way:

- Only the first choice is rendered (the Messages API has one), and reasoning is
  left out: a `thinking` block would need a signature no local model can make.
- Tool-call arguments must be a JSON object to become a `tool_use` block; anything
  else becomes a text block (with a warning logged) instead of a broken tool call.
- stop_reason: see `stop_reason`. usage: see `usage_dict`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson
import xxhash

from cachelayer.errors import CachelayerError
from cachelayer.protocol.chat import (
    ChatRequest,
    ChatResult,
    Finish,
    Start,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageReport,
)
from cachelayer.protocol.openai import keepalive_comment

log = logging.getLogger(__name__)

_FINISH_TO_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def message_id(result_id: str) -> str:
    """A stable Anthropic message id derived from the upstream's id (same result, same id)."""
    if result_id.startswith("msg_"):
        return result_id
    return "msg_" + xxhash.xxh3_128_hexdigest(result_id.encode())[:24]


def usage_dict(usage: Usage | None) -> dict[str, int]:
    """Anthropic's usage object from the upstream's counts.

    Anthropic's whole prompt is input + cache_creation + cache_read, so the three must
    add up to prompt_tokens. A backend that reports cached_tokens caches prefixes: what it
    did not read from cache it has just written to cache (cache_creation), leaving no
    plain input. A backend that reports nothing caches nothing we know of: all plain input.
    """
    if usage is None:
        return {"input_tokens": 0, "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0, "output_tokens": 0}
    cached = min(usage.cached_tokens or 0, usage.prompt_tokens)
    created = usage.prompt_tokens - cached if usage.cached_tokens is not None else 0
    return {
        "input_tokens": usage.prompt_tokens - cached - created,
        "cache_creation_input_tokens": created,
        "cache_read_input_tokens": cached,
        "output_tokens": usage.completion_tokens,
    }


def start_usage_dict(usage: Usage | None) -> dict[str, int]:
    """message_start's usage: the prompt's input fields, no output counted yet."""
    out = usage_dict(usage)
    out["output_tokens"] = 0
    return out


def stop_sequences(request: ChatRequest) -> list[str]:
    """The stop sequences the request asked for, as a list."""
    stop = request.body.get("stop")
    if isinstance(stop, str):
        return [stop]
    return [s for s in stop or () if isinstance(s, str) and s]


def stop_reason(
    finish: str | None, has_tool_use: bool, text: str, stops: list[str]
) -> tuple[str, str | None]:
    """Anthropic's (stop_reason, stop_sequence) for an upstream finish_reason.

    mlx-lm reports "stop" both for end-of-sequence and for a matched stop sequence, and
    strips the sequence from the text, so the two cannot be told apart: "stop" is
    end_turn. Only when the text still ends with one of the request's stop sequences
    (servers that keep the matched sequence) is it reported as stop_sequence. A
    "tool_calls" finish with no valid tool_use block left is end_turn, and tool_use
    blocks under any finish but "length" mean tool_use, as clients act on the reason.
    """
    if finish == "length":
        return "max_tokens", None
    if has_tool_use:
        return "tool_use", None
    for sequence in stops:
        if text.endswith(sequence):
            return "stop_sequence", sequence
    reason = _FINISH_TO_STOP.get(finish or "stop", "end_turn")
    return ("end_turn" if reason == "tool_use" else reason), None


def tool_input(call: ToolCall) -> dict[str, Any] | None:
    """The call's arguments as a JSON object, or None (warned) when they are not one."""
    if not call.arguments.strip():
        return {}
    try:
        value = orjson.loads(call.arguments)
    except orjson.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        return value
    log.warning("tool call %r has arguments that are not a JSON object; sent as text",
                call.name)
    return None


def invalid_call_text(call: ToolCall) -> str:
    """The text block that stands in for a tool call whose arguments are unusable."""
    return f"[tool call {call.name} with invalid arguments: {call.arguments}]"


def render_message(result: ChatResult, request: ChatRequest) -> dict[str, Any]:
    """The complete Anthropic message object for a result."""
    content: list[dict[str, Any]] = []
    choice = result.choices[0] if result.choices else None
    text = choice.text if choice else ""
    if text:
        content.append({"type": "text", "text": text})
    has_tool_use = False
    for call in choice.tool_calls if choice else ():
        arguments = tool_input(call)
        if arguments is None:
            content.append({"type": "text", "text": invalid_call_text(call)})
        else:
            has_tool_use = True
            content.append({"type": "tool_use", "id": call.id, "name": call.name,
                            "input": arguments})
    reason, sequence = stop_reason(choice.finish_reason if choice else None, has_tool_use,
                                   text, stop_sequences(request))
    return {
        "id": message_id(result.id),
        "type": "message",
        "role": "assistant",
        "model": request.client_model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage_dict(result.usage),
    }


def sse(name: str, data: dict[str, Any]) -> bytes:
    """One Anthropic SSE event."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def error_dict(error: CachelayerError) -> dict[str, Any]:
    """Anthropic's error object."""
    return {"type": "error", "error": {"type": error.anthropic_type, "message": error.message}}


@dataclass
class _PendingCall:
    id: str
    name: str
    arguments: list[str]


class AnthropicStream:
    """Renders neutral stream events as the Anthropic SSE sequence for one answer.

    Text streams live, one content block per run of text. A tool call is held until it
    is complete (mlx-lm sends each call whole anyway) so that arguments that are not a
    JSON object can still become a text block instead of a tool_use the SDK cannot parse.
    """

    def __init__(self, request: ChatRequest) -> None:
        self.request = request
        self._id = ""
        self._started = False
        self._closed = False
        self._blocks = 0
        self._text_open = False
        self._call: _PendingCall | None = None
        self._call_index: int | None = None
        self._tail = ""
        self._has_tool_use = False
        self._finish: str | None = None
        self._usage: Usage | None = None
        self._prompt_usage: Usage | None = None

    def prompt_usage(self, usage: Usage) -> None:
        """The prompt's usage, known before content (protocol/early_usage.py): message_start
        carries it, as Anthropic documents, instead of zeros."""
        self._prompt_usage = usage

    def _start(self, ident: str) -> bytes:
        self._started = True
        message: dict[str, Any] = {
            "id": message_id(ident), "type": "message", "role": "assistant",
            "model": self.request.client_model, "content": [], "stop_reason": None,
            "stop_sequence": None,
            # What is known of the prompt by now (the backend's early report, or a replay's
            # whole usage); message_delta carries the final figures.
            "usage": start_usage_dict(self._prompt_usage),
        }
        return (sse("message_start", {"type": "message_start", "message": message})
                + sse("ping", {"type": "ping"}))

    def _open_block(self, block: dict[str, Any]) -> bytes:
        return sse("content_block_start",
                   {"type": "content_block_start", "index": self._blocks, "content_block": block})

    def _stop_block(self) -> bytes:
        out = sse("content_block_stop", {"type": "content_block_stop", "index": self._blocks})
        self._blocks += 1
        return out

    def _text(self, text: str, *, answer: bool = True) -> bytes:
        out = self._flush_call()
        if not self._text_open:
            out += self._open_block({"type": "text", "text": ""})
            self._text_open = True
        if answer:
            # Only the tail matters for stop-sequence detection; keep it bounded.
            self._tail = (self._tail + text)[-256:]
        return out + sse("content_block_delta", {
            "type": "content_block_delta", "index": self._blocks,
            "delta": {"type": "text_delta", "text": text}})

    def _flush_call(self) -> bytes:
        call, self._call, self._call_index = self._call, None, None
        if call is None:
            return b""
        complete = ToolCall(call.id, call.name, "".join(call.arguments))
        arguments = tool_input(complete)
        if arguments is None:
            return self._text(invalid_call_text(complete), answer=False) + self._end_block()
        self._has_tool_use = True
        block = {"type": "tool_use", "id": complete.id, "name": complete.name, "input": {}}
        delta = {"type": "input_json_delta", "partial_json": orjson.dumps(arguments).decode()}
        return (self._open_block(block)
                + sse("content_block_delta", {"type": "content_block_delta",
                                              "index": self._blocks, "delta": delta})
                + self._stop_block())

    def _end_block(self) -> bytes:
        if self._text_open:
            self._text_open = False
            return self._stop_block()
        return self._flush_call()

    def render(self, event: StreamEvent) -> bytes:
        """The SSE bytes for one event (possibly none)."""
        if self._closed:
            return b""
        if isinstance(event, Start):
            self._id = self._id or event.id
            return b"" if self._started else self._start(event.id)
        if isinstance(event, UsageReport):
            self._usage = event.usage
            return b""
        if event.index != 0:
            return b""  # the Messages API has exactly one choice
        out = b"" if self._started else self._start(self._id)
        if isinstance(event, TextDelta):
            return out + (b"" if event.reasoning or not event.text else self._text(event.text))
        if isinstance(event, ToolCallDelta):
            if self._call is not None and event.call_index != self._call_index:
                out += self._flush_call()
            if self._call is None:
                out += self._end_block()
                # Same fallback id as ResultBuilder, so a replay shows the same ids.
                fallback = f"call_{self._id}_{event.index}_{event.call_index}"
                self._call = _PendingCall(event.id or fallback, event.name or "", [])
                self._call_index = event.call_index
            if event.name and not self._call.name:
                self._call.name = event.name
            self._call.arguments.append(event.arguments)
            return out
        if isinstance(event, Finish):
            self._finish = event.reason
            return out + self._end_block()
        return out

    def close(self) -> bytes:
        """message_delta (stop_reason, usage) and message_stop, once."""
        if self._closed:
            return b""
        out = b"" if self._started else self._start(self._id)
        out += self._end_block()
        self._closed = True
        reason, sequence = stop_reason(self._finish, self._has_tool_use, self._tail,
                                       stop_sequences(self.request))
        return out + sse("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": usage_dict(self._usage or self._input_only()),
        }) + sse("message_stop", {"type": "message_stop"})

    def keepalive(self, note: str) -> bytes:
        """Anthropic's `ping` once `message_start` is out; an SSE comment before it (a
        ping must never come first: the SDKs expect message_start to open the stream)."""
        if self._started and not self._closed:
            return sse("ping", {"type": "ping"})
        return keepalive_comment(note)

    def _input_only(self) -> Usage | None:
        # An upstream that reported no final usage: the prompt's, with no output counted.
        early = self._prompt_usage
        return None if early is None else Usage(early.prompt_tokens, 0, early.cached_tokens)

    def fail(self, error: CachelayerError) -> bytes:
        """An `error` event; the stream ends without message_stop, as Anthropic's do."""
        self._closed = True
        return sse("error", error_dict(error))
