"""Which conversation a request belongs to, from what clients already send.

Codex sends `prompt_cache_key` (its conversation id) in every Responses body; opencode
sends `x-session-id` (and `x-session-affinity`) headers on chat completions. Either is
the conversation key: across several backends a conversation stays where it was first
placed (by its prefix), where its KV is (`Affinity`); and in the prefix ledger it says
who "the last request" was (so a second session on one API key is a new session, not
"tools and system changed").
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

from aiohttp import web

CONVERSATION = web.RequestKey("conversation", str)
SESSION_HEADERS = ("x-session-id", "x-session-affinity")
MAX_KEY_CHARS = 128


def conversation_of(request: web.Request) -> str | None:
    """The client's conversation key (body's prompt_cache_key, else a session header)."""
    return conversation_key(request.get(CONVERSATION), session_header(request.headers))


def session_header(headers: Mapping[str, str]) -> str | None:
    """The first session header the client sent (opencode's), or None."""
    return next((headers[h] for h in SESSION_HEADERS if headers.get(h)), None)


def conversation_key(from_body: str | None, session: str | None) -> str | None:
    """`conversation_of` from its parts: the body's key, else the session header."""
    key = from_body or session
    return key[:MAX_KEY_CHARS] if key else None


class Affinity:
    """Which backend each recent conversation went to, so it stays there.

    A conversation's first request is placed by its prefix (every session of one agent
    shares its tools and system prompt, so a new session finds them warm where the last
    one ran); after that it follows its backend even when its prefix changes mid-way
    (a compaction, a changed system turn), because its own turns' KV is there.
    """

    def __init__(self, entries: int = 10_000) -> None:
        self.entries = entries
        self._backends: OrderedDict[str, str] = OrderedDict()

    def order(self, conversation: str | None, urls: list[str],
              usable: set[str]) -> list[str]:
        """The candidate urls with the conversation's backend first, when it is usable
        (healthy): a backend that went away loses its conversations to the ring."""
        url = self._backends.get(conversation) if conversation else None
        if url is None or url not in usable:
            return urls
        return [url, *(u for u in urls if u != url)]

    def remember(self, conversation: str | None, url: str) -> None:
        """The conversation was answered by the backend at url."""
        if not conversation:
            return
        self._backends.pop(conversation, None)
        self._backends[conversation] = url
        while len(self._backends) > self.entries:
            self._backends.popitem(last=False)


AFFINITY = web.AppKey("conversation_affinity", Affinity)
