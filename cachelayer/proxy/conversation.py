"""Which conversation a request belongs to, from what clients already send.

Codex sends `prompt_cache_key` (its conversation id) in every Responses body; opencode
sends `x-session-id` (and `x-session-affinity`) headers on chat completions. Either is
the conversation key: the routing key across several backends (a conversation stays
where its KV is) and, in the prefix ledger, who "the last request" was (so a client's
title request does not make its main prompt read as "tools and system changed").
"""

from __future__ import annotations

from aiohttp import web

CONVERSATION = web.RequestKey("conversation", str)
SESSION_HEADERS = ("x-session-id", "x-session-affinity")
MAX_KEY_CHARS = 128


def conversation_of(request: web.Request) -> str | None:
    """The client's conversation key (body's prompt_cache_key, else a session header)."""
    key = request.get(CONVERSATION)
    if not key:
        key = next((request.headers[h] for h in SESSION_HEADERS if request.headers.get(h)),
                   None)
    return key[:MAX_KEY_CHARS] if key else None
