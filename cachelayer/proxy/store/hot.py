"""The hot tier: the most recently used answers in this process's memory, bounded in bytes.

A hit from memory costs no I/O at all. The front (front.py) is its only user and runs on
the event loop, so no lock: every call comes from the loop's one thread. A clear made
anywhere (another process, another proxy) reaches it through the cold tier's generation,
which the front compares before each lookup and answers with forget_all().
"""

from __future__ import annotations

from collections import OrderedDict

from cachelayer.proxy.store.backends.base import StoredAnswer

DEFAULT_HOT_BYTES = 64 * 1024 * 1024


class HotAnswers:
    """Answers by key, least recently used forgotten first past the byte budget."""

    def __init__(self, max_bytes: int = DEFAULT_HOT_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[StoredAnswer, int]] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> StoredAnswer | None:
        """The remembered answer, or None."""
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: str, answer: StoredAnswer, nbytes: int) -> None:
        """Remember an answer; one over an eighth of the budget is not worth the room."""
        if nbytes > self.max_bytes // 8:
            return
        old = self._entries.pop(key, None)
        self._bytes += nbytes - (old[1] if old else 0)
        self._entries[key] = (answer, nbytes)
        while self._bytes > self.max_bytes:
            _, (_, size) = self._entries.popitem(last=False)
            self._bytes -= size

    def discard(self, key: str) -> None:
        """Forget one answer."""
        old = self._entries.pop(key, None)
        if old:
            self._bytes -= old[1]

    def forget_all(self) -> None:
        """Forget every answer (the store was cleared, here or elsewhere)."""
        self._entries.clear()
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)
