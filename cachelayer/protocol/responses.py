"""The Responses edge, request side: a `POST /v1/responses` body -> the neutral chat body.

Shaped by what Codex CLI 0.171 really sends (tests/fixtures/codex/): no `instructions`
but developer messages, the whole history as `input` items each turn (messages with
`input_text`/`output_text` parts, `function_call`, `function_call_output`, `reasoning`),
function tools beside a `namespace` tool group and `web_search`, `store: false`,
`include`, `prompt_cache_key` and `client_metadata`.

The translation is deterministic, so the same conversation sent over chat completions
reaches the same key and the same KV: item ids and statuses are dropped (Codex mints a
new id per item), `developer` becomes `system`, text-only parts become one string, and
consecutive function calls become one assistant turn with several tool_calls.

What cannot run here is said, never silently changed:
* tools other than `function` (web_search, namespace groups, file_search, mcp,
  local_shell, custom...) are hosted or unknown here: dropped and counted, because
  Codex declares them on every request and a 400 would make it unusable;
* `reasoning` items (encrypted or summaries of the hosted model's thinking) are dropped
  and counted: no local model can read them;
* `background`, `conversation`, `prompt`, item types this edge does not know, and tool
  choices naming hosted tools are a 400 naming the field: they would change the answer.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from cachelayer.errors import InvalidRequest
from cachelayer.protocol.sampling import SamplingError, check_sampling
from cachelayer.protocol.validate import check_openai_messages, field_error

# Request fields this edge knows: translated, echoed, or (changing nothing a local model
# does) accepted and dropped. Any other field is dropped and counted as field:other.
KNOWN_FIELDS = frozenset({
    "store", "include", "prompt_cache_key", "metadata", "client_metadata", "user",
    "safety_identifier", "service_tier", "truncation", "stream_options", "reasoning",
    "top_logprobs", "prompt_cache_retention", "max_tool_calls", "previous_response_id",
    "stream", "model", "instructions", "input", "tools", "tool_choice",
    "parallel_tool_calls", "max_output_tokens", "temperature", "top_p", "text",
})
# Fields that would change the answer and that this edge cannot honour.
REFUSED_FIELDS = {
    "background": "background responses are not supported; send the request without it",
    "conversation": "conversation objects are not supported; use previous_response_id",
    "prompt": "stored prompt templates are not supported; send instructions and input",
}
_PART_TEXT = frozenset({"input_text", "output_text", "text", "refusal", "summary_text",
                        "reasoning_text"})
_ROLES = {"user": "user", "assistant": "assistant", "system": "system",
          "developer": "system"}
_TOOL_CHOICES = frozenset({"auto", "none", "required"})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _string(item: dict[str, Any], name: str, where: str, *, empty: bool = False) -> str:
    value = item.get(name)
    if not isinstance(value, str) or (not empty and not value):
        raise field_error(f"{where}.{name}", "must be a non-empty string" if not empty
                          else "must be a string")
    return value


def _parts(content: Any, where: str) -> str | list[dict[str, Any]]:
    """Message content as a chat content value: text-only parts become one string."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise field_error(f"{where}.content", "must be a string or a list of content parts")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        here = f"{where}.content[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise field_error(here, "must be an object with a string 'type'")
        kind = part["type"]
        if kind in _PART_TEXT:
            parts.append({"type": "text", "text": _string(part, kind if kind == "refusal"
                                                           else "text", here, empty=True)})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise field_error(f"{here}.image_url",
                                  "an image needs an image_url (file_id is not supported)")
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            raise field_error(f"{here}.type", f"content part {kind!r} is not supported here")
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def _output_text(output: Any, where: str) -> str:
    if isinstance(output, str):
        return output
    content = _parts(output, where)
    if not isinstance(content, str):
        raise field_error(f"{where}.output", "a tool output carries text only")
    return content


class ItemTranslator:
    """Input items -> chat messages, remembering the calls made and what was dropped."""

    def __init__(self, chained: bool = False) -> None:
        self.dropped: Counter[str] = Counter()
        # A chained request may answer calls of the stored conversation: checked once the
        # history is known (with_history), not here.
        self.chained = chained
        self.called: set[str] = set()
        self.messages: list[dict[str, Any]] = []

    def _open_assistant(self) -> dict[str, Any]:
        # Consecutive calls (and the text right before them) are one assistant turn.
        last = self.messages[-1] if self.messages else None
        if last is not None and last["role"] == "assistant":
            return last
        message: dict[str, Any] = {"role": "assistant", "content": None}
        self.messages.append(message)
        return message

    def _call(self, call_id: str, name: str, arguments: str) -> None:
        message = self._open_assistant()
        message.setdefault("tool_calls", []).append(
            {"id": call_id, "type": "function",
             "function": {"name": name, "arguments": arguments}})
        self.called.add(call_id)

    def _output(self, item: dict[str, Any], where: str) -> None:
        call_id = _string(item, "call_id", where)
        if call_id not in self.called and not self.chained:
            raise field_error(f"{where}.call_id",
                              f"{call_id!r} answers no function_call earlier in the input "
                              "(or in the previous response)")
        self.messages.append({"role": "tool", "tool_call_id": call_id,
                              "content": _output_text(item.get("output"), where)})

    def item(self, item: Any, where: str) -> None:
        """Translate one input item."""
        if not isinstance(item, dict):
            raise field_error(where, "must be an object")
        kind = item.get("type", "message")
        if not isinstance(kind, str):
            raise field_error(f"{where}.type", "must be a string")
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise field_error(f"{where}.role", f"{role!r} is not one of "
                                  f"{sorted(_ROLES)}")
            content = _parts(item.get("content"), where)
            if _ROLES[role] == "assistant":
                last = self.messages[-1] if self.messages else None
                if last is not None and last["role"] == "assistant" and not last.get(
                        "tool_calls") and isinstance(content, str) and isinstance(
                        last["content"], str):
                    last["content"] += "\n" + content
                    return
                self.messages.append({"role": "assistant", "content": content})
            else:
                self.messages.append({"role": _ROLES[role], "content": content})
        elif kind == "function_call":
            self._call(_string(item, "call_id", where), _string(item, "name", where),
                       _string(item, "arguments", where, empty=True))
        elif kind == "custom_tool_call":
            self._call(_string(item, "call_id", where), _string(item, "name", where),
                       _string(item, "input", where, empty=True))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            self._output(item, where)
        elif kind == "reasoning":
            self.dropped["item:reasoning"] += 1
        else:
            raise field_error(f"{where}.type", f"input item type {kind!r} is not supported "
                              "here")


def translate_tools(raw: Any, dropped: Counter[str]) -> list[dict[str, Any]]:
    """Function tools as chat tools; every other tool type dropped and counted."""
    if not isinstance(raw, list):
        raise field_error("tools", "must be a list of tools")
    out = []
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise field_error(where, "must be an object with a string 'type'")
        if tool["type"] != "function":
            dropped[f"tool:{tool['type']}"] += 1
            continue
        function: dict[str, Any] = {"name": _string(tool, "name", where)}
        if tool.get("description") is not None:
            function["description"] = _string(tool, "description", where, empty=True)
        parameters = tool.get("parameters")
        if parameters is not None:
            if not isinstance(parameters, dict):
                raise field_error(f"{where}.parameters", "must be a JSON schema object")
            function["parameters"] = parameters
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    return out


def translate_tool_choice(raw: Any, names: set[str]) -> Any:
    """Responses' tool_choice as chat's."""
    if isinstance(raw, str):
        if raw not in _TOOL_CHOICES:
            raise field_error("tool_choice", f"must be one of {sorted(_TOOL_CHOICES)} or "
                              "a function choice")
        return raw
    if isinstance(raw, dict) and raw.get("type") == "function":
        name = raw.get("name")
        if not isinstance(name, str) or name not in names:
            raise field_error("tool_choice.name", f"{name!r} is not one of the request's "
                              "function tools")
        return {"type": "function", "function": {"name": name}}
    raise field_error("tool_choice", "only 'auto', 'none', 'required' or a function tool "
                      "can be chosen here")


def translate_text_format(raw: Any) -> dict[str, Any] | None:
    """text.format as chat's response_format (None for plain text)."""
    if not isinstance(raw, dict):
        raise field_error("text", "must be an object")
    fmt = raw.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object",
                                                             "json_schema"):
        raise field_error("text.format.type", "must be 'text', 'json_object' or "
                          "'json_schema'")
    if fmt["type"] == "text":
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise field_error("text.format.schema", "must be a JSON schema object")
    spec: dict[str, Any] = {"name": _string(fmt, "name", "text.format"), "schema": schema}
    if isinstance(fmt.get("strict"), bool):
        spec["strict"] = fmt["strict"]
    return {"type": "json_schema", "json_schema": spec}


