"""Token accounting of one answered request, measured where the backend measured it.

The backend's `usage.prompt_tokens_details.cached_tokens` says what it reused; a stored
answer recomputes nothing at all. Estimates never enter these counters.
"""

from __future__ import annotations

from cachelayer.protocol.chat import Usage
from cachelayer.telemetry import counters as c
from cachelayer.telemetry.ledger import Ledger


def count_usage(ledger: Ledger, usage: Usage | None, *, from_store: bool) -> None:
    """Account one answered request's tokens, measured where the backend measured them."""
    ledger.count(c.REQUESTS)
    if usage is None:
        return
    ledger.count(c.TOKENS_INPUT, usage.prompt_tokens)
    if from_store:
        # A stored answer recomputes nothing: its whole prompt and completion are saved.
        ledger.count(c.TOKENS_READ, usage.prompt_tokens)
        ledger.count(c.RESPONSE_TOKENS_SAVED, usage.prompt_tokens + usage.completion_tokens)
        return
    cached = usage.cached_tokens or 0
    ledger.count(c.TOKENS_READ, cached)
    ledger.count(c.TOKENS_REUSED, cached)
    ledger.count(c.TOKENS_CREATED, max(0, usage.prompt_tokens - cached))
    if usage.cached_tokens is None:
        ledger.count(c.KV_UNREPORTED)
    # kv.hits is layer 1's call: a hit is a reuse of the whole stable prefix, not of any
    # token at all (proxy/prefix/middleware.py).
