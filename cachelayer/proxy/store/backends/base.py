"""The one interface layer 2 uses, whichever store holds the answers.

It is async because one implementation (Redis) talks over the network. The diskcache
store keeps its hit on the loop (one SQLite read, measured cheaper than a thread hop)
and sends writes and clears to a thread; the Redis store awaits its client. Both keep
the in-process hot tier (HotAnswers) in front, so a repeat costs no I/O at all.
"""

from __future__ import annotations

from typing import Any, Protocol

from cachelayer.protocol.chat import ChatResult
from cachelayer.proxy.store.backends.disk import PutOutcome, StoredAnswer


class AnswerStore(Protocol):
    """Complete answers by key, with a TTL and a per-entry size cap."""

    kind: str
    size_limit: int
    degraded: str | None  # why the store is not being used right now, or None

    async def start(self) -> None:
        """Connect and start background work (generation watch, stats)."""

    async def lookup(self, key: str) -> StoredAnswer | None:
        """The stored answer, or None; an unreadable or foreign entry is a miss."""

    def stage(self, key: str, result: ChatResult) -> None:
        """Make an answer visible to lookup() at once, before save() has written it."""

    async def save(self, key: str, result: ChatResult) -> PutOutcome:
        """Store an answer (it was staged); never raises for a store that is down."""

    async def wipe(self) -> int:
        """Remove every answer, for every proxy sharing the store; how many went."""

    def snapshot(self) -> dict[str, Any]:
        """Numbers for the metrics document (may block briefly; call it off the loop)."""

    def __len__(self) -> int: ...

    async def aclose(self) -> None:
        """Stop background work and close connections."""
