"""PersistentPromptCache: memory first, disk behind it, writes off the caller's thread."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cachelayer.backend.kv_files import STATS_NAME, SUFFIX
from cachelayer.backend.persistent_cache import PersistentPromptCache
from cachelayer.backend.prompt_store import PromptStore, cache_length

pytestmark = pytest.mark.slow  # real mlx inference, child servers or CLIs

KEY = ("model", None, None)
Prefill = Callable[..., list[Any]]


@pytest.fixture
def make_cache(tmp_path: Path) -> Iterator[Callable[[], PersistentPromptCache]]:
    made: list[PersistentPromptCache] = []

    def make() -> PersistentPromptCache:
        store = PromptStore(tmp_path, "a" * 24, max_bytes=1 << 30, min_tokens=16)
        store.rebuild_index()
        cache = PersistentPromptCache(store, KEY, model_name="m")
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


def _tokens(n: int, start: int = 3) -> list[int]:
    return [start + (i * 11) % 1000 for i in range(n)]


def test_insert_is_written_by_the_writer_thread(
    make_cache: Callable[[], PersistentPromptCache], prefill: Prefill
) -> None:
    cache = make_cache()
    seen: list[str] = []
    original = cache.store.save

    def spy(tokens: Any, prompt_cache: Any) -> bool:
        seen.append(threading.current_thread().name)
        return original(tokens, prompt_cache)

    cache.store.save = spy  # type: ignore[method-assign]
    tokens = _tokens(40)
    cache.insert_cache(KEY, tokens, prefill(tokens))
    assert cache.flush()
    assert seen == ["kv-writer"]
    assert len(list(cache.store.root.glob(f"*{SUFFIX}"))) == 1


def test_after_restart_a_prefix_comes_from_disk_and_is_counted(
    make_cache: Callable[[], PersistentPromptCache], prefill: Prefill
) -> None:
    tokens = _tokens(40)
    first = make_cache()
    first.insert_cache(KEY, tokens, prefill(tokens))
    first.close()

    second = make_cache()
    restored, rest = second.fetch_nearest_cache(KEY, [*tokens, 7, 8])
    assert rest == [7, 8] and cache_length(restored) == 40
    stats = second.stats()
    assert stats["tokens_restored_disk"] == 40 and stats["tokens_prefilled"] == 2
    assert stats["disk_hits"] == 1 and stats["memory"]["sequences"] == 0
    second.flush()
    exported = json.loads((second.store.kv_dir / STATS_NAME).read_text())
    assert exported["tokens_restored_disk"] == 40


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
    assert len(cache) == 2 and not list(cache.store.root.glob(f"*{SUFFIX}"))


def test_nested_inserts_of_one_request_write_one_file(
    make_cache: Callable[[], PersistentPromptCache], prefill: Prefill
) -> None:
    cache = make_cache()
    tokens = _tokens(80)
    # As mlx-lm does: system segment, whole prompt, prompt plus answer.
    for n in (30, 70, 80):
        cache.insert_cache(KEY, tokens[:n], prefill(tokens[:n]), cache_type="user")
    cache.flush()
    files = list(cache.store.root.glob(f"*{SUFFIX}"))
    assert len(files) == 1 and cache.store.nearest([*tokens, 1]) == (tuple(tokens), 80)
