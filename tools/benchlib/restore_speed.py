"""Restore speed of the paged KV store against the disk's read speed and memcpy's, with
the page cache warm and cold (a piece of tools/bench_prefill.py).

A chain of blocks of a real model's KV width (48 layers x 4 KV heads x head_dim 128,
bf16: 96 KiB per token) is written with random values (a restore's speed does not
depend on them), then restored the two ways the backend restores:

* `read + restore`: the serving path, `PagedStore.read` into host memory (a kv-read
  thread) then `PagedStore.restore` into mlx arrays (the generation thread);
* `load`: the one-call path (a restore that was not read ahead).

Beside them, on the same files and bytes: the disk's sequential read (`cat`-like, 8 MiB
reads) and a memcpy of as many bytes (numpy copy between two resident buffers).

A cold page cache is made without root: fsync, then `posix_fadvise(POSIX_FADV_DONTNEED)`
on every block file, and checked with mincore(2): the fraction of the files' pages still
resident is recorded before each cold measurement.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchlib import kv_paged as kp

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_PAGE = os.sysconf("SC_PAGE_SIZE")
_MAP_FAILED = ctypes.c_void_p(-1).value


def resident_fraction(paths: list[Path]) -> float:
    """The fraction of the files' pages in the page cache (mincore(2) on a mapping,
    which maps without reading)."""
    resident = total = 0
    for path in paths:
        size = path.stat().st_size
        if size == 0:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr is None or addr == _MAP_FAILED:
                raise OSError(ctypes.get_errno(), f"mmap {path}")
            pages = (size + _PAGE - 1) // _PAGE
            vec = (ctypes.c_ubyte * pages)()
            try:
                if _libc.mincore(addr, size, vec) != 0:
                    raise OSError(ctypes.get_errno(), f"mincore {path}")
            finally:
                _libc.munmap(addr, size)
        finally:
            os.close(fd)
        resident += sum(v & 1 for v in vec)
        total += pages
    return resident / total if total else 0.0


def memcpy_seconds(nbytes: int, trials: int) -> float:
    """The median time of copying `nbytes` between two resident buffers."""
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # both resident before timing
    times = []
    for _ in range(trials):
        started = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_restore_speed(work: Path, n_tokens: int = 2048, trials: int = 3) -> dict[str, Any]:
    """Restore speed (GB/s) against the disk's read and memcpy, warm and cold."""
    import mlx.core as mx

    from cachelayer.backend.paged_store import PagedStore

    kv = work / "kv-restore-speed"
    shutil.rmtree(kv, ignore_errors=True)
    store = PagedStore(kv, "geometry", max_bytes=1 << 40, min_tokens=1)
    store.rebuild_index()
    tokens = kp.tokens_for(n_tokens, seed=5)
    layers = kp.synthetic_kv(n_tokens)
    store.save(tuple(tokens), kp.cache_of(layers, n_tokens), kp.KINDS)
    del layers
    request = [*tokens, 7]
    match = store.nearest(request, kp.KINDS)
    assert match is not None and match.n_tokens == n_tokens
    paths = [block.path for block, _ in match.chain]
    nbytes = sum(p.stat().st_size for p in paths)

    generation_thread: dict[str, list[float]] = {"warm": [], "cold": []}

    def read_and_restore() -> float:
        started = time.perf_counter()
        host = store.read(match, kp.KINDS)  # a kv-read thread's part
        assert host is not None
        copied = time.perf_counter()
        caches = store.restore(host, kp.KINDS)  # the generation thread's part
        mx.eval([c.state for c in caches])
        done = time.perf_counter()
        generation_thread[state].append(done - copied)
        return done - started

    def load() -> float:
        started = time.perf_counter()
        caches = store.load(match, kp.KINDS)
        assert caches is not None
        mx.eval([c.state for c in caches])
        return time.perf_counter() - started

    def disk_read() -> float:
        return kp.sequential_read(paths)[1]

    out: dict[str, Any] = {"tokens": n_tokens, "blocks": len(paths), "bytes": nbytes,
                           "bytes_per_token": kp.BYTES_PER_TOKEN}
    memcpy_s = memcpy_seconds(nbytes, trials)
    out["memcpy"] = {"s": round(memcpy_s, 4), "gb_s": round(nbytes / memcpy_s / 1e9, 2)}
    for state in ("warm", "cold"):
        row: dict[str, Any] = {}
        for name, measure in (("read_restore", read_and_restore), ("load", load),
                              ("disk_read", disk_read)):
            times, resident = [], []
            for _ in range(trials):
                if state == "cold":
                    kp.drop_page_cache(paths)
                else:
                    kp.sequential_read(paths)  # bring every page in
                resident.append(round(resident_fraction(paths), 4))
                times.append(measure())
            seconds = statistics.median(times)
            row[name] = {"s": round(seconds, 4), "gb_s": round(nbytes / seconds / 1e9, 2),
                         "resident_before": resident}
        on_thread = statistics.median(generation_thread[state])
        row["read_restore"]["generation_thread_s"] = round(on_thread, 4)
        read_s = row["disk_read"]["s"]
        for name in ("read_restore", "load"):
            row[name]["over_disk_read"] = round(read_s / row[name]["s"], 3)
            row[name]["over_memcpy"] = round(memcpy_s / row[name]["s"], 3)
        out[state] = row
    shutil.rmtree(kv, ignore_errors=True)
    return out


def markdown(result: dict[str, Any]) -> str:
    """The restore-speed table."""
    lines = [f"{result['blocks']} block files, {result['tokens']} tokens, "
             f"{result['bytes'] / 1e6:.1f} MB; memcpy of as many bytes: "
             f"{result['memcpy']['gb_s']} GB/s.", "",
             "| page cache | pages resident before | restore: read + restore GB/s "
             "(of which on the generation thread, s) | restore: load GB/s | "
             "disk read GB/s | read + restore / disk read | read + restore / memcpy |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for state in ("warm", "cold"):
        row = result[state]
        resident = max(row["read_restore"]["resident_before"])
        lines.append(
            f"| {state} | {resident:.0%} (max) | {row['read_restore']['gb_s']} "
            f"({row['read_restore']['generation_thread_s']}) | "
            f"{row['load']['gb_s']} | {row['disk_read']['gb_s']} | "
            f"{row['read_restore']['over_disk_read']:.2f}x | "
            f"{row['read_restore']['over_memcpy']:.2f}x |")
    return "\n".join(lines)
