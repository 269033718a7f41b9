"""What the store keeps and what a write did: neutral types every tier and caller share."""

from __future__ import annotations

from dataclasses import dataclass

from cachelayer.protocol.chat import ChatResult


@dataclass(frozen=True)
class StoredAnswer:
    """A stored result and when it was stored."""

    result: ChatResult
    stored_at: float

    def age(self, now: float) -> float:
        """Seconds since it was stored."""
        return max(0.0, now - self.stored_at)


@dataclass(frozen=True)
class PutOutcome:
    """What one write did to the store; `evicted_keys` left it to make room."""

    stored: bool
    nbytes: int = 0
    evicted: int = 0
    expired: int = 0
    evicted_keys: tuple[str, ...] = ()
