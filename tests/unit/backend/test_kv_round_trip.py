"""The quick loop's KV store-and-restore: a tiny model's prompt KV is written to disk as
blocks by the backend's cache, restored into a fresh cache over the same directory (as a
restarted backend would), and the continuation equals a cold prefill's, bit for bit.

Real mlx on the CPU, a two-layer llama built in memory (no files, no tokenizer): about a
second, so it runs in `make unit` (not marked slow). The family matrix, damage and
eviction cases are in test_paged_store.py and test_persistent_cache.py (slow).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest

from tests.support.family_models import family_model_in_memory
from tests.unit.backend.conftest import KEY


def _tokens(n: int, start: int = 3) -> list[int]:
    return [start + (i * 11) % 1000 for i in range(n)]


def _prefill(model: Any, tokens: list[int], chunk: int = 64) -> list[Any]:
    """A fresh prompt cache holding `tokens`, prefilled in chunks as the server does."""
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    for i in range(0, len(tokens), chunk):
        model(mx.array(tokens[i : i + chunk])[None], cache=cache)
        mx.eval([c.state for c in cache])
    return cache


def _greedy(model: Any, cache: list[Any], suffix: list[int], steps: int) -> tuple[Any, list[int]]:
    """The logits over `suffix` and the next `steps` greedy tokens, continuing `cache`."""
    logits = model(mx.array(suffix)[None], cache=cache)
    mx.eval(logits)
    first = logits
    answer: list[int] = []
    for _ in range(steps):
        token = int(mx.argmax(logits[0, -1]).item())
        answer.append(token)
        logits = model(mx.array([token])[None], cache=cache)
    return first, answer


@pytest.fixture(scope="module")
def model() -> Any:
    """The tiny llama, built once for this module."""
    return family_model_in_memory("llama")


def test_kv_written_as_blocks_and_restored_in_a_fresh_cache_answers_as_a_cold_prefill(
    model: Any, make_cache: Any, tmp_path: Path
) -> None:
    from cachelayer.backend.kv_blocks import BLOCK_SUFFIX
    from cachelayer.backend.kv_codec import cache_tokens

    tokens = _tokens(100)
    first = make_cache()
    first.insert_cache(KEY, tokens, _prefill(model, tokens))
    first.close()  # the writer finishes every queued write before it stops
    blocks = sorted(tmp_path.rglob(f"*{BLOCK_SUFFIX}"))
    assert len(blocks) == 7  # six of 16 tokens and one of 4

    fresh = make_cache()  # nothing in memory: only the disk can answer
    suffix = [7, 8, 9]
    restored, rest = fresh.fetch_nearest_cache(KEY, [*tokens, *suffix])
    assert rest == suffix and cache_tokens(restored) == len(tokens)
    stats = fresh.stats()
    assert stats["tokens_restored_disk"] == len(tokens) and stats["disk_hits"] == 1

    restored_logits, restored_answer = _greedy(model, restored, suffix, steps=8)
    cold_logits, cold_answer = _greedy(model, _prefill(model, tokens), suffix, steps=8)
    assert mx.array_equal(restored_logits, cold_logits)
    assert restored_answer == cold_answer


def test_a_fresh_cache_over_an_empty_directory_prefills_everything(
    model: Any, make_cache: Any
) -> None:
    """The control: without the written blocks the same lookup restores nothing, so the
    test above passes only because the blocks were read back."""
    tokens = _tokens(100)
    _cache, rest = make_cache().fetch_nearest_cache(KEY, [*tokens, 7, 8, 9])
    assert rest == [*tokens, 7, 8, 9]