def check_types(body: dict[str, Any]) -> None:
    """The fields' types; a mistyped field is a 400 naming it."""
    for name, problem in REFUSED_FIELDS.items():
        if body.get(name) not in (None, False):
            raise field_error(name, problem)
    for name in ("model", "instructions", "previous_response_id", "prompt_cache_key"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise field_error(name, "must be a string")
    for name in ("stream", "store", "parallel_tool_calls"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise field_error(name, "must be a boolean")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (not _is_number(value) or value < 0):
            raise field_error(name, "must be a non-negative number")
    limit = body.get("max_output_tokens")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                              or limit < 1):
        raise field_error("max_output_tokens", "must be a positive integer")
    for name in ("metadata", "reasoning", "client_metadata"):
        if body.get(name) is not None and not isinstance(body[name], dict):
            raise field_error(name, "must be an object")
    include = body.get("include")
    if include is not None and not (isinstance(include, list)
                                    and all(isinstance(x, str) for x in include)):
        raise field_error("include", "must be a list of strings")


def translate(body: dict[str, Any], model: str) -> tuple[dict[str, Any], Counter[str]]:
    """The new part of a Responses body as a chat body (no history yet), and the drops."""
    check_types(body)
    items = ItemTranslator(chained=body.get("previous_response_id") is not None)
    items.dropped.update("field:other" for k in body
                         if k not in KNOWN_FIELDS and k not in REFUSED_FIELDS)
    raw_input = body.get("input")
    if isinstance(raw_input, str):
        if not raw_input and not body.get("instructions"):
            raise field_error("input", "must not be empty")
        items.messages.append({"role": "user", "content": raw_input})
    elif isinstance(raw_input, list):
        for i, item in enumerate(raw_input):
            items.item(item, f"input[{i}]")
    elif raw_input is not None or body.get("previous_response_id") is None:
        raise field_error("input", "must be a string or a list of input items")
    if not items.messages and body.get("previous_response_id") is None:
        raise field_error("input", "has no message, call or call output to answer")
    out: dict[str, Any] = {"model": model, "messages": items.messages}
    if body.get("tools") is not None:
        tools = translate_tools(body["tools"], items.dropped)
        if tools:
            out["tools"] = tools
        names = {t["function"]["name"] for t in tools}
    else:
        names = set()
    if body.get("tool_choice") is not None:
        out["tool_choice"] = translate_tool_choice(body["tool_choice"], names)
    if body.get("parallel_tool_calls") is not None and "tools" in out:
        out["parallel_tool_calls"] = body["parallel_tool_calls"]
    if body.get("max_output_tokens") is not None:
        out["max_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("text") is not None:
        response_format = translate_text_format(body["text"])
        if response_format is not None:
            out["response_format"] = response_format
    try:  # the ranges every field reaching the model keeps, whatever the client API
        check_sampling(out)
    except SamplingError as exc:
        raise field_error({"max_tokens": "max_output_tokens"}.get(exc.field, exc.field),
                          exc.problem) from exc
    return out, items.dropped


def with_history(body: dict[str, Any], instructions: str | None,
                 history: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat body to send: this request's instructions, then the stored history, then
    the new messages; checked against chat completions' own message rules."""
    head = [{"role": "system", "content": instructions}] if instructions else []
    messages = head + history + list(body["messages"])
    check_openai_messages(messages)
    if not messages:
        raise InvalidRequest("the request has no messages to answer", param="input")
    return {**body, "messages": messages}


