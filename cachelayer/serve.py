"""Run the proxy: set safe process defaults, print how to use it, serve until stopped."""

from __future__ import annotations

import ipaddress
import logging
import os
import sys

from aiohttp import web

from cachelayer.app import make_app
from cachelayer.config import Settings

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """True when host only accepts local connections."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def banner(settings: Settings) -> str:
    """How to point clients at the proxy."""
    base = f"http://{settings.host}:{settings.port}"
    return "\n".join([
        f"cachelayer listening on {base}  ->  upstream {settings.upstream}",
        f"  data dir:      {settings.data_dir}",
        f"  metrics file:  {settings.metrics_file}",
        "  Claude Code:   ANTHROPIC_BASE_URL=" + base + " ANTHROPIC_API_KEY=local claude",
        "  OpenAI SDK:    OPENAI_BASE_URL=" + base + "/v1 OPENAI_API_KEY=local",
        "  stats:         cachelayer stats   (Ctrl-C stops)",
    ])


def serve(settings: Settings) -> int:
    """Run the proxy in the foreground until Ctrl-C or SIGTERM; flushes metrics on the way out."""
    # Everything the proxy writes (store, ledger, metrics) is for its owner only.
    os.umask(0o077)
    if not is_loopback(settings.host):
        log.warning("listening on %s: clients on other machines can reach this proxy",
                    settings.host)
    app = make_app(settings)

    async def _announce(app: web.Application) -> None:
        print(banner(settings), flush=True)

    # on_startup runs after the cleanup contexts, so this prints once the backend is up.
    app.on_startup.append(_announce)
    try:
        web.run_app(app, host=settings.host, port=settings.port, print=None,
                    access_log=None, shutdown_timeout=settings.shutdown_timeout_s,
                    handle_signals=True, handler_cancellation=True)
    except (RuntimeError, OSError) as exc:
        print(f"cachelayer: {exc}", file=sys.stderr)
        return 1
    return 0
