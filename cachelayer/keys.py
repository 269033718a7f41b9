"""Cache keys: pure functions from a neutral request to the identifiers the layers use.

A key covers everything that changes the answer (model, messages, tools, tool_choice,
sampling settings, stop, response format, the tenant, the upstream) and nothing that
does not (the stream flag, JSON key order, client metadata, request ids). Changing
what goes into a key means bumping KEY_VERSION so old entries simply stop matching.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import xxhash

KEY_VERSION = 1

# Fields a client may vary without changing what the model answers.
NON_SEMANTIC_FIELDS = frozenset(
    {"stream", "stream_options", "user", "metadata", "store", "service_tier", "request_id"}
)
# Sampling numbers arrive as 0 or 0.0 depending on the client's JSON encoder.
_FLOAT_FIELDS = frozenset(
    {
        "temperature",
        "top_p",
        "min_p",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
    }
)
ANONYMOUS_TENANT = "anonymous"


def canonical_json(value: Any) -> bytes:
    """Serialise to one byte form: sorted keys, no whitespace."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def digest(data: bytes) -> str:
    """The xxh3_128 hex digest every key in cachelayer is made of."""
    return xxhash.xxh3_128_hexdigest(data)


def tenant_id(authorization: str | None, api_key: str | None) -> str:
    """A one-way id for the client's credential; the credential itself is never kept.

    `Authorization: Bearer K` and `x-api-key: K` name the same tenant.
    """
    credential = api_key or authorization or ""
    if credential.lower().startswith("bearer "):
        credential = credential[7:]
    credential = credential.strip()
    if not credential:
        return ANONYMOUS_TENANT
    return "t-" + xxhash.xxh3_64_hexdigest(b"cachelayer-tenant\x00" + credential.encode())


def semantic_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a request body that can change the answer, in a normal form."""
    out: dict[str, Any] = {}
    for name, value in body.items():
        if name in NON_SEMANTIC_FIELDS or value is None:
            continue
        if name in _FLOAT_FIELDS and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif name == "stop" and isinstance(value, str):
            value = [value]
        out[name] = value
    return out


def response_key(
    kind: str, body: Mapping[str, Any], *, tenant: str, upstream: str
) -> str:
    """Layer 2's key: the request's meaning, for this tenant, on this upstream."""
    material = {
        "v": KEY_VERSION,
        "kind": kind,
        "tenant": tenant,
        "upstream": upstream.rstrip("/"),
        "body": semantic_body(body),
    }
    return digest(canonical_json(material))


def is_deterministic(body: Mapping[str, Any]) -> bool:
    """True when the same request should produce the same answer (greedy or seeded)."""
    temperature = body.get("temperature")
    if isinstance(temperature, (int, float)) and temperature == 0:
        return True
    return body.get("seed") is not None


# -- layer 1: the stable prefix ------------------------------------------------------------

# Claude Code's first system block: cc_version changes with every release and, in some
# versions, cch= with every request. It sits at the very start of the prompt.
BILLING_HEADER_PATTERN = r"(?m)^x-anthropic-billing-header:[^\n]*(?:\n+|$)"
BILLING_HEADER_LITERAL = "x-anthropic-billing-header:"


@dataclass(frozen=True)
class VolatileRule:
    """A pattern to strip, and a literal every match contains (scanning for it is cheap)."""

    pattern: re.Pattern[str]
    literal: str = ""


def compile_volatile(patterns: Sequence[str]) -> tuple[VolatileRule, ...]:
    """The default volatile rule followed by the user's extra patterns, compiled."""
    return (
        VolatileRule(re.compile(BILLING_HEADER_PATTERN), BILLING_HEADER_LITERAL),
        *(VolatileRule(re.compile(p)) for p in patterns),
    )


def strip_volatile(text: str, rules: Sequence[VolatileRule]) -> tuple[str, list[str]]:
    """Remove every volatile segment; returns the stable text and what was removed."""
    removed: list[str] = []

    def _keep(match: re.Match[str]) -> str:
        removed.append(match.group(0))
        return ""

    for rule in rules:
        if rule.literal:
            text = _strip_at_literal(rule, text, removed)
        else:
            text = rule.pattern.sub(_keep, text)
    return text, removed


def _strip_at_literal(rule: VolatileRule, text: str, removed: list[str]) -> str:
    # A multiline regex walks every line of a 15 KB prompt on every request; finding the
    # literal is a memchr, and the pattern then only runs where the literal stands.
    pieces: list[str] = []
    last = 0
    pos = text.find(rule.literal)
    while pos != -1:
        match = rule.pattern.match(text, pos)
        if match is not None and match.end() > pos:
            pieces.append(text[last:pos])
            removed.append(match.group(0))
            last = match.end()
            pos = text.find(rule.literal, last)
        else:
            pos = text.find(rule.literal, pos + 1)
    if not pieces:
        return text
    pieces.append(text[last:])
    return "".join(pieces)


def _strip_content(content: Any, rules: Sequence[VolatileRule], removed: list[str]) -> Any:
    if isinstance(content, str):
        text, gone = strip_volatile(content, rules)
        removed.extend(gone)
        return text
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                text, gone = strip_volatile(part["text"], rules)
                removed.extend(gone)
                part = {**part, "text": text}
            out.append(part)
        return out
    return content


def stabilize(
    body: Mapping[str, Any], rules: Sequence[VolatileRule]
) -> tuple[dict[str, Any], list[str]]:
    """The body with volatile segments removed from system messages (the prefix)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return dict(body), []
    removed: list[str] = []
    stable = []
    for message in messages:
        if isinstance(message, dict) and message.get("role") in ("system", "developer"):
            content = _strip_content(message.get("content"), rules, removed)
            message = {**message, "content": content}
        stable.append(message)
    if not removed:
        return dict(body), []
    return {**body, "messages": stable}, removed


@dataclass(frozen=True)
class PrefixIds:
    """The identity of a request's stable prefix: its tools, its system prompt, both."""

    tools_hash: str
    system_hash: str
    prefix_id: str
    tools: int


def system_text(messages: Sequence[Any]) -> str:
    """The leading system prompt: every system message before the first other message."""
    parts: list[str] = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer"):
            break
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(content if isinstance(content, str) else "")
    return "\n".join(parts)


def prefix_ids(body: Mapping[str, Any]) -> PrefixIds:
    """Hash the tools (canonical JSON) and the system prompt, and chain them (tools first,
    the order in which chat templates and Anthropic's cache put them)."""
    tools = body.get("tools") or []
    tools_hash = digest(canonical_json(tools))
    system_hash = digest(system_text(body.get("messages") or []).encode())
    return PrefixIds(
        tools_hash=tools_hash,
        system_hash=system_hash,
        prefix_id=digest(f"{tools_hash}:{system_hash}".encode()),
        tools=len(tools) if isinstance(tools, list) else 0,
    )
