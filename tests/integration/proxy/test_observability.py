"""/metrics, request ids and access lines on a live proxy."""

from __future__ import annotations

import logging
import re

import pytest

from cachelayer.telemetry.logs import RequestIdFilter
from tests.support import http
from tests.support.servers import RunningServer

BODY = {"model": "m", "messages": [{"role": "user", "content": "count me"}]}


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_metrics_count_hits_misses_and_upstream_latency(proxy: RunningServer) -> None:
    http.post(proxy.url + "/v1/chat/completions", json=BODY)
    http.post(proxy.url + "/v1/chat/completions", json=BODY)
    answer = http.get(proxy.url + "/metrics")
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/plain")
    text = answer.content.decode()
    assert _metric(text, "cachelayer_response_hits_total") == 1
    assert _metric(text, "cachelayer_response_misses_total") == 1
    assert _metric(text, "cachelayer_requests_total") == 2
    assert _metric(text, "cachelayer_tokens_input_total") == 84
    assert _metric(text, "cachelayer_upstream_latency_seconds_count") == 1
    assert _metric(text, "cachelayer_prefix_warm") == 1  # one prefix (no tools, no system)
    assert 'cachelayer_upstream_latency_seconds_bucket{le="+Inf"} 1' in text


def test_request_id_is_echoed_or_made(proxy: RunningServer) -> None:
    given = http.post(proxy.url + "/v1/chat/completions", json=BODY,
                      headers={"X-Request-Id": "agent-42"})
    assert given.headers["X-Request-Id"] == "agent-42"
    made = http.post(proxy.url + "/v1/chat/completions", json={**BODY, "stream": True},
                     headers={"X-Request-Id": "bad id with spaces"})
    assert made.headers["X-Request-Id"] != "bad id with spaces"
    assert len(made.headers["X-Request-Id"]) == 16


def test_each_request_logs_one_info_access_line_with_its_id(
    proxy: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.INFO, logger="cachelayer.access"):
        http.post(proxy.url + "/v1/chat/completions", json=BODY,
                  headers={"X-Request-Id": "trace-7"})
    lines = [r for r in caplog.records if r.name == "cachelayer.access"]
    assert len(lines) == 1
    message = lines[0].getMessage()
    assert "path=/v1/chat/completions" in message and "status=200" in message
    assert "cache=MISS" in message and "method=POST" in message
    assert re.search(r" tokens=(\d+|\?)/\d+ ms=\d+\.\d", message), message
    assert lines[0].levelno == logging.INFO
    assert lines[0].request_id == "trace-7"  # type: ignore[attr-defined]
