"""The backend's hot tier in `/metrics` and `cachelayer stats`, from its exported stats."""

from __future__ import annotations

import json
from pathlib import Path

from cachelayer.backend.kv_files import STATS_NAME
from cachelayer.cli.stats import format_stats
from cachelayer.telemetry.kv_memory import exported_kv_stats, kv_memory_lines

EXPORTED = {
    "memory": {"sequences": 2, "bytes": 3_000, "budget_bytes": 4_000, "max_sequences": 10,
               "evictions": 7, "evicted_bytes": 9_000},
    "write_queue": {"bytes": 5, "max_bytes": 10, "peak_bytes": 8, "waits": 0,
                    "dropped_full": 1},
    "persist_refused": {"quantized_kv": 3},
}


def test_metrics_show_hot_tier_bytes_against_the_budget_and_evictions(tmp_path: Path) -> None:
    (tmp_path / STATS_NAME).write_text(json.dumps(EXPORTED))
    lines = kv_memory_lines(exported_kv_stats(tmp_path))
    assert "cachelayer_kv_memory_bytes 3000" in lines
    assert "cachelayer_kv_memory_budget_bytes 4000" in lines
    assert "cachelayer_kv_memory_evictions_total 7" in lines
    assert "cachelayer_kv_write_queue_bytes 5" in lines
    assert 'cachelayer_kv_persist_refused_total{reason="quantized_kv"} 3' in lines


def test_no_export_or_an_older_backend_gives_no_hot_tier_lines(tmp_path: Path) -> None:
    assert kv_memory_lines(exported_kv_stats(tmp_path)) == []
    assert kv_memory_lines({"memory": {"sequences": 1, "bytes": 2}}) == []


def test_stats_table_shows_the_budget_evictions_and_refusals() -> None:
    text = format_stats({"layers": {"kv": {"blocks": 1, **EXPORTED}}})
    assert "3000 / 4000 bytes" in text
    assert "7  (9000 bytes)" in text
    assert "quantized_kv: 3" in text
    assert "writes dropped (queue full)" in text
