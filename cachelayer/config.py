"""The one frozen Settings object that the CLI builds and the app reads.

Nothing below the CLI reads environment variables: the CLI passes its environment in
(`cli/serve.py: settings_from_args(args, env)` turns `MLX_LM_URL`, the Redis password
and the admin token into settings; `default_data_dir(env)` here reads
`XDG_CACHE_HOME`), so every default below it is a field of `Settings`.
"""

from __future__ import annotations

import argparse
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DEFAULT_PORT = 8082
DEFAULT_BACKEND_PORT = 8080
METRICS_FILE_NAME = ".anyclaude-cache-metrics.json"
MiB = 1024 * 1024
GiB = 1024 * MiB


class RoutingMode(str, enum.Enum):
    """How a request picks one of several upstreams."""

    PREFIX = "prefix"  # consistent hashing of layer 1's prefix id, with bounded load
    ROUND_ROBIN = "round-robin"


STORE_SCHEMES = ("redis", "rediss")
# Read by the CLI only: the Redis password, for URLs that should not carry it.
REDIS_PASSWORD_ENV = "CACHELAYER_REDIS_PASSWORD"


class ResponseCacheMode(str, enum.Enum):
    """What layer 2 stores: everything, only reproducible requests, or nothing."""

    ALL = "all"
    DETERMINISTIC = "deterministic"
    OFF = "off"


@dataclass(frozen=True)
class Settings:
    """Everything the proxy needs to run; built once by the CLI."""

    upstream: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "cachelayer")
    metrics_file: Path = field(default_factory=lambda: Path(METRICS_FILE_NAME))
    max_body_bytes: int = 32 * MiB
    response_cache: ResponseCacheMode = ResponseCacheMode.ALL
    response_ttl_s: float = 7 * 24 * 3600.0
    response_max_bytes: int = 2 * GiB
    entry_max_bytes: int = 16 * MiB
    store_truncated: bool = False
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 600.0
    metrics_interval_s: float = 5.0
    admin_token: str | None = None
    volatile_patterns: tuple[str, ...] = ()
    # Anthropic route: system turns before the first answer join the leading system
    # prompt (proxy/prefix/placement.py); True leaves them where the client put them.
    keep_system_order: bool = False
    model_map: Mapping[str, str] = field(default_factory=dict)
    # Sent upstream for Anthropic and Responses requests whose model is not in model_map:
    # a client's `claude-*` or `gpt-*` name must never reach mlx_lm.server, which would
    # try to load it. Under the embedded backend it is the backend's served name.
    default_model: str | None = None
    max_tokens_cap: int = 8192
    log_level: str = "info"
    shutdown_timeout_s: float = 30.0
    backend_model: Path | None = None
    backend_port: int = DEFAULT_BACKEND_PORT
    # Extra `cachelayer backend` flags for the embedded backend (kv budgets, mlx-lm options).
    backend_args: tuple[str, ...] = ()
    # Every --upstream, in order (`upstream` is the first); more than one turns on routing.
    upstreams: tuple[str, ...] = ()
    routing: RoutingMode = RoutingMode.PREFIX
    # A backend may take this many times its fair share of in-flight requests. Above the
    # paper's usual 1.25: a prefill elsewhere costs far more than waiting in a queue.
    routing_balance: float = 2.0
    health_interval_s: float = 1.0
    # redis://[:password@]host:port/db (or rediss://): layer 2 and the ledger's shared
    # counters live there; None keeps the embedded diskcache. Never printed (repr=False).
    store_url: str | None = field(default=None, repr=False)
    store_password: str | None = field(default=None, repr=False)
    store_namespace: str = "cachelayer"
    hot_tier_bytes: int = 64 * MiB
    # Answers may wait this many at once to be written off the request path; past it a
    # request waits for its own write. Bounds the memory a storm of misses can queue,
    # and what a crash (kill -9, power) can lose: at most this many answers.
    max_pending_writes: int = 64
    # With --store redis://: a proxy computing a miss holds an in-flight marker with this
    # lease (renewed every third of it, until its answer's write landed); an identical
    # request at another proxy waits for that answer, at most fleet_wait_s, and a proxy
    # that died releases its marker when the lease runs out.
    fleet_lease_s: float = 5.0
    fleet_wait_s: float = 300.0
    # The backend's prompt-KV reuse is scoped by credential (X-Cachelayer-Tenant), so one
    # client cannot time or count another's cached prompt. True shares prefixes across
    # credentials: for a single-user machine whose clients use several keys.
    share_kv: bool = False
    # A streaming client that has heard nothing for this long gets a keep-alive (an SSE
    # comment, or Anthropic's ping once message_start is out); the first comes within 1 s.
    keepalive_interval_s: float = 2.5
    # A long prefill logs one progress line (done/total, tok/s, eta) this often.
    progress_log_interval_s: float = 5.0

    @property
    def responses_dir(self) -> Path:
        """Where layer 2's diskcache lives."""
        return self.data_dir / "responses"

    @property
    def ledger_dir(self) -> Path:
        """Where the persistent counters and the prefix ledger live."""
        return self.data_dir / "ledger"

    @property
    def kv_dir(self) -> Path:
        """Where the backend keeps prompt KV cache files."""
        return self.data_dir / "kv"

    @property
    def models_dir(self) -> Path:
        """Where generated models (the demo model) live."""
        return self.data_dir / "models"

    @property
    def backend_urls(self) -> tuple[str, ...]:
        """Every upstream base URL without a trailing slash (at least the one upstream)."""
        urls = self.upstreams or ((self.upstream,) if self.upstream else ())
        return tuple(dict.fromkeys(u.rstrip("/") for u in urls))

    @property
    def upstream_identity(self) -> str:
        """What layer 2's key says about where answers come from: the upstream, or the
        sorted set of them (proxies fronting the same backends share answers)."""
        urls = self.backend_urls
        return urls[0] if len(urls) == 1 else ",".join(sorted(urls))

    @property
    def store_label(self) -> str:
        """The store for logs and /health: the Redis URL without its password."""
        return redact_url(self.store_url) if self.store_url else "diskcache"

    @property
    def upstream_url(self) -> str:
        """The upstream base URL without a trailing slash; the CLI guarantees it is set."""
        if not self.upstream:
            raise ValueError("no upstream configured")
        return self.upstream.rstrip("/")


