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


def test_aligned_pieces_cut_at_every_block_and_step_boundary_and_keep_segment_ends() -> None:
    from cachelayer.backend.prefill import aligned_pieces

    # A prompt resumed at 250: cuts at 256 (block), 300 (step), 400, 500, 512, 600 ...
    segments = [list(range(60)), list(range(300)), [7]]
    pieces, ends = aligned_pieces(segments, 250, (256, 100))
    assert [len(p) for p in pieces] == [6, 44, 10, 90, 100, 12, 88, 10, 1]
    assert [t for p in pieces for t in p] == [t for s in segments for t in s]
    assert ends == {60, 360, 361}  # the prompt's own segment ends, from where it resumed


def _three_tokens(generator_class: Any, model: Any, prompt: list[int], step: int, *,
                  resume: tuple[int, list[Any]] | None = None,
                  keep_at: int | None = None) -> tuple[list[Any], list[Any] | None]:
    """The logprobs of the first three greedy tokens after `prompt` (resumed from a cache
    of its first tokens if given), and the cache extracted when `keep_at` tokens were in."""
    import copy

    generator = generator_class(model, max_tokens=3, prefill_step_size=step)
    start, cache = resume if resume is not None else (0, None)
    (uid,) = generator.insert([prompt[start:]], caches=[copy.deepcopy(cache)] if cache else None,
                              all_tokens=[prompt[:start]])
    kept, out = None, []
    while len(out) < 3:
        prompt_responses, generation_responses = generator.next()
        for r in prompt_responses:
            if not r.end_of_prompt and start + r.progress[0] == keep_at:
                kept = generator.extract_cache([uid])[uid][0]
        out += [r.logprobs for r in generation_responses if r.uid == uid]
    return out, kept


def test_a_mamba_prefill_resumed_at_a_block_answers_as_cold_with_block_aligned_steps(
    family_model: Callable[[str], tuple[Any, Any]],
) -> None:
    import mlx.core as mx
    from mlx_lm.generate import BatchGenerator as MlxBatchGenerator

    from cachelayer.backend.prefill import BatchGenerator

    model = family_model("nemotron_h")[0]
    prompt = _tokens(700)

    def same(a: list[Any], b: list[Any]) -> bool:
        return all(bool(mx.array_equal(x, y)) for x, y in zip(a, b, strict=True))

    # Why steps sized by time cannot be used as they are: Mamba-2's chunked scan sums
    # over the tokens of one call, so where calls cut changes the answer.
    assert not same(_three_tokens(MlxBatchGenerator, model, prompt, 100)[0],
                    _three_tokens(MlxBatchGenerator, model, prompt, 128)[0])
    # Cut at absolute multiples of the step (100, not a divisor of a block) and of the
    # block, a prefill resumed from its state at a block boundary makes the same calls.
    cold, at_512 = _three_tokens(BatchGenerator, model, prompt, 100, keep_at=512)
    assert at_512 is not None
    resumed, _ = _three_tokens(BatchGenerator, model, prompt, 100, resume=(512, at_512))
    assert same(cold, resumed)
