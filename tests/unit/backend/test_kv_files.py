"""kv_files: token encoding, headers, fingerprints, stats and clear without mlx."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachelayer.backend.kv_files import (
    STATS_NAME,
    clear_kv,
    decode_tokens,
    encode_tokens,
    kv_stats,
    model_fingerprint,
    read_safetensors_header,
    tokens_hash,
    write_json_atomic,
)


@given(st.lists(st.integers(min_value=0, max_value=2**32 - 1), max_size=300))
def test_token_encoding_round_trips(tokens: list[int]) -> None:
    assert decode_tokens(encode_tokens(tokens)) == tuple(tokens)


def test_token_hash_depends_on_order_and_length() -> None:
    assert tokens_hash([1, 2, 3]) != tokens_hash([3, 2, 1])
    assert tokens_hash([1, 2]) != tokens_hash([1, 2, 0])
    assert tokens_hash([5, 6]) == tokens_hash((5, 6))


def _safetensors(path: Path, payload: bytes, declared: int) -> None:
    header = json.dumps(
        {"a": {"dtype": "U8", "shape": [declared], "data_offsets": [0, declared]}}
    ).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + payload)


def test_header_reader_rejects_truncated_and_garbage_files(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    _safetensors(good, b"x" * 10, 10)
    assert "a" in read_safetensors_header(good)
    short = tmp_path / "short.safetensors"
    _safetensors(short, b"x" * 4, 10)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(64))
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    for bad in (short, garbage, empty):
        with pytest.raises(ValueError):
            read_safetensors_header(bad)


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


def test_kv_stats_counts_files_and_merges_exported_counters(tmp_path: Path) -> None:
    kv = tmp_path / "kv"
    (kv / "fp1").mkdir(parents=True)
    (kv / "fp1" / "a.safetensors").write_bytes(b"1" * 10)
    (kv / "fp1" / ".tmp-x.safetensors").write_bytes(b"1" * 99)  # in-flight write
    (kv / "fp2").mkdir()
    (kv / "fp2" / "b.safetensors").write_bytes(b"1" * 5)
    write_json_atomic(kv / STATS_NAME, {"tokens_restored_disk": 7, "files": 1000})
    stats = kv_stats(kv)
    assert stats["files"] == 2 and stats["bytes"] == 15 and stats["models"] == 2
    assert stats["tokens_restored_disk"] == 7


def test_kv_stats_of_missing_dir_is_empty(tmp_path: Path) -> None:
    stats = kv_stats(tmp_path / "nothing")
    assert stats["files"] == 0 and stats["bytes"] == 0


def test_clear_kv_removes_caches_and_reports_bytes(tmp_path: Path) -> None:
    kv = tmp_path / "kv"
    (kv / "fp").mkdir(parents=True)
    (kv / "fp" / "a.safetensors").write_bytes(b"1" * 10)
    (kv / "fp" / "b.safetensors").write_bytes(b"1" * 20)
    (kv / "fp" / ".tmp-c.safetensors").write_bytes(b"1" * 30)
    write_json_atomic(kv / STATS_NAME, {"writes": 3})
    assert clear_kv(kv) == (2, 30)
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
        "import sys, cachelayer.backend.kv_files, cachelayer.cli.main, "
        "cachelayer.proxy.app; print('mlx' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True
    )
    assert out.stdout.strip() == "False"
