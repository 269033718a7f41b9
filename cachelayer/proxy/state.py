"""Typed keys for app-wide state and per-request state; no module-level state elsewhere."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from cachelayer.config import Settings
from cachelayer.protocol.chat import ChatRequest, ChatResult, Usage
from cachelayer.protocol.codec import Codec
from cachelayer.proxy.forward.pool import UpstreamPool
from cachelayer.proxy.forward.progress import Prefills
from cachelayer.proxy.prefix.stabilize import PrefixIds
from cachelayer.proxy.store.backends.base import AnswerStore
from cachelayer.proxy.store.backends.redis_ledger import SharedLedger
from cachelayer.telemetry.ledger import Ledger


class CacheStatus(str, enum.Enum):
    """What layer 2 did with a request, as the `X-Cache-Status` header says it."""

    HIT = "HIT"
    MISS = "MISS"
    EXPIRED = "EXPIRED"
    BYPASS = "BYPASS"


@dataclass
class Exchange:
    """What the layers learn about one proxied request as it passes through them."""

    chat: ChatRequest
    codec: Codec
    fingerprint: str | None = None  # digest of route + raw body, for the layers' memos
    cache_status: CacheStatus = CacheStatus.BYPASS
    prefix: PrefixIds | None = None
    result: ChatResult | None = None
    oversized: bool = False  # relayed whole, but too large to keep: never stored
    upstream_ms: float | None = None
    early_usage: Usage | None = None  # the backend's report after its prefix lookup
    first_token_ms: float | None = None  # a stream's first content (its prefill's end)


@dataclass
class Background:
    """Writes still running off the request path; awaited at shutdown."""

    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine in the background and keep a reference until it ends."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def __len__(self) -> int:
        return len(self.tasks)

    async def drain(self) -> None:
        """Wait for every background write to finish."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)


SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", AnswerStore)
POOL = web.AppKey("pool", UpstreamPool)
# Only with --store redis://: the ledger's shared half (absent otherwise: use app.get()).
SHARED = web.AppKey("shared_ledger", SharedLedger)
LEDGER = web.AppKey("ledger", Ledger)
UPSTREAM = web.AppKey("upstream", aiohttp.ClientSession)
BACKGROUND = web.AppKey("background", Background)
STARTED_AT = web.AppKey("started_at", float)
# Streamed requests waiting for their first token, with the backend's prefill progress.
PREFILLS = web.AppKey("prefills", Prefills)
EXCHANGE = web.RequestKey("exchange", Exchange)
