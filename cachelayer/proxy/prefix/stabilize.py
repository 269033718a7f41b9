"""Layer 1's pure functions: strip what a client varies from the prefix, and identify it.

Volatile rules remove segments (Claude Code's billing line first) from system messages;
prefix ids hash the tools and the system prompt with xxh3_128 and chain them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cachelayer.proxy.identity import canonical_json, digest

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
