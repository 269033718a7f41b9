"""Layer 2's object: the answer store it is given (diskcache, or Redis with the ledger's
shared half), and the memos and coalescer its middleware uses.

The store layer wraps whatever `AnswerStore` its opener returns and never looks behind
that interface (store/backends/ is the stores' own business). Its keys: `STORE`, `SHARED`
(only with --store redis://), `KEY_MEMO`, `RENDER_MEMO`, `COALESCER`. Its snapshot: the
store's figures, and the shared ledger's totals when there is one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from cachelayer.config import Settings
from cachelayer.proxy.memo import Memo
from cachelayer.proxy.prefix.ledger import LEDGER
from cachelayer.proxy.store.backends.base import AnswerStore
from cachelayer.proxy.store.backends.redis_ledger import SharedLedger
from cachelayer.proxy.store.coalesce import Coalescer
from cachelayer.proxy.store.front import open_store

STORE = web.AppKey("store", AnswerStore)
# Only with --store redis://: the ledger's shared half (absent otherwise: use app.get()).
SHARED = web.AppKey("shared_ledger", SharedLedger)
KEY_MEMO = web.AppKey("key_memo", Memo[str])
COALESCER = web.AppKey("coalescer", Coalescer)
# Rendered answers are a few KB; 256 of them cover every agent session in flight.
RENDER_MEMO = web.AppKey("render_memo", Memo[bytes])

StoreOpener = Callable[[Settings], tuple[AnswerStore, SharedLedger | None]]


class StoreLayer:
    """Layer 2: replay exact repeats, store complete answers."""

    name = "store"

    def __init__(self, settings: Settings, opener: StoreOpener = open_store) -> None:
        self.settings = settings
        self.opener = opener
        self.store: AnswerStore | None = None
        self.shared: SharedLedger | None = None

    def setup(self, app: web.Application) -> None:
        """The memos and coalescer now; the store opens in a cleanup context."""
        app[KEY_MEMO] = Memo(entries=256)
        app[RENDER_MEMO] = Memo(entries=256)
        app[COALESCER] = Coalescer()
        app.cleanup_ctx.append(self._store_ctx)

    async def _store_ctx(self, app: web.Application) -> AsyncIterator[None]:
        store, shared = self.opener(self.settings)
        self.store = app[STORE] = store
        if shared is not None:
            # Every delta the local ledger flushes also goes to Redis, exactly once.
            self.shared = app[SHARED] = shared
            ledger = app[LEDGER]
            ledger.on_flush = shared.take_counters
            ledger.prefixes.on_flush = shared.take_prefixes
        await store.start()
        yield
        await store.aclose()

    def snapshot(self) -> dict[str, Any]:
        """The store's figures (blocking for diskcache), and the shared ledger's totals
        and records as last read from Redis (None without one)."""
        if self.store is None:
            return {}
        shared = None
        if self.shared is not None:
            shared = {"totals": self.shared.totals(), "prefixes": self.shared.records(),
                      "label": self.settings.store_label, "error": self.shared.error}
        return {"store": self.store.snapshot(), "shared": shared}
