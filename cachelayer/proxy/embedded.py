"""The embedded default: `cachelayer serve` with no upstream runs its own backend.

The backend (mlx-lm with persistent prompt caches) runs as a child process so the proxy
never imports mlx; the demo model is built, once and offline, by a child process too.
Both live inside a cleanup context of the forward layer (forward/layer.py): started
before the proxy accepts requests, restarted if the backend dies (supervisor.py),
stopped (SIGTERM, then SIGKILL after a grace period) when it shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from cachelayer.backend.demo_model import is_built
from cachelayer.config import Settings
from cachelayer.proxy.state import SETTINGS
from cachelayer.proxy.supervisor import SUPERVISOR, Supervisor

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 300.0
STOP_GRACE_S = 10.0


def demo_model_dir(data_dir: Path) -> Path:
    """Where the generated demo model lives."""
    return Settings(data_dir=data_dir).models_dir / "demo"


def backend_command(model: Path | str, port: int, kv_dir: Path, *extra: str) -> list[str]:
    """argv of `cachelayer backend` on `port` (a child process: the proxy never loads mlx)."""
    return [sys.executable, "-m", "cachelayer", "backend", "--model", str(model),
            "--port", str(port), "--kv-dir", str(kv_dir), *extra]


def _say(message: str) -> None:
    print(f"cachelayer: {message}", file=sys.stderr, flush=True)


async def build_demo_model(path: Path) -> Path:
    """Build the demo model in a child process; said once, the first time (a later start
    finds it built and says nothing)."""
    if is_built(path):
        return path
    started = time.perf_counter()
    _say(f"first run: building the demo model (a small random-weight model, offline) "
         f"in {path} ...")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cachelayer.backend.demo_model", str(path))
    if await process.wait() != 0:
        raise RuntimeError(f"building the demo model failed (exit {process.returncode})")
    _say(f"demo model ready ({time.perf_counter() - started:.1f}s)")
    return path


async def wait_until_ready(url: str, process: asyncio.subprocess.Process,
                           timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll the backend's /health until it answers, showing that we are waiting."""
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"the backend exited with status {process.returncode}")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(url + "/health") as response:
                    if response.status == 200:
                        _say(f"backend ready at {url} ({time.monotonic() - started:.1f}s)")
                        return
            await asyncio.sleep(0.25)
    raise RuntimeError(f"the backend did not answer at {url} within {timeout_s:.0f}s")


async def stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL if it does not exit within the grace period."""
    if process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), STOP_GRACE_S)
    except asyncio.TimeoutError:
        log.warning("backend did not stop in %.0fs; killing it", STOP_GRACE_S)
        process.kill()
        await process.wait()


async def backend_ctx(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: run the child backend for the proxy's whole life."""
    settings = app[SETTINGS]
    model = settings.backend_model
    if model is None:
        yield
        return
    if model == demo_model_dir(settings.data_dir):
        await build_demo_model(model)
    _say(f"starting the backend on {model} ...")
    supervisor = Supervisor(
        backend_command(model, settings.backend_port, settings.kv_dir,
                        "--host", "127.0.0.1", "--log-level", settings.log_level.upper(),
                        *settings.backend_args),
        settings.upstream_url, wait_until_ready, stop)
    await supervisor.start()
    app[SUPERVISOR] = supervisor
    try:
        yield
    finally:
        await supervisor.close()
