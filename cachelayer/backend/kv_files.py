"""Pure file operations on the KV cache directory; no mlx import.

The proxy (`cachelayer stats`, `cachelayer clear --kv`) imports this module, so
it must stay cheap: it reads safetensors headers and JSON, never tensors.

Layout::

    <kv-dir>/kv-stats.json                      counters, rewritten atomically
    <kv-dir>/<model-fingerprint>/<hash>.safetensors
    <kv-dir>/<model-fingerprint>/.tmp-*.safetensors   writes in progress
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachelayer.fs import TMP_PREFIX, write_atomic

# Stored in every file; a file without it (or with another value) is foreign.
FORMAT = "cachelayer-kv/1"
STATS_NAME = "kv-stats.json"
SUFFIX = ".safetensors"
# A safetensors header beyond this is not one of ours (token ids of a 1M-token
# prompt take ~5.4 MB as base64); refusing it bounds what a bad file can cost.
MAX_HEADER_BYTES = 64 << 20
# Reading this much from each end of a weight file identifies its content
# cheaply; with names, sizes and mtimes it separates any two real checkpoints.
_SAMPLE_BYTES = 1 << 20


@dataclass(frozen=True)
class EntryInfo:
    """What the header of one stored prompt cache says about it."""

    path: Path
    tokens: tuple[int, ...]
    fingerprint: str
    nbytes: int
    mtime: float
    trimmable: bool


def encode_tokens(tokens: list[int] | tuple[int, ...]) -> str:
    """Token ids as base64 of little-endian uint32s (compact safetensors metadata)."""
    return base64.b64encode(struct.pack(f"<{len(tokens)}I", *tokens)).decode("ascii")


def decode_tokens(text: str) -> tuple[int, ...]:
    """Inverse of encode_tokens; raises ValueError on malformed input."""
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if len(raw) % 4:
        raise ValueError("token blob length is not a multiple of 4")
    return struct.unpack(f"<{len(raw) // 4}I", raw)


def tokens_hash(tokens: list[int] | tuple[int, ...]) -> str:
    """File stem for a token sequence: stable across processes and versions."""
    return hashlib.sha256(encode_tokens(tokens).encode("ascii")).hexdigest()[:32]


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse a safetensors header and check the file is as long as it claims."""
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        if len(prefix) != 8:
            raise ValueError("file shorter than a safetensors prefix")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(MAX_HEADER_BYTES, size - 8):
            raise ValueError(f"implausible header length {header_len}")
        header = json.loads(f.read(header_len))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    data_end = 0
    for name, spec in header.items():
        if name != "__metadata__":
            data_end = max(data_end, int(spec["data_offsets"][1]))
    # A truncated file is caught here, before any tensor is read.
    if 8 + header_len + data_end != size:
        raise ValueError(f"file is {size} bytes, header says {8 + header_len + data_end}")
    return header


def read_entry_info(path: Path) -> EntryInfo:
    """Describe one stored prompt cache from its header; ValueError if not ours."""
    header = read_safetensors_header(path)
    meta = header.get("__metadata__") or {}
    # save_prompt_cache flattens [metadata, classes, scalars]: ours is "0.*".
    if meta.get("0.format") != FORMAT:
        raise ValueError("not a cachelayer prompt cache")
    tokens = decode_tokens(meta["0.tokens"])
    if int(meta["0.n_tokens"]) != len(tokens) or not tokens:
        raise ValueError("token count does not match")
    st = path.stat()
    trimmable = meta.get("0.trimmable") == "1"
    return EntryInfo(path, tokens, meta["0.fingerprint"], st.st_size, st.st_mtime, trimmable)


def model_fingerprint(model_dir: Path) -> str:
    """Identify a model by its config and weight files, without reading all weights."""
    digest = hashlib.sha256(FORMAT.encode())
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
    """Every stored prompt cache file under `kv_dir`, all models, temp files excluded."""
    if not kv_dir.is_dir():
        return
    for model_dir in sorted(kv_dir.iterdir()):
        if model_dir.is_dir() and not model_dir.name.startswith("."):
            for path in sorted(model_dir.glob(f"*{SUFFIX}")):
                if not path.name.startswith("."):
                    yield path


def kv_stats(kv_dir: Path) -> dict[str, Any]:
    """Files and bytes on disk now, plus the counters a backend last exported."""
    files = 0
    nbytes = 0
    models = 0
    if kv_dir.is_dir():
        models = sum(1 for p in kv_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    for path in iter_cache_files(kv_dir):
        with contextlib.suppress(FileNotFoundError):  # a concurrent eviction
            nbytes += path.stat().st_size
            files += 1
    result: dict[str, Any] = {"kv_dir": str(kv_dir), "models": models}
    try:
        exported = json.loads((kv_dir / STATS_NAME).read_text())
        if isinstance(exported, dict):
            result.update(exported)
    except (OSError, ValueError):
        pass
    # The disk is the truth for files and bytes; the export may be stale.
    result["files"] = files
    result["bytes"] = nbytes
    return result


def clear_kv(kv_dir: Path) -> tuple[int, int]:
    """Remove every stored prompt cache; returns (files removed, bytes freed).

    Safe while a backend runs: it treats a vanished file as a miss, and its
    in-flight writes land under temp names that are swept here too.
    """
    removed = 0
    freed = 0
    if not kv_dir.is_dir():
        return 0, 0
    for model_dir in kv_dir.iterdir():
        if not model_dir.is_dir():
            continue
        for path in model_dir.glob(f"*{SUFFIX}"):
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            if not path.name.startswith(TMP_PREFIX):
                removed += 1
                freed += size
    return removed, freed
