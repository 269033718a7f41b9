"""The access log: one `key=value` line per request, at INFO.

    ... INFO cachelayer.access rid=7f3a9c01e2000004 method=POST path=/v1/messages
        status=200 cache=MISS tokens=41210/44680 ms=1834.2

`tokens` is prompt tokens reused of the prompt's total (a store HIT reused them all:
nothing was computed); `-` where no answer was counted. Polling routes (stats, the
dashboard, health, metrics) log at DEBUG, so a dashboard left open does not fill the log.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web

from cachelayer.protocol.chat import Usage
from cachelayer.proxy.state import EXCHANGE, CacheStatus, Exchange

log = logging.getLogger("cachelayer.access")
QUIET_PATHS = frozenset({"/cache/stats", "/dashboard", "/health", "/metrics"})


def reused_of_total(exchange: Exchange | None) -> str:
    """`reused/total` prompt tokens of an answered request, `-` when nothing was counted."""
    if exchange is None or exchange.result is None or exchange.result.usage is None:
        return "-"
    usage: Usage = exchange.result.usage
    if exchange.cache_status is CacheStatus.HIT:
        return f"{usage.prompt_tokens}/{usage.prompt_tokens}"
    if usage.cached_tokens is None:
        return f"?/{usage.prompt_tokens}"  # the upstream did not say what it reused
    return f"{usage.cached_tokens}/{usage.prompt_tokens}"


def access_line(request: web.Request, status: int, ms: float) -> str:
    """The access line's text for one request."""
    exchange = request.get(EXCHANGE)
    cache = exchange.cache_status.value if exchange is not None else "-"
    return (f"method={request.method} path={request.path} status={status} cache={cache} "
            f"tokens={reused_of_total(exchange)} ms={ms:.1f}")


def log_access(request: web.Request, status: int, started: float) -> None:
    """Write the request's access line (INFO; DEBUG for polling routes)."""
    level = logging.DEBUG if request.path in QUIET_PATHS else logging.INFO
    if log.isEnabledFor(level):
        log.log(level, "%s", access_line(request, status,
                                         (time.perf_counter() - started) * 1000))
