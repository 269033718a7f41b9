"""The OpenAI edge: chat/text completion requests, responses and SSE chunks <-> neutral."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import orjson

from cachelayer.errors import CachelayerError, InvalidRequest, UpstreamProtocolError
from cachelayer.protocol.chat import (
    ChatRequest,
    ChatResult,
    Choice,
    ClientApi,
    Finish,
    Kind,
    ResultBuilder,
    Start,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageReport,
)
from cachelayer.protocol.sampling import SamplingError, check_sampling, without_nulls
from cachelayer.protocol.validate import (
    check_openai_messages,
    check_part_type,
    check_tool_choice,
    field_error,
)

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
SSE_DONE = b"data: [DONE]\n\n"


def load_json_object(raw: bytes) -> dict[str, Any]:
    """Parse a request body that must be one JSON object."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        # orjson reads 1024 levels but writes only 254: refuse what cannot be keyed or sent.
        orjson.dumps(body)
    except orjson.JSONEncodeError as exc:
        raise InvalidRequest("request body nests JSON too deeply (254 levels at most)") from exc
    return body


def _check_common(body: Mapping[str, Any]) -> None:
    if "model" in body and not isinstance(body["model"], str):
        raise InvalidRequest("'model' must be a string")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequest("'stream' must be a boolean")
    try:
        check_sampling(body)
    except SamplingError as exc:
        raise field_error(exc.field, exc.problem) from exc
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object")


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages[{i}] must be an object")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise InvalidRequest(f"messages[{i}].role {role!r} is not one of {sorted(CHAT_ROLES)}")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidRequest(f"messages[{i}].content must be a string or a list of parts")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type", ""), str):
                    raise InvalidRequest(f"messages[{i}].content[{j}] must be an object "
                                         "with a string 'type'")
                check_part_type(part.get("type"), f"messages[{i}].content[{j}]")
                if part.get("type") == "text" and not isinstance(part.get("text"), str):
                    raise InvalidRequest(f"messages[{i}].content[{j}].text must be a string")
    check_openai_messages(messages)


def parse_request(kind: Kind, raw: bytes) -> ChatRequest:
    """Validate an OpenAI chat or text completion body and make it neutral."""
    body = load_json_object(raw)
    _check_common(body)
    if kind == "chat":
        _check_messages(body.get("messages"))
        tools = body.get("tools")
        if tools is not None and not (
            isinstance(tools, list) and all(isinstance(t, dict) for t in tools)
        ):
            raise InvalidRequest("'tools' must be a list of objects")
        check_tool_choice(body.get("tool_choice"), tools)
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, (str, list)) or (isinstance(prompt, list) and not prompt):
            raise InvalidRequest("'prompt' must be a string or a non-empty list")
    options = body.get("stream_options") or {}
    stream = bool(body.get("stream", False))
    neutral = {k: v for k, v in without_nulls(body).items()
               if k not in ("stream", "stream_options")}
    return ChatRequest(
        kind=kind,
        body=neutral,
        stream=stream,
        client_api="openai",
        include_usage=stream and bool(options.get("include_usage")),
        client_model=str(body.get("model", "")),
    )


def upstream_body(request: ChatRequest) -> dict[str, Any]:
    """The body to send upstream; streams always ask for usage, which the ledger needs."""
    body = dict(request.body)
    body["stream"] = request.stream
    if request.stream:
        body["stream_options"] = {"include_usage": True}
    return body


# -- upstream answers -> neutral ---------------------------------------------------------


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    details = raw.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
        cached_tokens=int(cached) if isinstance(cached, int) else None,
    )


