"""Prompt KV caches as safetensors files: index, lookup, load, save, eviction.

`PromptStore` owns the files of one model (one fingerprint directory). Its
index maps token sequences to files; it is rebuilt at start-up from the
safetensors headers alone, so a restart costs a directory scan, not a read of
every cache. `PersistentPromptCache` (in persistent_cache.py) puts it behind
mlx-lm's `LRUPromptCache` interface.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import (
    PromptTrie,
    can_trim_prompt_cache,
    load_prompt_cache,
    save_prompt_cache,
    trim_prompt_cache,
)

from cachelayer.backend.kv_files import (
    FORMAT,
    SUFFIX,
    TMP_PREFIX,
    decode_tokens,
    encode_tokens,
    read_entry_info,
    tokens_hash,
)
from cachelayer.fs import ensure_private_dir

logger = logging.getLogger(__name__)

# PromptTrie is keyed by model; a store holds exactly one model.
_TRIE_KEY = "disk"
# Temp files older than this are leftovers of a crashed writer, not live writes.
_STALE_TMP_SECONDS = 3600.0


@dataclass
class KVCounters:
    """What the store did since the process started (exported as JSON)."""

    lookups: int = 0
    disk_hits: int = 0
    memory_hits: int = 0
    tokens_restored_disk: int = 0
    tokens_restored_memory: int = 0
    tokens_prefilled: int = 0
    writes: int = 0
    write_errors: int = 0
    evictions: int = 0
    corrupt_removed: int = 0
    missing_files: int = 0


@dataclass
class _Entry:
    path: Path
    nbytes: int
    trimmable: bool


def cache_length(prompt_cache: list[Any]) -> int | None:
    """Tokens held by a prompt cache, or None if its layers disagree or don't say."""
    sizes = {c.size() for c in prompt_cache}
    return sizes.pop() if len(sizes) == 1 else None


