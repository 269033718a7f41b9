"""PersistentPromptCache: memory first, paged disk behind it, writes off the caller's thread."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cachelayer.backend.kv_blocks import BLOCK_SUFFIX
from cachelayer.backend.kv_codec import cache_tokens
from cachelayer.backend.kv_files import STATS_NAME
from cachelayer.backend.persistent_cache import PersistentPromptCache
from tests.unit.backend.conftest import KEY, KINDS

pytestmark = pytest.mark.slow  # real mlx inference, child servers or CLIs

Prefill = Callable[..., list[Any]]


def _tokens(n: int, start: int = 3) -> list[int]:
    return [start + (i * 11) % 1000 for i in range(n)]


def _blocks(cache: PersistentPromptCache) -> list[Path]:
    return list(cache.store.root.glob(f"*{BLOCK_SUFFIX}"))


def test_insert_is_written_by_the_writer_thread(
    make_cache: Callable[[], PersistentPromptCache], prefill: Prefill
) -> None:
    cache = make_cache()
    seen: list[str] = []
    original = cache.store.save

    def spy(tokens: Any, prompt_cache: Any, kinds: Any, **options: Any) -> int:
        seen.append(threading.current_thread().name)
        return original(tokens, prompt_cache, kinds, **options)

    cache.store.save = spy  # type: ignore[method-assign]
    tokens = _tokens(40)
    cache.insert_cache(KEY, tokens, prefill(tokens))
    assert cache.flush()
    assert seen == ["kv-writer"]
    assert len(_blocks(cache)) == 3  # 16 + 16 + 8 tokens


def test_after_restart_a_prefix_comes_from_disk_and_is_counted(
    make_cache: Callable[[], PersistentPromptCache], prefill: Prefill
) -> None:
    tokens = _tokens(40)
    first = make_cache()
    first.insert_cache(KEY, tokens, prefill(tokens))
    first.close()

    second = make_cache()
    restored, rest = second.fetch_nearest_cache(KEY, [*tokens, 7, 8])
    assert rest == [7, 8] and cache_tokens(restored) == 40
    stats = second.stats()
    assert stats["tokens_restored_disk"] == 40 and stats["tokens_prefilled"] == 2
    assert stats["disk_hits"] == 1 and stats["memory"]["sequences"] == 0
    assert stats["reuse_by_family"] == {
        "llama": {"requests": 1, "prompt_tokens": 42, "reused_tokens": 40}
    }
    second.flush()
    exported = json.loads((second.store.kv_dir / STATS_NAME).read_text())
    assert exported["tokens_restored_disk"] == 40 and exported["blocks"] == 3


def test_memory_is_used_when_it_holds_as_much_as_the_disk(
    make_cache: Callable[[], PersistentPromptCache], prefill: Prefill
) -> None:
    cache = make_cache()
    tokens = _tokens(40)
    cache.insert_cache(KEY, tokens, prefill(tokens))
    cache.flush()
    _, rest = cache.fetch_nearest_cache(KEY, [*tokens, 5])
    assert rest == [5]
    stats = cache.stats()
    assert stats["tokens_restored_memory"] == 40 and stats["tokens_restored_disk"] == 0


def test_other_models_and_short_prompts_stay_in_memory_only(
    make_cache: Callable[[], PersistentPromptCache], prefill: Prefill
) -> None:
    cache = make_cache()
    cache.insert_cache(("other", None, None), _tokens(40), prefill(_tokens(40)))
    cache.insert_cache(KEY, _tokens(10), prefill(_tokens(10)))
    cache.flush()
    assert len(cache) == 2 and not _blocks(cache)


def test_nested_inserts_of_one_request_write_each_token_once(
    make_cache: Callable[[], PersistentPromptCache], prefill: Prefill
) -> None:
    cache = make_cache()
    tokens = _tokens(80)
    # As mlx-lm does: system segment, whole prompt, prompt plus answer.
    for n in (30, 70, 80):
        cache.insert_cache(KEY, tokens[:n], prefill(tokens[:n]), cache_type="user")
    cache.flush()
    store = cache.store
    assert sum(len(b.tokens) for b in store.index.blocks.values()) == 80
    match = store.nearest([*tokens, 1], KINDS)
    assert match is not None and match.n_tokens == 80


def test_an_unsupported_cache_kind_is_logged_once_and_kept_in_memory(
    make_cache: Callable[[], PersistentPromptCache], prefill: Prefill,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from mlx_lm.models.cache import QuantizedKVCache

    cache = make_cache()
    quantized = [QuantizedKVCache(), QuantizedKVCache()]
    with caplog.at_level(logging.WARNING):
        cache.set_kinds(quantized)
        tokens = _tokens(40)
        cache.insert_cache(KEY, tokens, prefill(tokens))
        cache.insert_cache(KEY, tokens[:30], prefill(tokens[:30]))
        cache.flush()
    assert cache.kinds is None and not _blocks(cache)
    assert len([r for r in caplog.records if "memory only" in r.message]) == 1
    _, rest = cache.fetch_nearest_cache(KEY, [*tokens, 1])
    assert rest == [1]  # memory still serves it
    assert cache.stats()["persisted"] is False


def test_a_second_signal_drops_queued_writes_whole_and_lets_the_current_one_land(
    make_cache: Callable[[], PersistentPromptCache], prefill: Prefill
) -> None:
    cache = make_cache()
    started, release = threading.Event(), threading.Event()
    original = cache.store.save

    def slow(tokens: Any, prompt_cache: Any, kinds: Any, **options: Any) -> int:
        started.set()
        release.wait(10)
        return original(tokens, prompt_cache, kinds, **options)

    cache.store.save = slow  # type: ignore[method-assign]
    first, second = _tokens(40), _tokens(40, start=500)
    cache.insert_cache(KEY, first, prefill(first))
    assert started.wait(10)
    cache.insert_cache(KEY, second, prefill(second))
    cache.drop_pending()
    release.set()
    cache.close()
    assert cache.writes_dropped == 1
    written = {b.tokens[0] for b in cache.store.index.blocks.values() if b.start == 0}
    assert written == {first[0]}  # the write in progress landed whole; the queued one is absent
