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
    if usage is None:
        ledger.count(c.REQUESTS)
        return
    counts = [(c.REQUESTS, 1), (c.TOKENS_INPUT, usage.prompt_tokens)]
    if from_store:
        # A stored answer recomputes nothing: its whole prompt and completion are saved.
        counts += [(c.TOKENS_READ, usage.prompt_tokens),
                   (c.RESPONSE_TOKENS_SAVED, usage.prompt_tokens + usage.completion_tokens)]
    else:
        cached = usage.cached_tokens or 0
        counts += [(c.TOKENS_READ, cached), (c.TOKENS_REUSED, cached),
                   (c.TOKENS_CREATED, max(0, usage.prompt_tokens - cached))]
        if usage.cached_tokens is None:
            counts.append((c.KV_UNREPORTED, 1))
    # kv.hits is layer 1's call: a hit is a reuse of the whole stable prefix, not of any
    # token at all (proxy/prefix/middleware.py).
    ledger.count_many(counts)
