"""Where a benchmark's numbers come from: the commit, whether the tree was dirty, the machine.

Every tool in tools/ stamps its JSON with `stamp()` (key "machine"), and
tools/render_docs.py states it beside each rendered table, with how many commits before
the rendered checkout the numbers were measured. No imports beyond the standard library,
so a tool can use it without the rest of benchlib.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=str(REPO),
                          check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def _version(module: str) -> str | None:
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        return version(module)
    return None


def _ram_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / (1 << 20), 1)
    return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def stamp() -> dict[str, Any]:
    """The commit (short hash), the dirty flag and the machine, for a result's JSON."""
    return {
        "git_commit": _git("rev-parse", "--short", "HEAD") or None,
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "cores": os.cpu_count(), "ram_gib": _ram_gib(), "cpu_model": _cpu_model(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(), "aiohttp": _version("aiohttp"),
        "mlx": _version("mlx"), "mlx_lm": _version("mlx-lm"),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def commits_between(commit: str, head: str = "HEAD") -> int | None:
    """How many commits `head` is ahead of `commit` (None if `commit` is not its ancestor)."""
    ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", commit, head],
                              cwd=str(REPO), capture_output=True, check=False)
    if ancestor.returncode != 0:
        return None
    count = _git("rev-list", "--count", f"{commit}..{head}")
    return int(count) if count.isdigit() else None


def head() -> str:
    """The short hash of the checkout's HEAD."""
    return _git("rev-parse", "--short", "HEAD")


def last_commit_of(path: Path) -> str:
    """The last commit that changed `path` (for a JSON that does not record its commit)."""
    return _git("log", "-1", "--format=%h", "--", str(path))
