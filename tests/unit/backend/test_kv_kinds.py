"""Which cache kinds persist and which stay in memory only, as docs/kv-cache.md lists them:
`KVCache`, `RotatingKVCache` and single-sequence `ArraysCache` layers are stored; a model
with any `QuantizedKVCache`, `CacheList`, `ChunkedKVCache` or batch-padded layer is kept in
memory only (the classification that decides it; the behaviour is in
test_persistent_cache.py and, per family, in the integration family matrix)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from cachelayer.backend.kv_codec import layer_kinds
from tests.support.family_models import FAMILIES

# What each tested family's layers are, as mlx-lm builds them.
PERSISTED = {
    "llama": {"kv"}, "qwen3_moe": {"kv"}, "gpt_oss": {"kv", "rotating"},
    "gemma3_text": {"kv", "rotating"}, "qwen3_next": {"arrays", "kv"},
    "nemotron_h": {"arrays", "kv"},
}


def _memory_only_layers() -> dict[str, Callable[[], Any]]:
    from mlx_lm.models.cache import (
        ArraysCache,
        CacheList,
        ChunkedKVCache,
        KVCache,
        QuantizedKVCache,
    )

    def padded() -> Any:
        return ArraysCache(2, left_padding=[3])

    return {"QuantizedKVCache": QuantizedKVCache, "CacheList": lambda: CacheList(KVCache(),
                                                                                 KVCache()),
            "ChunkedKVCache": lambda: ChunkedKVCache(64), "batch ArraysCache": padded}


def test_the_documented_families_are_the_tested_ones() -> None:
    assert set(PERSISTED) == set(FAMILIES)


@pytest.mark.parametrize("kind", sorted(_memory_only_layers()))
def test_a_model_with_any_memory_only_layer_is_not_persisted(kind: str) -> None:
    from mlx_lm.models.cache import KVCache

    layer = _memory_only_layers()[kind]()
    assert layer_kinds([layer]) is None
    assert layer_kinds([KVCache(), layer, KVCache()]) is None  # one such layer is enough


def test_the_persisted_kinds_are_classified_as_stored() -> None:
    from mlx_lm.models.cache import ArraysCache, KVCache, RotatingKVCache

    assert layer_kinds([KVCache(), RotatingKVCache(max_size=8), ArraysCache(2)]) == (
        "kv", "rotating", "arrays")


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(PERSISTED))
def test_each_tested_family_builds_only_stored_kinds(
    family: str, family_model: Callable[[str], tuple[Any, Any]]
) -> None:
    from mlx_lm.models.cache import make_prompt_cache

    kinds = layer_kinds(make_prompt_cache(family_model(family)[0]))
    assert kinds is not None and set(kinds) == PERSISTED[family]
