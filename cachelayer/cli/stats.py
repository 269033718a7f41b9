"""`cachelayer stats`: what each layer did, read live from a running proxy when there is one.

Where the figures come from, in order: `--url` (a proxy you name), `--store` (the shared
totals in Redis/Valkey), `--metrics-file` (that file), else the proxy on the default
address when it answers (live: the request you just made is in it; `--offline` skips
it), else the metrics file it last wrote, else the ledger on disk. The first line says
which.

Every figure is shown once, under one name: prompt tokens split into read from cache
(store replays' whole prompts + the backend's KV reuse) and computed; `--sessions` lists
each conversation instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from cachelayer.cli.maintenance import (
    add_data_dir,
    data_settings,
    prefill_lines,
    scale_out_lines,
)
from cachelayer.config import REDIS_PASSWORD_ENV, Settings
from cachelayer.telemetry.counters import reason_label
from cachelayer.telemetry.kv_memory import kv_memory_rows

_LIVE_TIMEOUT_S = 1.0


def add_stats_parser(sub: argparse._SubParsersAction) -> None:
    """Register `cachelayer stats`."""
    defaults = Settings()
    p = sub.add_parser("stats", help="show what each cache layer did (live when a proxy runs)")
    p.add_argument("--json", action="store_true", help="print the metrics document as JSON")
    p.add_argument("--sessions", action="store_true",
                   help="one line per conversation: turns, tokens reused, prefill time saved")
    p.add_argument("--metrics-file", type=Path, default=None,
                   help=f"read this metrics file (default: ask the running proxy, else "
                        f"{defaults.metrics_file})")
    p.add_argument("--url", default=None,
                   help=f"ask this running proxy (default: http://{defaults.host}:"
                        f"{defaults.port} when it answers)")
    p.add_argument("--store", default=None, metavar="URL",
                   help="read the shared totals of every proxy from this Redis/Valkey store "
                        "(as given to serve --store) instead of the file")
    p.add_argument("--offline", action="store_true",
                   help="do not ask a running proxy: read the metrics file, else the ledger")
    add_data_dir(p)
    p.set_defaults(func=cmd_stats)


def fetch_live(url: str, timeout: float = 10.0) -> dict[str, Any]:
    """GET <url>/cache/stats from a running proxy."""
    with urllib.request.urlopen(url.rstrip("/") + "/cache/stats", timeout=timeout) as answer:
        return dict(orjson.loads(answer.read()))


def load_metrics(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The metrics document, and where it came from (in words)."""
    if args.url:
        return fetch_live(args.url), f"live from {args.url}"
    if args.store:
        from cachelayer.proxy.store.backends.redis import read_shared
        from cachelayer.telemetry.export import build_metrics

        totals, prefixes, store = read_shared(args.store, os.environ.get(REDIS_PASSWORD_ENV))
        doc = build_metrics(totals, runtime_ms=0, store=store, prefixes=prefixes)
        doc["shared"] = {"store": store["url"], "error": None}
        return doc, f"from the shared store {store['url']}"
    if args.metrics_file is not None:
        return dict(orjson.loads(args.metrics_file.read_bytes())), f"from {args.metrics_file}"
    defaults = Settings()
    url = f"http://{defaults.host}:{defaults.port}"
    if not args.offline:
        try:
            return fetch_live(url, _LIVE_TIMEOUT_S), f"live from {url}"
        except (OSError, ValueError, urllib.error.URLError):
            pass  # no proxy there: what it left behind
    path = defaults.metrics_file
    if path.exists():
        doc = dict(orjson.loads(path.read_bytes()))
        return doc, (f"from {path}, written {_when(doc.get('exportedAt'))} "
                     f"(no proxy answers at {url})")
    from cachelayer.proxy.prefix.ledger import Ledger
    from cachelayer.telemetry.export import build_metrics

    settings = data_settings(args)
    ledger = Ledger(settings.ledger_dir)
    try:
        from cachelayer.telemetry.sessions import session_rows

        doc = build_metrics(ledger.totals(), runtime_ms=0, store={},
                            prefixes=ledger.prefixes.records())
        doc["sessions"] = session_rows(ledger.sessions.records())
        return doc, f"from the ledger in {settings.ledger_dir} (no proxy answers at {url})"
    finally:
        ledger.close()


def _when(stamp: Any) -> str:
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).astimezone(
        ).strftime("%H:%M:%S")
    except ValueError:
        return "?"


