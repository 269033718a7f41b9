"""A paged store's files at start-up and on write: the index rebuilt from headers alone,
and files written whole or not at all. No mlx.

At start-up the index is rebuilt from the files' headers (a few KB each; no tensor
data), parents before children. Files whose header fails its checks, that belong to
another model, or whose parent is gone are returned as bad, for the store to remove and
count; files of the first format (`*.safetensors`, one whole prompt per file) are
removed; temp files older than an hour (a write a crash interrupted) are swept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cachelayer.backend.kv_blocks import (
    BLOCK_SUFFIX,
    BadFile,
    BlockIndex,
    block_from_header,
    checkpoint_from_header,
    remove_files,
    scan_dir,
)
from cachelayer.fs import TMP_PREFIX, ensure_private_dir

logger = logging.getLogger(__name__)
# A temp file this old is a write that will never finish.
STALE_TMP_S = 3600.0


@dataclass
class Rebuilt:
    """What start-up found: the index, the bad files (already removed) and the files of
    the old whole-prompt format removed, with their bytes."""

    index: BlockIndex
    bad: list[Path] = field(default_factory=list)
    old_removed: int = 0
    old_bytes: int = 0


def remove_old_format(root: Path) -> tuple[int, int]:
    """Remove the first generation's whole-prompt files; (how many, their bytes)."""
    old = [p for p in root.iterdir() if p.suffix == ".safetensors"]
    freed = sum(p.stat().st_size for p in old if p.exists())
    remove_files(old)
    return len(old), freed


def sweep_stale_temp(root: Path, now: float | None = None) -> None:
    """Remove temp files left by writes that were interrupted more than an hour ago."""
    now = time.time() if now is None else now
    for path in root.glob(f"{TMP_PREFIX}*"):
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > STALE_TMP_S:
                path.unlink()


def rebuild_index(root: Path, fingerprint: str) -> Rebuilt:
    """Index the blocks and checkpoints of model `fingerprint` under `root` from their
    headers; bad, foreign and orphaned files are removed and listed."""
    old_removed, old_bytes = remove_old_format(root)
    sweep_stale_temp(root)
    index = BlockIndex(fingerprint)
    bad: list[Path] = []
    blocks, ckpts = [], []
    for path, header, size, mtime in scan_dir(root):
        if header.get("fingerprint") != fingerprint:
            bad.append(path)
        elif header["kind"] == "block":
            blocks.append((path, header, size, mtime))
        else:
            ckpts.append((path, header, size, mtime))
    # Parents start before their children, so one pass in start order links every chain.
    blocks.sort(key=lambda item: int(item[1].get("start") or 0))
    for path, header, size, mtime in blocks:
        try:
            block = block_from_header(header, path, size, mtime)
            if path.name != block.hash.hex() + BLOCK_SUFFIX:
                raise BadFile("name does not match address")
        except (ValueError, KeyError, TypeError):  # BadFile is a ValueError
            bad.append(path)
            continue
        if not index.add_block(block):
            bad.append(path)  # its parent is gone: unreachable
    for path, header, size, mtime in ckpts:
        try:
            ckpt = checkpoint_from_header(header, path, size, mtime)
        except (ValueError, KeyError, TypeError):
            bad.append(path)
            continue
        if not index.add_checkpoint(ckpt):
            bad.append(path)  # its block is gone
    remove_files(bad)
    return Rebuilt(index, bad, old_removed, old_bytes)


def write_whole(root: Path, path: Path, head: bytes, parts: list[np.ndarray]) -> int:
    """Write `head` and `parts` to `path` via a temp file in `root` and a rename, so a
    file is on disk whole or not at all; returns its size.

    A file already at that address (another backend on the same directory) holds the
    same content by construction: it is not rewritten, and minus its size is returned
    (its checks run when it is loaded). Raises OSError when the write fails (the temp
    file is removed)."""
    with contextlib.suppress(FileNotFoundError):
        return -path.stat().st_size
    tmp = root / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    try:
        ensure_private_dir(root)  # `clear --kv` may have removed it
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            for p in parts:
                f.write(p.data.cast("B"))
        os.replace(tmp, path)
        return path.stat().st_size
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
