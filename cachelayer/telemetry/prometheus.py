"""The Prometheus text of `GET /metrics`, rendered from the layers' snapshots: the
ledger's counters, the store's and layer 1's gauges, the upstream latency histogram."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cachelayer.telemetry.counters import PROMETHEUS_COUNTERS, REQUESTS, RESPONSE_HITS
from cachelayer.telemetry.kv_memory import kv_memory_lines
from cachelayer.telemetry.prefix_records import WARM_WINDOW_S, warm_prefixes

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Histogram:
    """A Prometheus-style cumulative histogram of seconds."""

    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.buckets, seconds)] += 1
        self.total += seconds
        self.count += 1

    def render(self, name: str, help_text: str) -> list[str]:
        """The exposition lines of this histogram."""
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        running = 0
        for bound, n in zip(self.buckets, self.counts, strict=False):  # +Inf is last
            running += n
            lines.append(f'{name}_bucket{{le="{bound}"}} {running}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum {self.total:.6f}")
        lines.append(f"{name}_count {self.count}")
        return lines


def render_prometheus(layers: Mapping[str, Mapping[str, Any]],
                      kv: Mapping[str, Any]) -> str:
    """The exposition text from the layers' snapshots (proxy/layer.py) and the backend's
    exported kv stats."""
    prefix, store_layer, forward = layers["prefix"], layers["store"], layers["forward"]
    totals = prefix["totals"]
    lines: list[str] = []
    for spec in PROMETHEUS_COUNTERS:
        lines += [f"# HELP {spec.metric} {spec.help}", f"# TYPE {spec.metric} counter",
                  f"{spec.metric} {totals.get(spec.counter, 0)}"]
    store = store_layer.get("store") or {}
    lines += ["# HELP cachelayer_response_store_bytes Bytes the response store uses.",
              "# TYPE cachelayer_response_store_bytes gauge",
              f"cachelayer_response_store_bytes {store.get('bytes') or 0}",
              "# HELP cachelayer_response_store_degraded 1 when the store cannot write.",
              "# TYPE cachelayer_response_store_degraded gauge",
              f"cachelayer_response_store_degraded {int(store.get('degraded') is not None)}"]
    warm = warm_prefixes(dict(prefix["prefixes"]), time.time())
    lines += [f"# HELP cachelayer_prefix_warm Distinct stable prefixes used in the last "
              f"{int(WARM_WINDOW_S)} s.",
              "# TYPE cachelayer_prefix_warm gauge",
              f"cachelayer_prefix_warm {warm}"]
    lines += scale_out_lines(store, store_layer.get("shared"), forward.get("routing"))
    lines += kv_memory_lines(dict(kv))
    latency: Histogram = forward["upstream_latency"]
    lines += latency.render(
        "cachelayer_upstream_latency_seconds",
        "Time from forwarding a miss to the upstream's first answer byte.")
    return "\n".join(lines) + "\n"


def _family(name: str, help_text: str, kind: str, samples: list[tuple[str, Any]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    return lines + [f"{name}{labels} {value}" for labels, value in samples]


def scale_out_lines(store: Mapping[str, Any], shared: Mapping[str, Any] | None,
                    routing: Mapping[str, Any] | None) -> list[str]:
    """Redis's evictions, the shared totals, and each backend, where they exist."""
    lines: list[str] = []
    if "evictedKeys" in store:
        lines += _family("cachelayer_redis_evicted_keys",
                         "Keys Redis evicted under maxmemory (INFO stats evicted_keys).",
                         "gauge", [("", store["evictedKeys"])])
    if shared is not None:
        totals = shared["totals"]
        lines += _family("cachelayer_shared_requests_total",
                         "Completions answered by every proxy on the shared store.", "counter",
                         [("", totals.get(REQUESTS, 0))])
        lines += _family("cachelayer_shared_response_hits_total",
                         "Store hits of every proxy on the shared store.", "counter",
                         [("", totals.get(RESPONSE_HITS, 0))])
    if routing is not None:
        backends = routing["backends"]
        for field_name, name, help_text, kind in (
                ("requests", "cachelayer_backend_requests_total", "Requests sent.", "counter"),
                ("errors", "cachelayer_backend_errors_total", "Requests failed.", "counter"),
                ("kvTokensReused", "cachelayer_backend_kv_tokens_reused_total",
                 "Prompt tokens the backend reused from its KV cache.", "counter"),
                ("healthy", "cachelayer_backend_healthy", "1 while in the ring.", "gauge")):
            lines += _family(name, help_text, kind,
                             [(f'{{backend="{b["url"]}"}}', int(b[field_name]))
                              for b in backends])
    return lines
