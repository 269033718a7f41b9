"""Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, 2016): pure
functions, no I/O.

Each backend owns VNODES points on a 64-bit ring. A key (layer 1's prefix id) goes to
the first backend clockwise from its hash that is healthy and has room: at most
ceil(balance * (in_flight + 1) / healthy backends) requests in flight. So one prefix
keeps landing where its KV cache is, a dead backend's keys move to the next one on the
ring (and only those), and a returning backend gets exactly its old keys back, while
no backend takes more than `balance` times its fair share when one prefix is hot.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import xxhash

VNODES = 160  # points per backend: the spread of keys is within a few percent


def point(text: str) -> int:
    """A position on the ring."""
    return xxhash.xxh3_64_intdigest(text.encode())


@dataclass(frozen=True)
class Ring:
    """Sorted points and the backend owning each."""

    points: tuple[int, ...]
    owners: tuple[str, ...]

    @property
    def backends(self) -> tuple[str, ...]:
        """Every backend on the ring, in first-seen order."""
        return tuple(dict.fromkeys(self.owners))


def build_ring(backends: Sequence[str], vnodes: int = VNODES) -> Ring:
    """The ring of these backends; the same list always builds the same ring."""
    placed = sorted((point(f"{backend}#{i}"), backend)
                    for backend in dict.fromkeys(backends) for i in range(vnodes))
    return Ring(tuple(p for p, _ in placed), tuple(b for _, b in placed))


def walk(ring: Ring, key: str) -> list[str]:
    """Every backend once, in the order met going clockwise from the key's hash."""
    if not ring.points:
        return []
    start = bisect_right(ring.points, point(key))
    seen: dict[str, None] = {}
    count = len(ring.points)
    wanted = len(ring.backends)
    for i in range(count):
        seen.setdefault(ring.owners[(start + i) % count], None)
        if len(seen) == wanted:
            break
    return list(seen)


def capacity(in_flight: int, healthy: int, balance: float) -> int:
    """The most requests one backend may hold once the new one is placed."""
    return max(1, math.ceil(balance * (in_flight + 1) / max(1, healthy)))


def choose(ring: Ring, key: str, *, healthy: Collection[str], loads: Mapping[str, int],
           balance: float = 2.0) -> list[str]:
    """Healthy backends in the order to try them: the first with room on the key's walk,
    then the rest of the walk. Empty when none is healthy."""
    order = [b for b in walk(ring, key) if b in healthy]
    if not order:
        return []
    cap = capacity(sum(loads.get(b, 0) for b in order), len(order), balance)
    for i, backend in enumerate(order):
        if loads.get(backend, 0) < cap:
            return [backend, *order[:i], *order[i + 1:]]
    return order
