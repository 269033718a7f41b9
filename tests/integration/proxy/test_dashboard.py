"""GET /dashboard: a self-contained page, loaded in a real headless Chromium from Debian."""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

import pytest

from tests.integration.conftest import ProxyFactory
from tests.support import http
from tests.support.browser import Browser, chromium_path
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.servers import RunningServer
from tests.support.store_writes import wait_for_writes

CHAT = "/v1/chat/completions"


def _ask(proxy: RunningServer, text: str, conversation: str) -> http.Answer:
    return http.post(proxy.url + CHAT, json={"model": "m", "messages": [
        {"role": "user", "content": text}]}, headers={"X-Claude-Code-Session-Id": conversation})


def test_the_dashboard_is_one_self_contained_page(proxy: RunningServer) -> None:
    answer = http.get(proxy.url + "/dashboard")
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
    page = answer.content.decode()
    # no external assets: nothing fetched from anywhere but /cache/stats on this origin
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", page)
    assert "<link" not in page and "@import" not in page
    assert 'fetch("/cache/stats"' in page


@pytest.mark.slow  # a real browser
def test_dashboard_in_headless_chromium_shows_the_requests_just_made_without_errors(
    upstream: tuple[FakeUpstream, RunningServer], start_proxy: ProxyFactory,
) -> None:
    binary = chromium_path()
    assert binary, "chromium is not installed: `make system-deps` installs Debian's"
    fake, server = upstream

    def script(body: dict[str, Any]) -> Reply:
        text = body["messages"][-1]["content"]
        return Reply(hang=text == "hang", prompt_tokens=1000,
                     cached_tokens=800 if text == "again" else 0)

    fake.script = script
    with start_proxy(upstream=server.url, read_timeout_s=3.0) as proxy:
        _ask(proxy, "first", "conv-dash")
        wait_for_writes(proxy)
        assert _ask(proxy, "first", "conv-dash").headers["X-Cache-Status"] == "HIT"
        _ask(proxy, "again", "conv-other")
        errors = asyncio.run(_look(proxy, binary))
    assert errors == [], errors


async def _look(proxy: RunningServer, binary: str) -> list[str]:
    async with Browser(binary) as browser:
        page = await browser.open(proxy.url + "/dashboard")
        await page.wait_for("document.body.dataset.loaded === '1'")
        text = lambda element: page.evaluate(  # noqa: E731
            f"document.getElementById('{element}').textContent")
        assert await text("t-requests") == "3"
        # 1000 (store hit: all read) + 800 (backend reuse) of 3000 prompt tokens
        assert await text("t-saved") == "1,800"
        assert await text("t-ratio") == "60.0%"
        assert await text("t-replays") == "1"
        sessions = await text("sessions")
        assert "conv-dash" in sessions and "conv-other" in sessions
        layers = await text("layers")
        assert "store: lookups hit / missed1 / 2" in layers
        bars = await page.evaluate("document.querySelectorAll('#chart rect').length")
        assert bars >= 2
        # a request stuck before its first byte is a prefill in progress...
        hung = threading.Thread(target=_ask, args=(proxy, "hang", "conv-hang"))
        hung.start()
        await page.wait_for("document.getElementById('inflight').textContent"
                            ".includes('prefilling')")
        # ...and the page keeps refreshing itself: one more answer shows up on its own
        await asyncio.get_running_loop().run_in_executor(None, _ask, proxy, "later", "conv-dash")
        await page.wait_for("document.getElementById('t-requests').textContent === '4'")
        await asyncio.get_running_loop().run_in_executor(None, hung.join, 10)
        await page.close()
        return page.errors
