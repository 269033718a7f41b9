"""The prefix ledger: measured reuse, miss reasons, and no lost counts across processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from cachelayer.protocol.chat import Usage
from cachelayer.proxy.prefix.ledger import Ledger
from cachelayer.proxy.prefix.prefixes import HIT, MISS, PARTIAL, REPLAYED, Outcome, classify
from cachelayer.proxy.prefix.stabilize import PrefixIds
from cachelayer.telemetry.counters import MissReason
from cachelayer.telemetry.export import build_metrics
from cachelayer.telemetry.prefix_records import top_entries

NEW_SESSION, EVICTED = MissReason.NEW_SESSION, MissReason.EVICTED
SYSTEM_CHANGED, TOOLS_CHANGED = MissReason.SYSTEM_CHANGED, MissReason.TOOLS_CHANGED
BOTH_CHANGED = MissReason.BOTH_CHANGED

A = PrefixIds("tools-a", "sys-a", "prefix-a", 3)


def ids(tools: str, system: str) -> PrefixIds:
    return PrefixIds(tools, system, f"{tools}+{system}", 2)


def size(n: int) -> Callable[[], int]:
    return lambda: n


def test_first_request_of_a_prefix_is_never_a_hit_even_with_full_reuse(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    outcome = ledger.prefixes.record(A, Usage(100, 5, 99), from_store=False, client="c",
                                     estimate=size(80))
    assert outcome == Outcome(PARTIAL, NEW_SESSION)
    ledger.close()


def test_reuse_of_the_whole_prefix_is_a_hit_and_is_counted(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.prefixes.record(A, Usage(100, 5, 0), from_store=False, client="c", estimate=size(80))
    outcome = ledger.prefixes.record(A, Usage(120, 5, 96), from_store=False, client="c",
                                     estimate=size(80))
    assert outcome == Outcome(HIT)
    record = ledger.prefixes.records()["prefix-a"]
    assert (record.requests, record.hits, record.partial, record.misses) == (2, 1, 0, 1)
    assert record.reused_tokens == 96 and record.prompt_tokens == 220
    ledger.close()


def test_reuse_short_of_a_known_prefix_is_partial_because_evicted(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    p = ledger.prefixes
    p.record(A, Usage(40_000, 5, 0), from_store=False, client="c", estimate=size(38_000))
    p.set_size("prefix-a", 38_000)
    # the case: 1,874 of a 38k prefix reused is not a hit
    assert p.record(A, Usage(40_100, 5, 1_874), from_store=False, client="c") == Outcome(
        PARTIAL, EVICTED)
    assert p.record(A, Usage(40_100, 5, 0), from_store=False, client="d") == Outcome(
        MISS, EVICTED)
    assert p.record(A, Usage(40_100, 5, 38_000), from_store=False, client="d") == Outcome(HIT)
    record = p.records()["prefix-a"]
    assert record.prefix_tokens == 38_000 and not record.prefix_tokens_estimated
    assert record.reasons == {NEW_SESSION.value: 1, EVICTED.value: 2}
    ledger.close()


def test_a_known_prefix_lost_below_the_backends_min_tokens_is_too_short_not_evicted(
    tmp_path: Path,
) -> None:
    ledger = Ledger(tmp_path)
    p = ledger.prefixes
    p.persist_min_tokens = 1024
    p.record(A, Usage(300, 5, 0), from_store=False, client="c", estimate=size(200))
    assert p.record(A, Usage(320, 5, 0), from_store=False, client="c") == Outcome(
        MISS, MissReason.TOO_SHORT)
    p.persist_min_tokens = 100  # long enough to have been written: then it was evicted
    assert p.record(A, Usage(320, 5, 0), from_store=False, client="c") == Outcome(
        MISS, EVICTED)
    ledger.close()


def test_a_measured_size_outranks_the_estimate(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    p = ledger.prefixes
    p.record(A, Usage(1000, 5, 0), from_store=False, client="c", estimate=size(500))
    p.set_size("prefix-a", 900)
    # 600 reused would be a hit against the estimate, not against the measured 900
    assert p.record(A, Usage(1000, 5, 600), from_store=False, client="c",
                    estimate=size(500)).category == PARTIAL
    ledger.close()


def test_reasons_name_what_changed_for_a_new_prefix(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    p = ledger.prefixes
    cold = Usage(100, 1, 0)
    p.record(ids("t1", "s1"), cold, from_store=False, client="c")
    assert p.record(ids("t2", "s1"), cold, from_store=False, client="c").reason == TOOLS_CHANGED
    assert p.record(ids("t2", "s2"), cold, from_store=False, client="c").reason == SYSTEM_CHANGED
    assert p.record(ids("t3", "s3"), cold, from_store=False, client="c").reason == BOTH_CHANGED
    assert p.record(ids("t3", "s3"), cold, from_store=False, client="c").reason == EVICTED
    assert p.record(ids("t4", "s4"), cold, from_store=False, client="d").reason == NEW_SESSION
    assert p.records()["t2+s1"].last_miss_reason == TOOLS_CHANGED.value
    ledger.close()


def test_classify_is_the_whole_rule() -> None:
    assert classify(1000, 1000, seen_before=True) == HIT
    assert classify(995, 1000, seen_before=True) == HIT      # chat-template framing slack
    assert classify(900, 1000, seen_before=True) == PARTIAL
    assert classify(0, 1000, seen_before=True) == MISS
    assert classify(5000, 1000, seen_before=False) == PARTIAL
    assert classify(5000, 0, seen_before=True) == PARTIAL    # no size, no claim


def test_store_hits_are_their_own_category(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    assert ledger.prefixes.record(A, Usage(100, 7, 0), from_store=True,
                                  client="c") == Outcome(REPLAYED)
    record = ledger.prefixes.records()["prefix-a"]
    assert record.store_hits == 1 and record.store_tokens_saved == 107
    assert (record.hits, record.partial, record.misses) == (0, 0, 0)
    ledger.close()


def test_unreported_reuse_is_an_estimate_kept_apart(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.prefixes.record(A, Usage(100, 5, None), from_store=False, client="c")
    ledger.prefixes.record(A, Usage(130, 5, None), from_store=False, client="c")
    record = ledger.prefixes.records()["prefix-a"]
    assert record.reused_tokens == 0
    assert record.estimated_reused_tokens == 100
    assert (record.hits, record.misses) == (1, 1)
    ledger.close()


def test_a_prefix_known_before_a_restart_is_not_new_after_it(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.prefixes.record(A, Usage(100, 5, 0), from_store=False, client="c", estimate=size(80))
    ledger.prefixes.set_size("prefix-a", 90)
    ledger.close()
    again = Ledger(tmp_path)
    assert again.prefixes.record(A, Usage(110, 5, 100), from_store=False,
                                 client="new") == Outcome(HIT)
    again.close()


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
from cachelayer.proxy.prefix.ledger import Ledger
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
    ledger.prefixes.record(A, Usage(100, 5, 0), from_store=False, client="c", estimate=size(70))
    ledger.prefixes.record(A, Usage(100, 5, 80), from_store=False, client="c", estimate=size(70))
    ledger.prefixes.record(A, Usage(100, 5, 20), from_store=False, client="c", estimate=size(70))
    [entry] = top_entries(ledger.prefixes.records())
    assert entry["hash"] == "prefix-a" and entry["tools"] == 3
    assert (entry["hits"], entry["partial"], entry["misses"]) == (1, 1, 1)
    assert entry["hitRate"] == "33.3"
    assert entry["cacheTokens"] == 100 and entry["lastMissReason"] == EVICTED.value
    assert entry["prefixTokens"] == 70 and entry["prefixTokensEstimated"] is True
    assert entry["reasons"] == {NEW_SESSION.value: 1, EVICTED.value: 1}
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
