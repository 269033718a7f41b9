"""Layer 1's prefix identity: hash the tools and the system prompt, and chain them.

What a client varies is made stable before this runs: the volatile rules (rules.py) and
the system placement (placement.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cachelayer.protocol.chat import ChatRequest
from cachelayer.proxy.identity import canonical_json, digest
from cachelayer.proxy.prefix.placement import hoist_body
from cachelayer.proxy.prefix.rules import RuleSet
from cachelayer.proxy.state import PrefixIds

__all__ = ["PrefixIds", "Stable", "prefix_ids", "stabilize_chat", "system_text"]


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


def prefix_ids(body: Mapping[str, Any], tools_hash: str | None = None) -> PrefixIds:
    """Hash the tools (canonical JSON) and the system prompt, and chain them (tools first,
    the order in which chat templates and Anthropic's cache put them). `tools_hash`, when
    the caller already hashed the body's tools, saves hashing them again."""
    tools = body.get("tools") or []
    if tools_hash is None:
        tools_hash = digest(canonical_json(tools))
    system_hash = digest(system_text(body.get("messages") or []).encode())
    return PrefixIds(
        tools_hash=tools_hash,
        system_hash=system_hash,
        prefix_id=digest(f"{tools_hash}:{system_hash}".encode()),
        tools=len(tools) if isinstance(tools, list) else 0,
    )


@dataclass(frozen=True)
class Stable:
    """The stabilised request, its prefix ids, what was rewritten and what moved."""

    chat: ChatRequest
    prefix: PrefixIds
    rewrites: tuple[tuple[str, str], ...] = ()
    moved_system: int = 0


def stabilize_chat(chat: ChatRequest, rules: RuleSet, *, hoist: bool = False) -> Stable:
    """Apply the volatile rules (and, with hoist, the system placement); prefix ids."""
    body, done, tools_hash = rules.stabilize(chat.body)
    moved = 0
    if hoist:
        body, moved = hoist_body(body)
    if done or moved:
        chat = dataclasses.replace(chat, body=body)
    return Stable(chat, prefix_ids(chat.body, tools_hash),
                  tuple((d.rule, d.before) for d in done), moved)
