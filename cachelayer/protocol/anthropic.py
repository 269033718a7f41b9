"""The Anthropic Messages edge: /v1/messages requests -> neutral, answers -> Messages API.

A Messages body is validated and translated into the OpenAI chat body the upstream
speaks. The translation is deterministic so that equivalent requests reach the same
cache key: text-only block lists become plain strings, tool arguments are serialised
with sorted keys, and fields with no local meaning (thinking, metadata, cache_control,
context_management, ...) are dropped before they can reach the key. The answer side
lives in `anthropic_stream`.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import orjson

from cachelayer.config import Settings
from cachelayer.errors import CachelayerError, InvalidRequest
from cachelayer.protocol.anthropic_stream import AnthropicStream, error_dict, render_message
from cachelayer.protocol.chat import ChatRequest, ChatResult, ClientApi, Kind
from cachelayer.protocol.openai import load_json_object
from cachelayer.protocol.sampling import SamplingError, check_sampling
from cachelayer.protocol.validate import field_error

log = logging.getLogger(__name__)

# Anthropic request fields with no local meaning, counted by name when dropped.
_KNOWN_DROPPED_FIELDS = frozenset({
    "metadata", "thinking", "context_management", "output_config", "service_tier",
    "container", "mcp_servers", "betas", "anthropic_version", "inference_geo",
})
# Top-level fields that change what the model is asked; everything else is dropped.
_KEPT_FIELDS = frozenset({"model", "messages", "max_tokens", "system", "tools", "tool_choice",
                          "stop_sequences", "temperature", "top_p", "top_k", "stream"})
# Assistant blocks that only the hosted API can verify or use.
_DROPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
ERROR_PREFIX = "Error: "


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str_field(obj: dict[str, Any], name: str, where: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise InvalidRequest(f"{where}.{name} must be a string")
    return value


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise InvalidRequest(f"{where}.source must be an object")
    if source.get("type") == "base64":
        media = _str_field(source, "media_type", f"{where}.source")
        data = _str_field(source, "data", f"{where}.source")
        url = f"data:{media};base64,{data}"
    elif source.get("type") == "url":
        url = _str_field(source, "url", f"{where}.source")
    else:
        raise InvalidRequest(f"{where}.source.type must be 'base64' or 'url'")
    return {"type": "image_url", "image_url": {"url": url}}


def _unsupported(block: dict[str, Any], where: str) -> InvalidRequest:
    return InvalidRequest(f"{where}.type {block['type']!r} is not supported here")


def _parts_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Text-only parts become one string, so equivalent requests give the same prompt."""
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


