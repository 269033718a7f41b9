"""Servers under test that are not cachelayer itself, each run as its own process.

`python -m benchlib.targets ceiling --port P --body-file F`: a bare aiohttp handler that
reads the request and answers a fixed body (the fastest any aiohttp server can answer).
`python -m benchlib.targets fake --port P`: the test suite's scripted fake upstream with
a fixed 256-word answer, plus `GET /bench/calls` to count the requests that reached it
(which is how the store benchmark proves that every measured request was a hit).
`python -m benchlib.targets relay --port P --upstream URL`: a bare aiohttp relay that reads
the request, posts it to the upstream on one kept-alive session and answers its bytes
(what a second HTTP hop costs a miss before any caching work: the floor of any proxy).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parents[2]
ANSWER_WORDS = 256


class CallCounter:
    """Stands in for FakeUpstream.calls: counts requests without keeping 50 KB bodies."""

    def __init__(self) -> None:
        self.count = 0

    def append(self, _body: Any) -> None:
        """Count one request."""
        self.count += 1

    def __len__(self) -> int:
        return self.count


def answer_text() -> str:
    """The fixed answer of the fake upstream: many words, so streams have many chunks."""
    return " ".join(f"word{i % 50}" for i in range(ANSWER_WORDS))


def make_ceiling(body: bytes) -> web.Application:
    """A bare handler: read the request body, answer the fixed bytes."""
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", handle)
    app.router.add_get("/health", lambda _r: _ok())
    return app


def make_relay(upstream: str) -> web.Application:
    """A bare relay: the request's bytes to the upstream, its answer's bytes back."""
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def session(app: web.Application) -> Any:
        async with aiohttp.ClientSession() as client:
            app[session_key] = client
            yield

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {"Content-Type": "application/json",
                   "Authorization": request.headers.get("Authorization", "")}
        async with request.app[session_key].post(upstream + request.path, data=body,
                                                 headers=headers) as answer:
            data = await answer.read()
            return web.Response(body=data, status=answer.status,
                                content_type=answer.content_type)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.cleanup_ctx.append(session)
    app.router.add_post("/v1/chat/completions", handle)
    app.router.add_get("/health", lambda _r: _ok())
    return app


async def _ok() -> web.Response:
    return web.json_response({"status": "ok"})


def make_fake() -> web.Application:
    """The fake upstream from tests/support with a fixed answer and a call counter."""
    sys.path.insert(0, str(REPO))
    from tests.support.fake_upstream import FakeUpstream, Reply

    text = answer_text()
    fake = FakeUpstream(lambda _body: Reply(text=text, prompt_tokens=12000,
                                            completion_tokens=ANSWER_WORDS))
    counter = CallCounter()
    fake.calls = counter  # type: ignore[assignment]
    app = fake.make_app()

    async def calls(_request: web.Request) -> web.Response:
        return web.json_response({"calls": counter.count})

    app.router.add_get("/bench/calls", calls)
    app.router.add_get("/health", lambda _r: _ok())
    return app


def main(argv: list[str] | None = None) -> int:
    """Run one target server in the foreground until SIGTERM."""
    parser = argparse.ArgumentParser(prog="benchlib.targets")
    parser.add_argument("kind", choices=["ceiling", "fake", "relay"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body-file", type=Path)
    parser.add_argument("--upstream")
    args = parser.parse_args(argv)
    if args.kind == "ceiling":
        if args.body_file is None:
            parser.error("ceiling needs --body-file")
        app = make_ceiling(args.body_file.read_bytes())
    elif args.kind == "relay":
        if not args.upstream:
            parser.error("relay needs --upstream")
        app = make_relay(args.upstream)
    else:
        app = make_fake()
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
