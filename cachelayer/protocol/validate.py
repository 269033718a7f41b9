"""Message rules each API enforces on a conversation, checked at the edge.

Types and shapes are checked where a body is parsed (openai.py, anthropic.py); these are
the rules about what a message must carry and how tool calls and their results pair up.
A violation is a 400 naming the field, raised before anything is forwarded or stored.

OpenAI chat completions:
* system, developer and user messages need `content`;
* an assistant message needs `content` or `tool_calls`; each call has a string `id`, a
  `function` with a string `name` and string `arguments`;
* a tool message needs its `tool_call_id` and `content`, and the id must be a call that
  an earlier assistant message made.

Anthropic Messages (checked while translating, in anthropic.py): user and system turns
need content; a `tool_result` must answer a `tool_use` of the assistant turn right before
it (system turns in between aside), which is what the hosted API requires.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cachelayer.errors import InvalidRequest

NEEDS_CONTENT = frozenset({"system", "developer", "user"})


def field_error(field: str, problem: str) -> InvalidRequest:
    """A 400 whose message starts with the field at fault, and names it as OpenAI's param."""
    return InvalidRequest(f"{field}: {problem}", param=field)


def _missing(content: Any) -> bool:
    # "" is content (an empty answer or tool output is legitimate); absent, null or an
    # empty list of parts is not.
    return content is None or (isinstance(content, list) and not content)


def _check_calls(calls: Any, where: str) -> list[str]:
    if not isinstance(calls, list):
        raise field_error(f"{where}.tool_calls", "must be a list of tool calls")
    ids = []
    for j, call in enumerate(calls):
        here = f"{where}.tool_calls[{j}]"
        if not isinstance(call, dict):
            raise field_error(here, "must be an object")
        if not isinstance(call.get("id"), str) or not call["id"]:
            raise field_error(f"{here}.id", "a tool call needs a non-empty string id")
        if call.get("type", "function") != "function":
            raise field_error(f"{here}.type", "must be 'function'")
        function = call.get("function")
        if not isinstance(function, dict):
            raise field_error(f"{here}.function", "must be an object")
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise field_error(f"{here}.function.name", "must be a non-empty string")
        if not isinstance(function.get("arguments"), str):
            raise field_error(f"{here}.function.arguments", "must be a string (JSON)")
        ids.append(call["id"])
    return ids


def check_openai_messages(messages: Sequence[dict[str, Any]]) -> None:
    """OpenAI's rules on content and tool-call pairing; raises InvalidRequest (400)."""
    called: set[str] = set()
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role, content = message.get("role"), message.get("content")
        if role in NEEDS_CONTENT:
            if _missing(content):
                raise field_error(f"{where}.content", f"a {role} message needs content")
        elif role == "assistant":
            calls = message.get("tool_calls")
            ids = _check_calls(calls, where) if calls is not None else []
            if _missing(content) and not ids:
                raise field_error(where, "an assistant message needs content or tool_calls")
            called.update(ids)
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise field_error(f"{where}.tool_call_id",
                                  "a tool message needs the id of the call it answers")
            if content is None:
                raise field_error(f"{where}.content", "a tool message needs content")
            if call_id not in called:
                raise field_error(f"{where}.tool_call_id",
                                  f"{call_id!r} answers no tool call of an earlier "
                                  "assistant message")


# Content part types a model may take: text, and images (for a model that takes them;
# the edge checks that against the backend, proxy/model_info.py).
KNOWN_PARTS = frozenset({"text", "image_url", "input_image", "image"})
_TOOL_CHOICE_MODES = frozenset({"none", "auto", "required"})


def check_part_type(kind: Any, where: str) -> None:
    """A content part of a type no model here takes is a 400 that says so."""
    if kind not in KNOWN_PARTS:
        raise field_error(f"{where}.type", f"content part type {kind!r} is not supported "
                                           f"(supported: {', '.join(sorted(KNOWN_PARTS))})")


def check_tool_choice(choice: Any, tools: Any) -> None:
    """OpenAI's tool_choice: a mode, or a function that must be one of `tools`."""
    if choice is None:
        return
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICE_MODES:
            raise field_error("tool_choice", f"must be one of {sorted(_TOOL_CHOICE_MODES)} "
                                             "or a function")
        return
    if not isinstance(choice, dict):
        raise field_error("tool_choice", "must be a string or an object")
    if choice.get("type") != "function":
        raise field_error("tool_choice.type", "must be 'function'")
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise field_error("tool_choice.function.name", "must be a non-empty string")
    names = {t.get("function", {}).get("name") for t in tools or ()
             if isinstance(t, dict) and isinstance(t.get("function"), dict)}
    if name not in names:
        raise field_error("tool_choice.function.name",
                          f"{name!r} is not one of the request's tools")
