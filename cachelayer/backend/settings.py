"""Settings of `cachelayer backend`: one frozen dataclass, filled from the CLI.

No mlx import here: the CLI builds these before anything heavy is loaded, and
nothing below the CLI reads environment variables.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cachelayer.config import DEFAULT_BACKEND_PORT, Settings, default_data_dir, parse_size

DEFAULT_KV_MAX_BYTES = 8 << 30
DEFAULT_KV_MIN_TOKENS = 256
DEFAULT_KV_BLOCK_TOKENS = 256
# The automatic disk budget: a quarter of the free space, within these bounds.
_AUTO_MIN_BYTES = 1 << 30
_AUTO_MAX_BYTES = 64 << 30
__all__ = ["DEFAULT_KV_BLOCK_TOKENS", "DEFAULT_KV_MAX_BYTES", "DEFAULT_KV_MIN_TOKENS",
           "BackendSettings", "MlxOptions", "auto_kv_budget", "default_kv_dir", "parse_size"]


@dataclass(frozen=True)
class MlxOptions:
    """The `mlx_lm.server` 0.32 options `cachelayer backend` did not have, with mlx-lm's
    meanings and defaults (one exception: no CORS origin unless given, see docs)."""

    adapter_path: str | None = None
    # mlx-lm allows "*"; a web page must not read a local server's answers by default.
    allowed_origins: tuple[str, ...] = ()
    draft_model: str | None = None
    num_draft_tokens: int = 3
    trust_remote_code: bool = False
    chat_template: str = ""
    use_default_chat_template: bool = False
    temp: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    decode_concurrency: int = 32
    prompt_concurrency: int = 8
    # The hot tier's byte budget; None: derived from physical memory and model size
    # (memory_budget.auto_prompt_cache_bytes), never unbounded.
    prompt_cache_bytes: int | None = None
    kv_bits: int | None = None
    kv_group_size: int = 64
    quantized_kv_start: int = 5000
    pipeline: bool = False


def auto_kv_budget(kv_dir: Path) -> int:
    """The default KV byte budget: a quarter of the free disk at `kv_dir`, 1 to 64 GiB."""
    probe = kv_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return DEFAULT_KV_MAX_BYTES
    return max(_AUTO_MIN_BYTES, min(_AUTO_MAX_BYTES, free // 4))


def default_kv_dir(env: Mapping[str, str]) -> Path:
    """`$XDG_CACHE_HOME/cachelayer/kv`, else `~/.cache/cachelayer/kv` (from `env`)."""
    return Settings(data_dir=default_data_dir(env)).kv_dir


@dataclass(frozen=True)
class BackendSettings:
    """Everything `cachelayer backend` needs; built once from the command line."""

    model: str
    kv_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_BACKEND_PORT
    # None: sized from the free disk at start-up (auto_kv_budget).
    kv_max_bytes: int | None = None
    kv_min_tokens: int = DEFAULT_KV_MIN_TOKENS
    kv_block_tokens: int = DEFAULT_KV_BLOCK_TOKENS
    max_tokens: int = 512
    prefill_step_size: int = 2048
    # A prefill step holds about this much work at the measured speed (at most
    # prefill_step_size tokens), so a request arriving meanwhile waits about this long.
    # 0: mlx-lm's fixed steps of prefill_step_size.
    prefill_step_seconds: float = 0.5
    chat_template_args: Mapping[str, Any] = field(default_factory=dict)
    prompt_cache_size: int = 10
    log_level: str = "INFO"
    # Where huggingface_hub may look (GET /v1/models scans it); must exist.
    hf_home: Path | None = None
    # mlx_lm.server's other options (adapter, draft model, sampling, KV quantization...).
    mlx: MlxOptions = field(default_factory=MlxOptions)
    # What /v1/models and every answer call the model ("": derived from `model`, see
    # backend/models.py served_name).
    served_name: str = ""
