"""The prefix ledger: measured reuse, miss reasons, and no lost counts across processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cachelayer.protocol.chat import Usage
from cachelayer.proxy.prefix.ledger import top_entries
from cachelayer.proxy.prefix.stabilize import PrefixIds
from cachelayer.telemetry.counters import MissReason
from cachelayer.telemetry.export import build_metrics
from cachelayer.telemetry.ledger import Ledger

NEW_CLIENT, NOT_CACHED = MissReason.NEW_CLIENT, MissReason.NOT_CACHED
SYSTEM_CHANGED, TOOLS_CHANGED = MissReason.SYSTEM_CHANGED, MissReason.TOOLS_CHANGED
BOTH_CHANGED = MissReason.BOTH_CHANGED

A = PrefixIds("tools-a", "sys-a", "prefix-a", 3)


def ids(tools: str, system: str) -> PrefixIds:
    return PrefixIds(tools, system, f"{tools}+{system}", 2)


def test_first_request_of_a_client_misses_as_new_client(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    assert ledger.prefixes.record(A, Usage(100, 5, 0), from_store=False, client="c") == NEW_CLIENT
    ledger.close()


def test_measured_reuse_is_a_hit_and_is_counted(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.prefixes.record(A, Usage(100, 5, 0), from_store=False, client="c")
    assert ledger.prefixes.record(A, Usage(120, 5, 96), from_store=False, client="c") is None
    record = ledger.prefixes.records()["prefix-a"]
    assert (record.requests, record.hits, record.misses) == (2, 1, 1)
    assert record.reused_tokens == 96 and record.prompt_tokens == 220
    ledger.close()


def test_miss_reasons_name_what_changed(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    p = ledger.prefixes
    cold = Usage(100, 1, 0)
    p.record(ids("t1", "s1"), cold, from_store=False, client="c")
    assert p.record(ids("t2", "s1"), cold, from_store=False, client="c") == TOOLS_CHANGED
    assert p.record(ids("t2", "s2"), cold, from_store=False, client="c") == SYSTEM_CHANGED
    assert p.record(ids("t3", "s3"), cold, from_store=False, client="c") == BOTH_CHANGED
    assert p.record(ids("t3", "s3"), cold, from_store=False, client="c") == NOT_CACHED
    assert p.record(ids("t3", "s3"), cold, from_store=False, client="d") == NEW_CLIENT
    assert p.records()["t2+s1"].last_miss_reason == TOOLS_CHANGED
    ledger.close()


def test_store_hits_count_whole_prompt_and_completion_as_saved(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    assert ledger.prefixes.record(A, Usage(100, 7, 0), from_store=True, client="c") is None
    record = ledger.prefixes.records()["prefix-a"]
    assert record.store_hits == 1 and record.store_tokens_saved == 107
    ledger.close()


def test_unreported_reuse_is_an_estimate_kept_apart(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.prefixes.record(A, Usage(100, 5, None), from_store=False, client="c")
    ledger.prefixes.record(A, Usage(130, 5, None), from_store=False, client="c")
    record = ledger.prefixes.records()["prefix-a"]
    assert record.reused_tokens == 0
    assert record.estimated_reused_tokens == 100
    ledger.close()


def test_records_survive_a_restart(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.prefixes.record(A, Usage(100, 5, 40), from_store=False, client="c")
    ledger.count("requests")
    ledger.close()
    again = Ledger(tmp_path)
    assert again.prefixes.records()["prefix-a"].reused_tokens == 40
    assert again.totals()["requests"] == 1
    again.close()


_HAMMER = """
import sys
from pathlib import Path
from cachelayer.proxy.prefix.stabilize import PrefixIds
from cachelayer.telemetry.ledger import Ledger
from cachelayer.protocol.chat import Usage
ledger = Ledger(Path(sys.argv[1]))
prefix = PrefixIds("tools-a", "sys-a", "prefix-a", 3)
for i in range(int(sys.argv[2])):
    ledger.count("requests")
    ledger.prefixes.record(prefix, Usage(10, 1, 5), from_store=False, client=f"p{i}")
    if i % 7 == 0:
        ledger.flush()
ledger.close()
"""


def test_two_processes_sharing_a_data_dir_lose_no_counts(tmp_path: Path) -> None:
    Ledger(tmp_path).close()
    workers = [subprocess.Popen([sys.executable, "-c", _HAMMER, str(tmp_path), "150"])
               for _ in range(2)]
    assert [w.wait(120) for w in workers] == [0, 0]
    ledger = Ledger(tmp_path)
    assert ledger.totals()["requests"] == 300
    record = ledger.prefixes.records()["prefix-a"]
    assert record.requests == 300 and record.reused_tokens == 1500
    ledger.close()


def test_top_entries_keep_anyclaudes_names_and_types(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.prefixes.record(A, Usage(100, 5, 0), from_store=False, client="c")
    ledger.prefixes.record(A, Usage(100, 5, 80), from_store=False, client="c")
    [entry] = top_entries(ledger.prefixes.records())
    assert entry["hash"] == "prefix-a" and entry["tools"] == 3
    assert (entry["hits"], entry["misses"], entry["hitRate"]) == (1, 1, "50.0")
    assert entry["cacheTokens"] == 80 and entry["lastMissReason"] == NEW_CLIENT
    ledger.close()


def test_metrics_with_nothing_counted_read_zero_not_one() -> None:
    doc = build_metrics({}, runtime_ms=0, store={})
    assert doc["metrics"]["hitRate"] == "0.00" and doc["metrics"]["tokenSavings"] == "0.00"
    assert doc["topEntries"] == [] and doc["schemaVersion"] == 1


def test_metrics_token_savings_are_reused_over_input() -> None:
    totals = {"requests": 4, "response.hits": 1, "kv.hits": 2, "tokens.input": 1000,
              "tokens.read": 750, "tokens.created": 250}
    m = build_metrics(totals, runtime_ms=5, store={})["metrics"]
    assert (m["cacheHits"], m["cacheMisses"], m["hitRate"]) == (3, 1, "75.00")
    assert m["tokenSavings"] == "75.00"
    assert (m["cacheReadTokens"], m["cacheCreationTokens"]) == (750, 250)
