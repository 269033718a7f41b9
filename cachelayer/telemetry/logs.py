"""Request ids in every log line, and no secrets in any.

The request id comes from the client's `X-Request-Id` (when it is a sane token) or is
made by `RequestIds`; the access middleware (proxy/access.py) echoes it in the response
and sets the context variables here, so every log record emitted while serving the
request names it and none carries the request's credentials.

The access log: one `key=value` line per request, at INFO.

    ... INFO cachelayer.access rid=7f3a9c01e2000004 method=POST path=/v1/messages
        status=200 cache=MISS tokens=41210/44680 ms=1834.2

`tokens` is prompt tokens reused of the prompt's total (a store HIT reused them all:
nothing was computed); `-` where no answer was counted. Polling routes (stats, the
dashboard, health, metrics) log at DEBUG, so a dashboard left open does not fill the log.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
import secrets
from collections.abc import Mapping
from contextvars import ContextVar

from cachelayer.protocol.chat import Usage

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s rid=%(request_id)s %(message)s"
SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


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

access_log = logging.getLogger("cachelayer.access")
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
