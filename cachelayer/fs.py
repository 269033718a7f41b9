"""File-system helpers every cache shares: owner-only directories and atomic writes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

TMP_PREFIX = ".tmp-"


def ensure_private_dir(path: Path) -> Path:
    """Create a directory (and parents) readable by its owner only; tighten it if it exists."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Replace path's content in one step (temp file in the same dir, then rename), so
    readers never see half a file and a crash leaves the old one."""
    ensure_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
