"""mlx-lm's in-memory `LRUPromptCache` with a `PromptStore` on disk behind it.

mlx_lm.server's `ResponseGenerator` calls `fetch_nearest_cache` before each
prefill and `insert_cache` after each prompt segment and each answer. This
subclass keeps that behaviour and adds the disk: lookups fall through to the
files when memory has a shorter prefix, and inserts are queued for a writer
thread so the request never waits for a file.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import LRUPromptCache

from cachelayer.backend.kv_files import STATS_NAME, write_json_atomic
from cachelayer.backend.prompt_store import PromptStore, cache_length

logger = logging.getLogger(__name__)

# Stats go to disk at most this often; a request marks them dirty.
_STATS_INTERVAL = 0.5
# How often an idle writer checks for files deleted underneath it.
_RECONCILE_INTERVAL = 5.0
_STOP = object()


class PersistentPromptCache(LRUPromptCache):
    """An `LRUPromptCache` whose entries also persist as files via a `PromptStore`."""

    def __init__(
        self,
        store: PromptStore,
        persist_key: Any,
        *,
        max_size: int = 10,
        max_bytes: int = 1 << 63,
        model_name: str = "",
    ) -> None:
        """Wrap `store`; only caches of model key `persist_key` go to disk."""
        super().__init__(max_size=max_size, max_bytes=max_bytes)
        self.store = store
        self.persist_key = persist_key
        self.model_name = model_name
        self.stats_path: Path = store.kv_dir / STATS_NAME
        self.started_at = datetime.datetime.now(datetime.timezone.utc).isoformat()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._stats_dirty = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="kv-writer", daemon=True)
        self._writer.start()

    def fetch_nearest_cache(self, model: Any, tokens: list[int]) -> tuple[Any, list[int]]:
        """Nearest cache from memory, or from disk when the disk holds a longer prefix."""
        cache, rest = super().fetch_nearest_cache(model, tokens)
        from_memory = len(tokens) - len(rest)
        if model == self.persist_key and len(tokens) > 1:
            found = self.store.nearest(tokens)
            if found is not None and found[1] > from_memory:
                key, n_tokens = found
                disk_cache = self.store.load(key, n_tokens)
                if disk_cache is not None:
                    self.store.count(
                        lookups=1,
                        disk_hits=1,
                        tokens_restored_disk=n_tokens,
                        tokens_prefilled=len(tokens) - n_tokens,
                    )
                    self._stats_dirty.set()
                    logger.info("kv disk hit: %d of %d tokens", n_tokens, len(tokens))
                    return disk_cache, tokens[n_tokens:]
        self.store.count(
            lookups=1,
            memory_hits=1 if from_memory else 0,
            tokens_restored_memory=from_memory,
            tokens_prefilled=len(rest),
        )
        self._stats_dirty.set()
        return cache, rest

    def insert_cache(
        self,
        model: Any,
        tokens: list[int],
        prompt_cache: list[Any],
        *,
        cache_type: str = "assistant",
    ) -> None:
        """Insert into memory as mlx-lm does, and queue a disk write if long enough."""
        super().insert_cache(model, tokens, prompt_cache, cache_type=cache_type)
        if model != self.persist_key or len(tokens) < self.store.min_tokens:
            return
        n = cache_length(prompt_cache)
        if n is None or n > len(tokens) or n < self.store.min_tokens:
            return  # not a cache we can describe by its tokens
        # Shallow copies share the (immutable) arrays but not the offsets, so a
        # later change to the live cache objects cannot reach the file. The
        # arrays are evaluated here, on the generation thread, so the writer
        # only reads finished buffers and never builds mlx graphs of its own.
        snapshot = [copy.copy(c) for c in prompt_cache]
        mx.eval([c.state for c in snapshot])
        self._queue.put((tuple(tokens[:n]), snapshot))

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until queued writes are on disk and stats exported; False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        self.export_stats()
        return not self._queue.unfinished_tasks

    def close(self, timeout: float = 60.0) -> None:
        """Finish queued writes, export the stats, stop the writer thread."""
        self._queue.put(_STOP)
        self._writer.join(timeout)
        self.export_stats()

    def stats(self) -> dict[str, Any]:
        """Disk and memory figures plus counters, as served on /v1/cachelayer/kv."""
        return {
            **self.store.stats(),
            "model": self.model_name,
            "kv_dir": str(self.store.kv_dir),
            "memory": {"sequences": len(self), "bytes": self.nbytes},
            "pending_writes": self._queue.qsize(),
            "started_at": self.started_at,
            "updated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "pid": os.getpid(),
        }

    def export_stats(self) -> None:
        """Write stats() to `<kv-dir>/kv-stats.json` atomically; never raises."""
        self._stats_dirty.clear()
        try:
            write_json_atomic(self.stats_path, self.stats())
        except OSError as e:
            logger.warning("cannot write %s: %s", self.stats_path, e)

    def _write_loop(self) -> None:
        # Below the generation thread in the CPU scheduler: on a small machine
        # a 16 MB write must not slow the next request's prefill. (Linux
        # threads are tasks, so this nices only this thread.)
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        last_stats = 0.0
        last_reconcile = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=_STATS_INTERVAL)
            except queue.Empty:
                item = None
            if item is _STOP:
                self._queue.task_done()
                return
            if item is not None:
                self._write_batch(item)
            now = time.monotonic()
            if now - last_reconcile > _RECONCILE_INTERVAL and self._queue.empty():
                self.store.reconcile()
                last_reconcile = now
            if self._stats_dirty.is_set() and now - last_stats > _STATS_INTERVAL:
                self.export_stats()
                last_stats = now

    def _write_batch(self, first: tuple[tuple[int, ...], list[Any]]) -> None:
        # One request queues up to three nested caches (system, prompt,
        # prompt+answer); writing only those not extended by a later one
        # saves the disk the churn.
        items = [first]
        stop = False
        while True:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is _STOP:
                stop = True
                break
            items.append(nxt)
        for i, (tokens, snapshot) in enumerate(items):
            extended = any(
                len(later) > len(tokens) and later[: len(tokens)] == tokens
                for later, _ in items[i + 1 :]
            )
            try:
                if not extended:
                    self.store.save(tokens, snapshot)
                    self._stats_dirty.set()
            except Exception:  # the writer must survive anything one file does
                logger.exception("kv writer failed on a %d-token cache", len(tokens))
            finally:
                self._queue.task_done()
        if stop:
            self._queue.put(_STOP)
            self._queue.task_done()  # the re-put counts once more; balance it
