"""Restores that pay for themselves: read time against prefill time, from measured speeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachelayer.backend.kv_blocks import Block, Match
from cachelayer.backend.restore import Restores

pytestmark = pytest.mark.slow  # importing the backend imports mlx

MiB = 1 << 20


def _match(n_tokens: int, files: int, file_bytes: int) -> Match:
    chain = tuple((Block(bytes(16), bytes(16), 0, i * 256, (1,) * 256, Path("x"), file_bytes,
                         0.0), 256) for i in range(files))
    return Match(chain, n_tokens, None)


def test_every_restore_is_made_until_both_speeds_are_measured() -> None:
    restores = Restores(store=None)  # type: ignore[arg-type]
    assert restores.worth_reading(_match(16, 1, 48 * MiB))
    restores.read_speed = 500 * MiB
    assert restores.worth_reading(_match(16, 1, 48 * MiB))
    assert restores.counts["skipped_not_worth"] == 0


def test_a_short_match_that_reads_a_whole_block_file_is_skipped() -> None:
    restores = Restores(store=None)  # type: ignore[arg-type]
    restores.read_speed = 500 * MiB     # bytes per second
    restores.prefill_speed = 400.0      # tokens per second
    # 16 template tokens of a 48 MiB block: 0.096 s to read, 0.04 s to prefill.
    assert not restores.worth_reading(_match(16, 1, 48 * MiB))
    # The whole block: 0.096 s to read, 0.64 s to prefill.
    assert restores.worth_reading(_match(256, 1, 48 * MiB))
    # A long chain pays for itself many times over.
    assert restores.worth_reading(_match(44_000, 172, 48 * MiB))
    assert restores.counts["skipped_not_worth"] == 1