def redact_url(url: str) -> str:
    """The URL with any password replaced, safe for logs and /health."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "(unparseable URL)"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def check_store_url(url: str) -> str:
    """The --store URL if it names Redis or Valkey; ValueError (password-free) if not."""
    try:
        parts = urlsplit(url)
        ok = parts.scheme in STORE_SCHEMES and bool(parts.hostname) and (parts.port or 1) > 0
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"--store takes redis://HOST:PORT/DB or rediss://..., got "
                         f"{redact_url(url)!r}")
    return url


def default_data_dir(env: Mapping[str, str]) -> Path:
    """The per-user cache directory: $XDG_CACHE_HOME/cachelayer or ~/.cache/cachelayer."""
    xdg = env.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says to ignore relative values
        return Path(xdg) / "cachelayer"
    home = env.get("HOME")
    return (Path(home) if home else Path.home()) / ".cache" / "cachelayer"


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": MiB, "g": GiB, "t": 1024 * GiB}


def parse_size(text: str) -> int:
    """Parse '512M', '2G', '2GiB' or '1048576' into bytes (binary units)."""
    match = _SIZE_RE.match(str(text))
    if not match:
        raise ValueError(f"not a size: {text!r} (try 512M or 2G)")
    number, unit, _ = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.lower()])


def size_arg(text: str) -> int:
    """argparse type for sizes: parse_size with argparse's error."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_model_map(items: list[str]) -> dict[str, str]:
    """Parse repeated 'client-name=upstream-name' items into a mapping."""
    mapping: dict[str, str] = {}
    for item in items:
        client, sep, upstream = item.partition("=")
        if not sep or not client or not upstream:
            raise ValueError(f"--model-map needs NAME=UPSTREAM_NAME, got {item!r}")
        mapping[client.strip()] = upstream.strip()
    return mapping
