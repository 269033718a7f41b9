"""Settings of `cachelayer backend`: one frozen dataclass, filled from the CLI.

No mlx import here: the CLI builds these before anything heavy is loaded, and
nothing below the CLI reads environment variables.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_KV_MAX_BYTES = 8 << 30
DEFAULT_KV_MIN_TOKENS = 256

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Parse a byte size such as `4096`, `512M`, `2G`, `1.5GiB` (binary units)."""
    match = _SIZE_RE.match(str(text))
    if match is None:
        raise ValueError(f"not a size: {text!r} (use e.g. 512M, 2G)")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.upper()])


def default_kv_dir(env: Mapping[str, str]) -> Path:
    """`$XDG_CACHE_HOME/cachelayer/kv`, else `~/.cache/cachelayer/kv` (from `env`)."""
    xdg = env.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says to ignore relative values
        return Path(xdg) / "cachelayer" / "kv"
    home = env.get("HOME")
    base = Path(home) if home else Path.home()
    return base / ".cache" / "cachelayer" / "kv"


@dataclass(frozen=True)
class BackendSettings:
    """Everything `cachelayer backend` needs; built once from the command line."""

    model: str
    kv_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    kv_max_bytes: int = DEFAULT_KV_MAX_BYTES
    kv_min_tokens: int = DEFAULT_KV_MIN_TOKENS
    max_tokens: int = 512
    prefill_step_size: int = 2048
    chat_template_args: Mapping[str, Any] = field(default_factory=dict)
    prompt_cache_size: int = 10
    log_level: str = "INFO"
    # Where huggingface_hub may look (GET /v1/models scans it); must exist.
    hf_home: Path | None = None