class _Translator:
    """Translates one request's system, messages and tools; remembers tool ids and drops."""

    def __init__(self) -> None:
        self.dropped: Counter[str] = Counter()
        # The tool_use ids of the assistant turn right before the current user turn: the
        # only calls a tool_result may answer (the Messages API's own rule).
        self.known_ids: set[str] = set()

    def blocks(self, content: Any, where: str) -> list[dict[str, Any]]:
        """A content value as a list of typed blocks; a string is one text block."""
        if isinstance(content, str):
            return [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise InvalidRequest(f"{where}.content must be a string or a list of content blocks")
        for i, block in enumerate(content):
            if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                raise InvalidRequest(f"{where}.content[{i}] must be an object with a string 'type'")
            if block["type"] == "text":
                _str_field(block, "text", f"{where}.content[{i}]")
            if "cache_control" in block:
                self.dropped["cache_control"] += 1
        return content

    def system_text(self, content: Any, where: str) -> str:
        """System text from a string or text blocks, joined by blank lines."""
        blocks = self.blocks(content, where)
        if not blocks:
            raise field_error(f"{where}.content", "a system turn needs content")
        for i, block in enumerate(blocks):
            if block["type"] != "text":
                raise InvalidRequest(f"{where}.content[{i}] must be a text block")
        return "\n\n".join(b["text"] for b in blocks)

    def tool_result(
        self, block: dict[str, Any], where: str, images: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """A tool_result block as an OpenAI tool message; its images go to the user turn."""
        call_id = _str_field(block, "tool_use_id", where)
        if call_id not in self.known_ids:
            raise field_error(f"{where}.tool_use_id",
                              f"{call_id!r} matches no tool_use in the assistant turn right "
                              "before it; a tool_result must follow its tool_use")
        is_error = block.get("is_error", False)
        if not isinstance(is_error, bool):
            raise InvalidRequest(f"{where}.is_error must be a boolean")
        texts: list[str] = []
        for i, inner in enumerate(self.blocks(block.get("content", ""), where)):
            if inner["type"] == "text":
                texts.append(inner["text"])
            elif inner["type"] == "image":
                # OpenAI tool messages carry text only; the image follows in the user turn.
                images.append(_image_part(inner, f"{where}.content[{i}]"))
            else:
                raise _unsupported(inner, f"{where}.content[{i}]")
        text = "\n".join(texts)
        return {"role": "tool", "tool_call_id": call_id,
                "content": ERROR_PREFIX + text if is_error else text}

    def user(self, content: Any, where: str) -> list[dict[str, Any]]:
        """A user turn: its tool results as tool messages first, then what the user wrote."""
        if isinstance(content, str):
            return [{"role": "user", "content": content}]
        out: list[dict[str, Any]] = []
        parts: list[dict[str, Any]] = []
        images: list[dict[str, Any]] = []
        for i, block in enumerate(self.blocks(content, where)):
            here = f"{where}.content[{i}]"
            kind = block["type"]
            if kind == "text":
                parts.append({"type": "text", "text": block["text"]})
            elif kind == "image":
                parts.append(_image_part(block, here))
            elif kind == "tool_result":
                out.append(self.tool_result(block, here, images))
            else:
                raise _unsupported(block, here)
        parts.extend(images)
        if not out and not parts:
            raise InvalidRequest(f"{where}.content must not be empty")
        if parts:
            out.append({"role": "user", "content": _parts_content(parts)})
        return out

    def assistant(self, content: Any, where: str) -> dict[str, Any]:
        """An assistant turn: its text, and its tool_use blocks as tool_calls."""
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        blocks = self.blocks(content, where)
        if not blocks:
            raise field_error(f"{where}.content", "an assistant turn needs content")
        self.known_ids = set()
        for i, block in enumerate(blocks):
            here = f"{where}.content[{i}]"
            kind = block["type"]
            if kind == "text":
                texts.append(block["text"])
            elif kind == "tool_use":
                call_id = _str_field(block, "id", here)
                name = _str_field(block, "name", here)
                arguments = block.get("input", {})
                if not isinstance(arguments, dict):
                    raise InvalidRequest(f"{here}.input must be an object")
                self.known_ids.add(call_id)
                calls.append({"id": call_id, "type": "function", "function": {
                    "name": name,
                    # Sorted keys: the same call always serialises to the same prompt.
                    "arguments": orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS).decode(),
                }})
            elif kind in _DROPPED_BLOCKS:
                self.dropped[f"block:{kind}"] += 1
            else:
                raise _unsupported(block, here)
        message: dict[str, Any] = {
            "role": "assistant", "content": "\n".join(texts) if texts or not calls else None}
        if calls:
            message["tool_calls"] = calls
        return message

    def messages(self, raw: Any) -> list[dict[str, Any]]:
        """The conversation as OpenAI messages, in order."""
        if not isinstance(raw, list) or not raw:
            raise InvalidRequest("'messages' must be a non-empty list")
        out: list[dict[str, Any]] = []
        for i, message in enumerate(raw):
            where = f"messages[{i}]"
            if not isinstance(message, dict):
                raise InvalidRequest(f"{where} must be an object")
            role, content = message.get("role"), message.get("content")
            if role == "user":
                out.extend(self.user(content, where))
                self.known_ids = set()  # answered here or never
            elif role == "assistant":
                out.append(self.assistant(content, where))
            elif role == "system":
                # Claude Code puts environment details in system turns between user turns.
                out.append({"role": "system", "content": self.system_text(content, where)})
            else:
                raise InvalidRequest(
                    f"{where}.role {role!r} must be 'user', 'assistant' or 'system'")
        return out

    def tools(self, raw: Any) -> list[dict[str, Any]]:
        """Client tools as OpenAI function tools; server tools are dropped."""
        if not isinstance(raw, list):
            raise InvalidRequest("'tools' must be a list of tool definitions")
        out = []
        for i, tool in enumerate(raw):
            where = f"tools[{i}]"
            if not isinstance(tool, dict):
                raise InvalidRequest(f"{where} must be an object")
            kind = tool.get("type", "custom")
            if kind != "custom":
                # Server tools (web_search, code_execution...) run at Anthropic, not here.
                self.dropped[f"tool:{kind}"] += 1
                continue
            function: dict[str, Any] = {"name": _str_field(tool, "name", where)}
            if "description" in tool:
                function["description"] = _str_field(tool, "description", where)
            schema = tool.get("input_schema")
            if not isinstance(schema, dict):
                raise InvalidRequest(f"{where}.input_schema must be an object")
            function["parameters"] = schema
            if "cache_control" in tool:
                self.dropped["cache_control"] += 1
            out.append({"type": "function", "function": function})
        return out


def _tool_choice(raw: Any, names: set[str]) -> tuple[Any, bool]:
    """OpenAI's tool_choice, and whether parallel calls were switched off."""
    if not isinstance(raw, dict) or raw.get("type") not in (*_TOOL_CHOICES, "tool"):
        raise InvalidRequest("'tool_choice' must be an object with type auto, any, tool or none")
    serial = raw.get("disable_parallel_tool_use", False)
    if not isinstance(serial, bool):
        raise InvalidRequest("tool_choice.disable_parallel_tool_use must be a boolean")
    if raw["type"] != "tool":
        return _TOOL_CHOICES[raw["type"]], serial
    name = _str_field(raw, "name", "tool_choice")
    if name not in names:
        raise InvalidRequest(f"tool_choice.name {name!r} is not one of the request's tools")
    return {"type": "function", "function": {"name": name}}, serial


def _sampling(body: dict[str, Any], out: dict[str, Any]) -> None:
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            if not _is_number(value) or not 0 <= value <= 1:
                raise InvalidRequest(f"'{name}' must be a number between 0 and 1", param=name)
            out[name] = value
    top_k = body.get("top_k")
    if top_k is not None:
        if not _is_int(top_k) or top_k < 0:
            raise InvalidRequest("'top_k' must be a non-negative integer")
        out["top_k"] = top_k
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise InvalidRequest("'stop_sequences' must be a list of strings")
        if stops:
            out["stop"] = stops


def upstream_model(settings: Settings, client_model: str) -> str:
    """The upstream model for a client's name: the model map, then a default, else as is."""
    mapped = settings.model_map.get(client_model)
    if mapped:
        return mapped
    return settings.default_model or client_model


def translate(
    body: dict[str, Any], settings: Settings, *, need_max_tokens: bool = True
) -> tuple[dict[str, Any], Counter[str]]:
    """A Messages body as an OpenAI chat body, and what was dropped on the way."""
    translator = _Translator()
    dropped = translator.dropped
    # Named only when Anthropic's API has the field: a client's invented names would
    # otherwise grow the codec's counter without bound.
    dropped.update(f"field:{k}" if k in _KNOWN_DROPPED_FIELDS else "field:other"
                   for k in body if k not in _KEPT_FIELDS)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequest("'stream' must be a boolean")
    messages = []
    if body.get("system") is not None:
        text = translator.system_text(body["system"], "system")
        if text:
            messages.append({"role": "system", "content": text})
    messages.extend(translator.messages(body.get("messages")))
    out: dict[str, Any] = {"model": upstream_model(settings, model), "messages": messages}
    max_tokens = body.get("max_tokens")
    if max_tokens is not None or need_max_tokens:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise InvalidRequest("'max_tokens' must be a positive integer")
        # Claude Code asks for 128000; a local server would try to honour it.
        out["max_tokens"] = min(max_tokens, settings.max_tokens_cap)
    if body.get("tools") is not None:
        tools = translator.tools(body["tools"])
        if tools:
            out["tools"] = tools
    if body.get("tool_choice") is not None:
        names = {t["function"]["name"] for t in out.get("tools", ())}
        choice, serial = _tool_choice(body["tool_choice"], names)
        if names:
            out["tool_choice"] = choice
            if serial:
                out["parallel_tool_calls"] = False
        else:
            dropped["field:tool_choice"] += 1
    _sampling(body, out)
    try:  # the rules every field reaching the model follows, whatever the client API
        check_sampling(out)
    except SamplingError as exc:
        name = {"stop": "stop_sequences"}.get(exc.field, exc.field)
        raise field_error(name, exc.problem) from exc
    return out, dropped


def estimate_tokens(body: dict[str, Any]) -> int:
    """A rough prompt size: one token per 4 bytes of canonical system+messages+tools JSON.

    Used for count_tokens when the upstream cannot count with the real tokenizer. Four
    bytes per token is the usual figure for English text and code under BPE tokenizers;
    it ignores the chat template, so it errs a little low.
    """
    material = {k: body[k] for k in ("system", "messages", "tools") if body.get(k) is not None}
    size = len(orjson.dumps(material, option=orjson.OPT_SORT_KEYS))
    return max(1, (size + 3) // 4)


def render_error(error: CachelayerError) -> bytes:
    """An error body in Anthropic's shape."""
    return orjson.dumps(error_dict(error))


class AnthropicCodec:
    """The Anthropic Messages edge."""

    api: ClientApi = "anthropic"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # How often each client-only field or block was dropped, for diagnostics.
        self.dropped: Counter[str] = Counter()

    def _translate(
        self, raw: bytes, need_max_tokens: bool
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        body = load_json_object(raw)
        neutral, dropped = translate(body, self.settings, need_max_tokens=need_max_tokens)
        if dropped:
            self.dropped.update(dropped)
            log.debug("dropped with no local meaning: %s", dict(sorted(dropped.items())))
        return neutral, body

    def parse_request(self, kind: Kind, raw: bytes) -> ChatRequest:
        """Validate a Messages body and make it a neutral chat request."""
        if kind != "chat":
            raise InvalidRequest("the Messages API only has chat requests")
        neutral, body = self._translate(raw, need_max_tokens=True)
        stream = bool(body.get("stream", False))
        return ChatRequest(kind="chat", body=neutral, stream=stream, client_api="anthropic",
                           include_usage=stream, client_model=body["model"])

    def parse_count_request(self, raw: bytes) -> dict[str, Any]:
        """Validate a count_tokens body (no max_tokens there) into an OpenAI chat body."""
        return self._translate(raw, need_max_tokens=False)[0]

    def render_response(self, result: ChatResult, request: ChatRequest) -> bytes:
        """The complete Anthropic message; same result, same bytes."""
        return orjson.dumps(render_message(result, request))

    def stream_renderer(self, request: ChatRequest) -> AnthropicStream:
        """Anthropic SSE events for one answer."""
        return AnthropicStream(request)

    def render_error(self, error: CachelayerError) -> bytes:
        """Anthropic's error shape."""
        return render_error(error)
