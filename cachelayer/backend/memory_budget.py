"""The hot tier's memory budget: sizes as mlx-lm reads them, the default budget, eviction
counting, and the KV write queue bounded in bytes. No mlx import.

The hot tier is mlx-lm's `LRUPromptCache` with `max_bytes` set: past the budget it
drops least recently used caches itself. Their blocks stay in the paged store on
disk, so a dropped prompt comes back from disk on its next request. What this
module adds is what mlx-lm leaves open: a default that is never unbounded, a
count of what left memory, and a write queue whose snapshots cannot pile up.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

# mlx_lm.utils._parse_size: decimal units, as `mlx_lm.server --prompt-cache-bytes` reads them.
_MLX_UNITS = {"M": 10**6, "G": 10**9, "MB": 10**6, "GB": 10**9, "": 1}
# The default budget: this share of the memory the model leaves free ...
AUTO_SHARE = 4
# ... but never less than this (a floor for small machines) ...
AUTO_MIN_BYTES = 256 * 10**6
# ... used when the physical memory cannot be read.
FALLBACK_PHYSICAL_BYTES = 16 * 10**9
# The KV write queue holds at most this share of the hot budget in snapshots, and
# at least WRITE_QUEUE_MIN_BYTES (one item is always admitted, whatever its size).
WRITE_QUEUE_SHARE = 4
WRITE_QUEUE_MIN_BYTES = 32 * 10**6
# A generation thread waits at most this long for room in the write queue before
# the write is dropped (counted): a stuck disk must not stop answers.
WRITE_QUEUE_WAIT_S = 5.0


def parse_mlx_size(text: str) -> int:
    """A size as mlx-lm's `--prompt-cache-bytes` reads it: digits, then M, G, MB or GB
    (powers of ten) or nothing (bytes); e.g. 256M = 256,000,000."""
    split = 0
    for ch in text:
        if not (ch.isdigit() or ch == "."):
            break
        split += 1
    unit = text[split:].strip().upper()
    if unit not in _MLX_UNITS or not split:
        raise ValueError(f"not a size: {text!r} (use e.g. 512M, 8G, 1.5GB or bytes)")
    try:
        return int(Decimal(text[:split]) * _MLX_UNITS[unit])
    except InvalidOperation as e:
        raise ValueError(f"not a size: {text!r}") from e


def physical_memory() -> int | None:
    """Bytes of physical memory (Linux and macOS), or None if the OS will not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def weights_bytes(*model_dirs: Path | None) -> int:
    """Bytes of the *.safetensors weights in each directory given (the model's footprint)."""
    total = 0
    for d in model_dirs:
        if d is not None and d.is_dir():
            total += sum(p.stat().st_size for p in d.glob("*.safetensors"))
    return total


def auto_prompt_cache_bytes(physical: int | None, model_bytes: int) -> int:
    """The default hot-tier budget: a quarter of the memory the weights leave free,
    at least 256 MB. Never unbounded: an unreadable memory size counts as 16 GB."""
    free = (physical or FALLBACK_PHYSICAL_BYTES) - model_bytes
    return max(AUTO_MIN_BYTES, free // AUTO_SHARE)


def write_queue_bytes(prompt_cache_bytes: int) -> int:
    """The write queue's byte bound for a hot-tier budget: a quarter of it, >= 32 MB."""
    return max(WRITE_QUEUE_MIN_BYTES, prompt_cache_bytes // WRITE_QUEUE_SHARE)


class EvictionCounter:
    """What left the hot tier because of its limits (count and bytes), thread-safe."""

    def __init__(self) -> None:
        """Zero counts."""
        self.evictions = 0
        self.evicted_bytes = 0
        self._lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        """Count one cache that left memory."""
        with self._lock:
            self.evictions += 1
            self.evicted_bytes += nbytes


class ByteBoundedQueue(queue.Queue[Any]):
    """A FIFO whose items' bytes stay under `max_bytes` (an item alone always fits).

    `put` waits for room, at most `wait_s`, then raises `queue.Full`. Bytes are
    released when the consumer takes an item, so at most one item more (the one
    being written) is alive beyond the bound."""

    def __init__(self, max_bytes: int, sizeof: Callable[[Any], int],
                 wait_s: float = WRITE_QUEUE_WAIT_S) -> None:
        """An empty queue bounded at `max_bytes`, measuring items with `sizeof`."""
        super().__init__()
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.peak_bytes = 0
        self.waits = 0
        self._sizeof = sizeof
        self.wait_s = wait_s

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Enqueue `item`, first waiting (up to wait_s) while it would pass the bound."""
        size = self._sizeof(item)
        with self.not_full:
            if size and self.nbytes and self.nbytes + size > self.max_bytes:
                self.waits += 1
                deadline = time.monotonic() + (self.wait_s if timeout is None else timeout)
                while self.nbytes and self.nbytes + size > self.max_bytes:
                    left = deadline - time.monotonic()
                    if not block or left <= 0:
                        raise queue.Full
                    self.not_full.wait(left)
            self._put((size, item))
            self.nbytes += size
            self.peak_bytes = max(self.peak_bytes, self.nbytes)
            self.unfinished_tasks += 1
            self.not_empty.notify()

    def _get(self) -> Any:
        size, item = super()._get()
        self.nbytes -= size
        return item
