"""The paged, content-addressed KV store on disk: write new blocks, restore a chain exactly.

`PagedStore` owns the blocks and checkpoints of one model (one fingerprint
directory): what to write (only blocks past the longest stored prefix, and a
checkpoint where stateful layers need one), what to restore (the longest chain a
request follows), integrity (a bad file cuts its chain), the byte budget (least
recently used leaves first), and the retries of a restore whose files fail their
checks. `kv_blocks` defines the files (blocks and checkpoints) and the index;
`kv_startup` rebuilds the index at start-up and writes files whole or not at all;
`kv_codec` turns mlx-lm cache objects into payloads and back, bit for bit.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import KVCache

from cachelayer.backend.kv_blocks import (
    BLOCK_SUFFIX,
    CKPT_SUFFIX,
    ROOT,
    Block,
    BlockIndex,
    Checkpoint,
    Match,
    block_header,
    chain_hash,
    chain_seed,
    checkpoint_header,
    checkpoint_id,
    encode_header,
    remove_files,
)
from cachelayer.backend.kv_codec import (
    HostArrays,
    alloc_host,
    block_parts,
    checkpoint_caches,
    checkpoint_parts,
    checksum,
    host_to_mx,
    kv_views,
    read_block_into,
    read_checkpoint,
    read_checkpoint_host,
)
from cachelayer.backend.kv_files import KVCounters
from cachelayer.backend.kv_startup import rebuild_index, write_whole
from cachelayer.fs import ensure_private_dir

logger = logging.getLogger(__name__)
# A restore tries this many ever shorter prefixes when files fail their checks.
_LOAD_TRIES = 3


class PagedStore:
    """The blocks and checkpoints of one model on disk. Thread-safe."""

    def __init__(
        self, kv_dir: Path, fingerprint: str, *, max_bytes: int, min_tokens: int,
        block_tokens: int = 256,
    ) -> None:
        """Open (creating owner-only) `<kv_dir>/<fingerprint>`; call rebuild_index next."""
        if block_tokens < 1:
            raise ValueError("block_tokens must be positive")
        self.kv_dir = kv_dir
        self.fingerprint = fingerprint
        ensure_private_dir(kv_dir)
        self.root = ensure_private_dir(kv_dir / fingerprint)
        self.max_bytes = max_bytes
        self.min_tokens = min_tokens
        self.block_tokens = block_tokens
        self.counters = KVCounters()
        self.index = BlockIndex(fingerprint)
        # One lock for index and counters: the generation thread looks up and
        # restores while the writer thread adds and evicts.
        self._lock = threading.RLock()

    @property
    def nbytes(self) -> int:
        """Bytes of all indexed blocks and checkpoints."""
        return self.index.nbytes

    def count(self, **increments: int) -> None:
        """Add to the named counters."""
        with self._lock:
            for name, value in increments.items():
                setattr(self.counters, name, getattr(self.counters, name) + value)

    def stats(self) -> dict[str, Any]:
        """Counters plus blocks, checkpoints and bytes, as plain JSON-able values."""
        with self._lock:
            return {
                "fingerprint": self.fingerprint,
                "blocks": len(self.index.blocks),
                "checkpoints": self.index.n_checkpoints,
                "bytes": self.index.nbytes,
                "max_bytes": self.max_bytes,
                "min_tokens": self.min_tokens,
                "block_tokens": self.block_tokens,
                **asdict(self.counters),
            }

    def rebuild_index(self) -> None:
        """Index the model directory from headers alone; drop bad, orphaned and old files
        (`kv_startup.rebuild_index`), then evict down to the budget."""
        rebuilt = rebuild_index(self.root, self.fingerprint)
        if rebuilt.old_removed:
            self.count(old_format_removed=rebuilt.old_removed)
            logger.info("kv: removed %d files of the old whole-prompt format (%d bytes); "
                        "the paged store refills as prompts come in", rebuilt.old_removed,
                        rebuilt.old_bytes)
        index = rebuilt.index
        with self._lock:
            self.index = index
            self.counters.corrupt_dropped += len(rebuilt.bad)
        self.evict()
        logger.info("kv index: %d blocks, %d checkpoints, %d bytes in %s (%d dropped)",
                    len(index.blocks), index.n_checkpoints, index.nbytes, self.root,
                    len(rebuilt.bad))

    def nearest(self, tokens: list[int], kinds: tuple[str, ...],
                tenant: str = "") -> Match | None:
        """The longest stored prefix of `tenant`'s `tokens` a cache of `kinds` can be
        restored at."""
        with self._lock:
            return self.index.nearest(tokens, positional_only=set(kinds) <= {"kv"},
                                      tenant=tenant)

    def read(self, match: Match, kinds: tuple[str, ...]) -> HostArrays | None:
        """Read a match (its blocks, and its checkpoint for sliding-window and recurrent
        layers) into host memory without any mlx call, so an I/O thread can do it while
        the generation thread works; `restore` then makes the cache. None (chain cut,
        counted) if a file fails its checks."""
        stateful = any(k != "kv" for k in kinds)
        if stateful != (match.checkpoint is not None):
            return None  # stateful layers restore only at a checkpoint
        started = time.monotonic()
        kv_layers = [i for i, k in enumerate(kinds) if k == "kv"]
        dest: dict[tuple[int, str], tuple[Any, np.ndarray]] = {}
        self._read_ahead(match)
        pos = nbytes = 0
        for block, used in match.chain:
            try:
                nbytes += read_block_into(block, self.fingerprint, used, pos,
                                          match.n_tokens, kv_layers, dest, alloc=alloc_host)
            except (OSError, ValueError, KeyError, TypeError) as e:  # BadFile is a ValueError
                self._drop(block, e)
                return None
            pos += used
        states = None
        if match.checkpoint is not None:
            try:
                states, size = read_checkpoint_host(match.checkpoint, self.fingerprint, kinds)
            except (OSError, ValueError, KeyError, TypeError) as e:  # BadFile is a ValueError
                self._drop(match.checkpoint, e)
                return None
            nbytes += size
            if {s.layer for s in states} != {i for i, k in enumerate(kinds) if k != "kv"}:
                return None
        return HostArrays(match, {k: v for k, (_, v) in dest.items()},
                          {k: d for k, (d, _) in dest.items()}, nbytes,
                          time.monotonic() - started, states)

    def restore(self, host: HostArrays, kinds: tuple[str, ...]) -> list[Any]:
        """The cache of arrays `read` brought in (one copy each into mlx memory)."""
        caches: list[Any] = [None] * len(kinds)
        for i, kind in enumerate(kinds):
            if kind == "kv":
                c = KVCache()
                c.state = (host_to_mx(host.arrays[i, "k"], host.dtypes[i, "k"]),
                           host_to_mx(host.arrays[i, "v"], host.dtypes[i, "v"]),
                           host.match.n_tokens)
                caches[i] = c
        if host.checkpoint is not None:
            checkpoint_caches(host.checkpoint, caches)
            self._trim_to_match(host.match, caches)
        mx.eval([c.state for c in caches])
        self._touch(host.match, host.nbytes)
        return caches

    @staticmethod
    def _trim_to_match(match: Match, caches: list[Any]) -> None:
        """A trimmable checkpoint past where the match ends (a branch inside its block)
        is trimmed back to it (the attention layers hold exactly the match's tokens)."""
        assert match.checkpoint is not None
        extra = match.chain[-1][1] - match.checkpoint.used
        if extra < 0:
            for c in caches:
                if not isinstance(c, KVCache):
                    c.trim(-extra)

    def _read_ahead(self, match: Match) -> None:
        # Ask the kernel to read every file of the chain ahead, so the disk streams
        # while the blocks before are checked and placed.
        for block, _ in match.chain:
            with contextlib.suppress(OSError):
                fd = os.open(block.path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                finally:
                    os.close(fd)

    def _touch(self, match: Match, nbytes: int) -> None:
        """Count a restore and mark its files used (the LRU order survives restarts
        through mtimes)."""
        now = time.time()
        with self._lock:
            self.counters.blocks_read += len(match.chain)
            self.counters.bytes_read += nbytes
            for block, _ in match.chain:
                block.last_used = now
            if match.checkpoint is not None:
                match.checkpoint.last_used = now
        for block, _ in match.chain:
            with contextlib.suppress(OSError):
                os.utime(block.path)

    def load_nearest(self, tokens: list[int], kinds: tuple[str, ...], tenant: str = "", *,
                     beyond: int = 0, accept: Callable[[Match], bool] | None = None,
                     ) -> tuple[list[Any], int] | None:
        """The cache of `tenant`'s longest restorable prefix of `tokens` and its length,
        if longer than `beyond` tokens and `accept`ed; None if there is none. A file that
        fails its checks cuts its chain, and the next shorter prefix is tried (at most
        three tries: each bad file costs a read)."""
        for _ in range(_LOAD_TRIES):
            match = self.nearest(tokens, kinds, tenant)
            if match is None or match.n_tokens <= beyond:
                return None
            if accept is not None and not accept(match):
                return None
            caches = self.load(match, kinds)
            if caches is not None:
                return caches, match.n_tokens
        return None

    def load(self, match: Match, kinds: tuple[str, ...]) -> list[Any] | None:
        """Restore the cache of `match`; None (chain cut, counted) if a file fails its checks."""
        started = time.monotonic()
        n = match.n_tokens
        kv_layers = [i for i, k in enumerate(kinds) if k == "kv"]
        dest: dict[tuple[int, str], tuple[mx.array, np.ndarray]] = {}
        self._read_ahead(match)
        pos = 0
        nbytes = 0
        for block, used in match.chain:
            try:
                nbytes += read_block_into(block, self.fingerprint, used, pos, n, kv_layers,
                                          dest)
            except (OSError, ValueError, KeyError, TypeError) as e:  # BadFile is a ValueError
                self._drop(block, e)
                return None
            pos += used
        caches: list[Any] = [None] * len(kinds)
        for i in kv_layers:
            c = KVCache()
            c.state = (dest[i, "k"][0], dest[i, "v"][0], n)
            caches[i] = c
        if match.checkpoint is not None:
            try:
                nbytes += read_checkpoint(match.checkpoint, self.fingerprint, kinds, caches)
            except (OSError, ValueError, KeyError, TypeError) as e:  # BadFile is a ValueError
                self._drop(match.checkpoint, e)
                return None
            self._trim_to_match(match, caches)
        if any(c is None for c in caches):
            return None
        mx.eval([c.state for c in caches])
        self._touch(match, nbytes)
        logger.debug("kv restore: %d tokens, %d bytes in %.3fs", n, nbytes,
                     time.monotonic() - started)
        return caches

    def save(self, tokens: tuple[int, ...], snapshot: list[Any], kinds: tuple[str, ...],
             tenant: str = "", *, base: int = 0) -> int:
        """Write the blocks past `tenant`'s longest stored prefix and, for stateful layers,
        a checkpoint at the end; returns the bytes written.

        A `base` above 0 says the snapshot's attention arrays hold only tokens [base, n)
        (a prefill checkpoint copies only what is new; its other layers hold their whole
        state at n); if the store lacks any token before base, nothing is written."""
        n = len(tokens)
        if n < self.min_tokens:
            return 0
        with self._lock:
            block, used, pos = self.index.longest(tokens, tenant)
            if block is not None:
                block.last_used = time.time()
        if pos < base:
            return 0
        written = 0
        parent, cut = (block.hash, used) if block is not None else (ROOT, 0)
        seed = chain_seed(self.fingerprint, "", tenant)
        kv_layers = [i for i, k in enumerate(kinds) if k == "kv"]
        views = kv_views(snapshot, kv_layers)
        while pos < n:
            end = min(n, (pos // self.block_tokens + 1) * self.block_tokens)
            new = Block(chain_hash(parent, cut, tokens[pos:end], seed), parent, cut,
                        pos, tokens[pos:end], Path(), 0, time.time(), tenant=tenant)
            written += self._write_block(new, views, base)
            parent, cut, pos, block, used = new.hash, end - pos, end, new, end - pos
        stateful = [i for i, k in enumerate(kinds) if k != "kv"]
        if stateful and block is not None and used not in block.checkpoints:
            written += self._write_checkpoint(block, used, snapshot, kinds, stateful)
        self.evict()
        return written

    def _write_block(self, block: Block, views: dict[int, list[tuple[str, str, Any]]],
                     base: int = 0) -> int:
        start = block.start - base
        specs, parts = block_parts(views, start, start + len(block.tokens))
        header = {**block_header(block, self.fingerprint), "arrays": specs,
                  "payload_bytes": sum(p.nbytes for p in parts)}
        path = self.root / f"{block.hash.hex()}{BLOCK_SUFFIX}"
        size = self._write_file(path, encode_header(header, checksum(parts)), parts)
        if size:
            block.path, block.nbytes = path, abs(size)
            with self._lock:
                if not self.index.add_block(block):
                    remove_files([path])  # the parent was evicted meanwhile
                    return 0
                if size > 0:
                    self.counters.blocks_written += 1
                    self.counters.bytes_written += size
        return max(0, size)

    def _write_checkpoint(
        self, block: Block, used: int, snapshot: list[Any], kinds: tuple[str, ...],
        stateful: list[int],
    ) -> int:
        layers, parts, trimmable = checkpoint_parts(snapshot, kinds, stateful)
        ckpt_id = checkpoint_id(block.hash, used, self.fingerprint)
        header = {**checkpoint_header(ckpt_id, block.hash, used, trimmable, layers,
                                      self.fingerprint),
                  "payload_bytes": sum(p.nbytes for p in parts)}
        path = self.root / f"{ckpt_id.hex()}{CKPT_SUFFIX}"
        size = self._write_file(path, encode_header(header, checksum(parts)), parts)
        if size:
            with self._lock:
                if not self.index.add_checkpoint(
                    Checkpoint(ckpt_id, block.hash, used, path, abs(size), time.time(), trimmable)
                ):
                    remove_files([path])
                    return 0
                if size > 0:
                    self.counters.checkpoints_written += 1
                    self.counters.bytes_written += size
        return max(0, size)

    def _write_file(self, path: Path, head: bytes, parts: list[np.ndarray]) -> int:
        """Write a file whole or not at all (`kv_startup.write_whole`); 0 on failure,
        counted and logged (the store goes on without that file)."""
        try:
            return write_whole(self.root, path, head, parts)
        except OSError as e:
            self.count(write_errors=1)
            logger.warning("cannot write kv file %s: %s", path.name, e)
            return 0

    def _drop(self, item: Block | Checkpoint, error: Exception) -> None:
        """Cut the chain at a bad file: forget it (and what hangs off it), remove, count."""
        missing = isinstance(error, FileNotFoundError)
        if missing:
            logger.info("kv: %s vanished (cleared?); chain cut there", item.path.name)
        else:
            logger.warning("kv: dropping %s: %s", item.path.name, error)
        with self._lock:
            if isinstance(item, Block):
                paths = self.index.remove_subtree(item)
            else:
                self.index.remove_checkpoint(item)
                paths = [item.path]
            if missing:
                self.counters.missing_files += 1
            else:
                self.counters.corrupt_dropped += 1
        remove_files(paths)

    def evict(self) -> None:
        """Remove least recently used leaves (checkpoints, childless blocks) to fit max_bytes."""
        with self._lock:
            if self.index.nbytes <= self.max_bytes:
                return
            heap = self.index.lru_leaves()
            paths: list[Path] = []

            while self.index.nbytes > self.max_bytes and heap:
                _, _, item = heapq.heappop(heap)
                if isinstance(item, Checkpoint):
                    self.index.remove_checkpoint(item)
                    paths.append(item.path)
                    self.counters.evicted_checkpoints += 1
                    parent = self.index.blocks.get(item.block)
                elif item.hash in self.index.blocks and not item.children and not item.checkpoints:
                    paths += self.index.remove_subtree(item)
                    self.counters.evicted_blocks += 1
                    parent = self.index.blocks.get(item.parent)
                else:
                    continue
                if parent is not None and not parent.children and not parent.checkpoints:
                    heapq.heappush(heap, (parent.last_used, id(parent), parent))
        remove_files(paths)

    def reconcile(self) -> None:
        """Forget indexed blocks whose files disappeared (e.g. `cachelayer clear --kv`)."""
        with self._lock:
            gone = [b for b in self.index.blocks.values() if not b.path.exists()]
            for block in gone:
                if block.hash in self.index.blocks:
                    self.index.remove_subtree(block)
