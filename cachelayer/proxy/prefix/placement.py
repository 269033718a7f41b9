"""System placement: system turns before the first answer join the leading system prompt.

Claude Code (2.1.197, its default model) sends `[system, user, system, ...]`: the second
system turn (agent types, the skills list; about 6 KB) comes after the first user message.
Left there it is not part of the prefix that a new session, a new `claude -p` or a
sub-agent shares with the last one, so every new session prefills it again; and chat
templates that take a system message only in first position refuse the request.

Moving it changes where the model reads those instructions, not what it reads: every
system text is kept, in its original order, appended to the leading system prompt with a
blank line between. Only system turns before the first assistant turn move; later ones
(mid-conversation notes) stay where they are, because moving those would change the
prefix of every later turn instead of stabilising it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

SYSTEM_ROLES = ("system", "developer")
JOINER = "\n\n"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content
                       if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _is_system(message: Any) -> bool:
    return isinstance(message, dict) and message.get("role") in SYSTEM_ROLES


def hoist_system(messages: Sequence[Any]) -> tuple[list[Any], int]:
    """The messages with early system turns moved into one leading system message.

    Early means after the leading system prompt and before the first assistant turn.
    Returns the new list and how many system turns moved (0: the list is unchanged).
    """
    lead = 0
    while lead < len(messages) and _is_system(messages[lead]):
        lead += 1
    moved: list[Any] = []
    rest: list[Any] = []
    answered = False
    for message in messages[lead:]:
        if isinstance(message, dict) and message.get("role") == "assistant":
            answered = True
        if not answered and _is_system(message):
            moved.append(message)
        else:
            rest.append(message)
    if not moved:
        return list(messages), 0
    texts = [_text(m.get("content")) for m in (*messages[:lead], *moved)]
    role = messages[0]["role"] if lead else "system"
    leading = {"role": role, "content": JOINER.join(t for t in texts if t)}
    return [leading, *rest], len(moved)


def hoist_body(body: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """hoist_system applied to a chat body's messages; (body copy, moved count)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return dict(body), 0
    hoisted, moved = hoist_system(messages)
    if not moved:
        return dict(body), 0
    return {**body, "messages": hoisted}, moved
