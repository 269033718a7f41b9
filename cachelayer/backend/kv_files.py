"""Pure file operations on the KV cache directory; no mlx import.

The proxy (`cachelayer stats`, `cachelayer clear --kv`) imports this module, so
it must stay cheap: it lists files and reads JSON, never tensors.

Layout (see kv_blocks.py for the file format)::

    <kv-dir>/kv-stats.json                      counters, rewritten atomically
    <kv-dir>/<model-fingerprint>/<chain-hash>.kvb   a block of per-token KV
    <kv-dir>/<model-fingerprint>/<id>.kvc           a state checkpoint
    <kv-dir>/<model-fingerprint>/.tmp-*              writes in progress
    <kv-dir>/<model-fingerprint>/*.safetensors       the old whole-prompt format
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachelayer.backend.kv_blocks import BLOCK_SUFFIX, CKPT_SUFFIX
from cachelayer.fs import TMP_PREFIX, write_atomic

STATS_NAME = "kv-stats.json"
# The old whole-prompt files: removed by the backend at start-up, and by `clear --kv`.
OLD_SUFFIX = ".safetensors"
# Mixed into every fingerprint. Unchanged from the first format on purpose: a model
# keeps its directory, so the backend finds (and removes) its old-format files.
_FINGERPRINT_SALT = "cachelayer-kv/1"
# Reading this much from each end of a weight file identifies its content
# cheaply; with names, sizes and mtimes it separates any two real checkpoints.
_SAMPLE_BYTES = 1 << 20
_SUFFIXES = (BLOCK_SUFFIX, CKPT_SUFFIX, OLD_SUFFIX)


@dataclass
class KVCounters:
    """What the paged store did since the process started: exported in kv-stats.json,
    which `kv_stats` merges with what it counts on disk."""

    lookups: int = 0
    disk_hits: int = 0
    memory_hits: int = 0
    tokens_restored_disk: int = 0
    tokens_restored_memory: int = 0
    tokens_prefilled: int = 0
    blocks_written: int = 0
    checkpoints_written: int = 0
    bytes_written: int = 0
    blocks_read: int = 0
    bytes_read: int = 0
    evicted_blocks: int = 0
    evicted_checkpoints: int = 0
    corrupt_dropped: int = 0
    missing_files: int = 0
    write_errors: int = 0
    old_format_removed: int = 0


def model_fingerprint(model_dir: Path) -> str:
    """Identify a model by its config and weight files, without reading all weights."""
    digest = hashlib.sha256(_FINGERPRINT_SALT.encode())
    digest.update((model_dir / "config.json").read_bytes())
    weights = sorted(model_dir.glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"no *.safetensors weights in {model_dir}")
    for path in weights:
        st = path.stat()
        digest.update(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        with path.open("rb") as f:
            digest.update(f.read(_SAMPLE_BYTES))
            f.seek(max(0, st.st_size - _SAMPLE_BYTES))
            digest.update(f.read(_SAMPLE_BYTES))
    return digest.hexdigest()[:24]


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON via a temp file and rename, so readers never see half a file."""
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def iter_cache_files(kv_dir: Path) -> Iterator[Path]:
    """Every block, checkpoint and old-format file under `kv_dir`, all models, no temp files."""
    if not kv_dir.is_dir():
        return
    for model_dir in sorted(kv_dir.iterdir()):
        if model_dir.is_dir() and not model_dir.name.startswith("."):
            for path in sorted(model_dir.iterdir()):
                if path.suffix in _SUFFIXES and not path.name.startswith("."):
                    yield path


def kv_stats(kv_dir: Path) -> dict[str, Any]:
    """Blocks, checkpoints and bytes on disk now, plus the counters a backend last exported."""
    counts = {BLOCK_SUFFIX: 0, CKPT_SUFFIX: 0, OLD_SUFFIX: 0}
    nbytes = 0
    models = 0
    if kv_dir.is_dir():
        models = sum(1 for p in kv_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    for path in iter_cache_files(kv_dir):
        with contextlib.suppress(FileNotFoundError):  # a concurrent eviction
            nbytes += path.stat().st_size
            counts[path.suffix] += 1
    result: dict[str, Any] = {"kv_dir": str(kv_dir), "models": models}
    try:
        exported = json.loads((kv_dir / STATS_NAME).read_text())
        if isinstance(exported, dict):
            result.update(exported)
    except (OSError, ValueError):
        pass
    # The disk is the truth for files and bytes; the export may be stale.
    result["blocks"] = counts[BLOCK_SUFFIX]
    result["checkpoints"] = counts[CKPT_SUFFIX]
    result["old_format_files"] = counts[OLD_SUFFIX]
    result["files"] = sum(counts.values())
    result["bytes"] = nbytes
    return result


def clear_kv(kv_dir: Path) -> tuple[int, int]:
    """Remove every stored block, checkpoint and old file; returns (files removed, bytes freed).

    Safe while a backend runs: it treats a vanished block as the end of its
    chain, and its in-flight writes land under temp names that are swept here too.
    """
    removed = 0
    freed = 0
    if not kv_dir.is_dir():
        return 0, 0
    for model_dir in kv_dir.iterdir():
        if not model_dir.is_dir():
            continue
        for path in model_dir.iterdir():
            temp = path.name.startswith(TMP_PREFIX)
            if not temp and path.suffix not in _SUFFIXES:
                continue
            try:
                size = path.stat().st_size
                path.unlink()
            except (FileNotFoundError, IsADirectoryError):
                continue
            if not temp:
                removed += 1
                freed += size
    return removed, freed
