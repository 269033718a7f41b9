"""The fast path on and off in one proxy process, alternating (tools/bench_store_hits.py).

A proxy (diskcache) runs on an event loop in a thread of this process, in front of the
fake upstream; wrk (outside) sends the same warmed HIT. Between runs the fast path is
switched on or off (`FastPath.enabled`: off, every request takes the normal path), so
the two modes share one process, one store, one warm memo set and the same machine
load. Per run: the answers wrk counted, and the CPU time of the loop's thread over them
(`time.thread_time` read on the loop), which other jobs on the box do not add to.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from cachelayer.config import Settings
from cachelayer.proxy.app import make_app
from cachelayer.proxy.fast_front import ProxyRunner
from cachelayer.proxy.fast_path import FAST_PATH

T = TypeVar("T")


@contextmanager
def _proxy(settings: Settings) -> Iterator[tuple[asyncio.AbstractEventLoop, web.Application]]:
    """The proxy app served on settings.port by a loop in a daemon thread; stopped after."""
    loop = asyncio.new_event_loop()
    app = make_app(settings)
    runner = ProxyRunner(app, access_log=None)

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", settings.port).start()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    try:
        yield loop, app
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], T]) -> T:
    async def call() -> T:
        return fn()

    return asyncio.run_coroutine_threadsafe(call(), loop).result(30)


def _wrk_answers(url: str, lua: Path, connections: int, duration_s: float) -> int:
    done = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s", "-s",
                           str(lua), url], capture_output=True, text=True, check=True,
                          timeout=duration_s + 60)
    found = re.search(r"(\d+) requests in", done.stdout)
    if found is None or "Non-2xx" in done.stdout:
        raise RuntimeError(f"wrk did not get only answers: {done.stdout[-500:]}")
    return int(found.group(1))


def run(settings: Settings, url: str, lua: Path, warm: Callable[[str], bytes],
        reps: int, connections: int, duration_s: float) -> dict[str, Any]:
    """Alternate on/off runs; per mode the median answers/s and loop-thread µs/answer."""
    rows: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    with _proxy(settings) as (loop, app):
        fast = app[FAST_PATH]
        warm(url)  # a MISS, then HITs: the raw key is learned
        for _ in range(reps):
            for mode in ("on", "off"):
                _on_loop(loop, lambda m=mode: setattr(fast, "enabled", m == "on"))
                hits, cpu = fast.hits, _on_loop(loop, time.thread_time)
                answers = _wrk_answers(url, lua, connections, duration_s)
                used = _on_loop(loop, time.thread_time) - cpu
                rows[mode].append({"answers_per_s": answers / duration_s,
                                   "loop_cpu_us_per_answer": used / answers * 1e6,
                                   "fast_hits": fast.hits - hits})
    out: dict[str, Any] = {"connections": connections, "duration_s": duration_s,
                           "repetitions": reps, "runs": rows}
    for mode, points in rows.items():
        out[mode] = {k: statistics.median(p[k] for p in points)
                     for k in ("answers_per_s", "loop_cpu_us_per_answer")}
    out["on_over_off_answers"] = out["on"]["answers_per_s"] / out["off"]["answers_per_s"]
    out["cpu_saved_us_per_answer"] = (out["off"]["loop_cpu_us_per_answer"]
                                      - out["on"]["loop_cpu_us_per_answer"])
    return out
