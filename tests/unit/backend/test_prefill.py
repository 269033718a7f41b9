"""Prefill checkpoints: windows of new tokens out of a batch cache, appended to the chain."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cachelayer.backend.paged_store import PagedStore

pytestmark = pytest.mark.slow  # real mlx inference on a tiny model

FP = "b" * 24


def _tokens(n: int, start: int = 3) -> list[int]:
    return [start + (i * 13) % 1000 for i in range(n)]


def _batch_prefill(model: Any, prompts: list[list[int]], step: int = 16) -> Any:
    """Prefill prompts together in steps, as mlx-lm's BatchGenerator does."""
    from mlx_lm.generate import PromptProcessingBatch
    from mlx_lm.models.cache import make_prompt_cache

    batch = PromptProcessingBatch(model, list(range(len(prompts))),
                                  [make_prompt_cache(model) for _ in prompts],
                                  prefill_step_size=step)
    batch.prompt(prompts)
    return batch


def test_windows_appended_block_by_block_restore_like_one_whole_save(
    family_model: Callable[[str], tuple[Any, Any]], tmp_path: Path
) -> None:
    import mlx.core as mx

    from cachelayer.backend.prefill import kv_window

    model = family_model("llama")[0]
    kinds = ("kv", "kv")
    # Two prompts of different lengths share the batch (left padding in the cache).
    long, short = _tokens(100), _tokens(37, start=400)
    batch = _batch_prefill(model, [short, long])
    whole = PagedStore(tmp_path / "whole", FP, max_bytes=1 << 30, min_tokens=4, block_tokens=32)
    whole.save(tuple(long), batch.extract_cache(1), kinds)
    windowed = PagedStore(tmp_path / "windows", FP, max_bytes=1 << 30, min_tokens=4,
                          block_tokens=32)
    # A window that starts past what the store holds is refused: the chain has a gap.
    gap = [kv_window(layer, 1, 32, 64) for layer in batch.prompt_cache]
    assert windowed.save(tuple(long[:64]), gap, kinds, base=32) == 0
    for lo, hi in ((0, 32), (32, 96)):
        window = [kv_window(layer, 1, lo, hi) for layer in batch.prompt_cache]
        assert all(w is not None and w.keys.shape[2] == hi - lo for w in window)
        assert windowed.save(tuple(long[:hi]), window, kinds, base=lo) > 0
    match = windowed.nearest(long, kinds)
    assert match is not None and match.n_tokens == 96
    restored, reference = windowed.load(match, kinds), whole.load(whole.nearest(long, kinds),
                                                                   kinds)
    assert restored is not None and reference is not None
    for a, b in zip(restored, reference, strict=True):
        assert mx.array_equal(a.keys[:, :, :96], b.keys[:, :, :96])
        assert mx.array_equal(a.values[:, :, :96], b.values[:, :, :96])
