"""Fast HITs accounted in batches: each group of identical repeats counted once.

A fast HIT (proxy/fast_path.py) must count everywhere a normal HIT counts: the ledger's
counters, its prefix record, its conversation, the timeline, the Responses object it
keeps. Doing that per request costs more than answering it. Repeats are alike in all
that matters to those records when they share the learned request, stored answer,
tenant and session headers, so they are grouped as they come and each group is applied
once with its count: within `WINDOW_S`, or sooner, whenever anything else may look.

Anything else is every request that is not a fast HIT (the access middleware settles
the tally before it passes one on: `/cache/stats`, `/metrics`, the dashboard, a clear,
a stored Responses object's GET, and a normal request's own accounting, which must come
after the HITs answered before it), and each export of the metrics file. So a client
that got its fast HIT sees it counted by anything it asks next.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from cachelayer.protocol.chat import ChatRequest, ChatResult
from cachelayer.protocol.codec import Codec
from cachelayer.protocol.responses_stream import response_id
from cachelayer.proxy.activity import record_answered
from cachelayer.proxy.conversation import conversation_key
from cachelayer.proxy.prefix.ledger import LEDGER
from cachelayer.proxy.prefix.middleware import (
    account_answered,
    client_name,
    count_stable,
    is_subagent,
)
from cachelayer.proxy.prefix.stabilize import Stable
from cachelayer.proxy.responses.middleware import RESPONSE_STATES
from cachelayer.proxy.responses.store import StoredResponse
from cachelayer.proxy.state import CacheStatus, Exchange
from cachelayer.telemetry import counters as c
from cachelayer.telemetry.sessions import name_conversation


class Learned(Protocol):
    """What the fast path learned of a request (proxy/fast_path.py's `Learned`)."""

    @property
    def chat(self) -> ChatRequest: ...
    @property
    def codec(self) -> Codec: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def stable(self) -> Stable | None: ...
    @property
    def conversation(self) -> str | None: ...
    @property
    def kept(self) -> StoredResponse | None: ...


log = logging.getLogger(__name__)
# The longest a fast HIT waits to be accounted when nothing asks for the records: long
# enough that a burst of repeats is one group, short enough for a live dashboard.
WINDOW_S = 0.05


@dataclass
class _Group:
    """Repeats alike in everything their accounting reads, and how many there were."""

    learned: Learned
    result: ChatResult
    tenant: str
    claude_session: str | None  # X-Claude-Code-Session-Id
    session: str | None  # x-session-id / x-session-affinity, when the body names none
    count: int = 0
    last: float = 0.0


class HitTally:
    """Fast HITs waiting to be accounted, grouped; applied within `WINDOW_S`."""

    def __init__(self) -> None:
        self._groups: dict[Hashable, _Group] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, app: web.Application, raw_key: Hashable, learned: Learned,
            result: ChatResult, stored_at: float, tenant: str, claude_session: str | None,
            session: str | None, now: float) -> None:
        """Count one fast HIT (accounted with its group within `WINDOW_S`)."""
        key = (raw_key, stored_at, claude_session, session)
        group = self._groups.pop(key, None)
        if group is None:
            group = _Group(learned, result, tenant, claude_session, session)
        group.count += 1
        group.last = now
        # Re-inserted: groups are applied in the order of their latest request, so the
        # prefix ledger's "last prefix per client" ends as it would request by request.
        self._groups[key] = group
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(WINDOW_S, self.apply, app)

    def close(self) -> None:
        """Stop the timer; whatever still waits is dropped (the app is shutting down)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._groups:
            log.warning("%d fast HITs were not accounted at shutdown", len(self))
            self._groups.clear()

    def __len__(self) -> int:
        return sum(g.count for g in self._groups.values())

    def __bool__(self) -> bool:
        return bool(self._groups)

    def apply(self, app: web.Application) -> None:
        """Account every waiting group, each once with its count (on the loop)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        groups, self._groups = self._groups, {}
        for group in groups.values():
            try:
                _account(app, group)
            except Exception:  # one bad record must not lose the other groups' counts
                log.exception("accounting %d fast HITs failed", group.count)


HIT_TALLY = web.AppKey("hit_tally", HitTally)


def settle_hits(app: web.Application) -> None:
    """Account the fast HITs still waiting, before something reads or adds to the records."""
    tally = app.get(HIT_TALLY)
    if tally:
        tally.apply(app)


def _account(app: web.Application, group: _Group) -> None:
    """A normal HIT's accounting (proxy/fast_path.py's docstring), `count` times over."""
    learned, n, tenant = group.learned, group.count, group.tenant
    exchange = Exchange(chat=learned.chat, codec=learned.codec,
                        fingerprint=learned.fingerprint, tenant=tenant,
                        cache_status=CacheStatus.HIT, result=group.result)
    app[LEDGER].count(c.RESPONSE_HITS, n)
    subagent = False
    if learned.stable is not None:
        count_stable(app, learned.stable, n)
        exchange.chat, exchange.prefix = learned.stable.chat, learned.stable.prefix
        subagent = is_subagent(learned.stable)
    conversation = conversation_key(learned.conversation, group.session)
    account_answered(app, exchange, client_name(group.claude_session, conversation, tenant,
                                                subagent=subagent), times=n)
    record_answered(app, exchange, group.last, name_conversation(
        group.claude_session, conversation, bool(learned.conversation), tenant), times=n)
    if learned.kept is not None:
        app[RESPONSE_STATES].put(tenant, response_id(group.result.id), learned.kept)
