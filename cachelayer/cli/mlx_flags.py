"""The `mlx_lm.server` options of `cachelayer backend`, and those `cachelayer serve` passes on.

Names, meanings and defaults are mlx-lm 0.32's (`mlx_lm/server.py` `main()`), so a
command line written for `mlx_lm.server` works here. No mlx import: the proxy CLI
imports this module for every command.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from cachelayer.backend.memory_budget import parse_mlx_size
from cachelayer.backend.settings import MlxOptions
from cachelayer.config import size_arg

_D = MlxOptions()


def mlx_size_arg(text: str) -> int:
    """argparse type for `--prompt-cache-bytes`: mlx-lm's parser (256M = 256,000,000)."""
    try:
        return parse_mlx_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _origins(text: str) -> tuple[str, ...]:
    return tuple(o for o in text.split(",") if o)


# (flag, argparse keywords, passed on by `cachelayer serve`). Every default is MlxOptions'.
_FLAGS: list[tuple[str, dict[str, Any], bool]] = [
    ("--adapter-path", {"default": _D.adapter_path,
                        "help": "trained adapter weights and config (LoRA, DoRA or full)"}, True),
    ("--allowed-origins", {"type": _origins, "default": _D.allowed_origins,
                           "help": "comma-separated CORS origins (default: none; mlx-lm: *)"},
     False),
    ("--draft-model", {"default": _D.draft_model,
                       "help": "a model for speculative decoding"}, True),
    ("--num-draft-tokens", {"type": int, "default": _D.num_draft_tokens,
                            "help": f"tokens to draft (default {_D.num_draft_tokens})"}, True),
    ("--trust-remote-code", {"action": "store_true",
                             "help": "trust remote code of the tokenizer"}, True),
    ("--chat-template", {"default": _D.chat_template,
                         "help": "a chat template for the tokenizer"}, True),
    ("--use-default-chat-template", {"action": "store_true",
                                     "help": "use the tokenizer's default chat template"}, True),
    ("--temp", {"type": float, "default": _D.temp,
                "help": f"default sampling temperature ({_D.temp})"}, True),
    ("--top-p", {"type": float, "default": _D.top_p,
                 "help": f"default nucleus sampling top-p ({_D.top_p})"}, True),
    ("--top-k", {"type": int, "default": _D.top_k,
                 "help": f"default top-k ({_D.top_k}: off)"}, True),
    ("--min-p", {"type": float, "default": _D.min_p,
                 "help": f"default min-p ({_D.min_p}: off)"}, True),
    ("--decode-concurrency", {"type": int, "default": _D.decode_concurrency,
                              "help": "requests decoded in parallel when batchable "
                                      f"({_D.decode_concurrency})"}, True),
    ("--prompt-concurrency", {"type": int, "default": _D.prompt_concurrency,
                              "help": "prompts processed in parallel when batchable "
                                      f"({_D.prompt_concurrency})"}, True),
    ("--prompt-cache-bytes", {"type": mlx_size_arg, "default": _D.prompt_cache_bytes,
                              "help": "memory budget of the prompt caches, e.g. 256M, 8G "
                                      "(mlx-lm's units: M = 10^6; default: a quarter of the "
                                      "memory the model leaves free, at least 256M); past "
                                      "it, least recently used caches leave memory and "
                                      "come back from disk"}, True),
    ("--kv-bits", {"type": int, "default": _D.kv_bits,
                   "help": "bits of KV cache quantization, e.g. 4 or 8 (default: none); "
                           "quantized caches stay in memory only"}, True),
    ("--kv-group-size", {"type": int, "default": _D.kv_group_size,
                         "help": f"group size of KV quantization ({_D.kv_group_size})"}, True),
    ("--quantized-kv-start", {"type": int, "default": _D.quantized_kv_start,
                              "help": "token position where KV quantization starts "
                                      f"({_D.quantized_kv_start})"}, True),
    ("--pipeline", {"action": "store_true",
                    "help": "pipelining instead of tensor parallelism (distributed only)"},
     False),
]


def add_mlx_arguments(parser: argparse.ArgumentParser) -> None:
    """Add mlx_lm.server's options that `cachelayer backend` had not had."""
    for flag, kwargs, _ in _FLAGS:
        parser.add_argument(flag, **kwargs)


def mlx_options_from_args(args: argparse.Namespace) -> MlxOptions:
    """The parsed options as the backend's frozen `MlxOptions`."""
    return MlxOptions(**{flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"))
                         for flag, _, _ in _FLAGS})


# Backend flags `cachelayer serve` takes for its embedded backend, beyond _FLAGS.
_SERVE_EXTRA: list[tuple[str, dict[str, Any]]] = [
    ("--kv-max-bytes", {"type": size_arg, "help": "backend: disk budget of KV blocks, e.g. 20G"}),
    ("--kv-min-tokens", {"type": int, "help": "backend: persist prompts of at least this "
                                              "many tokens"}),
    ("--kv-block-tokens", {"type": int, "help": "backend: tokens per KV block on disk"}),
    ("--prefill-step-size", {"type": int, "help": "backend: prefill chunk size"}),
    ("--prompt-cache-size", {"type": int, "help": "backend: prompt caches kept in memory"}),
    ("--chat-template-args", {"type": json.loads,
                              "help": "backend: JSON object for apply_chat_template"}),
]


def add_serve_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the embedded backend's flags to `cachelayer serve` (given ones are passed on;
    defaults are the backend's own)."""
    group = parser.add_argument_group("embedded backend (with --model or the demo model)")
    for flag, kwargs, passed in _FLAGS:
        if passed:
            extra = {k: v for k, v in kwargs.items() if k != "default"}
            group.add_argument(flag, default=argparse.SUPPRESS, **extra)
    for flag, kwargs in _SERVE_EXTRA:
        group.add_argument(flag, default=argparse.SUPPRESS, **kwargs)
    group.add_argument("--backend-max-tokens", dest="max_tokens", type=int,
                       default=argparse.SUPPRESS,
                       help="backend: default max_tokens of OpenAI requests (as --max-tokens)")


def serve_backend_argv(args: argparse.Namespace) -> tuple[str, ...]:
    """The backend flags given to `cachelayer serve`, as argv for `cachelayer backend`."""
    argv: list[str] = []
    flags = [(f, k) for f, k, passed in _FLAGS if passed] + _SERVE_EXTRA
    flags.append(("--max-tokens", {"type": int}))
    for flag, kwargs in flags:
        name = flag[2:].replace("-", "_")
        if name not in vars(args):
            continue
        value = getattr(args, name)
        if kwargs.get("action") == "store_true":
            if value:
                argv.append(flag)
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        else:
            argv += [flag, str(value)]
    return tuple(argv)
