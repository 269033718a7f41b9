"""Layer 1's prefix identity: hash the tools and the system prompt, and chain them.

What a client varies is made stable before this runs: the volatile rules (rules.py) and
the system placement (placement.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cachelayer.proxy.identity import canonical_json, digest


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
