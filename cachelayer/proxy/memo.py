"""A small LRU memo for pure per-request work, keyed by a digest of the raw request.

Agents re-send byte-identical bodies: parsing, stabilising and keying a 50 KB body is
pure work, so the layers remember the last few results by the body's digest instead of
redoing it on every repeat. Entries are immutable results, shared between requests.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

import xxhash

V = TypeVar("V")
# Parsed 50 KB bodies take a few hundred KB each as Python objects: keep few.
DEFAULT_ENTRIES = 32
# Bodies above this are rare and large; memoising them would only cost memory.
MAX_MEMO_BODY = 1 << 20


def fingerprint(*parts: bytes) -> str:
    """A digest of the raw request parts (route, body) that names a memo entry."""
    h = xxhash.xxh3_128()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


class Memo(Generic[V]):
    """Least-recently-used results of a pure function, at most `entries` of them."""

    def __init__(self, entries: int = DEFAULT_ENTRIES) -> None:
        self.entries = entries
        self._data: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        """The remembered value, or None."""
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Hashable, value: V) -> V:
        """Remember a value (evicting the least recently used) and return it."""
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.entries:
                self._data.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._data)
