"""The interfaces of layer 2's store: the one callers use, and the two behind the front.

- `AnswerStore` is what layer 2 (and the edge's fast path) call: front.py's `StoreFront`
  is the one implementation, whatever holds the answers.
- `ColdTier` is where answers live beyond this process: diskcache (disk.py) or Redis
  (redis.py). It only reads, writes and clears; the hot tier, the staging of writes in
  flight and the bounded write queue are the front's, written once for both.
- `Fleet` is the in-flight marker shared by every proxy on one Redis (redis_fleet.py),
  so an identical request at another proxy waits for the answer instead of computing it.
- `StoredAnswer` and `PutOutcome` are what the store keeps and what a write did: the
  neutral types every tier and caller share.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

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


class ColdTier(Protocol):
    """Answers by key beyond this process, with a TTL and a per-entry size cap."""

    kind: str
    size_limit: int
    degraded: str | None  # why the tier is not being used right now, or None

    async def start(self) -> None:
        """Connect and start background work (generation watch, stats)."""

    def generation(self) -> object:
        """A cheap token that changes whenever the tier was cleared, by anyone."""

    async def read(self, key: str) -> tuple[StoredAnswer, int] | None:
        """The answer and its size in bytes, or None; unreadable or foreign is a miss."""

    async def write(self, key: str, answer: StoredAnswer, body: bytes,
                    ttl_left_s: float) -> PutOutcome:
        """Store an answer whose result encodes as `body`; never raises for a tier
        that is down (the outcome says it was not stored)."""

    async def clear(self) -> int:
        """Remove every answer, for every process sharing the tier; how many went."""

    def snapshot(self) -> dict[str, Any]:
        """Numbers for the metrics document (may block briefly)."""

    def __len__(self) -> int: ...

    async def aclose(self) -> None:
        """Stop background work and close connections."""


class Claim(enum.Enum):
    """What taking the fleet's in-flight marker for a key found."""

    MINE = "mine"          # this proxy holds it now: compute, and release once stored
    OTHER = "other"        # another proxy is computing it: wait for its answer
    ANSWERED = "answered"  # the answer landed meanwhile: look it up
    DOWN = "down"          # the fleet cannot be asked (Redis down): compute, no marker


class Fleet(Protocol):
    """Short in-flight markers with a lease, shared by every proxy on one store."""

    lease_s: float

    async def start(self) -> None:
        """Start renewing held markers and listening for released ones."""

    async def claim(self, key: str) -> Claim:
        """Take the marker for key unless another proxy holds it or the answer is in."""

    async def wait(self, key: str, timeout: float) -> bool:
        """Until the marker for key is gone (released, or its lease ran out); False on
        timeout."""

    def holds(self, key: str) -> bool:
        """Whether this proxy holds the marker for key."""

    async def release(self, key: str) -> None:
        """Drop this proxy's marker for key and wake every proxy waiting on it."""

    def snapshot(self) -> dict[str, Any]:
        """Markers held and waits, for the metrics."""

    async def aclose(self) -> None:
        """Release what is held, stop renewing and listening."""


class AnswerStore(Protocol):
    """Complete answers by key: what layer 2 and the edge's fast path call."""

    @property
    def kind(self) -> str:
        """The cold tier's name: diskcache or redis."""

    @property
    def size_limit(self) -> int:
        """The cold tier's size limit in bytes (0: unknown)."""

    @property
    def degraded(self) -> str | None:
        """Why the store is not being used right now, or None."""

    @property
    def fleet_wide(self) -> bool:
        """Whether identical requests at other proxies wait for this one's answer."""

    async def start(self) -> None:
        """Connect and start background work."""

    async def lookup(self, key: str) -> StoredAnswer | None:
        """The stored answer (staged, in memory or in the cold tier), or None."""

    def stage(self, key: str, result: ChatResult) -> None:
        """Make an answer visible to lookup() at once, before it is written."""

    async def save(self, key: str, result: ChatResult) -> PutOutcome:
        """Write an answer now (it may have been staged); never raises for a store
        that is down. Releases this proxy's in-flight marker once the write landed."""

    async def keep(self, key: str, result: ChatResult,
                   done: Callable[[PutOutcome], None]) -> bool:
        """Stage an answer and queue its write (`done` gets the outcome); True when the
        queue was full and this call waited for the write itself."""

    async def await_fleet(self, key: str) -> StoredAnswer | None:
        """Before computing a miss: the answer another proxy is computing, waited for;
        None when this proxy should compute it (holding the marker when it could)."""

    def release(self, key: str) -> None:
        """This proxy computed key but stores nothing: let waiting proxies go."""

    async def wipe(self) -> int:
        """Remove every answer, for every proxy sharing the store; how many went."""

    def snapshot(self) -> dict[str, Any]:
        """Numbers for the metrics document (may block briefly; call it off the loop)."""

    def __len__(self) -> int: ...

    @property
    def pending_writes(self) -> int:
        """Writes (and marker releases) queued and not yet landed."""

    async def drain(self) -> None:
        """Wait for every queued write (and marker release) to land."""

    async def aclose(self) -> None:
        """Drain, stop background work and close connections."""
