"""`cachelayer serve`: its parser, argv -> Settings, and running the proxy until stopped.

`settings_from_args(args, env)` is where the proxy's environment (`MLX_LM_URL`, the
Redis password, the admin token, `XDG_CACHE_HOME`) turns into settings; the other
commands read theirs in their own cli module, and nothing below cli/ reads it at all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

from aiohttp import web

from cachelayer.backend.models import served_name
from cachelayer.cli.maintenance import add_data_dir
from cachelayer.cli.mlx_flags import add_serve_backend_arguments, serve_backend_argv
from cachelayer.config import (
    METRICS_FILE_NAME,
    REDIS_PASSWORD_ENV,
    ResponseCacheMode,
    RoutingMode,
    Settings,
    check_store_url,
    default_data_dir,
    parse_model_map,
    size_arg,
)
from cachelayer.proxy.embedded import demo_model_dir

log = logging.getLogger(__name__)
# The only source of defaults: argparse shows and uses Settings' own values.
DEFAULTS = Settings()


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
        f"cachelayer listening on {base}  ->  " + (
            f"upstream {settings.upstream}" if len(settings.backend_urls) <= 1 else
            f"{len(settings.backend_urls)} upstreams ({settings.routing.value}): "
            + ", ".join(settings.backend_urls)),
        f"  store:         {settings.store_label}",
        f"  data dir:      {settings.data_dir}",
        f"  metrics file:  {settings.metrics_file}",
        "  Claude Code:   ANTHROPIC_BASE_URL=" + base + " ANTHROPIC_API_KEY=local "
        "DISABLE_TELEMETRY=1 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 claude",
        "  OpenAI SDK:    OPENAI_BASE_URL=" + base + "/v1 OPENAI_API_KEY=local",
        "  dashboard:     " + base + "/dashboard",
        "  stats:         cachelayer stats   (Ctrl-C stops)",
    ])


def serve(settings: Settings) -> int:
    """Run the proxy in the foreground until Ctrl-C or SIGTERM; flushes metrics on the way out."""
    # Everything the proxy writes (store, ledger, metrics) is for its owner only.
    os.umask(0o077)
    if not is_loopback(settings.host):
        log.warning("listening on %s: clients on other machines can reach this proxy",
                    settings.host)
    from cachelayer.proxy.app import make_app  # the app's imports only when serving

    app = make_app(settings)

    async def _announce(app: web.Application) -> None:
        print(banner(settings), flush=True)

    # on_startup runs after the cleanup contexts, so this prints once the backend is up.
    app.on_startup.append(_announce)
    try:
        run_app(app, settings)
    except (RuntimeError, OSError) as exc:
        print(f"cachelayer: {exc}", file=sys.stderr)
        return 1
    return 0


def run_app(app: web.Application, settings: Settings) -> None:
    """`web.run_app`, with the proxy's runner (its front answers repeats before the app):
    serve until SIGINT or SIGTERM, then shut down and close the loop."""
    from cachelayer.proxy.fast_front import ProxyRunner

    async def serve_forever() -> None:
        runner = ProxyRunner(app, handle_signals=True, access_log=None,
                             shutdown_timeout=settings.shutdown_timeout_s,
                             handler_cancellation=True)
        await runner.setup()
        try:
            await web.TCPSite(runner, settings.host, settings.port).start()
            await asyncio.Event().wait()  # a signal ends it (GracefulExit)
        finally:
            await runner.cleanup()

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(serve_forever())
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        # As web.run_app does: the main task first (its runner's cleanup), then the rest.
        for tasks in ({main}, asyncio.all_tasks(loop)):
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])

def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    """Register `cachelayer serve`; every default comes from Settings."""
    p = sub.add_parser("serve", help="run the caching proxy")
    p.add_argument("--upstream", action="append", default=None,
                   help="OpenAI-compatible server to front (default: $MLX_LM_URL); repeat it "
                        "to route over several backends by prefix")
    p.add_argument("--routing", choices=[m.value for m in RoutingMode],
                   default=DEFAULTS.routing.value,
                   help="how several upstreams share requests (default: prefix affinity)")
    p.add_argument("--routing-balance", type=float, default=DEFAULTS.routing_balance,
                   help="most in-flight requests one backend takes, as a multiple of its "
                        "fair share (bounded-load consistent hashing; default: 2.0)")
    p.add_argument("--health-interval", type=float, default=DEFAULTS.health_interval_s,
                   help="seconds between health checks of several upstreams (default: 1)")
    p.add_argument("--store", default=None, metavar="URL",
                   help="redis://[:PASSWORD@]HOST:PORT/DB or rediss://...: share stored "
                        "answers and the ledger with every proxy on it (default: diskcache "
                        f"in --data-dir; password also from ${REDIS_PASSWORD_ENV})")
    p.add_argument("--hot-tier-size", type=size_arg, default=DEFAULTS.hot_tier_bytes,
                   dest="hot_tier_bytes",
                   help="recent answers kept in memory in front of the store (default: 64M)")
    p.add_argument("--model", type=Path, default=None,
                   help="run the embedded backend on this MLX model directory "
                        "(default without --upstream: the generated demo model)")
    p.add_argument("--backend-port", type=int, default=None,
                   help="port of the embedded backend (default: a free one)")
    p.add_argument("--host", default=DEFAULTS.host,
                   help="listen address (default: 127.0.0.1; others get a warning)")
    p.add_argument("--port", type=int, default=DEFAULTS.port,
                   help=f"listen port (default: {DEFAULTS.port})")
    add_data_dir(p)
    p.add_argument("--metrics-file", type=Path, default=DEFAULTS.metrics_file,
                   help=f"metrics export (default: ./{METRICS_FILE_NAME})")
    p.add_argument("--max-body-size", type=size_arg, default=DEFAULTS.max_body_bytes,
                   dest="max_body_bytes", help="largest request body accepted (default: 32M)")
    p.add_argument("--response-cache", choices=[m.value for m in ResponseCacheMode],
                   default=DEFAULTS.response_cache.value, help="what layer 2 stores (default: all)")
    p.add_argument("--response-ttl", type=float, default=DEFAULTS.response_ttl_s,
                   help="seconds a stored answer stays valid (default: 7 days)")
    p.add_argument("--response-max-size", type=size_arg, default=DEFAULTS.response_max_bytes,
                   dest="response_max_bytes",
                   help="total size of the response store (default: 2G)")
    p.add_argument("--entry-max-size", type=size_arg, default=DEFAULTS.entry_max_bytes,
                   dest="entry_max_bytes",
                   help="largest single answer that is stored (default: 16M)")
    p.add_argument("--store-truncated", action="store_true",
                   help="also store answers cut at max_tokens")
    p.add_argument("--connect-timeout", type=float, default=DEFAULTS.connect_timeout_s,
                   help="seconds to connect to the upstream (default: 10)")
    p.add_argument("--read-timeout", type=float, default=DEFAULTS.read_timeout_s,
                   help="seconds to wait for the upstream's next byte (default: 600)")
    p.add_argument("--shutdown-timeout", type=float, default=DEFAULTS.shutdown_timeout_s,
                   help="seconds SIGTERM waits for in-flight answers before stopping (default: 30)")
    p.add_argument("--metrics-interval", type=float, default=DEFAULTS.metrics_interval_s,
                   help="seconds between metrics exports (default: 5)")
    p.add_argument("--keepalive-interval", type=float, default=DEFAULTS.keepalive_interval_s,
                   help="a streaming client that has heard nothing for this many seconds "
                        "gets a keep-alive (default: %(default)s)")
    p.add_argument("--admin-token", default=None,
                   help="token that lets non-loopback clients use admin routes "
                        "(default: $CACHELAYER_ADMIN_TOKEN)")
    p.add_argument("--volatile-pattern", action="append", default=[],
                   help="regex of system-prompt or tool-description text to remove before "
                        "hashing and forwarding (repeatable; adds to the default rules)")
    p.add_argument("--keep-system-order", action="store_true",
                   help="leave Anthropic system turns that follow the first user message "
                        "where they are (default: move them into the leading system prompt)")
    p.add_argument("--model-map", action="append", default=[],
                   help="CLIENT_NAME=UPSTREAM_NAME (repeatable)")
    p.add_argument("--upstream-model", default=None,
                   help="model name sent upstream for Anthropic requests not in --model-map "
                        "(default: the embedded backend's model; needed for mlx_lm.server)")
    p.add_argument("--max-tokens-cap", type=int, default=DEFAULTS.max_tokens_cap,
                   help="upper bound on max_tokens of Anthropic requests (default: 8192)")
    p.add_argument("--share-kv", action="store_true",
                   help="let every credential reuse every cached prompt prefix (a single-user "
                        "machine; default: KV reuse is scoped by credential)")
    p.add_argument("--log-level", default=DEFAULTS.log_level,
                   choices=["debug", "info", "warning", "error"])
    add_serve_backend_arguments(p)
    p.set_defaults(func=cmd_serve)


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """Turn parsed serve arguments (and the environment's defaults) into Settings."""
    upstreams = list(args.upstream or [])
    upstream = (upstreams[0] if upstreams else None) or (
        None if args.model else env.get("MLX_LM_URL")) or None
    data_dir = (args.data_dir or default_data_dir(env)).expanduser().resolve()
    backend_model = None
    backend_port = args.backend_port or DEFAULTS.backend_port
    if upstream and args.model:
        raise ValueError("--upstream and --model exclude each other: pick one")
    if not upstream:
        backend_model = (args.model or demo_model_dir(data_dir)).expanduser().resolve()
        backend_port = args.backend_port or free_port()
        upstream = f"http://127.0.0.1:{backend_port}"
    backend_args = serve_backend_argv(args)
    if backend_args and backend_model is None:
        raise ValueError(f"{backend_args[0]} is a flag of the embedded backend; with "
                         "--upstream, give it to that server instead")
    store_url = check_store_url(args.store) if args.store else None
    return Settings(
        upstream=upstream,
        upstreams=tuple(upstreams) or (upstream,),
        routing=RoutingMode(args.routing),
        routing_balance=max(1.0, args.routing_balance),
        health_interval_s=args.health_interval,
        store_url=store_url,
        store_password=(env.get(REDIS_PASSWORD_ENV) or None) if store_url else None,
        hot_tier_bytes=args.hot_tier_bytes,
        backend_model=backend_model,
        backend_port=backend_port,
        backend_args=backend_args,
        host=args.host,
        port=args.port,
        data_dir=data_dir,
        metrics_file=args.metrics_file,
        max_body_bytes=args.max_body_bytes,
        response_cache=ResponseCacheMode(args.response_cache),
        response_ttl_s=args.response_ttl,
        response_max_bytes=args.response_max_bytes,
        entry_max_bytes=args.entry_max_bytes,
        store_truncated=args.store_truncated,
        connect_timeout_s=args.connect_timeout,
        read_timeout_s=args.read_timeout,
        metrics_interval_s=args.metrics_interval,
        keepalive_interval_s=args.keepalive_interval,
        shutdown_timeout_s=args.shutdown_timeout,
        admin_token=args.admin_token or env.get("CACHELAYER_ADMIN_TOKEN") or None,
        volatile_patterns=tuple(args.volatile_pattern),
        keep_system_order=args.keep_system_order,
        model_map=parse_model_map(args.model_map),
        # The embedded backend answers every name with its one model, so clients' names go
        # up as the served name (not a path): then a Responses request and its chat twin
        # carry the same model and share a store key.
        default_model=args.upstream_model or (
            served_name(str(backend_model)) if backend_model else None),
        max_tokens_cap=args.max_tokens_cap,
        log_level=args.log_level,
        share_kv=args.share_kv,
    )


def store_secrets(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[str, ...]:
    """The Redis password (from --store or the environment): no log line may show it."""
    found = [env.get(REDIS_PASSWORD_ENV, "")]
    store = getattr(args, "store", None)
    if store:
        with contextlib.suppress(ValueError):
            raw = urlsplit(store).password or ""
            found += [raw, unquote(raw)]
    return tuple(sorted({s for s in found if len(s) >= 3}, key=len, reverse=True))


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the proxy until Ctrl-C or SIGTERM."""
    try:
        settings = settings_from_args(args, os.environ)
    except ValueError as exc:
        print(f"cachelayer: {exc}", file=sys.stderr)
        return 2
    return serve(settings)
