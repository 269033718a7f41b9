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
    """Poll the kv route until the writer is idle and stays idle; returns the stats.

    mlx-lm inserts an answer's cache just after sending the answer, so one idle poll
    right after a response can come before that write is even queued: the writer must be
    idle on two polls 0.3 s apart with no write in between. (The backend counts no
    inserted answers yet; such a counter would make this an event, not a quiet spell.)"""
    last: list[tuple[int, int] | None] = [None]

    def idle_twice() -> dict[str, Any] | None:
        stats = kv_stats(base_url)
        now = (stats["blocks_written"], stats["checkpoints_written"])
        idle = stats["pending_writes"] == 0
        settled = idle and now == last[0]
        last[0] = now if idle else None
        return stats if settled else None

    return wait_until(idle_twice, f"the KV writer of {base_url} to be idle on two polls "
                      "in a row", timeout=timeout, interval=0.3)
