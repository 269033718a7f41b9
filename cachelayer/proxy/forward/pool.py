"""The upstreams a proxy fronts: which one a request goes to, which are alive, and what
each did (requests, errors, KV tokens it reused).

With one upstream nothing is checked or chosen: every request goes there, as before.
With several, a request goes where ring.choose() says (layer 1's prefix id, bounded
load) or round-robin; a backend that refuses a connection or fails its health check
(GET /health, any answer below 500 is alive) leaves the ring at once, and the checks,
every `health_interval_s`, bring it back when it answers again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from cachelayer.config import RoutingMode, Settings
from cachelayer.protocol.chat import Usage
from cachelayer.proxy.forward.ring import build_ring, choose

log = logging.getLogger(__name__)


@dataclass
class Upstream:
    """One upstream (a `cachelayer backend` or any OpenAI-compatible server) and what it
    did for this proxy since start."""

    url: str
    healthy: bool = True
    in_flight: int = 0
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    last_error: str | None = None
    down_since: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """For /health, the metrics file and `cachelayer stats`."""
        return {"url": self.url, "healthy": self.healthy, "inFlight": self.in_flight,
                "requests": self.requests, "errors": self.errors,
                "promptTokens": self.prompt_tokens, "kvTokensReused": self.reused_tokens,
                "lastError": self.last_error}


class UpstreamPool:
    """Every upstream, its health, and the routing rule."""

    def __init__(self, settings: Settings) -> None:
        self.upstreams = {url: Upstream(url) for url in settings.backend_urls}
        self.mode = settings.routing
        self.balance = settings.routing_balance
        self.interval_s = settings.health_interval_s
        self._ring = build_ring(list(self.upstreams))
        self._turn = itertools.count()

    @property
    def routed(self) -> bool:
        """True when there is a choice to make (more than one upstream)."""
        return len(self.upstreams) > 1

    def candidates(self, key: str) -> list[Upstream]:
        """Backends in the order to try them for this routing key. Every backend is a
        last resort when none is healthy (the checks may simply be behind)."""
        if not self.routed:
            return list(self.upstreams.values())
        healthy = [url for url, b in self.upstreams.items() if b.healthy]
        if self.mode is RoutingMode.ROUND_ROBIN:
            if healthy:
                start = next(self._turn) % len(healthy)
                order = healthy[start:] + healthy[:start]
            else:
                order = []
        else:
            loads = {url: b.in_flight for url, b in self.upstreams.items()}
            order = choose(self._ring, key, healthy=healthy, loads=loads, balance=self.balance)
        rest = [url for url in self.upstreams if url not in order]
        return [self.upstreams[url] for url in order + rest]

    def first_healthy(self) -> str:
        """A backend for requests that are not routed (models, token counts): the first
        healthy one, else the first one."""
        return next((b.url for b in self.upstreams.values() if b.healthy),
                    next(iter(self.upstreams)))

    def failed(self, backend: Upstream, reason: str) -> None:
        """A connection to the backend failed: out of the ring until a check passes."""
        backend.last_error = reason
        if self.routed and backend.healthy:
            backend.healthy = False
            backend.down_since = time.time()
            log.warning("upstream %s left the ring: %s", backend.url, reason)

    def account(self, backend: Upstream, usage: Usage | None, *, ok: bool) -> None:
        """Count one request the backend served (or failed)."""
        backend.requests += 1
        if not ok:
            backend.errors += 1
        elif usage is not None:
            backend.prompt_tokens += usage.prompt_tokens
            backend.reused_tokens += usage.cached_tokens or 0

    async def check(self, session: aiohttp.ClientSession) -> None:
        """One round of health checks, all backends at once."""
        await asyncio.gather(*(self._check_one(session, b) for b in self.upstreams.values()))

    async def _check_one(self, session: aiohttp.ClientSession, backend: Upstream) -> None:
        timeout = aiohttp.ClientTimeout(total=max(0.5, self.interval_s))
        try:
            async with session.get(backend.url + "/health", timeout=timeout) as response:
                alive = response.status < 500
                reason = f"health check answered {response.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            alive, reason = False, f"health check failed: {exc or type(exc).__name__}"
        if alive and not backend.healthy:
            backend.healthy, backend.down_since = True, None
            log.warning("upstream %s is back in the ring", backend.url)
        elif not alive:
            self.failed(backend, reason)

    def snapshot(self) -> list[dict[str, Any]]:
        """Every backend's numbers."""
        return [b.as_dict() for b in self.upstreams.values()]
