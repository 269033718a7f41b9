"""Layer 3's object (the proxy side): the upstreams, the client session that reaches
them, an embedded backend when the proxy runs one, and what the upstreams are doing.

Its keys: `POOL` (the upstreams, their health and numbers), `UPSTREAM` (the pooled
aiohttp client session), `PREFILLS` (streamed requests still prefilling),
`UPSTREAM_LATENCY` (time to the upstream's first byte), and the conversation affinity
(proxy/conversation.py). Its snapshot: routing over several upstreams, the prefills in
flight, the latency histogram.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from cachelayer.config import Settings
from cachelayer.periodic import Periodic
from cachelayer.proxy.conversation import AFFINITY, Affinity
from cachelayer.proxy.embedded import backend_ctx
from cachelayer.proxy.forward.pool import UpstreamPool
from cachelayer.proxy.forward.progress import Prefills
from cachelayer.telemetry.prometheus import Histogram

POOL = web.AppKey("pool", UpstreamPool)
UPSTREAM = web.AppKey("upstream", aiohttp.ClientSession)
# Streamed requests waiting for their first token, with the backend's prefill progress.
PREFILLS = web.AppKey("prefills", Prefills)
UPSTREAM_LATENCY = web.AppKey("upstream_latency", Histogram)


def routing_stats(pool: UpstreamPool | None) -> dict[str, Any] | None:
    """Each upstream's numbers, when the proxy routes over several; None with one."""
    if pool is None or not pool.routed:
        return None
    return {"mode": pool.mode.value, "backends": pool.snapshot()}


class ForwardLayer:
    """Layer 3 on the proxy side: route a miss to an upstream and relay its answer."""

    name = "forward"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool: UpstreamPool | None = None
        self.prefills = Prefills(settings.progress_log_interval_s)
        self.latency = Histogram()

    def setup(self, app: web.Application) -> None:
        """The progress list, latency histogram and affinity now; the embedded backend
        and the client session in cleanup contexts."""
        app[PREFILLS] = self.prefills
        app[UPSTREAM_LATENCY] = self.latency
        app[AFFINITY] = Affinity()
        app.cleanup_ctx.append(backend_ctx)
        app.cleanup_ctx.append(self._upstream_ctx)

    async def _upstream_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """The pooled client session every upstream call uses, and the health checks."""
        settings = self.settings
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout_s,
            sock_read=settings.read_timeout_s)
        connector = aiohttp.TCPConnector(limit=256, ttl_dns_cache=300)
        pool = self.pool = app[POOL] = UpstreamPool(settings)
        # No cookie jar: cookies one upstream answer sets must never ride on another
        # client's request.
        async with aiohttp.ClientSession(timeout=timeout, connector=connector,
                                         cookie_jar=aiohttp.DummyCookieJar()) as session:
            app[UPSTREAM] = session
            # Health checks only when there is a choice of backend to make.
            checks = Periodic(lambda: pool.check(session), pool.interval_s,
                              name="upstream health checks", immediately=True)
            if pool.routed:
                checks.start()
            yield
            await checks.stop()

    def snapshot(self) -> dict[str, Any]:
        """Routing (None with one upstream), prefills in flight, the latency histogram."""
        return {"routing": routing_stats(self.pool), "prefills": self.prefills.snapshot(),
                "upstream_latency": self.latency}
