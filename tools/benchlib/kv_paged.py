"""Pieces of tools/bench_kv_paged.py: synthetic KV, page-cache control, timed reads and TTFT.

Bytes written and restore speed do not depend on the KV's values, so those parts use
random bf16 arrays of the real geometry; time to first token runs the real model.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import KVCache, make_prompt_cache

from tests.support.family_models import GEOMETRY

LAYERS = int(GEOMETRY["num_hidden_layers"])
HEADS = int(GEOMETRY["num_key_value_heads"])
HEAD_DIM = int(GEOMETRY["head_dim"])
BYTES_PER_TOKEN = LAYERS * 2 * HEADS * HEAD_DIM * 2  # k and v, bf16
KINDS = ("kv",) * LAYERS


def synthetic_kv(n_tokens: int, seed: int = 0) -> list[tuple[mx.array, mx.array]]:
    """Random bf16 keys and values of `n_tokens` tokens for every layer, evaluated."""
    mx.random.seed(seed)
    shape = (1, HEADS, n_tokens, HEAD_DIM)
    layers = [(mx.random.normal(shape).astype(mx.bfloat16),
               mx.random.normal(shape).astype(mx.bfloat16)) for _ in range(LAYERS)]
    mx.eval(layers)
    return layers


def cache_of(layers: list[tuple[mx.array, mx.array]], n_tokens: int) -> list[KVCache]:
    """KVCache objects holding the first `n_tokens` tokens of `layers` (copied, evaluated)."""
    caches = []
    for k, v in layers:
        c = KVCache()
        c.state = (k[..., :n_tokens, :], v[..., :n_tokens, :], n_tokens)
        caches.append(c)
    mx.eval([c.state for c in caches])
    return caches


def drop_page_cache(paths: Iterable[Path]) -> None:
    """Make the next read of `paths` come from the disk (fsync, then fadvise DONTNEED)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def sequential_read(paths: list[Path], chunk: int = 8 << 20) -> tuple[int, float]:
    """Read `paths` front to back in large chunks, as `cat` would: (bytes, seconds)."""
    buf = bytearray(chunk)
    total = 0
    started = time.perf_counter()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            while n := os.readv(fd, [buf]):
                total += n
        finally:
            os.close(fd)
    return total, time.perf_counter() - started


def first_token(model: Any, tokens: list[int], prompt_cache: list[Any]) -> float:
    """Prefill `tokens` on `prompt_cache` and produce one greedy token; returns seconds."""
    started = time.perf_counter()
    for token, _ in generate_step(mx.array(tokens), model, max_tokens=1,
                                  prompt_cache=prompt_cache, prefill_step_size=2048):
        mx.eval(token)
        break
    return time.perf_counter() - started


def cold_first_token(model: Any, tokens: list[int]) -> tuple[float, list[Any]]:
    """TTFT of a cold request, and the cache it leaves (prompt plus nothing generated)."""
    prompt_cache = make_prompt_cache(model)
    return first_token(model, tokens, prompt_cache), prompt_cache


def tokens_for(n: int, seed: int) -> list[int]:
    """Deterministic token ids (a fixed linear congruential walk, not `random`)."""
    out = []
    state = seed * 7919 + 1
    for _ in range(n):
        state = (state * 1103515245 + 12345) % (1 << 31)
        out.append(3 + state % 2000)
    return out


def median(values: list[float]) -> float:
    """The middle value (upper middle for even counts)."""
    return sorted(values)[len(values) // 2]
