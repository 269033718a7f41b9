"""What docs/kv-cache.md promises about the files: 0600 files in 0700 directories, whatever
the umask, and temporary files of interrupted writes swept (at start-up once an hour old,
and by `cachelayer clear --kv`) without touching a write still in progress."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cachelayer.backend.kv_blocks import BLOCK_SUFFIX
from cachelayer.backend.kv_codec import layer_kinds
from cachelayer.backend.kv_files import clear_kv
from cachelayer.backend.paged_store import PagedStore
from cachelayer.fs import TMP_PREFIX

pytestmark = pytest.mark.slow  # real mlx prefill of a tiny model

FP = "b" * 24
Family = Callable[[str], tuple[Any, Any]]


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that lets group and others read (0022): modes must not rely on the umask."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _saved_store(family_model: Family, kv: Path, family: str) -> PagedStore:
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    model = family_model(family)[0]
    tokens = [3 + (i * 7) % 900 for i in range(80)]
    cache = make_prompt_cache(model)
    model(mx.array(tokens)[None], cache=cache)
    mx.eval([c.state for c in cache])
    store = PagedStore(kv, FP, max_bytes=1 << 30, min_tokens=4, block_tokens=32)
    store.rebuild_index()
    kinds = layer_kinds(cache)
    assert kinds is not None
    assert store.save(tuple(tokens), cache, kinds) > 0
    return store


@pytest.mark.parametrize("family", ["llama", "gpt_oss"])
def test_blocks_and_checkpoints_are_0600_in_0700_directories_under_an_open_umask(
    family_model: Family, tmp_path: Path, open_umask: None, family: str,
) -> None:
    kv = tmp_path / "kv"
    store = _saved_store(family_model, kv, family)
    files = [p for p in store.root.iterdir() if p.is_file()]
    assert any(p.name.endswith(BLOCK_SUFFIX) for p in files)
    if family == "gpt_oss":  # a sliding window: a checkpoint file as well
        assert store.counters.checkpoints_written >= 1
    assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}
    assert _mode(kv) == 0o700 and _mode(store.root) == 0o700


def test_temp_files_older_than_an_hour_are_swept_at_start_up_and_fresh_ones_kept(
    family_model: Family, tmp_path: Path
) -> None:
    kv = tmp_path / "kv"
    store = _saved_store(family_model, kv, "llama")
    stale = store.root / f"{TMP_PREFIX}crashed-write"
    fresh = store.root / f"{TMP_PREFIX}write-in-progress"
    for path in (stale, fresh):
        path.write_bytes(b"half a block")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    blocks = sorted(p.name for p in store.root.glob(f"*{BLOCK_SUFFIX}"))

    restarted = PagedStore(kv, FP, max_bytes=1 << 30, min_tokens=4, block_tokens=32)
    restarted.rebuild_index()
    assert not stale.exists()
    assert fresh.exists()  # another backend's write on the same directory may be running
    assert sorted(p.name for p in store.root.glob(f"*{BLOCK_SUFFIX}")) == blocks
    assert len(restarted.index.blocks) == len(blocks)


def test_clear_removes_temp_files_too_and_counts_only_real_files(
    family_model: Family, tmp_path: Path
) -> None:
    kv = tmp_path / "kv"
    store = _saved_store(family_model, kv, "llama")
    (store.root / f"{TMP_PREFIX}leftover").write_bytes(b"x" * 100)
    real = [p for p in store.root.iterdir() if not p.name.startswith(TMP_PREFIX)
            and p.name.endswith(BLOCK_SUFFIX)]
    removed, freed = clear_kv(kv)
    assert removed == len(real) and freed == store.counters.bytes_written
    assert not [p for p in store.root.iterdir() if p.name.startswith(TMP_PREFIX)]