def parse_chunk(kind: Kind, chunk: Mapping[str, Any]) -> list[StreamEvent]:
    """What one streamed OpenAI chunk means, as neutral events."""
    events: list[StreamEvent] = [
        Start(
            id=str(chunk.get("id", "")),
            model=str(chunk.get("model", "")),
            created=int(chunk.get("created") or 0),
            system_fingerprint=chunk.get("system_fingerprint"),
        )
    ]
    for choice in chunk.get("choices") or ():
        index = int(choice.get("index", 0))
        if kind == "text":
            if choice.get("text"):
                events.append(TextDelta(index, choice["text"]))
        else:
            delta = choice.get("delta") or {}
            if delta.get("reasoning"):
                events.append(TextDelta(index, delta["reasoning"], reasoning=True))
            if delta.get("content"):
                events.append(TextDelta(index, delta["content"]))
            for pos, call in enumerate(delta.get("tool_calls") or ()):
                function = call.get("function") or {}
                events.append(
                    ToolCallDelta(
                        index=index,
                        call_index=int(call.get("index", pos)),
                        id=call.get("id"),
                        name=function.get("name"),
                        arguments=function.get("arguments") or "",
                    )
                )
        if choice.get("finish_reason"):
            events.append(Finish(index, choice["finish_reason"]))
    usage = _usage(chunk.get("usage"))
    if usage is not None:
        events.append(UsageReport(usage))
    return events


def parse_response(kind: Kind, raw: bytes) -> ChatResult:
    """Turn a complete (non-streamed) upstream answer into the canonical result."""
    try:
        data = orjson.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise ValueError("no 'choices' list")
        builder = ResultBuilder(kind)
        builder.add(Start(str(data.get("id", "")), str(data.get("model", "")),
                          int(data.get("created") or 0), data.get("system_fingerprint")))
        for choice in data["choices"]:
            index = int(choice.get("index", 0))
            if kind == "text":
                builder.add(TextDelta(index, str(choice.get("text") or "")))
            else:
                message = choice.get("message") or {}
                builder.add(TextDelta(index, str(message.get("reasoning") or ""), True))
                builder.add(TextDelta(index, str(message.get("content") or "")))
                for pos, call in enumerate(message.get("tool_calls") or ()):
                    fn = call.get("function") or {}
                    builder.add(ToolCallDelta(index, pos, call.get("id"), fn.get("name"),
                                              str(fn.get("arguments") or "")))
            builder.add(Finish(index, choice.get("finish_reason")))
        usage = _usage(data.get("usage"))
        if usage is not None:
            builder.add(UsageReport(usage))
        return builder.result()
    except (ValueError, TypeError, AttributeError, orjson.JSONDecodeError) as exc:
        raise UpstreamProtocolError(f"upstream answered an invalid completion: {exc}") from exc


# -- neutral -> OpenAI wire ----------------------------------------------------------------


def usage_dict(usage: Usage) -> dict[str, Any]:
    """OpenAI's usage object; cached_tokens only where the upstream measured it."""
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }
    if usage.cached_tokens is not None:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    return out


def _tool_calls(calls: tuple[ToolCall, ...]) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


def _choice_dict(kind: Kind, choice: Choice) -> dict[str, Any]:
    if kind == "text":
        return {"index": choice.index, "text": choice.text, "logprobs": None,
                "finish_reason": choice.finish_reason}
    message: dict[str, Any] = {"role": "assistant", "content": choice.text or None}
    if choice.reasoning:
        message["reasoning"] = choice.reasoning
    if choice.tool_calls:
        message["tool_calls"] = _tool_calls(choice.tool_calls)
    return {"index": choice.index, "message": message, "logprobs": None,
            "finish_reason": choice.finish_reason}


def render_response(result: ChatResult) -> bytes:
    """The non-streamed OpenAI answer for a result; same result, same bytes."""
    out: dict[str, Any] = {
        "id": result.id,
        "object": "chat.completion" if result.kind == "chat" else "text_completion",
        "created": result.created,
        "model": result.model,
        "choices": [_choice_dict(result.kind, c) for c in result.choices],
    }
    if result.usage is not None:
        out["usage"] = usage_dict(result.usage)
    if result.system_fingerprint is not None:
        out["system_fingerprint"] = result.system_fingerprint
    return orjson.dumps(out)


