"""The paged store's settings: block size flag, and a disk budget sized from the free disk."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from cachelayer.backend import settings as backend_settings
from cachelayer.backend.settings import DEFAULT_KV_MAX_BYTES, auto_kv_budget
from cachelayer.cli.backend import add_backend_parser, settings_from_args

GIB = 1 << 30


def _settings(*flags: str) -> object:
    parser = argparse.ArgumentParser(prog="cachelayer")
    add_backend_parser(parser.add_subparsers(dest="command", required=True))
    return settings_from_args(parser.parse_args(["backend", "--model", "m", *flags]),
                              {"HOME": "/h"})


class _Usage(NamedTuple):
    total: int
    used: int
    free: int


def _disk_with_free(monkeypatch: pytest.MonkeyPatch, free: int | None) -> list[str]:
    """Make the settings module see a disk with `free` bytes free (None: the call fails);
    returns the paths it asked about."""
    asked: list[str] = []

    def disk_usage(path: Any) -> _Usage:
        asked.append(os.fspath(path))
        if free is None:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return _Usage(free * 2, free, free)

    monkeypatch.setattr(backend_settings.shutil, "disk_usage", disk_usage)
    return asked


def test_block_size_and_budget_flags_reach_the_settings() -> None:
    default = _settings()
    assert default.kv_block_tokens == 256 and default.kv_max_bytes is None  # type: ignore[attr-defined]
    chosen = _settings("--kv-block-tokens", "64", "--kv-max-bytes", "3G")
    assert chosen.kv_block_tokens == 64 and chosen.kv_max_bytes == 3 * GIB  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("free", "budget"),
    [
        (40 * GIB, 10 * GIB),  # a quarter of what is free
        (12 * GIB + 4, 3 * GIB + 1),
        (2 * GIB, 1 * GIB),  # never below 1 GiB, even on a nearly full disk
        (0, 1 * GIB),
        (1 << 40, 64 * GIB),  # never above 64 GiB, however large the disk
        (256 * GIB, 64 * GIB),
        (256 * GIB - 4, 64 * GIB - 1),
    ],
    ids=["quarter", "quarter-odd", "floor", "full-disk", "cap-1TiB", "cap-edge", "under-cap"],
)
def test_the_automatic_budget_is_a_quarter_of_the_free_disk_within_1_to_64_gib(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, free: int, budget: int
) -> None:
    _disk_with_free(monkeypatch, free)
    assert auto_kv_budget(tmp_path) == budget


def test_a_kv_dir_not_yet_created_is_measured_at_its_closest_existing_parent(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    asked = _disk_with_free(monkeypatch, 40 * GIB)
    assert auto_kv_budget(tmp_path / "not" / "yet") == 10 * GIB
    assert asked == [str(tmp_path)]
    assert not (tmp_path / "not").exists()  # measuring creates nothing


def test_an_unmeasurable_disk_gets_the_fixed_default_budget(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _disk_with_free(monkeypatch, None)
    assert auto_kv_budget(tmp_path) == DEFAULT_KV_MAX_BYTES == 8 * GIB


def test_the_budget_of_this_machines_real_disk_lies_within_the_bounds(tmp_path: Path) -> None:
    assert 1 * GIB <= auto_kv_budget(tmp_path) <= 64 * GIB
