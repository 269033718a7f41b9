"""Telemetry renders the layers' snapshots as plain data: no app, no proxy, no disk.

The observer (proxy/observe.py) collects `{layer name: snapshot}` and hands it here; these
tests hand the same shapes in directly, so the renderers are shown to need nothing else.
"""

from __future__ import annotations

import time
from typing import Any

from cachelayer.protocol.chat import Usage
from cachelayer.telemetry import counters as c
from cachelayer.telemetry.export import metrics_document
from cachelayer.telemetry.logs import access_line, reused_of_total
from cachelayer.telemetry.prefix_records import PrefixRecord
from cachelayer.telemetry.prometheus import Histogram, render_prometheus
from cachelayer.telemetry.sessions import SessionRecord


def _snapshots(*, shared: dict[str, Any] | None = None,
               routing: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    now = time.time()
    latency = Histogram()
    latency.observe(0.2)
    return {
        "prefix": {
            "totals": {c.REQUESTS: 4, c.RESPONSE_HITS: 1, c.RESPONSE_MISSES: 3,
                       c.TOKENS_INPUT: 1000, c.TOKENS_READ: 600},
            "prefixes": {"p1": PrefixRecord(requests=4, hits=2, misses=1, last_seen=now)},
            "sessions": {"s1": SessionRecord(client="claude-code", turns=4, last_seen=now)},
            "degraded": None,
        },
        "store": {"store": {"entries": 1, "bytes": 2048, "degraded": None},
                  "shared": shared},
        "forward": {"routing": routing, "prefills": [], "upstream_latency": latency},
    }


def test_the_metrics_document_is_rendered_from_the_layers_snapshots() -> None:
    doc = metrics_document(_snapshots(), runtime_ms=1234, kv=None)
    assert doc["runtime"] == 1234
    assert doc["metrics"]["totalRequests"] == 4
    assert doc["metrics"]["tokenSavings"] == "60.00"
    assert doc["layers"]["response"]["hits"] == 1
    assert doc["layers"]["response"]["bytes"] == 2048
    assert doc["layers"]["prefix"]["warmPrefixes"] == 1
    assert doc["topEntries"][0]["hash"] == "p1"
    assert doc["sessions"][0]["id"] == "s1" and doc["sessions"][0]["turns"] == 4
    assert "routing" not in doc["layers"] and "shared" not in doc


def test_a_shared_store_puts_every_proxys_totals_on_top_and_this_proxys_beside() -> None:
    shared = {"totals": {c.REQUESTS: 10, c.RESPONSE_HITS: 7}, "prefixes": {},
              "label": "redis://127.0.0.1:6379/0", "error": None}
    doc = metrics_document(_snapshots(shared=shared), runtime_ms=1, kv=None)
    assert doc["metrics"]["totalRequests"] == 10
    assert doc["thisProxy"]["metrics"]["totalRequests"] == 4
    assert doc["shared"] == {"store": "redis://127.0.0.1:6379/0", "error": None}


def test_prometheus_text_is_rendered_from_the_layers_snapshots() -> None:
    routing = {"mode": "prefix", "backends": [
        {"url": "http://a", "healthy": True, "requests": 3, "errors": 1, "kvTokensReused": 9}]}
    text = render_prometheus(_snapshots(routing=routing), kv={})
    lines = text.splitlines()
    assert "cachelayer_requests_total 4" in lines
    assert "cachelayer_response_hits_total 1" in lines
    assert "cachelayer_response_store_bytes 2048" in lines
    assert "cachelayer_response_store_degraded 0" in lines
    assert "cachelayer_prefix_warm 1" in lines
    assert 'cachelayer_backend_errors_total{backend="http://a"} 1' in lines
    assert "cachelayer_upstream_latency_seconds_count 1" in lines


def test_the_access_line_is_formatted_from_plain_values() -> None:
    usage = Usage(prompt_tokens=100, completion_tokens=5, cached_tokens=40)
    assert reused_of_total(usage, store_hit=False) == "40/100"
    assert reused_of_total(usage, store_hit=True) == "100/100"
    assert reused_of_total(None, store_hit=False) == "-"
    assert access_line("POST", "/v1/messages", 200, "MISS", "40/100", 12.345) == (
        "method=POST path=/v1/messages status=200 cache=MISS tokens=40/100 ms=12.3")