def _row(label: str, value: Any, note: str = "") -> str:
    return f"  {label:<42} {value!s:>10}{'   ' + note if note else ''}"


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """The headline figures, each once: requests, and where the prompt tokens came from."""
    m = doc.get("metrics", {})
    layers = doc.get("layers", {})
    response, kv = layers.get("response", {}), layers.get("kv", {})
    requests = m.get("totalRequests", 0)
    replays = response.get("hits", 0) + response.get("coalesced", 0)
    prompt, read = m.get("totalInputTokens", 0), m.get("cacheReadTokens", 0)
    reused = kv.get("tokensReused", 0)
    store_prompts = max(0, read - reused)
    answers_replayed = max(0, response.get("tokens_saved", 0) - store_prompts)
    lines = [
        "requests",
        _row("answered", requests),
        _row("replayed from the response store", replays, "exact repeats: nothing computed"),
        _row("answered by the backend", max(0, requests - replays)),
        "prompt tokens",
        _row("sent by clients", prompt),
        _row("read from cache", read, f"{_pct(read, prompt)} of prompt tokens"),
        _row("  whole prompts of store replays", store_prompts),
        _row("  reused from the backend's KV cache", reused),
        _row("computed by the backend (prefill)", kv.get("tokensPrefilled", 0)),
    ]
    if kv.get("unreported"):
        lines.append(_row("answers without a reuse figure", kv["unreported"],
                          "the upstream did not report cached tokens"))
    lines += ["answer tokens", _row("replayed from the store", answers_replayed,
                                    "not generated again")]
    return lines


def response_lines(response: dict[str, Any]) -> list[str]:
    """Layer 2's own figures."""
    lines = [
        "response store (layer 2)",
        _row("lookups hit / missed / expired", f"{response.get('hits', 0)} / "
             f"{response.get('misses', 0)} / {response.get('expired', 0)}"),
        _row("hit rate of lookups", f"{response.get('hitRate', 0.0):.1f}%"),
        _row("not looked up (Cache-Control, bypass)", response.get("bypasses", 0)),
        _row("answered by an identical request in flight", response.get("coalesced", 0)),
        _row("answers stored / evicted", f"{response.get('stored', 0)} / "
                                         f"{response.get('evictions', 0)}"),
        _row("answers not stored (errors, cut, too big)", response.get("not_stored", 0)),
        _row("entries / bytes", f"{response.get('entries', '?')} / "
                                f"{response.get('bytes', '?')}"),
    ]
    if response.get("write_waits"):
        lines.append(_row("requests that waited for their write", response["write_waits"]))
    return lines


def kv_lines(kv: dict[str, Any]) -> list[str]:
    """Layer 3's figures, from the backend's export and the files on disk."""
    lines = ["KV cache on disk (layer 3, the backend's)"]
    if "files" in kv:
        lines.append(_row("files / bytes", f"{kv.get('files')} / {kv.get('bytes')}"))
    if "blocks" in kv:
        lines += [
            _row("blocks / checkpoints", f"{kv.get('blocks')} / {kv.get('checkpoints')}"),
            _row("bytes written / read", f"{kv.get('bytes_written', 0)} / "
                                         f"{kv.get('bytes_read', 0)}"),
            _row("evicted blocks / checkpoints", f"{kv.get('evicted_blocks', 0)} / "
                                                 f"{kv.get('evicted_checkpoints', 0)}"),
            _row("damaged files dropped", kv.get("corrupt_dropped", 0)),
        ]
        if kv.get("min_tokens"):
            lines.append(_row("prompts persisted from (tokens)", kv["min_tokens"],
                              "--kv-min-tokens"))
    for family, r in (kv.get("reuse_by_family") or {}).items():
        lines.append(_row(f"reused ({family})", f"{r.get('reused_tokens', 0)} of "
                                                f"{r.get('prompt_tokens', 0)} tokens"))
    if "tokens_restored_disk" in kv:
        lines.append(_row("tokens restored from disk / memory",
                          f"{kv.get('tokens_restored_disk', 0)} / "
                          f"{kv.get('tokens_restored_memory', 0)}"))
    memory = kv.get("memory")
    if isinstance(memory, dict) and "sequences" in memory:
        lines.append(_row("prompt caches in memory", memory["sequences"]))
    lines += [_row(label, value) for label, value in kv_memory_rows(kv)]
    return lines if len(lines) > 1 else []


def _reasons(named: dict[str, int], *, slugs: bool = True) -> str:
    return ", ".join(f"{reason_label(k) if slugs else k}: {v}"
                     for k, v in named.items()) or "-"


