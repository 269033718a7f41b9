"""Upstream failures mapped to cachelayer's error tree, in one place.

Every aiohttp or timeout error met while talking to the upstream becomes an
`UpstreamError` here, chained with `raise ... from exc` by the caller so the cause stays
in the logs; upstream error bodies become messages the client can read.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import aiohttp
import orjson

from cachelayer.errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable

Stage = Literal["connect", "read", "stream"]
_TIMEOUT_TEXT: dict[Stage, str] = {
    "connect": "did not answer in time",
    "read": "stopped answering",
    "stream": "stopped answering mid-stream",
}


def upstream_error(exc: BaseException, url: str, stage: Stage) -> UpstreamError:
    """The UpstreamError for a lower-level failure at this stage of an upstream call."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamTimeout(f"upstream {url} {_TIMEOUT_TEXT[stage]}")
    if stage == "connect":
        return UpstreamUnreachable(f"cannot reach upstream {url}: {exc}")
    what = "the stream" if stage == "stream" else "the connection"
    return UpstreamUnreachable(f"upstream {url} dropped {what}: {exc}")


# What the upstream side can raise; callers catch exactly this and map it above.
UPSTREAM_FAILURES = (asyncio.TimeoutError, aiohttp.ClientError)
# Failures that prove the request never reached the backend (refused, no connection
# within --connect-timeout, or a pooled connection the backend had closed): another
# backend may safely take it.
NEVER_REACHED = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError,
                 aiohttp.ServerDisconnectedError)


def error_message(status: int, raw: bytes, url: str) -> str:
    """A readable message from an upstream error body (OpenAI's shape, or any text)."""
    try:
        data = orjson.loads(raw)
        inner = data.get("error", data) if isinstance(data, dict) else data
        message = inner.get("message") if isinstance(inner, dict) else inner
        if isinstance(message, str) and message:
            return f"upstream {url} answered {status}: {message}"
    except orjson.JSONDecodeError:
        pass
    text = raw[:200].decode("utf-8", "replace").strip()
    return f"upstream {url} answered {status}: {text or 'no body'}"
