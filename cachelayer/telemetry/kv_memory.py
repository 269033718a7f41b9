"""The backend's hot tier (prompt KV caches in memory) as Prometheus gauges and stats rows.

The backend exports its figures to `<kv-dir>/kv-stats.json` (see
`backend.persistent_cache`); the proxy reads that file, never the backend's memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cachelayer.backend.kv_files import STATS_NAME


def exported_kv_stats(kv_dir: Path) -> dict[str, Any]:
    """What a backend last exported to `kv_dir` ({} if nothing yet); reads one small file."""
    try:
        doc = json.loads((kv_dir / STATS_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _gauge(name: str, help_text: str, kind: str, samples: list[tuple[str, Any]]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}",
            *(f"{name}{labels} {value}" for labels, value in samples)]


def kv_memory_lines(kv: dict[str, Any]) -> list[str]:
    """Prometheus lines: hot-tier bytes and budget, evictions, write queue, refusals."""
    memory = kv.get("memory")
    if not isinstance(memory, dict) or "budget_bytes" not in memory:
        return []
    queue = kv.get("write_queue") or {}
    refused = kv.get("persist_refused") or {}
    return [
        *_gauge("cachelayer_kv_memory_bytes", "Bytes of prompt KV caches the backend holds "
                "in memory (its hot tier).", "gauge", [("", memory.get("bytes", 0))]),
        *_gauge("cachelayer_kv_memory_budget_bytes", "The hot tier's budget "
                "(--prompt-cache-bytes).", "gauge", [("", memory["budget_bytes"])]),
        *_gauge("cachelayer_kv_memory_evictions_total", "Prompt caches that left memory for "
                "the budget (their blocks stay on disk).", "counter",
                [("", memory.get("evictions", 0))]),
        *_gauge("cachelayer_kv_memory_evicted_bytes_total", "Bytes of those caches.", "counter",
                [("", memory.get("evicted_bytes", 0))]),
        *_gauge("cachelayer_kv_write_queue_bytes", "Bytes of cache copies waiting to be "
                "written to disk.", "gauge", [("", queue.get("bytes", 0))]),
        *_gauge("cachelayer_kv_persist_refused_total", "Prompt caches not persisted because "
                "the store cannot restore them exactly, by reason.", "counter",
                [(f'{{reason="{r}"}}', n) for r, n in sorted(refused.items())] or [("", 0)]),
    ]


def kv_memory_rows(kv: dict[str, Any]) -> list[tuple[str, Any]]:
    """`cachelayer stats` rows for the hot tier (none if the backend exported no budget)."""
    memory = kv.get("memory")
    if not isinstance(memory, dict) or "budget_bytes" not in memory:
        return []
    rows: list[tuple[str, Any]] = [
        ("kv in memory / budget", f"{memory.get('bytes', 0)} / {memory['budget_bytes']} bytes"),
        ("left memory (evictions)", f"{memory.get('evictions', 0)}  "
                                    f"({memory.get('evicted_bytes', 0)} bytes)"),
    ]
    queue = kv.get("write_queue") or {}
    if queue.get("dropped_full"):
        rows.append(("writes dropped (queue full)", queue["dropped_full"]))
    refused = kv.get("persist_refused") or {}
    if refused:
        rows.append(("not persisted (reason)", ", ".join(f"{r}: {n}" for r, n in
                                                         sorted(refused.items()))))
    return rows