def prefix_lines(prefix: dict[str, Any]) -> list[str]:
    """Layer 1's rows: the hit / partial / miss split with reasons, rewrites, moves."""
    estimated = prefix.get("estimatedReusedTokens", 0)
    return [
        "prefix (layer 1)",
        _row("requests / distinct prefixes", f"{prefix.get('requests', 0)} / "
                                             f"{prefix.get('uniquePrefixes', 0)}"),
        _row("prefixes used recently", prefix.get("warmPrefixes", 0),
             f"in the last {prefix.get('warmWindowSeconds', 600) // 60} min"),
        _row("whole prefix reused / partly / not", f"{prefix.get('hits', 0)} / "
             f"{prefix.get('partial', 0)} / {prefix.get('misses', 0)}",
             f"+{prefix.get('storeHits', 0)} replayed by the store"),
        _row("why partly", _reasons(prefix.get("partialReasons") or {})),
        _row("why not", _reasons(prefix.get("missReasons") or {})),
        _row("volatile text rewritten", prefix.get("strippedSegments", 0),
             _reasons(prefix.get("rewrites") or {}, slugs=False)),
        _row("system blocks moved up", prefix.get("systemBlocksMoved", 0),
             f"in {prefix.get('reorderedRequests', 0)} requests"),
        _row("tokens reused, measured", prefix.get("reusedTokens", 0)),
        *([_row("tokens reused, estimated", estimated,
                "where the backend reported no reuse figure")] if estimated else []),
    ]


def top_lines(top: list[dict[str, Any]]) -> list[str]:
    """The busiest prefixes."""
    if not top:
        return []
    lines = ["busiest prefixes (~ = size estimated)",
             f"  {'id':<18} {'tools':>5} {'tokens':>7} {'reqs':>5} {'whole':>5} {'part':>4} "
             f"{'none':>4} {'whole%':>6} {'reused':>9}  last reason"]
    for e in top[:10]:
        size = f"{'~' if e.get('prefixTokensEstimated') else ''}{e.get('prefixTokens', 0)}"
        lines.append(
            f"  {str(e.get('hash', ''))[:16]:<18} {e.get('tools', 0):>5} {size:>7} "
            f"{e.get('requests', 0):>5} {e.get('hits', 0):>5} {e.get('partial', 0):>4} "
            f"{e.get('misses', 0):>4} {e.get('hitRate', ''):>6} "
            f"{e.get('cacheTokens', 0):>9}  {reason_label(e.get('lastMissReason') or '-')}")
    return lines


def format_stats(doc: dict[str, Any], source: str = "") -> str:
    """The whole table."""
    layers = doc.get("layers", {})
    lines = [f"cachelayer stats {source}".rstrip()]
    lines += summary_lines(doc)
    lines += response_lines(layers.get("response", {}))
    lines += kv_lines(layers.get("kv", {}))
    if layers.get("prefix"):
        lines += prefix_lines(layers["prefix"])
    lines += prefill_lines(doc)
    lines += scale_out_lines(doc)
    lines += top_lines(doc.get("topEntries") or [])
    return "\n".join(lines)


def format_sessions(doc: dict[str, Any], source: str = "") -> str:
    """One line per conversation, most recent first."""
    rows = doc.get("sessions") or []
    lines = [f"cachelayer conversations {source}".rstrip()]
    if not rows:
        lines.append("  no conversations recorded yet")
        return "\n".join(lines)
    lines.append(f"  {'conversation':<38} {'client':<11} {'turns':>5} {'prompt tok':>10} "
                 f"{'reused':>9} {'reused%':>7} {'prefill s saved':>15}  last turn")
    for r in rows:
        lines.append(
            f"  {str(r.get('id'))[:38]:<38} {r.get('client', '?'):<11} {r.get('turns', 0):>5} "
            f"{r.get('promptTokens', 0):>10} {r.get('reusedTokens', 0):>9} "
            f"{r.get('reusedPercent', 0.0):>6.1f}% {r.get('prefillSecondsSaved', 0.0):>15.1f}"
            f"  {_clock(r.get('lastSeen'))}")
    lines.append("  prefill s saved: reused tokens x this machine's measured prefill time per "
                 "token (an estimate)")
    return "\n".join(lines)


def _clock(ts: Any) -> str:
    return datetime.fromtimestamp(ts).strftime("%m-%d %H:%M") if isinstance(
        ts, (int, float)) and ts else "-"


def cmd_stats(args: argparse.Namespace) -> int:
    """Print the stats table, the conversations, or the JSON document."""
    try:
        doc, source = load_metrics(args)
    except (OSError, ValueError, urllib.error.URLError, orjson.JSONDecodeError) as exc:
        print(f"cachelayer stats: cannot read metrics: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif args.sessions:
        print(format_sessions(doc, f"({source})"))
    else:
        print(format_stats(doc, f"({source})"))
    return 0
