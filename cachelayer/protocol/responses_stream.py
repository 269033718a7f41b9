"""The Responses edge, answer side: neutral results and stream events -> response objects.

The complete object (`render_object`) and the SSE stream (`ResponsesStream`) are built
from the same item helpers, so a stored result reads the same either way and the
streamed `response.completed` equals the non-streamed body (ids included: every id is
derived from the upstream's result id, so a replay shows the ids of the original).

Stream, per the openai SDK and Codex: `response.created`, `response.in_progress`, then
per output item `response.output_item.added`, its parts (`response.content_part.added`,
`response.output_text.delta`/`.done`, `response.content_part.done` for a message;
`response.function_call_arguments.delta`/`.done` for a call; `response.reasoning_text.*`
for reasoning), `response.output_item.done`; finally `response.completed` (or
`response.incomplete` at max_output_tokens). Every event carries `sequence_number`.
A stream that fails after it began ends with `response.failed`, which Codex reports.
Only the first choice is rendered: a response has one output list.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
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


def _h(text: str) -> str:
    return xxhash.xxh3_128_hexdigest(text.encode())


def response_id(result_id: str) -> str:
    """A stable response id derived from the upstream's id (same result, same id)."""
    return result_id if result_id.startswith("resp_") else "resp_" + _h(result_id)


def usage_dict(usage: Usage | None) -> dict[str, Any] | None:
    """Responses' usage: cached_tokens is what the backend reused (0 when not reported)."""
    if usage is None:
        return None
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": min(usage.cached_tokens or 0,
                                                      usage.prompt_tokens)},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def message_item(rid: str, text: str, status: str = "completed") -> dict[str, Any]:
    """An assistant message output item."""
    content = [_text_part(text)] if status == "completed" else []
    return {"id": "msg_" + _h(rid + ":msg")[:32], "type": "message", "status": status,
            "role": "assistant", "content": content}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def reasoning_item(rid: str, text: str, done: bool = True) -> dict[str, Any]:
    """A reasoning output item carrying the local model's thinking as plain text."""
    item: dict[str, Any] = {"id": "rs_" + _h(rid + ":rs")[:32], "type": "reasoning",
                            "summary": []}
    if done:
        item["content"] = [{"type": "reasoning_text", "text": text}]
    return item


def call_item(call: ToolCall, status: str = "completed") -> dict[str, Any]:
    """A function_call output item; call_id is what the client answers with."""
    return {"id": "fc_" + _h(call.id)[:32], "type": "function_call", "status": status,
            "call_id": call.id, "name": call.name,
            "arguments": call.arguments if status == "completed" else ""}


def output_items(result: ChatResult) -> list[dict[str, Any]]:
    """The output list of a complete result: reasoning, message, then calls."""
    rid = response_id(result.id)
    choice = result.choices[0] if result.choices else None
    if choice is None:
        return []
    items = []
    if choice.reasoning:
        items.append(reasoning_item(rid, choice.reasoning))
    if choice.text or not choice.tool_calls:
        items.append(message_item(rid, choice.text))
    items.extend(call_item(call) for call in choice.tool_calls)
    return items


def response_object(rid: str, created: int, request: ChatRequest, status: str,
                    output: list[dict[str, Any]], usage: Usage | None) -> dict[str, Any]:
    """The response object, echoing what the request asked for."""
    extra: Mapping[str, Any] = request.extra or {}
    echo: Mapping[str, Any] = extra.get("echo") or {}
    obj: dict[str, Any] = {
        "id": rid, "object": "response", "created_at": created, "status": status,
        "error": None,
        "incomplete_details": ({"reason": "max_output_tokens"} if status == "incomplete"
                               else None),
        "instructions": echo.get("instructions"),
        "max_output_tokens": echo.get("max_output_tokens"),
        "model": request.client_model,
        "output": output,
        "parallel_tool_calls": echo.get("parallel_tool_calls", True),
        "previous_response_id": echo.get("previous_response_id"),
        "reasoning": echo.get("reasoning") or {"effort": None, "summary": None},
        "store": echo.get("store", True),
        "temperature": echo.get("temperature"),
        "text": echo.get("text") or {"format": {"type": "text"}},
        "tool_choice": echo.get("tool_choice", "auto"),
        "tools": echo.get("tools") or [],
        "top_p": echo.get("top_p"),
        "truncation": "disabled",
        "usage": usage_dict(usage),
        "metadata": echo.get("metadata") or {},
    }
    if echo.get("prompt_cache_key") is not None:
        obj["prompt_cache_key"] = echo["prompt_cache_key"]
    return obj


