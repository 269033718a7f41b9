"""The hot tier: mlx-lm's LRU under a byte budget, evictions counted with their bytes."""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.models.cache import KVCache

from cachelayer.backend.hot_tier import BudgetedPromptCache, align_positional, snapshot_nbytes

KEY = ("m", None, None)


def _cache(tokens: int, layers: int = 2) -> list[KVCache]:
    caches = []
    for _ in range(layers):
        c = KVCache()
        c.update_and_fetch(mx.zeros((1, 2, tokens, 8)), mx.zeros((1, 2, tokens, 8)))
        caches.append(c)
    mx.eval([c.state for c in caches])
    return caches


def test_past_the_budget_the_least_recently_used_cache_leaves_and_is_counted() -> None:
    one = snapshot_nbytes(_cache(10))
    hot = BudgetedPromptCache(max_size=10, max_bytes=2 * one)
    for start in (100, 200, 300):
        hot.insert_cache(KEY, list(range(start, start + 10)), _cache(10))
    stats = hot.budget_stats()
    assert stats["sequences"] == 2 and stats["bytes"] == 2 * one <= stats["budget_bytes"]
    assert stats["evictions"] == 1 and stats["evicted_bytes"] == one
    _, rest = hot.fetch_nearest_cache(KEY, list(range(100, 111)))
    assert len(rest) == 11  # the first one is gone from memory


def test_a_cache_replaced_by_its_longer_self_is_not_an_eviction() -> None:
    hot = BudgetedPromptCache(max_size=10, max_bytes=1 << 40)
    tokens = list(range(100, 120))
    hot.insert_cache(KEY, tokens[:10], _cache(10))
    hot.insert_cache(KEY, tokens, _cache(20))
    assert len(hot) == 1 and hot.budget_stats()["evictions"] == 0


def test_trim_to_counts_what_it_drops() -> None:
    hot = BudgetedPromptCache(max_size=10)
    for start in (100, 200):
        hot.insert_cache(KEY, list(range(start, start + 10)), _cache(10))
    hot.trim_to(n_bytes=0)
    assert len(hot) == 0 and hot.budget_stats()["evictions"] == 2


def test_a_draft_models_lagging_layers_are_aligned_to_the_common_prefix() -> None:
    main, draft = _cache(12), _cache(11)
    snapshot = [*main, *draft]
    assert align_positional(snapshot, ("kv",) * 4) == 11
    assert {c.offset for c in snapshot} == {11}
    assert main[0].offset == 12  # the live cache is untouched
