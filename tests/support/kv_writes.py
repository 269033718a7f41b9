"""Wait for a `cachelayer backend`'s KV writer to put what it was given on disk.

One helper for every suite that runs a real backend (tests/integration/backend, stack):
the answer reaches the client before mlx-lm inserts its cache and the writer stores it,
so a test that reads the disk (or asks again expecting a disk hit) waits here first.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from tests.support.wait import wait_until

KV_ROUTE = "/v1/cachelayer/kv"


def kv_stats(base_url: str) -> dict[str, Any]:
    """The backend's GET /v1/cachelayer/kv document."""
    with urllib.request.urlopen(base_url + KV_ROUTE, timeout=30) as r:
        stats = json.loads(r.read())
    assert isinstance(stats, dict)
    return stats


def wait_for_kv_writes(base_url: str, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until every cache of the answers already received is on disk; the stats.

    mlx-lm inserts an answer's cache just after sending the answer, so an idle writer
    right after a response may not have been handed that cache yet. The backend counts
    the moments its generation thread found nothing to do (`idle_polls`), each after
    every insert before it: one counted after this call began, with no write pending,
    means all of them landed."""
    start = kv_stats(base_url)["idle_polls"]

    def landed() -> dict[str, Any] | None:
        stats = kv_stats(base_url)
        return stats if stats["idle_polls"] > start and stats["pending_writes"] == 0 else None

    return wait_until(landed, f"the KV writes of {base_url} to land after the generation "
                      "thread went idle", timeout=timeout, interval=0.05)
