"""File-system helpers every cache shares: owner-only directories and atomic writes.

Modes: every directory cachelayer creates is 0700 from the moment it exists, whatever the
umask, and every file 0600 (the CLI sets the umask to 077 for each command, cli/main.py;
temporary files are 0600 by themselves). A directory that already exists is left as it
is: it may be the user's (the metrics file's parent is the working directory).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

TMP_PREFIX = ".tmp-"


PRIVATE_UMASK = 0o077


def ensure_private_dir(path: Path) -> Path:
    """Create a directory and its missing parents, each 0700 whatever the umask; a
    directory that exists already is never changed."""
    missing: list[Path] = []
    probe = path
    while not probe.is_dir() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            if directory.is_dir():
                continue  # made by someone else meanwhile: not ours to change
            raise
        # mkdir's mode passes through the umask, which may take the owner's bits too.
        os.chmod(directory, 0o700)
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
