"""Prefill progress: the backend's keepalive comments, rates, log lines, the listing."""

from __future__ import annotations

import logging

import pytest

from cachelayer.proxy.forward.progress import PrefillProgress, Prefills, parse_keepalive


@pytest.mark.parametrize(("text", "expected"), [
    ("keepalive 12288/44680", (12288, 44680)),
    (" keepalive 0/10 ", (0, 10)),
    ("keepalive 11/10", None),          # more done than there is: not progress
    ("keepalive", None),
    ("cachelayer-usage {\"prompt_tokens\": 3}", None),
    ("keepalive 1/x", None),
])
def test_parse_keepalive_reads_only_progress_comments(text: str,
                                                      expected: tuple[int, int] | None) -> None:
    assert parse_keepalive(text) == expected


def test_rate_and_eta_are_measured_from_the_first_report() -> None:
    entry = PrefillProgress("rid", "m", started=0.0)
    entry.update(2048, 44680, now=10.0)  # queueing before the first report is not timed
    assert entry.rate() is None and entry.eta_s() is None
    assert entry.line() == "prefill 2048/44680 tokens, ? tok/s, eta ?"
    entry.update(12288, 44680, now=35.0)
    assert entry.rate() == pytest.approx(409.6)
    assert entry.eta_s() == pytest.approx((44680 - 12288) / 409.6)
    assert entry.line() == "prefill 12288/44680 tokens, 410 tok/s, eta 79 s"
    shown = entry.as_dict(now=40.0)
    assert shown["doneTokens"] == 12288 and shown["totalTokens"] == 44680
    assert shown["tokensPerSecond"] == 409.6 and shown["elapsedSeconds"] == 40.0


def test_a_prefill_is_listed_until_it_ends() -> None:
    prefills = Prefills(log_interval_s=60.0)
    first = prefills.begin("r1", "m")
    second = prefills.begin("r2", "m")
    prefills.report(second, 5, 10)
    assert [p["requestId"] for p in prefills.snapshot()] == ["r1", "r2"]
    assert prefills.snapshot()[1]["doneTokens"] == 5
    prefills.end(first)
    prefills.end(first)  # ending twice is harmless
    assert [p["requestId"] for p in prefills.snapshot()] == ["r2"]
    assert len(prefills) == 1


def test_progress_is_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cachelayer.proxy.forward.progress")
    quiet = Prefills(log_interval_s=3600.0)
    entry = quiet.begin("r", "m")
    quiet.report(entry, 10, 100)
    assert not caplog.records  # a prefill shorter than the interval logs nothing
    chatty = Prefills(log_interval_s=0.0)
    entry = chatty.begin("r", "m")
    chatty.report(entry, 10, 100)
    chatty.report(entry, 20, 100)
    chatty.report(entry, 100, 100)  # done: the end line says so instead
    chatty.end(entry)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:2] == ["prefill 10/100 tokens, ? tok/s, eta ?", lines[1]]
    assert lines[1].startswith("prefill 20/100 tokens, ")
    assert lines[2].startswith("prefill of 100 tokens done after ")
    assert len(lines) == 3
