"""The access log: one `key=value` line per request, at INFO.

    ... INFO cachelayer.access rid=7f3a9c01e2000004 method=POST path=/v1/messages
        status=200 cache=MISS tokens=41210/44680 ms=1834.2

`tokens` is prompt tokens reused of the prompt's total (a store HIT reused them all:
nothing was computed); `-` where no answer was counted. Polling routes (stats, the
dashboard, health, metrics) log at DEBUG, so a dashboard left open does not fill the log.
"""

from __future__ import annotations

import logging

from cachelayer.protocol.chat import Usage

log = logging.getLogger("cachelayer.access")
QUIET_PATHS = frozenset({"/cache/stats", "/dashboard", "/health", "/metrics"})


def reused_of_total(usage: Usage | None, *, store_hit: bool) -> str:
    """`reused/total` prompt tokens of an answered request, `-` when nothing was counted."""
    if usage is None:
        return "-"
    if store_hit:
        return f"{usage.prompt_tokens}/{usage.prompt_tokens}"
    if usage.cached_tokens is None:
        return f"?/{usage.prompt_tokens}"  # the upstream did not say what it reused
    return f"{usage.cached_tokens}/{usage.prompt_tokens}"


def access_line(method: str, path: str, status: int, cache: str, tokens: str,
                ms: float) -> str:
    """The access line's text for one request."""
    return (f"method={method} path={path} status={status} cache={cache} "
            f"tokens={tokens} ms={ms:.1f}")


def access_level(path: str) -> int:
    """INFO for every request but the polling routes, which log at DEBUG."""
    return logging.DEBUG if path in QUIET_PATHS else logging.INFO
