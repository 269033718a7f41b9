"""Owner-only directories: created 0700 whatever the umask, parents too; an existing
directory (the user's) is never changed."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachelayer.fs import ensure_private_dir, write_atomic


@pytest.fixture(params=[0o000, 0o022, 0o077, 0o277])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under this umask."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_created_directory_is_0700_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    leaf = tmp_path / "a" / "b" / "c"
    ensure_private_dir(leaf)
    for directory in (tmp_path / "a", tmp_path / "a" / "b", leaf):
        assert _mode(directory) == 0o700, (oct(umask), directory)


@pytest.mark.parametrize("mode", [0o755, 0o1777, 0o750])
def test_an_existing_directory_keeps_its_mode(tmp_path: Path, mode: int) -> None:
    users = tmp_path / "cwd"
    users.mkdir()
    os.chmod(users, mode)
    ensure_private_dir(users / "ours")
    write_atomic(users / "metrics.json", b"{}")
    assert _mode(users) == mode
    assert _mode(users / "ours") == 0o700
    assert _mode(users / "metrics.json") == 0o600
