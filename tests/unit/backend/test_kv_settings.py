"""The paged store's settings: block size flag, and a disk budget sized from the free disk."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from cachelayer.backend.settings import auto_kv_budget
from cachelayer.cli.backend import add_backend_parser, settings_from_args


def _settings(*flags: str) -> object:
    parser = argparse.ArgumentParser(prog="cachelayer")
    add_backend_parser(parser.add_subparsers(dest="command", required=True))
    return settings_from_args(parser.parse_args(["backend", "--model", "m", *flags]),
                              {"HOME": "/h"})


def test_block_size_and_budget_flags_reach_the_settings() -> None:
    default = _settings()
    assert default.kv_block_tokens == 256 and default.kv_max_bytes is None  # type: ignore[attr-defined]
    chosen = _settings("--kv-block-tokens", "64", "--kv-max-bytes", "3G")
    assert chosen.kv_block_tokens == 64 and chosen.kv_max_bytes == 3 << 30  # type: ignore[attr-defined]


def test_the_automatic_budget_is_a_quarter_of_the_free_disk_within_bounds(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    expected = max(1 << 30, min(64 << 30, free // 4))
    # A directory that does not exist yet is measured at its closest existing parent.
    budget = auto_kv_budget(tmp_path / "not" / "yet")
    assert abs(budget - expected) <= (64 << 20)  # other writers may change free space a little
