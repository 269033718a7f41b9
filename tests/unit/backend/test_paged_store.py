"""PagedStore: exact restores per cache kind, new-blocks-only writes, integrity, eviction."""

from __future__ import annotations

import copy
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cachelayer.backend.kv_blocks import BLOCK_SUFFIX
from cachelayer.backend.kv_codec import layer_kinds
from cachelayer.backend.paged_store import PagedStore
from tests.support.family_models import FAMILIES
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow  # real mlx inference (tiny models, about a second each)

FP = "a" * 24
Family = Callable[[str], tuple[Any, Any]]


def _tokens(n: int, start: int = 3) -> list[int]:
    return [start + (i * 11) % 1000 for i in range(n)]


def _store(kv: Path, fp: str = FP, **kw: Any) -> PagedStore:
    kw.setdefault("max_bytes", 1 << 30)
    store = PagedStore(kv, fp, min_tokens=4, block_tokens=kw.pop("block_tokens", 32), **kw)
    store.rebuild_index()
    return store


def _prefill(model: Any, tokens: list[int], cache: list[Any] | None = None,
             chunk: int = 64) -> list[Any]:
    """Prefill in chunks as the server does; returns the (evaluated) cache."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    cache = cache if cache is not None else make_prompt_cache(model)
    for i in range(0, len(tokens), chunk):
        model(mx.array(tokens[i : i + chunk])[None], cache=cache)
        mx.eval([c.state for c in cache])
    return cache


def _logits(model: Any, tokens: list[int], cache: list[Any]) -> Any:
    import mlx.core as mx

    out = model(mx.array(tokens)[None], cache=cache)
    mx.eval(out)
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_restored_cache_continues_bit_for_bit_like_the_written_one(
    family: str, family_model: Family, tmp_path: Path
) -> None:
    import mlx.core as mx

    model = family_model(family)[0]
    tokens = _tokens(300)
    live = _prefill(model, tokens)
    kinds = layer_kinds(live)
    assert kinds is not None
    _store(tmp_path).save(tuple(tokens), [copy.copy(c) for c in live], kinds)

    restarted = _store(tmp_path)
    match = restarted.nearest([*tokens, 7, 8, 9], kinds)
    assert match is not None and match.n_tokens == 300
    restored = restarted.load(match, kinds)
    assert restored is not None
    assert [type(c) for c in restored] == [type(c) for c in live]
    # The read ahead's path: host memory on an I/O thread, then the copy into mlx.
    host = restarted.read(match, kinds)
    assert host is not None
    read_ahead = restarted.restore(host, kinds)
    assert [type(c) for c in read_ahead] == [type(c) for c in live]
    suffix = _tokens(20, start=500)
    expected = _logits(model, suffix, live)
    assert mx.array_equal(_logits(model, suffix, restored), expected)
    assert mx.array_equal(_logits(model, suffix, read_ahead), expected)


def test_a_later_turn_writes_only_the_tokens_it_adds(family_model: Family, tmp_path: Path) -> None:
    model = family_model("llama")[0]
    store = _store(tmp_path)
    kinds = ("kv", "kv")
    turn1 = _tokens(100)
    store.save(tuple(turn1), _prefill(model, turn1), kinds)
    # The next turn keeps 90 tokens and adds 50: it branches inside a block.
    turn2 = turn1[:90] + _tokens(50, start=700)
    before = store.counters.bytes_written
    old = set(store.index.blocks)
    store.save(tuple(turn2), _prefill(model, turn2), kinds)
    new_blocks = [b for h, b in store.index.blocks.items() if h not in old]
    assert min(b.start for b in new_blocks) == 90
    assert sum(len(b.tokens) for b in new_blocks) == 50
    per_token = 2 * 2 * 2 * 32 * 4  # layers x (k, v) x heads x head_dim x float32
    assert store.counters.bytes_written - before < 50 * per_token * 1.1
    assert sum(len(b.tokens) for b in store.index.blocks.values()) == 150
    # Saving the same tokens again writes nothing.
    written = store.counters.bytes_written
    store.save(tuple(turn2), _prefill(model, turn2), kinds)
    assert store.counters.bytes_written == written


def _damage_flip(path: Path, _: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40
    path.write_bytes(bytes(data))


def _damage_truncate(path: Path, _: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _damage_foreign(path: Path, foreign: Path) -> None:
    shutil.copyfile(foreign, path)


@pytest.mark.parametrize("damage", [_damage_flip, _damage_truncate, _damage_foreign])
def test_a_damaged_block_is_dropped_the_chain_cut_and_counted(
    damage: Callable[[Path, Path], None], family_model: Family, tmp_path: Path
) -> None:
    import mlx.core as mx

    model = family_model("llama")[0]
    kinds = ("kv", "kv")
    tokens = _tokens(100)
    live = _prefill(model, tokens)
    store = _store(tmp_path / "kv")
    store.save(tuple(tokens), live, kinds)
    other = _store(tmp_path / "other", fp="b" * 24)
    other.save(tuple(tokens), live, kinds)
    foreign = next(b.path for b in other.index.blocks.values() if b.start == 64)
    third = next(b for b in store.index.blocks.values() if b.start == 64)
    damage(third.path, foreign)

    match = store.nearest([*tokens, 1], kinds)
    assert match is not None and match.n_tokens == 100
    assert store.load(match, kinds) is None
    assert store.counters.corrupt_dropped == 1 and not third.path.exists()
    # The chain is cut at the bad block: what precedes it still restores, exactly.
    match = store.nearest([*tokens, 1], kinds)
    assert match is not None and match.n_tokens == 64
    restored = store.load(match, kinds)
    assert restored is not None
    for got, want in zip(restored, live, strict=True):
        assert mx.array_equal(got.keys[..., :64, :], want.keys[..., :64, :])


def test_a_truncated_block_found_at_start_up_is_removed(
    family_model: Family, tmp_path: Path
) -> None:
    model = family_model("llama")[0]
    tokens = _tokens(100)
    _store(tmp_path).save(tuple(tokens), _prefill(model, tokens), ("kv", "kv"))
    victim = sorted(tmp_path.glob(f"*/*{BLOCK_SUFFIX}"))[0]
    victim.write_bytes(victim.read_bytes()[:50])
    store = _store(tmp_path)
    assert store.counters.corrupt_dropped >= 1 and not victim.exists()
    for block in store.index.blocks.values():  # what remains is whole chains
        assert block.parent == bytes(16) or block.parent in store.index.blocks


def test_eviction_removes_least_recently_used_leaves_and_keeps_chains_whole(
    family_model: Family, tmp_path: Path
) -> None:
    model = family_model("llama")[0]
    kinds = ("kv", "kv")
    shared = _tokens(64)
    sessions = [shared + _tokens(64, start=100 * i) for i in range(1, 5)]
    budget = 180 * 1024  # room for the shared prefix and about two session tails
    store = _store(tmp_path, max_bytes=budget)
    for tokens in sessions:
        store.save(tuple(tokens), _prefill(model, tokens), kinds)
        # Least recently used means an older last_used stamp: the next save must be later.
        stamp = max(b.last_used for b in store.index.blocks.values())
        wait_until(lambda s=stamp: time.time() > s, "the clock to pass the last save's stamp")
    assert store.nbytes <= budget
    assert store.counters.evicted_blocks >= 2
    for block in store.index.blocks.values():
        assert block.parent == bytes(16) or block.parent in store.index.blocks
    newest = store.nearest([*sessions[-1], 1], kinds)
    oldest = store.nearest([*sessions[0], 1], kinds)
    assert newest is not None and newest.n_tokens == 128
    assert oldest is not None and oldest.n_tokens == 64  # only the shared prefix is left
    assert store.stats()["evicted_blocks"] == store.counters.evicted_blocks


def test_old_format_files_are_removed_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = tmp_path / FP
    model_dir.mkdir(parents=True)
    for i in range(3):
        (model_dir / f"{i:032x}.safetensors").write_bytes(b"x" * 100)
    with caplog.at_level(logging.INFO):
        store = _store(tmp_path)
    assert not list(model_dir.glob("*.safetensors"))
    assert store.counters.old_format_removed == 3
    assert len([r for r in caplog.records if "old whole-prompt format" in r.message]) == 1


def test_lookups_while_a_shared_prefix_is_being_written_see_whole_blocks_only(
    family_model: Family, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlx.core as mx

    model = family_model("llama")[0]
    kinds = ("kv", "kv")
    tokens = _tokens(200)
    live = _prefill(model, tokens)
    store = _store(tmp_path)
    original = store._write_file
    lookups = threading.Semaphore(0)

    def slow_write(*args: Any) -> int:
        # The scenario: a disk so slow that both readers look up between any two block
        # writes, so every lookup meets a write in flight.
        for _ in range(2):
            if not lookups.acquire(timeout=30):
                raise AssertionError("the readers stopped looking up")
        return original(*args)

    monkeypatch.setattr(store, "_write_file", slow_write)
    writer = threading.Thread(target=store.save, args=(tuple(tokens), live, kinds))
    writer.start()
    seen: list[int] = []
    errors: list[str] = []

    def reader(suffix: int) -> None:
        while writer.is_alive():
            match = store.nearest([*tokens[:150], suffix], kinds)
            lookups.release()
            if match is None:
                continue
            restored = store.load(match, kinds)
            if restored is None:
                errors.append("load failed")
                continue
            n = match.n_tokens
            seen.append(n)
            for got, want in zip(restored, live, strict=True):
                if not mx.array_equal(got.keys[..., :n, :], want.keys[..., :n, :]):
                    errors.append(f"wrong keys at {n}")

    readers = [threading.Thread(target=reader, args=(s,)) for s in (1, 2)]
    for t in readers:
        t.start()
    writer.join()
    for t in readers:
        t.join()
    assert not errors
    assert seen and max(seen) <= 150
    final = store.nearest([*tokens[:150], 1], kinds)
    assert final is not None and final.n_tokens == 150


def test_two_backends_on_one_directory_share_blocks_without_rewriting_them(
    family_model: Family, tmp_path: Path
) -> None:
    model = family_model("llama")[0]
    kinds = ("kv", "kv")
    tokens = _tokens(100)
    first, second = _store(tmp_path), _store(tmp_path)  # both indexed an empty directory
    first.save(tuple(tokens), _prefill(model, tokens), kinds)
    second.save(tuple(tokens), _prefill(model, tokens), kinds)
    assert second.counters.bytes_written == 0
    assert len(list(tmp_path.glob(f"*/*{BLOCK_SUFFIX}"))) == len(first.index.blocks) == 4
    match = second.nearest([*tokens, 1], kinds)
    assert match is not None and match.n_tokens == 100
    assert second.load(match, kinds) is not None
