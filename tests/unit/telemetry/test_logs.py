"""Observability pieces: the latency histogram and request ids in log records."""

from __future__ import annotations

import logging

from cachelayer.telemetry.logs import (
    REQUEST_ID,
    SECRETS,
    RequestIdFilter,
    is_credential,
    request_secrets,
)
from cachelayer.telemetry.prometheus import Histogram


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    h = Histogram(buckets=(0.1, 1.0), counts=[0, 0, 0])
    for seconds in (0.05, 0.1, 0.5, 3.0):
        h.observe(seconds)
    lines = h.render("x_seconds", "help")
    assert 'x_seconds_bucket{le="0.1"} 2' in lines
    assert 'x_seconds_bucket{le="1.0"} 3' in lines
    assert 'x_seconds_bucket{le="+Inf"} 4' in lines
    assert "x_seconds_count 4" in lines and "x_seconds_sum 3.650000" in lines
    assert lines[1] == "# TYPE x_seconds histogram"


def test_log_records_carry_the_current_request_id() -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "m", None, None)
    token = REQUEST_ID.set("abc123")
    try:
        assert RequestIdFilter().filter(record)
    finally:
        REQUEST_ID.reset(token)
    assert record.request_id == "abc123"  # type: ignore[attr-defined]
    outside = logging.LogRecord("t", logging.INFO, __file__, 1, "m", None, None)
    RequestIdFilter().filter(outside)
    assert outside.request_id == "-"  # type: ignore[attr-defined]


def test_the_requests_credentials_are_redacted_from_log_messages() -> None:
    secrets = request_secrets({"Authorization": "Bearer sk-live-123456", "x-api-key": "ak-99"})
    record = logging.LogRecord("t", logging.WARNING, __file__, 1,
                               "upstream said: bad key %s (%s)", ("sk-live-123456", "ak-99"),
                               None)
    token = SECRETS.set(secrets)
    try:
        RequestIdFilter().filter(record)
    finally:
        SECRETS.reset(token)
    assert record.getMessage() == "upstream said: bad key [redacted] ([redacted])"


def test_a_placeholder_key_like_local_is_not_redacted_from_ordinary_words() -> None:
    secrets = request_secrets({"Authorization": "Bearer local", "x-api-key": "local"})
    record = logging.LogRecord("t", logging.INFO, __file__, 1,
                               "serving the local model on localhost", None, None)
    token = SECRETS.set(secrets)
    try:
        RequestIdFilter().filter(record)
    finally:
        SECRETS.reset(token)
    assert record.getMessage() == "serving the local model on localhost"


def test_keys_with_digits_or_long_keys_are_credentials_but_short_words_are_not() -> None:
    assert is_credential("sk-ant-api03-abc")
    assert is_credential("ak-99")
    assert is_credential("abcdefghijklmnopqrstu")  # long, even if letters only
    assert not is_credential("local")
    assert not is_credential("dummy")
    assert not is_credential("k1")
