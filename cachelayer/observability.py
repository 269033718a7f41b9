"""Request ids in every log line, one structured access line per request, and /metrics.

The request id comes from the client's `X-Request-Id` (when it is a sane token) or is
made here; it is echoed in the response and carried by a context variable, so every
log record emitted while serving the request names it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import time
from bisect import bisect_left
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler

from cachelayer.context import EXCHANGE, LEDGER, STORE

log = logging.getLogger("cachelayer.access")
REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
REQUEST_ID_KEY = web.RequestKey("request_id", str)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s rid=%(request_id)s %(message)s"
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


# The credentials of the request being served: no log line may carry them, even when an
# upstream quotes them back in an error message.
SECRETS: ContextVar[tuple[str, ...]] = ContextVar("secrets", default=())
REDACTED = "[redacted]"


def request_secrets(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The credential values a request carries (with and without `Bearer `)."""
    found: list[str] = []
    for name in ("Authorization", "x-api-key"):
        value = headers.get(name, "").strip()
        if value:
            found.append(value)
            if value.lower().startswith("bearer "):
                found.append(value[7:].strip())
    # Longest first, so "Bearer K" is replaced whole before K alone.
    return tuple(sorted({s for s in found if len(s) >= 4}, key=len, reverse=True))


class RequestIdFilter(logging.Filter):
    """Adds the current request id to every record (`-` outside a request) and redacts
    the request's credentials from the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Attach the id, redact secrets; never drops a record."""
        record.request_id = REQUEST_ID.get()
        hidden = SECRETS.get()
        if hidden:
            message = record.getMessage()
            if any(s in message for s in hidden):
                for secret in hidden:
                    message = message.replace(secret, REDACTED)
                record.msg, record.args = message, None
        return True


def configure_logging(level: str) -> None:
    """key=value log lines with request ids, on stderr."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


@dataclass
class Histogram:
    """A Prometheus-style cumulative histogram of seconds."""

    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.buckets, seconds)] += 1
        self.total += seconds
        self.count += 1

    def render(self, name: str, help_text: str) -> list[str]:
        """The exposition lines of this histogram."""
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        running = 0
        for bound, n in zip(self.buckets, self.counts, strict=False):  # +Inf is last
            running += n
            lines.append(f'{name}_bucket{{le="{bound}"}} {running}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum {self.total:.6f}")
        lines.append(f"{name}_count {self.count}")
        return lines


UPSTREAM_LATENCY = web.AppKey("upstream_latency", Histogram)


class RequestIds:
    """Request ids unique across restarts: a random prefix per process, then a counter
    (cheaper than a uuid4 per request)."""

    def __init__(self) -> None:
        self.prefix = secrets.token_hex(5)
        self._counter = itertools.count(1)

    def next(self) -> str:
        """A new 16-character id."""
        return f"{self.prefix}{next(self._counter):06x}"[:16]


REQUEST_IDS = web.AppKey("request_ids", RequestIds)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Name the request, log one access line for it, time its upstream call."""
    offered = request.headers.get("X-Request-Id", "")
    rid = offered if _SANE_ID.match(offered) else request.app[REQUEST_IDS].next()
    request[REQUEST_ID_KEY] = rid
    token = REQUEST_ID.set(rid)
    secrets_token = SECRETS.set(request_secrets(request.headers))
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away
        raise
    finally:
        exchange = request.get(EXCHANGE)
        if exchange is not None and exchange.upstream_ms is not None:
            request.app[UPSTREAM_LATENCY].observe(exchange.upstream_ms / 1000)
        # Debug, not info: formatting and writing a line costs a hit a sixth of its time.
        if log.isEnabledFor(logging.DEBUG):
            log.debug("method=%s path=%s status=%d cache=%s ms=%.1f", request.method,
                      request.path, status, exchange.cache_status if exchange else "-",
                      (time.perf_counter() - started) * 1000)
        REQUEST_ID.reset(token)
        SECRETS.reset(secrets_token)


_COUNTERS = (
    ("requests", "cachelayer_requests_total", "Completions answered."),
    ("response.hits", "cachelayer_response_hits_total", "Answers replayed from the store."),
    ("response.coalesced", "cachelayer_response_coalesced_total",
     "Misses answered by an identical request already in flight."),
    ("response.misses", "cachelayer_response_misses_total", "Store lookups that missed."),
    ("response.expired", "cachelayer_response_expired_total", "Entries older than max-age."),
    ("response.bypasses", "cachelayer_response_bypasses_total", "Requests not looked up."),
    ("response.stored", "cachelayer_response_stored_total", "Answers written to the store."),
    ("response.evictions", "cachelayer_response_evictions_total", "Entries evicted or expired."),
    ("response.errors", "cachelayer_response_errors_total", "Requests that got no answer."),
    ("tokens.input", "cachelayer_tokens_input_total", "Prompt tokens of answered requests."),
    ("tokens.reused", "cachelayer_tokens_reused_total",
     "Prompt tokens the backend reused from its KV cache."),
    ("tokens.created", "cachelayer_tokens_prefilled_total", "Prompt tokens the backend computed."),
    ("kv.hits", "cachelayer_kv_hits_total", "Requests whose backend reused a cached prefix."),
)


def render_prometheus(app: web.Application) -> str:
    """The exposition text (blocking: reads the ledger)."""
    totals = app[LEDGER].totals()
    lines: list[str] = []
    for counter, name, help_text in _COUNTERS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter",
                  f"{name} {totals.get(counter, 0)}"]
    store = app[STORE]
    lines += ["# HELP cachelayer_response_store_bytes Bytes the response store uses on disk.",
              "# TYPE cachelayer_response_store_bytes gauge",
              f"cachelayer_response_store_bytes {store.volume()}",
              "# HELP cachelayer_response_store_degraded 1 when the store cannot write.",
              "# TYPE cachelayer_response_store_degraded gauge",
              f"cachelayer_response_store_degraded {int(store.degraded is not None)}"]
    lines += app[UPSTREAM_LATENCY].render(
        "cachelayer_upstream_latency_seconds",
        "Time from forwarding a miss to the upstream's first answer byte.")
    return "\n".join(lines) + "\n"


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics in Prometheus text format."""
    loop = asyncio.get_running_loop()
    text = await loop.run_in_executor(None, render_prometheus, request.app)
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})
