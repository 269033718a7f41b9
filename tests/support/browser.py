"""A real headless Chromium (Debian's `chromium` package), driven over the DevTools protocol.

`Browser` starts chromium on a throw-away profile with its DevTools port chosen by
chromium itself (read back from `DevToolsActivePort`), opens a page over aiohttp's
websocket client, and records every console error, uncaught exception and log entry
(CSP violations and failed loads among them) the page produces.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.wait import WaitTimeout, async_wait_until

CANDIDATES = ("chromium", "chromium-browser")


def chromium_path() -> str | None:
    """The chromium binary on PATH (Debian installs /usr/bin/chromium), or None."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Page:
    """One page target: send commands, collect the events that count as errors."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.errors: list[str] = []
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            if "id" in data and data["id"] in self._waiting:
                self._waiting.pop(data["id"]).set_result(data)
            else:
                self._event(data.get("method", ""), data.get("params", {}))

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", "")))
                            for a in params.get("args", []))
            self.errors.append(f"console.{params['type']}: {args}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exc = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"exception: {exc}")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                self.errors.append(f"log ({entry.get('source')}): {entry.get('text')} "
                                   f"{entry.get('url', '')}".strip())

    async def send(self, method: str, **params: Any) -> Any:
        """One DevTools command; its result (raises on a protocol error)."""
        ident = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        await self.ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        answer = await asyncio.wait_for(future, 30)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = await self.send("Runtime.evaluate", expression=expression,
                                 returnByValue=True)
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        """Poll an expression until it is truthy; its value. On timeout the failure names
        the expression, its last value and the errors the page recorded."""
        try:
            return await async_wait_until(lambda: self.evaluate(expression), repr(expression),
                                          timeout=timeout, interval=0.1)
        except WaitTimeout as exc:
            raise WaitTimeout(f"{exc}; page errors: {self.errors}") from exc

    async def close(self) -> None:
        """Stop reading and close the socket."""
        self._reader.cancel()
        await self.ws.close()


class Browser:
    """Headless chromium on a temporary profile; `async with Browser() as b: b.open(url)`."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.profile = Path(tempfile.mkdtemp(prefix="cachelayer-chromium-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.session: aiohttp.ClientSession | None = None
        self.port = 0

    async def __aenter__(self) -> Browser:
        self.proc = subprocess.Popen(
            [self.binary, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        active = self.profile / "DevToolsActivePort"
        proc = self.proc

        def port_written() -> str:
            if proc.poll() is not None:
                raise RuntimeError(f"chromium did not start (exit {proc.poll()})")
            return active.read_text().strip() if active.exists() else ""

        try:
            await async_wait_until(port_written, f"chromium to write {active}", timeout=60,
                                   interval=0.1)
        except BaseException:
            await self.__aexit__()  # __aexit__ does not run when __aenter__ raises
            raise
        self.port = int(active.read_text().split()[0])
        self.session = aiohttp.ClientSession()
        return self

    async def open(self, url: str) -> Page:
        """A new tab with error recording on, navigated to `url`."""
        assert self.session is not None
        async with self.session.put(f"http://127.0.0.1:{self.port}/json/new?about:blank") as r:
            target = await r.json()
        ws = await self.session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        page = Page(ws)
        for domain in ("Runtime", "Log", "Page"):
            await page.send(f"{domain}.enable")
        await page.send("Page.navigate", url=url)
        return page

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)