class ChunkRenderer:
    """Renders neutral stream events as OpenAI SSE chunks for one replayed answer."""

    def __init__(self, kind: Kind, include_usage: bool) -> None:
        self.kind: Kind = kind
        self.include_usage = include_usage
        self._head: dict[str, Any] = {}
        self._role_sent: set[int] = set()

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {**self._head, "choices": choices, **extra}
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def _delta(self, index: int, delta: dict[str, Any]) -> dict[str, Any]:
        if self.kind == "text":
            return {"index": index, "text": delta.get("content", ""), "finish_reason": None}
        if index not in self._role_sent:
            self._role_sent.add(index)
            delta = {"role": "assistant", **delta}
        return {"index": index, "delta": delta, "finish_reason": None}

    def render(self, event: StreamEvent) -> bytes:
        """The SSE bytes for one event (possibly none)."""
        if isinstance(event, Start):
            obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
            self._head = {"id": event.id, "object": obj, "created": event.created,
                          "model": event.model}
            if event.system_fingerprint is not None:
                self._head["system_fingerprint"] = event.system_fingerprint
            return b""
        if isinstance(event, TextDelta):
            key = "reasoning" if event.reasoning else "content"
            return self._chunk([self._delta(event.index, {key: event.text})])
        if isinstance(event, ToolCallDelta):
            call: dict[str, Any] = {"index": event.call_index, "type": "function",
                                    "function": {"arguments": event.arguments}}
            if event.id:
                call["id"] = event.id
            if event.name:
                call["function"]["name"] = event.name
            return self._chunk([self._delta(event.index, {"tool_calls": [call]})])
        if isinstance(event, Finish):
            choice = self._delta(event.index, {})
            choice["finish_reason"] = event.reason
            return self._chunk([choice])
        if self.include_usage:
            return self._chunk([], usage=usage_dict(event.usage))
        return b""

    def close(self) -> bytes:
        """The stream's terminator."""
        return SSE_DONE

    def keepalive(self, note: str) -> bytes:
        """An SSE comment, which OpenAI clients skip: it only keeps the stream alive."""
        return keepalive_comment(note)


def keepalive_comment(note: str) -> bytes:
    """`: keepalive N/M`, the line every API may carry before its first event."""
    return b": " + note.replace("\n", " ").encode() + b"\n\n"


def render_error(error: CachelayerError) -> bytes:
    """An error body in OpenAI's shape."""
    return orjson.dumps(
        {"error": {"message": error.message, "type": error.openai_type, "param": error.param,
                   "code": error.status}}
    )


class _OpenAIStream(ChunkRenderer):
    def fail(self, error: CachelayerError) -> bytes:
        # OpenAI has no error event; clients surface a data line carrying an error object.
        return b"data: " + render_error(error) + b"\n\n"


class OpenAICodec:
    """The OpenAI chat and text completions edge."""

    api: ClientApi = "openai"

    def __init__(self, model_map: Mapping[str, str] | None = None) -> None:
        self.model_map = dict(model_map or {})

    def parse_request(self, kind: Kind, raw: bytes) -> ChatRequest:
        """Validate and neutralise an OpenAI body; --model-map renames the model sent on."""
        request = parse_request(kind, raw)
        mapped = self.model_map.get(request.client_model)
        if mapped:
            request = dataclasses.replace(request, body={**request.body, "model": mapped})
        return request

    def render_response(self, result: ChatResult, request: ChatRequest) -> bytes:
        """The non-streamed OpenAI answer."""
        return render_response(result)

    def stream_renderer(self, request: ChatRequest) -> _OpenAIStream:
        """OpenAI SSE chunks for one answer."""
        return _OpenAIStream(request.kind, request.include_usage)

    def render_error(self, error: CachelayerError) -> bytes:
        """OpenAI's error shape."""
        return render_error(error)
