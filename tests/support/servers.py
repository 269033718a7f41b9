"""Run real aiohttp apps on free 127.0.0.1 ports in a background thread, always stopped."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import web

from cachelayer.proxy.fast_front import ProxyRunner
from cachelayer.proxy.fast_path import FAST_PATH
from tests.support.processes import free_port

__all__ = ["RunningServer", "free_port", "serve_app"]


@dataclass
class RunningServer:
    """A server started by `serve_app`."""

    url: str
    app: web.Application
    loop: asyncio.AbstractEventLoop

    def call(self, fn: Callable[[], object]) -> object:
        """Run fn on the server's loop thread and wait for it."""
        async def _run() -> object:
            return fn()

        return asyncio.run_coroutine_threadsafe(_run(), self.loop).result(30)


@contextmanager
def serve_app(
    make: Callable[[], web.Application], port: int | None = None
) -> Iterator[RunningServer]:
    """Start the app made by `make` in its own thread and loop; stop it on exit."""
    port = port or free_port()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, object] = {}

    async def _start() -> None:
        app = make()
        # The proxy's own runner puts its front (fast HITs) before the app, as serving does.
        runner_class = ProxyRunner if FAST_PATH in app else web.AppRunner
        runner = runner_class(app, access_log=None, shutdown_timeout=5,
                              handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        holder["runner"], holder["app"] = runner, app

    def _thread() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(_start())
        except BaseException as exc:
            holder["error"] = exc
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=_thread, daemon=True)
    thread.start()
    started.wait(60)
    if "error" in holder:
        raise RuntimeError(f"server failed to start: {holder['error']!r}")
    runner = holder["runner"]
    assert isinstance(runner, web.AppRunner)
    app = holder["app"]
    assert isinstance(app, web.Application)
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", app, loop)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
