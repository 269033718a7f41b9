"""`cachelayer stats` shows the paged store's blocks, traffic, evictions and reuse."""

from __future__ import annotations

from cachelayer.cli.stats import format_stats
from cachelayer.telemetry.export import build_metrics


def test_stats_table_shows_blocks_traffic_evictions_and_family_reuse() -> None:
    kv = {"files": 5, "bytes": 4096, "blocks": 4, "checkpoints": 1, "bytes_written": 9000,
          "bytes_read": 3000, "evicted_blocks": 2, "evicted_checkpoints": 1,
          "corrupt_dropped": 1,
          "reuse_by_family": {"qwen3_next": {"prompt_tokens": 1620, "reused_tokens": 1606}}}
    text = format_stats(build_metrics({}, runtime_ms=1, store={}, kv=kv))
    for fragment in ("blocks / checkpoints", "4 / 1", "bytes written / read", "9000 / 3000",
                     "evicted blocks / checkpoints", "2 / 1", "damaged files dropped",
                     "reused (qwen3_next)", "1606 of 1620 tokens"):
        assert fragment in text, fragment
