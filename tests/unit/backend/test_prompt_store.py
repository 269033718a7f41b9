"""PromptStore: index from headers, nearest-prefix lookup, eviction, bad files."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cachelayer.backend.kv_files import SUFFIX
from cachelayer.backend.prompt_store import PromptStore, cache_length

pytestmark = pytest.mark.slow  # real mlx inference, child servers or CLIs

FP = "f" * 24
Prefill = Callable[..., list[Any]]


def _store(kv: Path, *, max_bytes: int = 1 << 30, min_tokens: int = 4) -> PromptStore:
    store = PromptStore(kv, FP, max_bytes=max_bytes, min_tokens=min_tokens)
    store.rebuild_index()
    return store


def _tokens(n: int, start: int = 10) -> list[int]:
    return [start + (i * 7) % 1500 for i in range(n)]


def test_saved_cache_is_found_after_restart_from_headers_only(
    tmp_path: Path, prefill: Prefill
) -> None:
    tokens = _tokens(40)
    assert _store(tmp_path).save(tokens, prefill(tokens))
    fresh = _store(tmp_path)
    assert len(fresh) == 1 and fresh.nbytes > 0
    assert fresh.nearest([*tokens, 99]) == (tuple(tokens), 40)
    restored = fresh.load(tuple(tokens), 40)
    assert restored is not None and cache_length(restored) == 40


def test_files_are_owner_only(tmp_path: Path, prefill: Prefill) -> None:
    store = _store(tmp_path / "kv")
    store.save(_tokens(8), prefill(_tokens(8)))
    (path,) = store.root.glob(f"*{SUFFIX}")
    assert path.stat().st_mode & 0o777 == 0o600
    assert store.root.stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "kv").stat().st_mode & 0o777 == 0o700


def test_restored_prefix_gives_the_same_logits_as_a_cold_prefill(
    tmp_path: Path, prefill: Prefill, loaded_model: tuple[Any, Any]
) -> None:
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    model = loaded_model[0]
    prompt = _tokens(300)
    cold_cache = make_prompt_cache(model)
    cold = model(mx.array(prompt)[None], cache=cold_cache)[0, -1]
    store = _store(tmp_path)
    store.save(prompt[:200], prefill(prompt[:200]))
    key, n = store.nearest(prompt) or ((), 0)
    warm_cache = store.load(key, n)
    assert n == 200 and warm_cache is not None
    warm = model(mx.array(prompt[n:])[None], cache=warm_cache)[0, -1]
    assert mx.allclose(cold, warm, atol=1e-4).item()
    # Negative control: the cache really shapes the logits, so a wrong one shows.
    wrong = model(mx.array(prompt[n:])[None], cache=prefill(_tokens(200, start=700)))[0, -1]
    assert not mx.allclose(cold, wrong, atol=1e-4).item()


def test_nearest_prefers_the_longest_usable_prefix_and_leaves_one_token(
    tmp_path: Path, prefill: Prefill
) -> None:
    store = _store(tmp_path)
    base = _tokens(30)
    longer = [*base, *_tokens(20, start=900)]
    store.save(longer, prefill(longer))
    # Exact: all but the last token come from the file.
    assert store.nearest(longer) == (tuple(longer), len(longer) - 1)
    # Diverging after 30 tokens: the longer file is trimmed to the common part.
    assert store.nearest([*base, 1, 2, 3]) == (tuple(longer), 30)
    # A prompt that is a strict prefix of the file.
    assert store.nearest(base[:20]) == (tuple(longer), 19)
    assert store.nearest(_tokens(10, start=1400)) is None
    trimmed = store.load(tuple(longer), 30)
    assert trimmed is not None and cache_length(trimmed) == 30


def test_short_prompts_are_not_stored(tmp_path: Path, prefill: Prefill) -> None:
    store = _store(tmp_path, min_tokens=50)
    assert not store.save(_tokens(49), prefill(_tokens(49)))
    assert len(store) == 0 and not list(store.root.glob(f"*{SUFFIX}"))


def test_a_longer_cache_replaces_its_stored_prefixes(tmp_path: Path, prefill: Prefill) -> None:
    store = _store(tmp_path)
    tokens = _tokens(60)
    store.save(tokens[:20], prefill(tokens[:20]))
    store.save(tokens[:40], prefill(tokens[:40]))
    store.save(tokens, prefill(tokens))
    assert len(store) == 1 and len(list(store.root.glob(f"*{SUFFIX}"))) == 1
    assert store.nearest(tokens[:21]) == (tuple(tokens), 20)


def test_eviction_keeps_total_bytes_under_the_limit_lru_first(
    tmp_path: Path, prefill: Prefill
) -> None:
    probe = _store(tmp_path / "probe")
    probe.save(_tokens(30), prefill(_tokens(30)))
    one_file = probe.nbytes
    store = _store(tmp_path / "kv", max_bytes=int(one_file * 2.5))
    prompts = [_tokens(30, start=s) for s in (100, 200, 300)]
    store.save(prompts[0], prefill(prompts[0]))
    store.save(prompts[1], prefill(prompts[1]))
    assert store.load(tuple(prompts[0]), 29) is not None  # now the most recently used
    store.save(prompts[2], prefill(prompts[2]))
    assert store.nbytes <= store.max_bytes
    on_disk = sum(p.stat().st_size for p in store.root.glob(f"*{SUFFIX}"))
    assert on_disk == store.nbytes <= store.max_bytes
    assert store.nearest([*prompts[1], 1]) is None  # least recently used went first
    assert store.nearest([*prompts[0], 1]) is not None
    assert store.counters.evictions == 1
    # The LRU order survives a restart (file mtimes).
    assert [len(k) for k in _store(tmp_path / "kv")._entries] == [30, 30]


def test_a_cache_larger_than_the_whole_budget_is_not_written(
    tmp_path: Path, prefill: Prefill
) -> None:
    store = _store(tmp_path, max_bytes=1000)
    assert not store.save(_tokens(30), prefill(_tokens(30)))
    assert not list(store.root.glob("*"))


def _write_foreign_safetensors(path: Path) -> None:
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)


def test_bad_files_are_removed_at_start_up(tmp_path: Path, prefill: Prefill) -> None:
    store = _store(tmp_path)
    good, cut = _tokens(20), _tokens(20, start=500)
    store.save(good, prefill(good))
    store.save(cut, prefill(cut))
    paths = sorted(store.root.glob(f"*{SUFFIX}"))
    cut_path = paths[0]
    data = cut_path.read_bytes()
    cut_path.write_bytes(data[: len(data) // 2])
    (store.root / f"garbage{SUFFIX}").write_bytes(os.urandom(100))
    _write_foreign_safetensors(store.root / f"foreign{SUFFIX}")
    other = PromptStore(tmp_path, "0" * 24, max_bytes=1 << 30, min_tokens=1)
    other.save(_tokens(20, start=900), prefill(_tokens(20, start=900)))
    (other_file,) = other.root.glob(f"*{SUFFIX}")
    os.replace(other_file, store.root / f"moved{SUFFIX}")  # another model's cache

    fresh = _store(tmp_path)
    assert len(fresh) == 1
    assert sorted(store.root.glob(f"*{SUFFIX}")) == [paths[1]]


def test_a_file_damaged_after_indexing_is_removed_on_load(tmp_path: Path, prefill: Prefill) -> None:
    tokens = _tokens(20)
    store = _store(tmp_path)
    store.save(tokens, prefill(tokens))
    (path,) = store.root.glob(f"*{SUFFIX}")
    path.write_bytes(b"\0" * 8 + path.read_bytes()[8:])
    assert store.load(tuple(tokens), 19) is None
    assert not path.exists() and len(store) == 0 and store.nbytes == 0
    assert store.counters.corrupt_removed == 1


def test_a_file_deleted_underneath_is_a_miss(tmp_path: Path, prefill: Prefill) -> None:
    tokens = _tokens(20)
    store = _store(tmp_path)
    store.save(tokens, prefill(tokens))
    for path in store.root.glob(f"*{SUFFIX}"):
        path.unlink()
    assert store.load(tuple(tokens), 19) is None
    assert store.counters.missing_files == 1 and len(store) == 0
    # ... and the directory itself vanishing does not stop later writes.
    os.rmdir(store.root)
    assert store.save(tokens, prefill(tokens))


def test_reconcile_forgets_files_removed_by_clear(tmp_path: Path, prefill: Prefill) -> None:
    from cachelayer.backend.kv_files import clear_kv

    store = _store(tmp_path)
    store.save(_tokens(20), prefill(_tokens(20)))
    assert clear_kv(tmp_path)[0] == 1
    store.reconcile()
    assert len(store) == 0 and store.nbytes == 0


@pytest.mark.parametrize("n", [1, 5])
def test_stats_report_files_and_counters(tmp_path: Path, prefill: Prefill, n: int) -> None:
    store = _store(tmp_path, min_tokens=1)
    for i in range(n):
        store.save(_tokens(8, start=100 * i + 1), prefill(_tokens(8, start=100 * i + 1)))
    store.count(tokens_restored_disk=3)
    stats = store.stats()
    assert stats["files"] == n and stats["writes"] == n and stats["tokens_restored_disk"] == 3
