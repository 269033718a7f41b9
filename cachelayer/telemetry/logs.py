"""Request ids in every log line, one structured access line per request, no secrets.

The request id comes from the client's `X-Request-Id` (when it is a sane token) or is
made here; it is echoed in the response and carried by a context variable, so every
log record emitted while serving the request names it.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import re
import secrets
import time
from collections.abc import Mapping
from contextvars import ContextVar

from aiohttp import web
from aiohttp.typedefs import Handler

from cachelayer.proxy.state import EXCHANGE
from cachelayer.telemetry.access import log_access
from cachelayer.telemetry.prometheus import UPSTREAM_LATENCY

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
REQUEST_ID_KEY = web.RequestKey("request_id", str)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s rid=%(request_id)s %(message)s"
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


# The credentials of the request being served: no log line may carry them, even when an
# upstream quotes them back in an error message.
SECRETS: ContextVar[tuple[str, ...]] = ContextVar("secrets", default=())
REDACTED = "[redacted]"


def request_secrets(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The credential values a request carries (with and without `Bearer `)."""
    return _secrets_of(headers.get("Authorization", ""), headers.get("x-api-key", ""),
                       headers.get("api-key", ""))


@functools.lru_cache(maxsize=256)
def _secrets_of(*values: str) -> tuple[str, ...]:
    # Remembered per distinct credential pair: clients send the same one on every request.
    found: list[str] = []
    for value in values:
        value = value.strip()
        if value:
            found.append(value)
            if value.lower().startswith("bearer "):
                found.append(value[7:].strip())
    # Longest first, so "Bearer K" is replaced whole before K alone.
    return tuple(sorted({s for s in found if is_credential(s)}, key=len, reverse=True))


def is_credential(value: str) -> bool:
    """Whether a header value is worth hiding: a key, not a placeholder word.

    Real keys are long or mix letters with digits and dashes. A short plain word (the
    README's `local`) is a placeholder; hiding it would blank out that word wherever a log
    line uses it ("localhost", "local model").
    """
    if len(value) < 4:
        return False
    return not value.isalpha() or len(value) >= 16


class RequestIdFilter(logging.Filter):
    """Adds the current request id to every record (`-` outside a request) and redacts
    the request's credentials (and the process's own, such as a Redis password) from
    the message."""

    def __init__(self, hidden: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.hidden = hidden

    def filter(self, record: logging.LogRecord) -> bool:
        """Attach the id, redact secrets; never drops a record."""
        record.request_id = REQUEST_ID.get()
        hidden = SECRETS.get() + self.hidden
        if hidden:
            message = record.getMessage()
            if any(s in message for s in hidden):
                for secret in hidden:
                    message = message.replace(secret, REDACTED)
                record.msg, record.args = message, None
        return True


def configure_logging(level: str, hidden: tuple[str, ...] = ()) -> None:
    """key=value log lines with request ids, on stderr; `hidden` never appears in them."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter(hidden))
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)




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
        log_access(request, status, started)
        REQUEST_ID.reset(token)
        SECRETS.reset(secrets_token)


