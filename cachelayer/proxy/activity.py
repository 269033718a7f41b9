"""What is happening now and lately: requests in flight, a timeline, per-conversation turns.

`activity_middleware` sits between the edge and layer 1. It lists each completion while
it is in flight (a prefill in progress is one whose first byte has not come back yet;
the backend's early usage report says how many tokens it has to compute), and once it is
answered adds it to a one-hour timeline of 10-second buckets and to its conversation's
record (telemetry/sessions.py). The dashboard and `cachelayer stats` read all three.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from cachelayer.proxy.conversation import CONVERSATION, conversation_of
from cachelayer.proxy.prefix.ledger import LEDGER
from cachelayer.proxy.state import EXCHANGE, CacheStatus, Exchange
from cachelayer.telemetry.sessions import CLAUDE_CODE_HEADER, name_conversation

BUCKET_S = 10
BUCKETS = 360  # one hour


@dataclass
class Bucket:
    """Answered requests whose answer ended within one 10-second slot."""

    start: int
    requests: int = 0
    store_hits: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0


@dataclass
class Timeline:
    """The last hour of answered requests in 10-second buckets (memory only)."""

    buckets: deque[Bucket] = field(default_factory=lambda: deque(maxlen=BUCKETS))

    def add(self, now: float, *, prompt_tokens: int, reused_tokens: int,
            store_hit: bool, requests: int = 1) -> None:
        """Count answered requests (their tokens summed)."""
        start = int(now // BUCKET_S * BUCKET_S)
        if not self.buckets or self.buckets[-1].start != start:
            self.buckets.append(Bucket(start))
        bucket = self.buckets[-1]
        bucket.requests += requests
        bucket.store_hits += requests * int(store_hit)
        bucket.prompt_tokens += prompt_tokens
        bucket.reused_tokens += reused_tokens

    def rows(self) -> list[dict[str, Any]]:
        """The buckets, oldest first, as the stats document lists them."""
        return [{"t": b.start, "requests": b.requests, "storeHits": b.store_hits,
                 "promptTokens": b.prompt_tokens, "reusedTokens": b.reused_tokens}
                for b in self.buckets]


@dataclass
class InFlight:
    """One completion being answered."""

    path: str
    started: float
    exchange: Exchange

    def row(self, now: float) -> dict[str, Any]:
        """What the dashboard shows of it."""
        early = self.exchange.early_usage
        prompt = early.prompt_tokens if early else None
        cached = early.cached_tokens if early else None
        return {
            "path": self.path,
            "seconds": round(now - self.started, 1),
            # A stream prefills until its first content; a plain answer until it is back.
            "prefilling": self.exchange.first_token_ms is None and (
                self.exchange.chat.stream or self.exchange.upstream_ms is None),
            "promptTokens": prompt,
            "cachedTokens": cached,
            "toCompute": None if prompt is None or cached is None else prompt - cached,
        }


@dataclass
class Activity:
    """The proxy's in-flight requests and recent timeline."""

    timeline: Timeline = field(default_factory=Timeline)
    in_flight: dict[int, InFlight] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def document(self, now: float | None = None) -> dict[str, Any]:
        """The live part of the stats document."""
        now = time.time() if now is None else now
        return {"bucketSeconds": BUCKET_S, "timeline": self.timeline.rows(),
                "inFlight": [f.row(now) for f in list(self.in_flight.values())]}


ACTIVITY = web.AppKey("activity", Activity)


def reused_tokens(exchange: Exchange) -> tuple[int, int]:
    """(prompt tokens, tokens read from cache) of an answered exchange; a store hit read
    its whole prompt."""
    result = exchange.result
    usage = result.usage if result is not None else None
    if usage is None:
        return 0, 0
    if exchange.cache_status is CacheStatus.HIT:
        return usage.prompt_tokens, usage.prompt_tokens
    return usage.prompt_tokens, usage.cached_tokens or 0


def record_answer(request: web.Request, exchange: Exchange, now: float) -> None:
    """Add an answered exchange to the timeline, its conversation and the prefill rate."""
    record_answered(request.app, exchange, now, name_conversation(
        request.headers.get(CLAUDE_CODE_HEADER), conversation_of(request),
        bool(request.get(CONVERSATION)), exchange.tenant))


def record_answered(app: web.Application, exchange: Exchange, now: float,
                    named: tuple[str, str], times: int = 1) -> None:
    """`record_answer` for a named conversation; `times` identical store replays at once."""
    prompt, reused = reused_tokens(exchange)
    store_hit = exchange.cache_status is CacheStatus.HIT
    app[ACTIVITY].timeline.add(now, prompt_tokens=prompt * times,
                               reused_tokens=reused * times, store_hit=store_hit,
                               requests=times)
    sessions = app[LEDGER].sessions
    # Time to first token: a stream's first bytes may be comments sent before prefill.
    first_ms = exchange.first_token_ms or exchange.upstream_ms
    if not store_hit and first_ms is not None:
        sessions.observe_prefill(prompt - reused, first_ms / 1000)
    sessions.record(*named, now=now, prompt_tokens=prompt, reused_tokens=reused,
                    store_hit=store_hit, turns=times)


@web.middleware
async def activity_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """List the completion while it is in flight; account it once answered."""
    exchange = request.get(EXCHANGE)
    if exchange is None:
        return await handler(request)
    activity = request.app[ACTIVITY]
    key = next(activity._ids)
    activity.in_flight[key] = InFlight(request.path, time.time(), exchange)
    try:
        response = await handler(request)
    finally:
        del activity.in_flight[key]
    if exchange.result is not None:
        record_answer(request, exchange, time.time())
    return response


class ActivityLayer:
    """What is in flight and what happened lately, for the dashboard and `stats`."""

    name = "activity"

    def __init__(self) -> None:
        self.activity = Activity()

    def setup(self, app: web.Application) -> None:
        """Install the activity state on the app."""
        app[ACTIVITY] = self.activity

    def snapshot(self) -> dict[str, Any]:
        """Nothing for the metrics file: the live document (`Activity.document`) is read
        on the event loop by /cache/stats, never from the export's thread."""
        return {}
