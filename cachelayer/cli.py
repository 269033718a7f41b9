"""`cachelayer serve | backend | warm | stats | clear`: argv -> one Settings -> the app.

This module and `settings_from_args` are the only places that read the environment.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from cachelayer import __version__
from cachelayer.backend.cli import add_backend_parser, add_warm_parser
from cachelayer.backend.launch import free_port
from cachelayer.config import (
    DEFAULT_BACKEND_PORT,
    DEFAULT_PORT,
    METRICS_FILE_NAME,
    ResponseCacheMode,
    Settings,
    default_data_dir,
    parse_model_map,
    size_arg,
)
from cachelayer.embedded import demo_model_dir
from cachelayer.maintenance import add_clear_parser, add_data_dir, add_stats_parser
from cachelayer.observability import configure_logging

log = logging.getLogger("cachelayer")


def _add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the caching proxy")
    p.add_argument("--upstream", default=None,
                   help="OpenAI-compatible server to front (default: $MLX_LM_URL)")
    p.add_argument("--model", type=Path, default=None,
                   help="run the embedded backend on this MLX model directory "
                        "(default without --upstream: the generated demo model)")
    p.add_argument("--backend-port", type=int, default=None,
                   help="port of the embedded backend (default: a free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="listen address (default: 127.0.0.1; others get a warning)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="listen port (default: 8082)")
    add_data_dir(p)
    p.add_argument("--metrics-file", type=Path, default=Path(METRICS_FILE_NAME),
                   help=f"metrics export (default: ./{METRICS_FILE_NAME})")
    p.add_argument("--max-body-size", type=size_arg, default="32M", dest="max_body_bytes",
                   help="largest request body accepted (default: 32M)")
    p.add_argument("--response-cache", choices=[m.value for m in ResponseCacheMode],
                   default="all", help="what layer 2 stores (default: all)")
    p.add_argument("--response-ttl", type=float, default=7 * 24 * 3600.0,
                   help="seconds a stored answer stays valid (default: 7 days)")
    p.add_argument("--response-max-size", type=size_arg, default="2G", dest="response_max_bytes",
                   help="total size of the response store (default: 2G)")
    p.add_argument("--entry-max-size", type=size_arg, default="16M", dest="entry_max_bytes",
                   help="largest single answer that is stored (default: 16M)")
    p.add_argument("--store-truncated", action="store_true",
                   help="also store answers cut at max_tokens")
    p.add_argument("--connect-timeout", type=float, default=10.0,
                   help="seconds to connect to the upstream (default: 10)")
    p.add_argument("--read-timeout", type=float, default=600.0,
                   help="seconds to wait for the upstream's next byte (default: 600)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds SIGTERM waits for in-flight answers before stopping (default: 30)")
    p.add_argument("--metrics-interval", type=float, default=5.0,
                   help="seconds between metrics exports (default: 5)")
    p.add_argument("--admin-token", default=None,
                   help="token that lets non-loopback clients use admin routes "
                        "(default: $CACHELAYER_ADMIN_TOKEN)")
    p.add_argument("--volatile-pattern", action="append", default=[],
                   help="regex of prompt text to strip before hashing (repeatable)")
    p.add_argument("--model-map", action="append", default=[],
                   help="CLIENT_NAME=UPSTREAM_NAME (repeatable)")
    p.add_argument("--upstream-model", default=None,
                   help="model name sent upstream for Anthropic requests not in --model-map "
                        "(default: the embedded backend's model; needed for mlx_lm.server)")
    p.add_argument("--max-tokens-cap", type=int, default=8192,
                   help="upper bound on max_tokens of Anthropic requests (default: 8192)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """Turn parsed serve arguments (and the environment's defaults) into Settings."""
    upstream = args.upstream or (None if args.model else env.get("MLX_LM_URL")) or None
    data_dir = (args.data_dir or default_data_dir(env)).expanduser().resolve()
    backend_model = None
    backend_port = args.backend_port or DEFAULT_BACKEND_PORT
    if upstream and args.model:
        raise ValueError("--upstream and --model exclude each other: pick one")
    if not upstream:
        backend_model = (args.model or demo_model_dir(data_dir)).expanduser().resolve()
        backend_port = args.backend_port or free_port()
        upstream = f"http://127.0.0.1:{backend_port}"
    return Settings(
        upstream=upstream,
        backend_model=backend_model,
        backend_port=backend_port,
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
        shutdown_timeout_s=args.shutdown_timeout,
        admin_token=args.admin_token or env.get("CACHELAYER_ADMIN_TOKEN") or None,
        volatile_patterns=tuple(args.volatile_pattern),
        model_map=parse_model_map(args.model_map),
        default_model=args.upstream_model or (str(backend_model) if backend_model else None),
        max_tokens_cap=args.max_tokens_cap,
        log_level=args.log_level,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the proxy until Ctrl-C or SIGTERM."""
    from cachelayer.serve import serve

    try:
        settings = settings_from_args(args, os.environ)
    except ValueError as exc:
        print(f"cachelayer: {exc}", file=sys.stderr)
        return 2
    return serve(settings)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(
        prog="cachelayer",
        description="A caching proxy for coding agents on local MLX servers.",
    )
    parser.add_argument("--version", action="version", version=f"cachelayer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_serve_parser(sub)
    add_stats_parser(sub)
    add_clear_parser(sub)
    add_backend_parser(sub)
    add_warm_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `cachelayer` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    configure_logging(str(getattr(args, "log_level", "info")))
    return int(args.func(args) or 0)
