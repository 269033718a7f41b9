"""mlx-lm's in-memory `LRUPromptCache` (the hot tier) with a `PagedStore` on disk behind it.

mlx_lm.server's `ResponseGenerator` calls `fetch_nearest_cache` before each
prefill and `insert_cache` after each prompt segment and each answer. This
subclass keeps that behaviour and adds the disk: lookups fall through to the
paged store when it holds a longer prefix than memory, and every insert (the
system-segment checkpoint included) is queued for a writer thread, which
writes only the blocks the store does not have yet.
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
from typing import Any, NamedTuple

import mlx.core as mx

from cachelayer.backend.hot_tier import (
    BudgetedPromptCache,
    align_positional,
    refusal_reason,
    snapshot_nbytes,
)
from cachelayer.backend.kv_codec import cache_tokens, layer_kinds
from cachelayer.backend.kv_files import STATS_NAME, write_json_atomic
from cachelayer.backend.memory_budget import ByteBoundedQueue, write_queue_bytes
from cachelayer.backend.paged_store import PagedStore
from cachelayer.backend.restore import Restores
from cachelayer.backend.tenants import TenantRegistry, scoped

logger = logging.getLogger(__name__)

# Stats go to disk at most this often; a request marks them dirty.
_STATS_INTERVAL = 0.5
# How often an idle writer checks for files deleted underneath it.
_RECONCILE_INTERVAL = 5.0
_STOP = object()
# Prefill checkpoints queued at once (each a copy of the tokens since the last one): past
# this a checkpoint is skipped, and the next one covers its tokens too.
_MAX_CHECKPOINTS = 2


class _Write(NamedTuple):
    """One queued disk write: the tokens, a snapshot of their cache, the tenant it is
    kept for, and where the snapshot's attention arrays start (above 0 only for prefill
    checkpoints)."""

    tokens: tuple[int, ...]
    snapshot: list[Any]
    tenant: str = ""
    base: int = 0
    last: bool = False  # a prefill checkpoint's last write: its slot is released after it


class PersistentPromptCache(BudgetedPromptCache):
    """An `LRUPromptCache` whose entries also persist as paged blocks via a `PagedStore`."""

    def __init__(
        self,
        store: PagedStore,
        persist_key: Any,
        *,
        max_size: int = 10,
        max_bytes: int = 1 << 63,
        model_name: str = "",
        family: str = "",
        kinds: tuple[str, ...] | None = None,
        tenants: TenantRegistry | None = None,
        queue_bytes: int | None = None,
    ) -> None:
        """Wrap `store`; only caches of model key `persist_key` and layer `kinds` go to disk.
        With `tenants`, reuse is scoped by tenant (tenants.py); without, all is shared."""
        super().__init__(max_size=max_size, max_bytes=max_bytes)
        self.tenants = tenants
        self.store = store
        self.persist_key = persist_key
        self.model_name = model_name
        self.family = family
        self.kinds = kinds
        self.reuse = {"requests": 0, "prompt_tokens": 0, "reused_tokens": 0}
        self.stats_path: Path = store.kv_dir / STATS_NAME
        self.started_at = datetime.datetime.now(datetime.timezone.utc).isoformat()
        # Each queued item holds a copy of a whole cache: bounded in bytes, not count.
        self._queue = ByteBoundedQueue(queue_bytes or write_queue_bytes(max_bytes),
                                       lambda item: snapshot_nbytes(item[1]) if item is not _STOP
                                       else 0)
        self.writes_dropped_full = 0
        # Caches not persisted because of what they are (reason -> count), see insert_cache.
        self.persist_refused: dict[str, int] = {}
        self._stats_dirty = threading.Event()
        self._drop_pending = threading.Event()
        self.writes_dropped = 0
        self._unsupported_logged = False
        self._checkpoint_slots = threading.BoundedSemaphore(_MAX_CHECKPOINTS)
        self.restores = Restores(store)
        self.checkpoints = {"queued": 0, "skipped": 0}
        self._writer = threading.Thread(target=self._write_loop, name="kv-writer", daemon=True)
        self._writer.start()

    def set_kinds(self, prompt_cache: list[Any]) -> None:
        """Learn the model's layer kinds from a fresh cache; unsupported means memory-only."""
        self.kinds = layer_kinds(prompt_cache)
        if self.kinds is None:
            self._log_unsupported(prompt_cache)

    def _log_unsupported(self, prompt_cache: list[Any]) -> None:
        if not self._unsupported_logged:
            self._unsupported_logged = True
            names = sorted({type(c).__name__ for c in prompt_cache})
            logger.warning("kv: cache kinds %s cannot be restored exactly from disk; "
                           "this model's prompt caches stay in memory only", names)

    def prefetch(self, model: Any, tokens: list[int], tenant: str) -> None:
        """Read `tenant`'s longest prefix of `tokens` on disk into host memory now (on an
        I/O thread, as the request arrives), so `fetch_nearest_cache` only copies it."""
        if model != self.persist_key or self.kinds is None or len(tokens) <= 1:
            return
        in_memory = self._memory_prefix(scoped(model, tenant), tokens)
        self.restores.prefetch(tenant, tokens, self.kinds, in_memory)

    def _memory_prefix(self, model: Any, tokens: list[int]) -> int:
        """About how many tokens of `tokens` memory could restore (an upper bound: the
        common path in mlx-lm's trie), read from another thread: racing with the
        generation thread's changes, a failed walk says 0 and the disk is read."""
        try:
            node = self._trie._trie.get(model)
            n = 0
            while node is not None and n < len(tokens):
                node = node.get(tokens[n])
                n += node is not None
            return n
        except (RuntimeError, AttributeError, KeyError, TypeError):
            return 0

    def fetch_nearest_cache(self, model: Any, tokens: list[int]) -> tuple[Any, list[int]]:
        """Nearest cache of the asking tenant from memory, or from disk when the disk holds
        a longer prefix (read ahead by `prefetch` when the request was prefetched)."""
        tenant = self.tenants.current if self.tenants is not None else ""
        cache, rest = super().fetch_nearest_cache(scoped(model, tenant), tokens)
        from_memory = len(tokens) - len(rest)
        prefetched = self.restores.take(tenant, tokens)
        if prefetched is not None and model == self.persist_key and self.kinds is not None:
            host = prefetched.host
            if host is not None and host.match.n_tokens > from_memory:
                n = host.match.n_tokens
                restored = self.store.restore(host, self.kinds)
                self._count(len(tokens), n, disk=True)
                logger.info("kv disk hit: %d of %d tokens (read ahead in %.3f s)", n,
                            len(tokens), host.seconds)
                return restored, tokens[n:]
            if prefetched.disk_tokens <= from_memory or host is not None:
                # Nothing better on disk, or a restore not worth its read: the
                # generation thread does not go to the disk itself.
                self._count(len(tokens), from_memory, disk=False)
                return cache, rest
            # Memory was thought to hold it when the read ahead ran, and no longer does:
            # read as without a read ahead (below).
        if model == self.persist_key and self.kinds is not None and len(tokens) > 1:
            loaded = self.store.load_nearest(tokens, self.kinds, tenant, beyond=from_memory,
                                             accept=self.restores.worth_reading)
            if loaded is not None:
                disk_cache, n = loaded
                self._count(len(tokens), n, disk=True)
                logger.info("kv disk hit: %d of %d tokens", n, len(tokens))
                return disk_cache, tokens[n:]
        self._count(len(tokens), from_memory, disk=False)
        return cache, rest

    def _count(self, n_prompt: int, reused: int, *, disk: bool) -> None:
        if disk:
            self.store.count(lookups=1, disk_hits=1, tokens_restored_disk=reused,
                             tokens_prefilled=n_prompt - reused)
        else:
            self.store.count(lookups=1, memory_hits=1 if reused else 0,
                             tokens_restored_memory=reused, tokens_prefilled=n_prompt - reused)
        self.reuse["requests"] += 1
        self.reuse["prompt_tokens"] += n_prompt
        self.reuse["reused_tokens"] += reused
        self._stats_dirty.set()

    def insert_cache(
        self,
        model: Any,
        tokens: list[int],
        prompt_cache: list[Any],
        *,
        cache_type: str = "assistant",
    ) -> None:
        """Insert into memory as mlx-lm does (once per tenant it may be kept for), and
        queue a disk write if long enough."""
        owners = self.tenants.owners(tokens) if self.tenants is not None else [""]
        for tenant in owners:
            super().insert_cache(scoped(model, tenant), tokens, prompt_cache,
                                 cache_type=cache_type)
        if model != self.persist_key or self.kinds is None or len(tokens) < self.store.min_tokens:
            return
        kinds = layer_kinds(prompt_cache)
        if kinds != self.kinds:
            self._refuse(refusal_reason(prompt_cache))
            return
        # Shallow copies share the (immutable) arrays but not the offsets, so a
        # later change to the live cache objects cannot reach the file. The
        # arrays are evaluated here, on the generation thread, so the writer
        # only reads finished buffers and never builds mlx graphs of its own.
        snapshot = [copy.copy(c) for c in prompt_cache]
        n = cache_tokens(snapshot)
        if n is None:  # e.g. a draft model's layers one token behind
            n = align_positional(snapshot, kinds)
        if n is None:
            self._refuse("token_count")  # layers disagree on how many tokens they hold
            return
        if n > len(tokens) or n < self.store.min_tokens:
            return  # not a cache we can describe by its tokens
        for c, kind in zip(snapshot, kinds, strict=True):
            if kind == "arrays":
                c.cache = list(c.cache)  # the live cache assigns into this list
        mx.eval([c.state for c in snapshot])
        try:
            for tenant in owners:
                self._queue.put(_Write(tuple(tokens[:n]), snapshot, tenant))
        except queue.Full:  # the disk is far behind: answers go on, this write does not
            self.writes_dropped_full += 1
            logger.warning("kv: write queue full (%d bytes) for %.0fs; %d-token cache not "
                           "persisted", self._queue.nbytes, self._queue.wait_s, n)

    def _refuse(self, reason: str) -> None:
        """Count (and log once per reason) a cache the store cannot restore exactly."""
        first = reason not in self.persist_refused
        self.persist_refused[reason] = self.persist_refused.get(reason, 0) + 1
        self._stats_dirty.set()
        if first:
            why = {"quantized_kv": "quantized (--kv-bits) KV caches have no exact block "
                                   "format yet; they stay in memory only",
                   "token_count": "its layers hold different numbers of tokens",
                   }.get(reason, "its layer kinds differ from the model's")
            logger.warning("kv: not persisting a prompt cache (%s): %s; counted as "
                           "persist_refused.%s", reason, why, reason)

    def checkpoint_ready(self) -> bool:
        """Whether a prefill checkpoint may be queued now (bounded: see _MAX_CHECKPOINTS)."""
        if self.kinds is None:
            return False  # a model whose caches stay in memory only
        if self._checkpoint_slots.acquire(blocking=False):
            self._checkpoint_slots.release()
            return True
        self.checkpoints["skipped"] += 1
        return False

    def checkpoint(self, tokens: tuple[int, ...], window: list[Any], base: int) -> bool:
        """Queue a prefill in progress for the disk: `window` holds the attention arrays of
        tokens [base, len(tokens)) only, and the whole state of any other layer at
        len(tokens), evaluated; False if it was not queued (the disk is behind, or no
        tenant sent these tokens to keep them for)."""
        if not self._checkpoint_slots.acquire(blocking=False):
            self.checkpoints["skipped"] += 1
            return False
        # Kept for the tenants that sent this prefix, as insert_cache keeps a cache.
        owners = self.tenants.owners(tokens) if self.tenants is not None else [""]
        if not owners:
            self._checkpoint_slots.release()
            return False
        self.checkpoints["queued"] += 1
        try:
            for i, tenant in enumerate(owners):
                # One slot for the checkpoint: released when its last write is done.
                self._queue.put(_Write(tokens, window, tenant, base, last=i == len(owners) - 1),
                                block=False)
        except queue.Full:
            self.checkpoints["skipped"] += 1
            self._checkpoint_slots.release()
            return False
        return True

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until queued writes are on disk and stats exported; False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        self.export_stats()
        return not self._queue.unfinished_tasks

    def drop_pending(self) -> None:
        """Skip queued writes that have not started (a second shutdown signal); never blocks."""
        self._drop_pending.set()

    def close(self, timeout: float = 60.0) -> None:
        """Finish queued writes (each lands whole or not at all), export stats, stop the writer."""
        self._queue.put(_STOP)
        self._writer.join(timeout)
        self.export_stats()

    def stats(self) -> dict[str, Any]:
        """Disk and memory figures plus counters, as served on /v1/cachelayer/kv."""
        return {
            **self.store.stats(),
            "model": self.model_name,
            "family": self.family,
            "kinds": sorted(set(self.kinds)) if self.kinds else None,
            "persisted": self.kinds is not None,
            "reuse_by_family": {self.family or "?": dict(self.reuse)},
            "kv_dir": str(self.store.kv_dir),
            "memory": self.budget_stats(),
            "pending_writes": self._queue.unfinished_tasks,
            "write_queue": {"bytes": self._queue.nbytes, "max_bytes": self._queue.max_bytes,
                            "peak_bytes": self._queue.peak_bytes, "waits": self._queue.waits,
                            "dropped_full": self.writes_dropped_full},
            "persist_refused": dict(self.persist_refused),
            "writes_dropped": self.writes_dropped,
            "prefill_checkpoints": dict(self.checkpoints),
            "restores": self.restores.stats(),
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
        # a large write must not slow the next request's prefill. (Linux
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
            if item is not None and self._drop_pending.is_set():
                self.writes_dropped += 1  # dropped whole: none of its blocks is written
                if item.last:
                    self._checkpoint_slots.release()
                self._queue.task_done()
            elif item is not None:
                try:
                    assert self.kinds is not None
                    # Tenant and base only when set: the plain call stays the common one.
                    extra = (item.tenant,) if item.tenant else ()
                    options = {"base": item.base} if item.base else {}
                    saved = self.store.save(item.tokens, item.snapshot, self.kinds, *extra,
                                            **options)
                    if saved:
                        self._stats_dirty.set()
                except Exception:  # the writer must survive anything one file does
                    logger.exception("kv writer failed on a %d-token cache", len(item.tokens))
                finally:
                    if item.last:
                        self._checkpoint_slots.release()
                    self._queue.task_done()
            now = time.monotonic()
            if now - last_reconcile > _RECONCILE_INTERVAL and self._queue.empty():
                self.store.reconcile()
                last_reconcile = now
            if self._stats_dirty.is_set() and now - last_stats > _STATS_INTERVAL:
                self.export_stats()
                last_stats = now
