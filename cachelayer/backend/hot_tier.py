"""The hot tier: mlx-lm's `LRUPromptCache` under a byte budget, counting what leaves it.

mlx-lm already drops least recently used caches past `max_bytes` (on insert) and
past `--prompt-cache-bytes` minus the active batch (`trim_to`). Both go through its
`CacheOrder.pop`, so counting there sees every eviction and nothing else (a cache
replaced by a longer one of the same prompt is a `remove`, not an eviction).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from mlx_lm.models.cache import KVCache, LRUPromptCache, QuantizedKVCache

from cachelayer.backend.memory_budget import EvictionCounter

logger = logging.getLogger(__name__)


class _CountingOrder(LRUPromptCache.CacheOrder):
    """mlx-lm's LRU order; every pop (an eviction) is counted with its entry's bytes."""

    def __init__(self, owner: BudgetedPromptCache) -> None:
        super().__init__()
        self._owner = owner

    def pop(self) -> Any:
        model, tokens = super().pop()
        entry = self._owner._trie.get(model, tokens)
        self._owner.evicted.add(entry.nbytes if entry is not None else 0)
        return model, tokens


class BudgetedPromptCache(LRUPromptCache):
    """An `LRUPromptCache` at most `max_bytes` big, with its evictions counted."""

    def __init__(self, max_size: int = 10, max_bytes: int = 1 << 63) -> None:
        """mlx-lm's cache with the counting order in place of its own."""
        super().__init__(max_size=max_size, max_bytes=max_bytes)
        self.evicted = EvictionCounter()
        self._lru = _CountingOrder(self)

    def budget_stats(self) -> dict[str, Any]:
        """Hot-tier bytes against the budget, and what left it."""
        return {
            "sequences": len(self),
            "bytes": self.nbytes,
            "budget_bytes": self.max_bytes,
            "max_sequences": self.max_size,
            "evictions": self.evicted.evictions,
            "evicted_bytes": self.evicted.evicted_bytes,
        }


def snapshot_nbytes(snapshot: list[Any]) -> int:
    """Bytes a queued cache snapshot keeps alive (0 for anything that is not one)."""
    if not isinstance(snapshot, list):
        return 0
    return sum(int(getattr(c, "nbytes", 0)) for c in snapshot)


def refusal_reason(prompt_cache: list[Any]) -> str:
    """Why a cache of layers the store does not know cannot be persisted, in a word."""
    if any(isinstance(c, QuantizedKVCache) for c in prompt_cache):
        return "quantized_kv"
    return "layer_kinds"


def align_positional(snapshot: list[Any], kinds: tuple[str, ...]) -> int | None:
    """Trim an all-attention snapshot whose layers hold different token counts (a draft
    model's cache lags the main one by a token after speculative decoding) to the
    shortest: exact, since position i of a KV cache depends on tokens <= i only.
    Returns the common count, or None if the layers are not all plain KV caches."""
    if set(kinds) != {"kv"} or not all(type(c) is KVCache for c in snapshot):
        return None
    n = min(c.offset for c in snapshot)
    for i, c in enumerate(snapshot):
        if c.offset > n:
            c = snapshot[i] = copy.copy(c)
            c.trim(c.offset - n)
    return n