class PromptStore:
    """The on-disk prompt caches of one model. Thread-safe."""

    def __init__(self, kv_dir: Path, fingerprint: str, *, max_bytes: int, min_tokens: int) -> None:
        """Open (creating owner-only) `<kv_dir>/<fingerprint>`; call rebuild_index next."""
        self.kv_dir = kv_dir
        self.fingerprint = fingerprint
        self.root = ensure_private_dir(kv_dir / fingerprint)
        ensure_private_dir(kv_dir)
        self.max_bytes = max_bytes
        self.min_tokens = min_tokens
        self.counters = KVCounters()
        # One lock for index and counters: the generation thread looks up and
        # counts while the writer thread inserts and evicts.
        self._lock = threading.RLock()
        self._trie = PromptTrie()
        self._entries: OrderedDict[tuple[int, ...], _Entry] = OrderedDict()  # oldest first
        self._nbytes = 0

    @property
    def nbytes(self) -> int:
        """Bytes of all indexed files."""
        return self._nbytes

    def __len__(self) -> int:
        return len(self._entries)

    def count(self, **increments: int) -> None:
        """Add to the named counters."""
        with self._lock:
            for name, value in increments.items():
                setattr(self.counters, name, getattr(self.counters, name) + value)

    def stats(self) -> dict[str, Any]:
        """Counters plus files and bytes, as plain JSON-able values."""
        with self._lock:
            return {
                "fingerprint": self.fingerprint,
                "files": len(self._entries),
                "bytes": self._nbytes,
                "max_bytes": self.max_bytes,
                "min_tokens": self.min_tokens,
                **asdict(self.counters),
            }

    def rebuild_index(self) -> None:
        """Index every file in the model directory from headers only; drop bad ones."""
        found = []
        now = time.time()
        for path in self.root.iterdir():
            if not path.name.endswith(SUFFIX):
                continue
            if path.name.startswith(TMP_PREFIX):
                with contextlib.suppress(OSError):
                    if now - path.stat().st_mtime > _STALE_TMP_SECONDS:
                        path.unlink()
                continue
            try:
                info = read_entry_info(path)
                if info.fingerprint != self.fingerprint:
                    raise ValueError("belongs to another model")
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError) as e:
                self._discard(path, f"unreadable header: {e}")
                continue
            found.append(info)
        # mtime is bumped on every use, so it carries the LRU order over restarts.
        found.sort(key=lambda info: info.mtime)
        with self._lock:
            self._trie = PromptTrie()
            self._entries.clear()
            self._nbytes = 0
            for info in found:
                self._add(info.tokens, _Entry(info.path, info.nbytes, info.trimmable))
        self.evict()
        logger.info("kv index: %d files, %d bytes in %s", len(self), self.nbytes, self.root)

    def nearest(self, tokens: list[int]) -> tuple[tuple[int, ...], int] | None:
        """The stored sequence that saves the most prefill for `tokens`, and how many.

        At least one token is always left to prefill, because generation needs
        the logits of the last prompt token.
        """
        limit = len(tokens) - 1
        with self._lock:
            result = self._trie.search(_TRIE_KEY, tokens)
            best: tuple[tuple[int, ...], int] | None = None
            candidates = []
            if result.exact is not None:
                candidates.append((tuple(result.exact), limit))
            if result.shorter is not None:
                candidates.append((tuple(result.shorter), len(result.shorter)))
            if result.longer is not None:
                candidates.append((tuple(result.longer), min(limit, result.common_prefix)))
            for key, usable in candidates:
                entry = self._entries.get(key)
                if entry is None or usable <= 0:
                    continue
                if usable < len(key) and not entry.trimmable:
                    continue
                if best is None or usable > best[1]:
                    best = (key, usable)
            return best

    def load(self, key: tuple[int, ...], n_tokens: int) -> list[Any] | None:
        """Load the cache stored for `key`, trimmed to `n_tokens`; None if unusable."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            return None
        if not entry.path.exists():
            self.count(missing_files=1)
            logger.info("kv file vanished (cleared?): %s", entry.path.name)
            self._forget(key)
            return None
        try:
            prompt_cache, metadata = load_prompt_cache(str(entry.path), return_metadata=True)
            # Evaluate now so a damaged file fails here, not inside generation.
            mx.eval([c.state for c in prompt_cache])
            if metadata.get("format") != FORMAT or metadata.get("fingerprint") != self.fingerprint:
                raise ValueError("metadata does not match this model")
            if decode_tokens(metadata["tokens"]) != key or cache_length(prompt_cache) != len(key):
                raise ValueError("cache length does not match its tokens")
        except Exception as e:  # mlx raises bare RuntimeError/ValueError on bad files
            if not entry.path.exists():
                self.count(missing_files=1)
                self._forget(key)
                return None
            self.count(corrupt_removed=1)
            self._forget(key)
            self._discard(entry.path, f"cannot load: {e}")
            return None
        if n_tokens < len(key):
            trim_prompt_cache(prompt_cache, len(key) - n_tokens)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
        with contextlib.suppress(OSError):
            os.utime(entry.path)  # persist the LRU position for the next start-up
        return prompt_cache

    def save(self, tokens: list[int] | tuple[int, ...], prompt_cache: list[Any]) -> bool:
        """Write a prompt cache (evaluated arrays) for `tokens`; True if a file was added."""
        key = tuple(tokens)
        if len(key) < self.min_tokens:
            return False
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return False
        trimmable = can_trim_prompt_cache(prompt_cache)
        path = self.root / f"{tokens_hash(key)}{SUFFIX}"
        # mx.save_safetensors appends the suffix if missing, so the temp name keeps it.
        tmp = self.root / f"{TMP_PREFIX}{uuid.uuid4().hex}{SUFFIX}"
        metadata = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "n_tokens": str(len(key)),
            "tokens": encode_tokens(key),
            "trimmable": "1" if trimmable else "0",
        }
        try:
            ensure_private_dir(self.root)  # `clear` may have removed it
            save_prompt_cache(str(tmp), prompt_cache, metadata)
            os.chmod(tmp, 0o600)
            size = tmp.stat().st_size
            if size > self.max_bytes:
                logger.info("kv cache of %d tokens (%d bytes) exceeds the limit", len(key), size)
                tmp.unlink()
                return False
            os.replace(tmp, path)
        except Exception as e:
            self.count(write_errors=1)
            logger.warning("cannot write kv cache %s: %s", path.name, e)
            with contextlib.suppress(OSError):
                tmp.unlink()
            return False
        with self._lock:
            self._add(key, _Entry(path, size, trimmable))
            self.counters.writes += 1
            if trimmable:
                # A trimmable longer cache serves every prefix of itself: the
                # shorter files are pure duplication.
                prefixes = [k for k in self._entries if len(k) < len(key) and key[: len(k)] == k]
                for prefix in prefixes:
                    old = self._entries[prefix]
                    self._forget(prefix)
                    self._discard(old.path, None)
        self.evict(keep=key)
        return True

    def evict(self, keep: tuple[int, ...] | None = None) -> None:
        """Remove least recently used files until the total fits in max_bytes."""
        while True:
            with self._lock:
                if self._nbytes <= self.max_bytes:
                    return
                victim = next((k for k in self._entries if k != keep), None)
                if victim is None:
                    return
                entry = self._entries[victim]
                self._forget(victim)
                self.counters.evictions += 1
            self._discard(entry.path, None)

    def reconcile(self) -> None:
        """Forget indexed files that disappeared (e.g. `cachelayer clear --kv`)."""
        with self._lock:
            gone = [k for k, e in self._entries.items() if not e.path.exists()]
            for key in gone:
                self._forget(key)

    def _add(self, key: tuple[int, ...], entry: _Entry) -> None:
        if key in self._entries:
            self._forget(key)
        self._trie.add(_TRIE_KEY, list(key), entry)
        self._entries[key] = entry
        self._nbytes += entry.nbytes

    def _forget(self, key: tuple[int, ...]) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return
            self._nbytes -= entry.nbytes
            with contextlib.suppress(KeyError):
                self._trie.pop(_TRIE_KEY, list(key))

    def _discard(self, path: Path, reason: str | None) -> None:
        if reason is not None:
            logger.warning("removing kv file %s: %s", path.name, reason)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
