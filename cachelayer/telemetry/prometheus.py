"""GET /metrics: the ledger's counters, the store's and layer 1's gauges, the upstream
latency histogram."""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from dataclasses import dataclass, field

from aiohttp import web

from cachelayer.proxy.prefix.ledger import WARM_WINDOW_S, warm_prefixes
from cachelayer.proxy.state import LEDGER, STORE
from cachelayer.telemetry.counters import PROMETHEUS_COUNTERS

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


UPSTREAM_LATENCY = web.AppKey("upstream_latency", Histogram)


def render_prometheus(app: web.Application) -> str:
    """The exposition text (blocking: reads the ledger)."""
    totals = app[LEDGER].totals()
    lines: list[str] = []
    for spec in PROMETHEUS_COUNTERS:
        lines += [f"# HELP {spec.metric} {spec.help}", f"# TYPE {spec.metric} counter",
                  f"{spec.metric} {totals.get(spec.counter, 0)}"]
    store = app[STORE]
    lines += ["# HELP cachelayer_response_store_bytes Bytes the response store uses on disk.",
              "# TYPE cachelayer_response_store_bytes gauge",
              f"cachelayer_response_store_bytes {store.volume()}",
              "# HELP cachelayer_response_store_degraded 1 when the store cannot write.",
              "# TYPE cachelayer_response_store_degraded gauge",
              f"cachelayer_response_store_degraded {int(store.degraded is not None)}"]
    warm = warm_prefixes(app[LEDGER].prefixes.records(), time.time())
    lines += [f"# HELP cachelayer_prefix_warm Distinct stable prefixes used in the last "
              f"{int(WARM_WINDOW_S)} s.",
              "# TYPE cachelayer_prefix_warm gauge",
              f"cachelayer_prefix_warm {warm}"]
    lines += app[UPSTREAM_LATENCY].render(
        "cachelayer_upstream_latency_seconds",
        "Time from forwarding a miss to the upstream's first answer byte.")
    return "\n".join(lines) + "\n"


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics in Prometheus text format."""
    loop = asyncio.get_running_loop()
    text = await loop.run_in_executor(None, render_prometheus, request.app)
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})
