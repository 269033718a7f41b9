"""Caches the store cannot restore exactly are counted and logged, never silently dropped
and never written; a draft model's lagging layers are persisted at their common length."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.models.cache import KVCache

from cachelayer.backend.kv_blocks import BLOCK_SUFFIX
from cachelayer.backend.paged_store import PagedStore
from cachelayer.backend.persistent_cache import PersistentPromptCache
from tests.support.wait import wait_until

KEY = ("model", None, None)


def _kv(tokens: int, dim: int = 32) -> KVCache:
    c = KVCache()
    c.update_and_fetch(mx.random.normal((1, 2, tokens, dim)),
                       mx.random.normal((1, 2, tokens, dim)))
    mx.eval(c.state)
    return c


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[PersistentPromptCache]:
    store = PagedStore(tmp_path, "b" * 24, max_bytes=1 << 30, min_tokens=16, block_tokens=16)
    store.rebuild_index()
    made = PersistentPromptCache(store, KEY, kinds=("kv", "kv"))
    yield made
    made.close()


def test_a_quantized_cache_is_counted_logged_once_and_kept_in_memory(
    cache: PersistentPromptCache, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = list(range(3, 43))
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            quantized = [_kv(40).to_quantized(group_size=32, bits=8) for _ in range(2)]
            cache.insert_cache(KEY, tokens, quantized)
        assert cache.flush()
    assert cache.stats()["persist_refused"] == {"quantized_kv": 2}
    assert len([r for r in caplog.records if "quantized_kv" in r.message]) == 1
    assert not list(cache.store.root.glob(f"*{BLOCK_SUFFIX}"))
    _, rest = cache.fetch_nearest_cache(KEY, [*tokens, 1])
    assert rest == [1]  # memory serves it, as stock mlx-lm would


def test_layers_one_token_apart_persist_their_common_prefix(
    cache: PersistentPromptCache,
) -> None:
    tokens = list(range(3, 44))
    cache.insert_cache(KEY, tokens, [_kv(41), _kv(40)])
    assert cache.flush()
    assert cache.stats()["persist_refused"] == {}
    match = cache.store.nearest([*tokens, 1], ("kv", "kv"))
    assert match is not None and match.n_tokens == 40


def test_a_write_past_the_queue_bound_waits_then_is_dropped_and_counted(
    tmp_path: Path,
) -> None:
    store = PagedStore(tmp_path, "c" * 24, max_bytes=1 << 30, min_tokens=16, block_tokens=16)
    store.rebuild_index()
    one = sum(c.nbytes for c in [_kv(40), _kv(40)])
    cache = PersistentPromptCache(store, KEY, kinds=("kv", "kv"), queue_bytes=one)
    cache._queue.wait_s = 0.1
    stuck, holding = threading.Event(), threading.Event()
    original = store.save

    def slow_save(*args: object) -> int:
        holding.set()  # the writer has taken a write off the queue
        stuck.wait(30)  # a disk that does not keep up
        return original(*args)  # type: ignore[arg-type]

    store.save = slow_save  # type: ignore[method-assign]
    try:
        for start in (3, 100, 200):  # one being written, one queued, one with no room
            tokens = list(range(start, start + 40))
            cache.insert_cache(KEY, tokens, [_kv(40), _kv(40)])
            if start == 3:
                wait_until(holding.is_set, "the writer to hold the first write")
        stats = cache.stats()
        assert stats["write_queue"]["dropped_full"] == 1 and stats["write_queue"]["waits"] == 1
        assert stats["write_queue"]["bytes"] <= one
    finally:
        stuck.set()
        cache.close()
    assert len(store.index.blocks) == 2 * 3  # the two admitted prompts, 3 blocks each
