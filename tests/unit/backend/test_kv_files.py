"""kv_files: fingerprints, stats and clear of the paged store, without mlx."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cachelayer.backend.kv_files import (
    STATS_NAME,
    clear_kv,
    kv_stats,
    model_fingerprint,
    write_json_atomic,
)


def _fake_model(path: Path, weights: bytes) -> Path:
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "model.safetensors").write_bytes(weights)
    return path


def test_fingerprint_changes_with_weights_or_config(tmp_path: Path) -> None:
    model = _fake_model(tmp_path / "m", b"a" * 100)
    first = model_fingerprint(model)
    assert model_fingerprint(model) == first
    (model / "model.safetensors").write_bytes(b"b" * 100)
    os.utime(model / "model.safetensors", ns=(0, 0))
    second = model_fingerprint(model)
    assert second != first
    (model / "config.json").write_text('{"model_type": "llama", "x": 1}')
    os.utime(model / "model.safetensors", ns=(0, 0))
    assert model_fingerprint(model) != second


def test_kv_stats_counts_blocks_checkpoints_and_merges_exported_counters(
    tmp_path: Path,
) -> None:
    kv = tmp_path / "kv"
    (kv / "fp1").mkdir(parents=True)
    (kv / "fp1" / "a.kvb").write_bytes(b"1" * 10)
    (kv / "fp1" / "b.kvb").write_bytes(b"1" * 10)
    (kv / "fp1" / "c.kvc").write_bytes(b"1" * 3)
    (kv / "fp1" / ".tmp-x").write_bytes(b"1" * 99)  # in-flight write
    (kv / "fp2").mkdir()
    (kv / "fp2" / "old.safetensors").write_bytes(b"1" * 5)
    write_json_atomic(kv / STATS_NAME, {"tokens_restored_disk": 7, "blocks": 1000})
    stats = kv_stats(kv)
    assert (stats["blocks"], stats["checkpoints"], stats["old_format_files"]) == (2, 1, 1)
    assert stats["files"] == 4 and stats["bytes"] == 28 and stats["models"] == 2
    assert stats["tokens_restored_disk"] == 7


def test_kv_stats_of_missing_dir_is_empty(tmp_path: Path) -> None:
    stats = kv_stats(tmp_path / "nothing")
    assert stats["files"] == 0 and stats["bytes"] == 0


def test_clear_kv_removes_caches_and_reports_bytes(tmp_path: Path) -> None:
    kv = tmp_path / "kv"
    (kv / "fp").mkdir(parents=True)
    (kv / "fp" / "a.kvb").write_bytes(b"1" * 10)
    (kv / "fp" / "b.kvc").write_bytes(b"1" * 15)
    (kv / "fp" / "old.safetensors").write_bytes(b"1" * 5)
    (kv / "fp" / ".tmp-c").write_bytes(b"1" * 30)
    write_json_atomic(kv / STATS_NAME, {"blocks_written": 3})
    assert clear_kv(kv) == (3, 30)
    assert list((kv / "fp").iterdir()) == []
    assert (kv / STATS_NAME).exists()
    assert clear_kv(kv) == (0, 0)
    assert clear_kv(tmp_path / "absent") == (0, 0)


def test_json_written_atomically_with_private_dir(tmp_path: Path) -> None:
    target = tmp_path / "new" / "stats.json"
    write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert (target.parent.stat().st_mode & 0o777) == 0o700
    assert [p.name for p in target.parent.iterdir()] == ["stats.json"]


def test_kv_files_and_cli_do_not_import_mlx() -> None:
    code = (
        "import sys, cachelayer.backend.kv_files, cachelayer.backend.kv_blocks, "
        "cachelayer.cli.main, cachelayer.proxy.app; print('mlx' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True
    )
    assert out.stdout.strip() == "False"
