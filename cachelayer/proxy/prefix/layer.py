"""Layer 1's object: the volatile rules, the memo of stabilised bodies, the prefix sizer,
and the token-savings ledger it opens at start-up and closes last.

The middleware (middleware.py) reads these keys; the other layers count into the ledger
through `LEDGER` (ledger.py). Its snapshot is the ledger's figures: counters, per-prefix
and per-conversation records.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from cachelayer.config import Settings
from cachelayer.proxy.memo import Memo
from cachelayer.proxy.prefix.ledger import LEDGER, Ledger
from cachelayer.proxy.prefix.rules import RuleSet, compile_rules
from cachelayer.proxy.prefix.size import PrefixSizer
from cachelayer.proxy.prefix.stabilize import Stable

VOLATILE_RULES = web.AppKey("volatile_rules", RuleSet)
PREFIX_MEMO = web.AppKey("prefix_memo", Memo[Stable])
PREFIX_SIZER = web.AppKey("prefix_sizer", PrefixSizer)
# The shapes of rewritten text already logged once (bounded; see middleware.py).
REWRITES_SEEN = web.AppKey("rewrites_seen", set[str])


class PrefixLayer:
    """Layer 1: stabilise the prefix, identify it, account what reuse saved."""

    name = "prefix"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ledger: Ledger | None = None

    def setup(self, app: web.Application) -> None:
        """The rules, memo and sizer now; the ledger opens in a cleanup context."""
        app[VOLATILE_RULES] = RuleSet(compile_rules(self.settings.volatile_patterns))
        app[REWRITES_SEEN] = set()
        app[PREFIX_MEMO] = Memo()
        app[PREFIX_SIZER] = PrefixSizer()
        app.cleanup_ctx.append(self._ledger_ctx)

    async def _ledger_ctx(self, app: web.Application) -> AsyncIterator[None]:
        # Registered before the other layers' contexts, so it closes after them: the
        # last store writes and the final export still count into an open ledger.
        self.ledger = app[LEDGER] = Ledger(self.settings.ledger_dir)
        yield
        self.ledger.close()

    def snapshot(self) -> dict[str, Any]:
        """The ledger's counters, prefix and conversation records (blocking: disk)."""
        ledger = self.ledger
        if ledger is None:
            return {}
        return {"totals": ledger.totals(), "prefixes": ledger.prefixes.records(),
                "sessions": ledger.sessions.records(), "degraded": ledger.degraded}
