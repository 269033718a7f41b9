"""Per-conversation records: turns, reuse, estimated prefill seconds; they survive restarts."""

from __future__ import annotations

from pathlib import Path

from cachelayer.proxy.activity import BUCKET_S, Timeline
from cachelayer.proxy.prefix.ledger import Ledger
from cachelayer.telemetry.sessions import MIN_TIMED_TOKENS, name_conversation, session_rows


def test_conversations_are_named_by_what_their_clients_send() -> None:
    assert name_conversation("abc", None, False, "t-1") == ("abc", "claude-code")
    assert name_conversation(None, "019a-codex", True, "t-1") == ("019a-codex", "codex")
    assert name_conversation(None, "opencode-1", False, "t-1") == ("opencode-1", "session")
    assert name_conversation(None, None, False, "t-123456789") == (
        "tenant:t-123456789", "other")


def test_turns_and_reuse_add_up_and_survive_a_restart(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    sessions = ledger.sessions
    sessions.observe_prefill(2000, 4.0)  # 2 ms per token on this machine
    sessions.record("c1", "claude-code", now=10.0, prompt_tokens=2000, reused_tokens=0,
                    store_hit=False)
    sessions.record("c1", "claude-code", now=20.0, prompt_tokens=2100, reused_tokens=2000,
                    store_hit=False)
    ledger.close()
    again = Ledger(tmp_path)
    [row] = session_rows(again.sessions.records())
    assert (row["id"], row["turns"], row["promptTokens"], row["reusedTokens"]) == (
        "c1", 2, 4100, 2000)
    assert row["computedTokens"] == 2100 and row["prefillSecondsSaved"] == 4.0
    assert row["firstSeen"] == 10.0 and row["lastSeen"] == 20.0
    assert again.sessions.seconds_per_token == 0.002  # the measured rate persists too
    again.close()


def test_short_prefills_do_not_set_the_rate(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.sessions.observe_prefill(MIN_TIMED_TOKENS - 1, 5.0)
    assert ledger.sessions.seconds_per_token == 0.0
    ledger.close()


def test_clearing_the_ledger_forgets_conversations(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.sessions.record("c1", "other", now=1.0, prompt_tokens=5, reused_tokens=0,
                           store_hit=False)
    ledger.flush()
    ledger.clear()
    assert ledger.sessions.records() == {}
    ledger.close()


def test_the_timeline_buckets_answers_by_ten_seconds() -> None:
    timeline = Timeline()
    timeline.add(100.0, prompt_tokens=10, reused_tokens=0, store_hit=False)
    timeline.add(100.0 + BUCKET_S - 1, prompt_tokens=10, reused_tokens=10, store_hit=True)
    timeline.add(100.0 + BUCKET_S, prompt_tokens=4, reused_tokens=2, store_hit=False)
    rows = timeline.rows()
    assert [r["t"] for r in rows] == [100, 110]
    assert rows[0] == {"t": 100, "requests": 2, "storeHits": 1, "promptTokens": 20,
                       "reusedTokens": 10}
