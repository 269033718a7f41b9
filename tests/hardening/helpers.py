"""Helpers for the hardening suite: real proxies (in-process and as
`python -m cachelayer serve` subprocesses), a scripted upstream that counts every
request it sees, raw TCP servers that misbehave, and error-shape assertions."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from cachelayer.config import MiB, Settings
from tests.support import http
from tests.support.fake_upstream import FakeUpstream, default_reply
from tests.support.proxy_app import ProxyFactory as ProxyFactory
from tests.support.servers import RunningServer

BODY_LIMIT = 4 * MiB
# Summary lines the suite prints at the end of the run (see pytest_terminal_summary).
SUMMARY: list[str] = []


class CountingUpstream(FakeUpstream):
    """The scripted upstream, also recording every request it receives (method, path),
    with an optional delay before each completion answer (a slow model)."""

    def __init__(self, script: Callable[[dict[str, Any]], Any] | None = None) -> None:
        super().__init__(script or default_reply)
        self.requests: list[tuple[str, str]] = []
        self.delay_s = 0.0

    def make_app(self) -> web.Application:
        """The fake's routes behind a counting (and delaying) middleware, accepting bodies
        up to 64 MiB (aiohttp's default 1 MiB would refuse large accepted prompts)."""

        @web.middleware
        async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.requests.append((request.method, request.path))
            if request.method == "POST" and self.delay_s:
                await asyncio.sleep(self.delay_s)  # the script: a slow model, not a wait
            return await handler(request)

        app = web.Application(client_max_size=64 * MiB, middlewares=[count])
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_post("/v1/completions", self._complete)
        app.router.add_get("/v1/models", self._models)
        return app

    def posts(self) -> int:
        """How many POSTs (completions, count_tokens) reached the upstream."""
        return sum(1 for method, _ in self.requests if method == "POST")

    def completions(self) -> int:
        """How many completion requests reached the upstream (layer 1's one count of a new
        prefix at /v1/cachelayer/count_tokens is not one)."""
        return sum(1 for method, path in self.requests
                   if method == "POST" and path in ("/v1/chat/completions", "/v1/completions"))


def api_of(path: str) -> str:
    """Which API's error shape a path answers in."""
    return "anthropic" if path.startswith("/v1/messages") else "openai"


def error_message(answer: http.Answer, api: str) -> str:
    """Assert the body is a JSON error in `api`'s shape and return its message."""
    assert answer.headers.get("Content-Type", "").startswith("application/json"), (
        f"error is not JSON: {answer.headers.get('Content-Type')} {answer.content[:200]!r}")
    body = answer.json()
    if api == "anthropic":
        assert body.get("type") == "error", body
        error = body.get("error")
        assert isinstance(error, dict) and isinstance(error.get("type"), str), body
    else:
        assert set(body) == {"error"}, body
        error = body["error"]
        assert isinstance(error, dict) and isinstance(error.get("type"), str), body
    message = error.get("message")
    assert isinstance(message, str) and message, body
    return message


# -- misbehaving raw TCP upstreams ----------------------------------------------------------


@contextlib.contextmanager
def raw_tcp_server(behaviour: Callable[[socket.socket], None]) -> Iterator[str]:
    """A TCP server on 127.0.0.1 that hands each accepted connection to `behaviour`
    (after which the connection is closed); yields its base URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    stop = threading.Event()

    def _serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.suppress(OSError):
                conn.settimeout(5)
                behaviour(conn)
            with contextlib.suppress(OSError):
                conn.close()

    thread = threading.Thread(target=_serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        # Wakes a blocked accept() at once (it raises), instead of at its next timeout.
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        thread.join(5)
        listener.close()


def read_request_head(conn: socket.socket) -> bytes:
    """Read an HTTP request up to the end of its headers (the body is left unread)."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 1 << 20:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


Upstream = tuple[CountingUpstream, RunningServer]


def hardened_settings(tmp: Path, **overrides: Any) -> Settings:
    """Settings for hardening tests: files under tmp, a 4 MiB body limit, short timeouts."""
    base = Settings(
        upstream="http://127.0.0.1:9",
        data_dir=tmp / "data",
        metrics_file=tmp / "metrics.json",
        max_body_bytes=BODY_LIMIT,
        metrics_interval_s=0.2,
        connect_timeout_s=2.0,
        read_timeout_s=5.0,
    )
    return replace(base, **overrides)
