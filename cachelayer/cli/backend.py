"""`cachelayer backend` and `cachelayer warm`: their parsers and entry points.

Importing this module must stay cheap (the proxy CLI imports it for every
command), so everything that pulls in mlx is imported inside the functions.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cachelayer.backend.models import served_name
from cachelayer.backend.settings import (
    DEFAULT_KV_BLOCK_TOKENS,
    DEFAULT_KV_MIN_TOKENS,
    BackendSettings,
    default_kv_dir,
)
from cachelayer.cli.mlx_flags import add_mlx_arguments, mlx_options_from_args
from cachelayer.config import size_arg
from cachelayer.fs import ensure_private_dir

# The only source of defaults: the backend's own frozen settings.
DEFAULTS = BackendSettings(model="", kv_dir=Path())


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _kv_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kv-dir",
        type=Path,
        default=None,
        help="prompt cache directory (default: $XDG_CACHE_HOME/cachelayer/kv "
        "or ~/.cache/cachelayer/kv)",
    )


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `cachelayer backend` flags to `parser`."""
    parser.add_argument("--model", required=True, help="local model directory (or cached repo)")
    parser.add_argument("--served-name", default=None,
                        help="the model's name in /v1/models and answers (default: the "
                             "directory's name, or the repo id as given)")
    parser.add_argument("--host", default=DEFAULTS.host, help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULTS.port,
                        help=f"listen port (default {DEFAULTS.port})")
    _kv_dir_argument(parser)
    parser.add_argument(
        "--kv-max-bytes",
        type=size_arg,
        default=None,
        help="disk budget for KV blocks and checkpoints, e.g. 512M, 20G "
        "(default: a quarter of the free disk, 1G to 64G)",
    )
    parser.add_argument(
        "--kv-block-tokens",
        type=int,
        default=DEFAULT_KV_BLOCK_TOKENS,
        help=f"tokens per KV block on disk (default {DEFAULT_KV_BLOCK_TOKENS})",
    )
    parser.add_argument(
        "--kv-min-tokens",
        type=int,
        default=DEFAULT_KV_MIN_TOKENS,
        help=f"persist prompts of at least this many tokens (default {DEFAULT_KV_MIN_TOKENS})",
    )
    parser.add_argument("--max-tokens", type=int, default=DEFAULTS.max_tokens,
                        help=f"default max_tokens ({DEFAULTS.max_tokens})")
    parser.add_argument(
        "--prefill-step-size", type=int, default=DEFAULTS.prefill_step_size,
        help=f"largest prefill chunk in tokens ({DEFAULTS.prefill_step_size})"
    )
    parser.add_argument(
        "--prefill-step-seconds", type=float, default=DEFAULTS.prefill_step_seconds,
        help="size prefill chunks to about this many seconds at the measured speed, so "
             "other requests wait at most about that long; 0: fixed chunks "
             f"({DEFAULTS.prefill_step_seconds})"
    )
    parser.add_argument(
        "--chat-template-args",
        type=_json_object,
        default={},
        help="JSON object passed to apply_chat_template, e.g. '{\"enable_thinking\": false}'",
    )
    parser.add_argument(
        "--prompt-cache-size",
        type=int,
        default=DEFAULTS.prompt_cache_size,
        help=f"prompt caches kept in memory (default {DEFAULTS.prompt_cache_size})",
    )
    parser.add_argument(
        "--log-level",
        default=DEFAULTS.log_level,
        type=str.upper,  # `debug` as `cachelayer serve` spells it works too
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="log level (default INFO)",
    )
    add_mlx_arguments(parser)


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> BackendSettings:
    """Turn parsed `backend` flags into the frozen settings the server runs on."""
    return BackendSettings(
        model=args.model,
        kv_dir=(args.kv_dir or default_kv_dir(env)).expanduser(),
        host=args.host,
        port=args.port,
        kv_max_bytes=args.kv_max_bytes,
        kv_min_tokens=args.kv_min_tokens,
        kv_block_tokens=args.kv_block_tokens,
        max_tokens=args.max_tokens,
        prefill_step_size=args.prefill_step_size,
        prefill_step_seconds=args.prefill_step_seconds,
        chat_template_args=dict(args.chat_template_args),
        prompt_cache_size=args.prompt_cache_size,
        log_level=args.log_level,
        mlx=mlx_options_from_args(args),
        served_name=args.served_name or served_name(args.model),
    )


def run_backend(args: argparse.Namespace) -> int:
    """Entry point of `cachelayer backend`."""
    from cachelayer.backend.server import serve

    settings = settings_from_args(args, os.environ)
    # mlx-lm's /v1/models scans the hub cache and fails if it does not exist; nothing may
    # be downloaded at run time either. Set here, in the CLI, before huggingface_hub is
    # imported (it reads these once); nothing below the CLI touches the environment.
    hf_home = settings.hf_home or settings.kv_dir.parent / "hf"
    ensure_private_dir(hf_home / "hub")
    os.environ.setdefault("HF_HOME", str(hf_home))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return serve(settings)


def add_backend_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `backend` (mlx-lm server with persistent prompt caches) to `subparsers`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "backend",
        help="run an mlx-lm server whose prompt caches persist on disk",
        description="Run an mlx-lm server whose prompt KV caches persist on disk.",
    )
    add_backend_arguments(parser)
    parser.set_defaults(func=run_backend)
    return parser


def run_warm(args: argparse.Namespace) -> int:
    """Entry point of `cachelayer warm`."""
    from cachelayer.backend.warm import warm_local, warm_upstream

    system = args.system.read_text()
    tools = json.loads(args.tools.read_text()) if args.tools else None
    if args.upstream:
        return warm_upstream(args.upstream, system, tools, model=args.model)
    kv_dir = (args.kv_dir or default_kv_dir(os.environ)).expanduser()
    return warm_local(args.model, kv_dir, system, tools, kv_max_bytes=args.kv_max_bytes)


def add_warm_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `warm` (precompute the KV cache of a system prompt + tools) to `subparsers`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "warm",
        help="precompute and persist the prompt cache of a system prompt and tools",
        description="Precompute the KV cache of a system prompt (and tools) so the "
        "first real request skips its prefill.",
    )
    parser.add_argument("--system", type=Path, required=True, help="file with the system prompt")
    parser.add_argument("--tools", type=Path, help="JSON file: a list of OpenAI tool definitions")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="local model directory: prefill here, write to --kv-dir")
    target.add_argument("--upstream", help="URL of a running backend: send it the prefix")
    _kv_dir_argument(parser)
    parser.add_argument(
        "--kv-max-bytes",
        type=size_arg,
        default=None,
        help="disk budget, as for `cachelayer backend` (default: from the free disk)",
    )
    parser.set_defaults(func=run_warm)
    return parser
