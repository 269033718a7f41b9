"""`cachelayer stats` and `cachelayer clear` from the shell, on real files."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from cachelayer.cli.main import main
from cachelayer.cli.stats import format_stats
from cachelayer.protocol.chat import ChatResult, Choice, Usage
from cachelayer.proxy.prefix.ledger import Ledger
from cachelayer.proxy.prefix.stabilize import PrefixIds
from cachelayer.proxy.store.backends.disk import DiskTier
from cachelayer.proxy.store.front import StoreFront
from cachelayer.telemetry.export import build_metrics
from cachelayer.telemetry.prefix_records import PrefixRecord
from tests.support.wait import wait_until


def _document() -> dict[str, object]:
    ledger_totals = {"requests": 3, "response.hits": 1, "response.misses": 2, "kv.hits": 1,
                     "tokens.input": 300, "tokens.read": 180, "tokens.reused": 80}
    kv = {"files": 2, "bytes": 4096, "tokens_restored_disk": 70, "tokens_restored_memory": 10,
          "tokens_prefilled": 120}
    return build_metrics(ledger_totals, runtime_ms=1, store={"entries": 1, "bytes": 9}, kv=kv)


def test_stats_table_shows_each_layer() -> None:
    text = format_stats(_document())
    for fragment in ("lookups hit / missed / expired", "1 / 2 / 0", "files / bytes",
                     "2 / 4096", "tokens restored from disk / memory", "70 / 10"):
        assert fragment in text, fragment
    rows = {line[:44].strip(): line[44:].split() for line in text.splitlines()}
    assert rows["answered"][0] == "3"
    assert rows["replayed from the response store"][0] == "1"
    assert rows["answered by the backend"][0] == "2"
    assert rows["read from cache"][:2] == ["180", "60.0%"]
    # one figure each, adding up: store prompts + backend reuse = read from cache
    assert rows["whole prompts of store replays"][0] == "100"
    assert rows["reused from the backend's KV cache"][0] == "80"


def test_stats_json_reads_the_metrics_file(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(_document()))
    assert main(["stats", "--json", "--metrics-file", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["totalRequests"] == 3


def test_stats_offline_without_a_metrics_file_reads_the_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = Ledger(tmp_path / "data" / "ledger")
    ledger.count("requests", 5)
    ledger.prefixes.record(PrefixIds("t", "s", "p1", 4), Usage(50, 1, 0), from_store=False,
                           client="c")
    ledger.close()
    monkeypatch.chdir(tmp_path)  # no metrics file here
    assert main(["stats", "--offline", "--data-dir", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "from the ledger in" in out
    assert "answered" in out and " 5" in out and "new conversation" in out


def test_clear_responses_removes_stored_answers_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    running = StoreFront(DiskTier(tmp_path / "responses", size_limit=1 << 30), ttl_s=60,
                         entry_max_bytes=1 << 20)
    result = ChatResult("chat", "i", 0, "m", (Choice(0, "hi", "stop"),))
    assert asyncio.run(running.save("k", result)).stored
    assert asyncio.run(running.lookup("k")) is not None  # now held in its memory too
    assert main(["clear", "--responses", "--yes", "--data-dir", str(tmp_path)]) == 0
    assert "removed 1 stored answers" in capsys.readouterr().out
    # The running store looks at the clear marker every 0.25 s, then forgets its memory.
    wait_until(lambda: asyncio.run(running.lookup("k")) is None,
               "the running store to see the clear")
    asyncio.run(running.aclose())


def test_clear_all_reports_every_cache(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["clear", "--all", "--yes", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "responses: nothing stored" in out
    assert "kv: removed 0 KV cache files" in out
    assert "ledger: counters and prefix ledger reset" in out


def test_stats_prefix_section_shows_the_honest_split_rewrites_moves_and_warm_prefixes() -> None:
    now = datetime.now(timezone.utc)
    records = {
        "main": PrefixRecord(tools=24, last_seen=now.timestamp(), requests=4, hits=2,
                             partial=1, misses=1, prefix_tokens=38_000,
                             prefix_tokens_estimated=False,
                             reasons={"new_session": 1, "evicted": 1},
                             last_miss_reason="evicted"),
        "sub": PrefixRecord(tools=21, last_seen=now.timestamp() - 3600, requests=1, misses=1,
                            prefix_tokens=9_000, reasons={"system_changed": 1},
                            last_miss_reason="system_changed"),
    }
    totals = {"prefix.requests": 5, "prefix.stripped_segments": 7,
              "prefix.rewrites.billing-line": 5, "prefix.rewrites.context-size": 2,
              "prefix.system_moved": 3, "prefix.reordered_requests": 3,
              "prefix.partial.new_session": 1, "prefix.miss.evicted": 1,
              "prefix.miss.system_changed": 1}
    doc = build_metrics(totals, runtime_ms=1, store={}, prefixes=records, now=now)
    assert doc["layers"]["prefix"]["warmPrefixes"] == 1  # the sub-agent's is an hour old
    text = format_stats(doc)
    for fragment in ("whole prefix reused / partly / not", "2 / 1 / 2", "why partly",
                     "new conversation: 1", "why not",
                     "evicted from the backend's cache: 1, system prompt changed: 1",
                     "prefixes used recently", "billing-line: 5, context-size: 2",
                     "in 3 requests", "38000", "~9000"):
        assert fragment in text, fragment


def test_clear_of_a_store_that_cannot_be_opened_recreates_it_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    responses = tmp_path / "responses"
    responses.mkdir()
    (responses / "cache.db").write_bytes(b"this is not an sqlite database" * 100)
    assert main(["clear", "--responses", "--yes", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "removed the whole store (an empty one created)" in out, out
    store = DiskTier(responses, size_limit=1 << 30)
    try:
        assert store.degraded is None and len(store) == 0
    finally:
        store.close()


def test_stats_table_lists_prefills_in_flight() -> None:
    doc = build_metrics({}, runtime_ms=0, store={})
    assert "prefills in flight" not in format_stats(doc)
    doc["prefills"] = [{"requestId": "req-7", "model": "m", "doneTokens": 12288,
                        "totalTokens": 44680, "tokensPerSecond": 409.6, "etaSeconds": 79.1,
                        "elapsedSeconds": 31.0}]
    table = format_stats(doc)
    assert "prefills in flight (1)" in table
    assert "req-7" in table and "12288/44680 tokens, 410 tok/s, eta 79 s, 31.0 s so far" in table