def final_status(finish: str | None) -> str:
    """completed, or incomplete when the answer stopped at max_output_tokens."""
    return "incomplete" if finish == "length" else "completed"


def render_object(result: ChatResult, request: ChatRequest) -> dict[str, Any]:
    """The complete response object for a result."""
    choice = result.choices[0] if result.choices else None
    return response_object(response_id(result.id), result.created, request,
                           final_status(choice.finish_reason if choice else None),
                           output_items(result), result.usage)


def error_dict(error: CachelayerError) -> dict[str, Any]:
    """OpenAI's error object, as the Responses API answers it."""
    return {"error": {"message": error.message, "type": error.openai_type,
                      "param": error.param, "code": error.status}}


def render_error(error: CachelayerError) -> bytes:
    """An error body in OpenAI's shape."""
    return orjson.dumps(error_dict(error))


class ResponsesStream:
    """Renders neutral stream events as the Responses SSE sequence for one answer.

    Items open when their first piece arrives and close when another kind starts or the
    stream ends. A keep-alive (an SSE comment) may be written between any two renders.
    """

    def __init__(self, request: ChatRequest) -> None:
        self.request = request
        self._seq = 0
        self._rid = ""
        self._created = 0
        self._started = False
        self._closed = False
        self._output: list[dict[str, Any]] = []
        self._open: str | None = None  # "msg", "rs" or "fc"
        self._parts: list[str] = []
        self._call: ToolCall | None = None
        self._call_index: int | None = None
        self._finish: str | None = None
        self._usage: Usage | None = None
        self._start_id = ""
        # Set when a keep-alive created the response before the upstream's first chunk:
        # the result is then stored under this id, so previous_response_id finds it.
        self.early_id: str | None = None

    def _event(self, event_type: str, /, **data: Any) -> bytes:
        body = {"type": event_type, "sequence_number": self._seq, **data}
        self._seq += 1
        return b"event: " + event_type.encode() + b"\ndata: " + orjson.dumps(body) + b"\n\n"

    def _object(self, status: str) -> dict[str, Any]:
        return response_object(self._rid, self._created, self.request, status,
                               list(self._output), self._usage if status != "in_progress"
                               else None)

    def _start(self, event: Start | None, rid: str = "") -> bytes:
        self._started = True
        self._rid = rid or response_id(event.id if event else "")
        self._created = event.created if event else 0
        pending = self._object("in_progress")
        return (self._event("response.created", response=pending)
                + self._event("response.in_progress", response=pending))

    def _where(self) -> dict[str, Any]:
        return {"output_index": len(self._output)}

    def _open_item(self, kind: str, item: dict[str, Any]) -> bytes:
        self._open, self._parts = kind, []
        out = self._event("response.output_item.added", item=item, **self._where())
        if kind == "msg":
            out += self._event("response.content_part.added", item_id=item["id"],
                               content_index=0, part=_text_part(""), **self._where())
        return out

    def _text(self, text: str, reasoning: bool) -> bytes:
        kind = "rs" if reasoning else "msg"
        out = b""
        if self._open != kind:
            out += self._close_item()
            item = (reasoning_item(self._rid, "", done=False) if reasoning
                    else message_item(self._rid, "", status="in_progress"))
            out += self._open_item(kind, item)
        self._parts.append(text)
        name = "response.reasoning_text.delta" if reasoning else "response.output_text.delta"
        item_id = (reasoning_item if reasoning else message_item)(self._rid, "")["id"]
        extra: dict[str, Any] = {} if reasoning else {"logprobs": []}
        return out + self._event(name, item_id=item_id, content_index=0, delta=text,
                                 **extra, **self._where())

    def _close_item(self) -> bytes:
        kind, self._open = self._open, None
        text = "".join(self._parts)
        if kind == "msg":
            item = message_item(self._rid, text)
            out = (self._event("response.output_text.done", item_id=item["id"],
                               content_index=0, text=text, logprobs=[], **self._where())
                   + self._event("response.content_part.done", item_id=item["id"],
                                 content_index=0, part=_text_part(text), **self._where()))
        elif kind == "rs":
            item = reasoning_item(self._rid, text)
            out = self._event("response.reasoning_text.done", item_id=item["id"],
                              content_index=0, text=text, **self._where())
        elif kind == "fc" and self._call is not None:
            call = ToolCall(self._call.id, self._call.name, text)
            item = call_item(call)
            out = self._event("response.function_call_arguments.done", item_id=item["id"],
                              name=call.name, arguments=text, **self._where())
            self._call = self._call_index = None
        else:
            return b""
        out += self._event("response.output_item.done", item=item, **self._where())
        self._output.append(item)
        return out

    def _tool_delta(self, event: ToolCallDelta) -> bytes:
        out = b""
        if self._open != "fc" or event.call_index != self._call_index:
            out += self._close_item()
            # Same fallback id as ResultBuilder, so a replay shows the same ids.
            ident = event.id or f"call_{self._start_id}_{event.index}_{event.call_index}"
            self._call = ToolCall(ident, event.name or "", "")
            self._call_index = event.call_index
            out += self._open_item("fc", call_item(self._call, status="in_progress"))
        if event.arguments:
            self._parts.append(event.arguments)
            out += self._event("response.function_call_arguments.delta",
                               item_id=call_item(self._call)["id"] if self._call else "",
                               delta=event.arguments, **self._where())
        return out

    def render(self, event: StreamEvent) -> bytes:
        """The SSE bytes for one event (possibly none)."""
        if self._closed:
            return b""
        if isinstance(event, Start):
            self._start_id = self._start_id or event.id
            return b"" if self._started else self._start(event)
        if isinstance(event, UsageReport):
            self._usage = event.usage
            return b""
        if event.index != 0:
            return b""  # a response has one output list
        out = b"" if self._started else self._start(None)
        if isinstance(event, TextDelta):
            return out + (self._text(event.text, event.reasoning) if event.text else b"")
        if isinstance(event, ToolCallDelta):
            return out + self._tool_delta(event)
        if isinstance(event, Finish):
            self._finish = event.reason
            return out + self._close_item()
        return out

    def close(self) -> bytes:
        """The last item's end and response.completed (or .incomplete), once."""
        if self._closed:
            return b""
        out = b"" if self._started else self._start(None)
        out += self._close_item()
        if not any(item["type"] in ("message", "function_call") for item in self._output):
            # An answer with no text and no call is one empty message, as in output_items.
            out += self._open_item("msg", message_item(self._rid, "", status="in_progress"))
            out += self._close_item()
        self._closed = True
        status = final_status(self._finish)
        return out + self._event(f"response.{status}", response=self._object(status))

    def keepalive(self, note: str) -> bytes:
        """The Responses API's own events while the upstream is silent: Codex resets its
        stream idle timer on events, not on comments, so a long prefill must not leave it
        without one. The first keep-alive creates the response under an id of the proxy's
        own (`early_id`; the upstream's id is not known before its first chunk), later
        ones are `response.in_progress`."""
        if self._closed:
            return keepalive_comment(note)
        if not self._started:
            self.early_id = "resp_" + secrets.token_hex(16)
            return self._start(None, self.early_id)
        return self._event("response.in_progress", response=self._object("in_progress"))

    def fail(self, error: CachelayerError) -> bytes:
        """response.failed carrying the error; the stream ends there."""
        out = b"" if self._started else self._start(None)
        self._closed = True
        failed = self._object("failed")
        failed["error"] = {"code": "server_error" if error.status >= 500
                           else "invalid_request", "message": error.message}
        return out + self._event("response.failed", response=failed)
