"""`cachelayer stats` and `cachelayer clear`: read and reset the caches from the shell."""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from cachelayer.config import REDIS_PASSWORD_ENV, Settings, default_data_dir
from cachelayer.telemetry.counters import reason_label
from cachelayer.telemetry.kv_memory import kv_memory_rows


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    """The --data-dir option every command that touches the caches takes."""
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="cache root (default: $XDG_CACHE_HOME/cachelayer)")


def data_settings(args: argparse.Namespace) -> Settings:
    """Settings naming the data dir a maintenance command works on (--data-dir, else the
    per-user default from the environment)."""
    return Settings(data_dir=args.data_dir or default_data_dir(os.environ))


def add_stats_parser(sub: argparse._SubParsersAction) -> None:
    """Register `cachelayer stats`."""
    p = sub.add_parser("stats", help="show what each cache layer did")
    p.add_argument("--json", action="store_true", help="print the metrics document as JSON")
    p.add_argument("--metrics-file", type=Path, default=Settings().metrics_file)
    p.add_argument("--url", default=None,
                   help="ask a running proxy (e.g. http://127.0.0.1:8082) instead of the file")
    p.add_argument("--store", default=None, metavar="URL",
                   help="read the shared totals of every proxy from this Redis/Valkey store "
                        "(as given to serve --store) instead of the file")
    add_data_dir(p)
    p.set_defaults(func=cmd_stats)


def add_clear_parser(sub: argparse._SubParsersAction) -> None:
    """Register `cachelayer clear`."""
    p = sub.add_parser("clear", help="remove cached answers, KV files or the ledger")
    p.add_argument("--responses", action="store_true", help="stored answers (the default)")
    p.add_argument("--kv", action="store_true", help="prompt KV cache files")
    p.add_argument("--ledger", action="store_true", help="counters and the prefix ledger")
    p.add_argument("--all", action="store_true", help="all of the above")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument("--store", default=None, metavar="URL",
                   help="the Redis/Valkey store the proxies share (as given to serve --store): "
                        "answers and ledger are cleared there, for every proxy")
    add_data_dir(p)
    p.set_defaults(func=cmd_clear)


def load_metrics(args: argparse.Namespace) -> dict[str, Any]:
    """The metrics document from a running proxy, the metrics file, or the ledger on disk."""
    if args.url:
        url = args.url.rstrip("/") + "/cache/stats"
        with urllib.request.urlopen(url, timeout=10) as response:
            return dict(orjson.loads(response.read()))
    if args.store:
        from cachelayer.proxy.store.backends.redis import read_shared
        from cachelayer.telemetry.export import build_metrics

        totals, prefixes, store = read_shared(args.store, os.environ.get(REDIS_PASSWORD_ENV))
        doc = build_metrics(totals, runtime_ms=0, store=store, prefixes=prefixes)
        doc["shared"] = {"store": store["url"], "error": None}
        return doc
    if args.metrics_file.exists():
        return dict(orjson.loads(args.metrics_file.read_bytes()))
    from cachelayer.telemetry.export import build_metrics
    from cachelayer.telemetry.ledger import Ledger

    ledger = Ledger(data_settings(args).ledger_dir)
    try:
        return build_metrics(ledger.totals(), runtime_ms=0, store={},
                             prefixes=ledger.prefixes.records())
    finally:
        ledger.close()


def _row(label: str, value: Any) -> str:
    return f"  {label:<28} {value}"


def format_stats(doc: dict[str, Any]) -> str:
    """A readable table per layer."""
    m = doc.get("metrics", {})
    layers = doc.get("layers", {})
    response = layers.get("response", {})
    kv = layers.get("kv", {})
    prefix = layers.get("prefix", {})
    lines = [f"cachelayer stats (exported {doc.get('exportedAt', '?')})", "overall"]
    lines += [
        _row("requests", m.get("totalRequests", 0)),
        _row("cache hits (store + kv)", f"{m.get('cacheHits', 0)}  ({m.get('hitRate')}%)"),
        _row("input tokens", m.get("totalInputTokens", 0)),
        _row("tokens not recomputed", f"{m.get('cacheReadTokens', 0)}  "
                                      f"({m.get('tokenSavings')}%)"),
        "response store (layer 2)",
        _row("hits / misses / bypasses", f"{response.get('hits', 0)} / "
             f"{response.get('misses', 0)} / {response.get('bypasses', 0)}"),
        _row("hit rate", f"{response.get('hitRate', 0.0):.2f}%"),
        _row("stored / evictions", f"{response.get('stored', 0)} / {response.get('evictions', 0)}"),
        # Only when it happened: requests that waited for their own write (queue full).
        *([_row("writes waited for", response["write_waits"])]
          if response.get("write_waits") else []),
        _row("tokens saved by hits", response.get("tokens_saved", 0)),
        _row("entries / bytes", f"{response.get('entries', '?')} / {response.get('bytes', '?')}"),
        "kv cache (layer 3)",
        _row("requests reusing their prefix", kv.get("hits", 0)),
        _row("tokens reused / prefilled", f"{kv.get('tokensReused', 0)} / "
                                          f"{kv.get('tokensPrefilled', 0)}"),
    ]
    if "files" in kv:
        lines.append(_row("files / bytes on disk", f"{kv.get('files')} / {kv.get('bytes')}"))
    if "blocks" in kv:
        lines.append(_row("blocks / checkpoints", f"{kv.get('blocks')} / {kv.get('checkpoints')}"))
        lines.append(_row("bytes written / read", f"{kv.get('bytes_written', 0)} / "
                                                  f"{kv.get('bytes_read', 0)}"))
        lines.append(_row("evicted blocks / checkpoints", f"{kv.get('evicted_blocks', 0)} / "
                                                          f"{kv.get('evicted_checkpoints', 0)}"))
        lines.append(_row("damaged files dropped", kv.get("corrupt_dropped", 0)))
        for family, r in (kv.get("reuse_by_family") or {}).items():
            lines.append(_row(f"reused ({family})", f"{r.get('reused_tokens', 0)} of "
                                                    f"{r.get('prompt_tokens', 0)} tokens"))
    if "tokens_restored_disk" in kv:
        lines.append(_row("restored disk / memory", f"{kv.get('tokens_restored_disk', 0)} / "
                                                    f"{kv.get('tokens_restored_memory', 0)}"))
        lines.append(_row("prefilled by the backend", kv.get("tokens_prefilled", 0)))
    memory = kv.get("memory")
    if isinstance(memory, dict) and "sequences" in memory:
        lines.append(_row("prompt caches in memory", memory["sequences"]))
    lines += [_row(label, value) for label, value in kv_memory_rows(kv)]
    if prefix:
        lines += _prefix_lines(prefix)
    lines += prefill_lines(doc)
    lines += scale_out_lines(doc)
    top = doc.get("topEntries") or []
    if top:
        lines.append("top prefixes")
        lines.append(f"  {'id':<18} {'tools':>5} {'prefix':>7} {'reqs':>5} {'hit':>4} "
                     f"{'part':>4} {'miss':>4} {'hit%':>6} {'reused':>9}  last reason")
        for e in top[:10]:
            size = f"{'~' if e.get('prefixTokensEstimated') else ''}{e.get('prefixTokens', 0)}"
            lines.append(
                f"  {str(e.get('hash', ''))[:16]:<18} {e.get('tools', 0):>5} {size:>7} "
                f"{e.get('requests', 0):>5} {e.get('hits', 0):>4} {e.get('partial', 0):>4} "
                f"{e.get('misses', 0):>4} {e.get('hitRate', ''):>6} "
                f"{e.get('cacheTokens', 0):>9}  {reason_label(e.get('lastMissReason') or '-')}"
            )
    return "\n".join(lines)


def _reasons(named: dict[str, int], *, slugs: bool = True) -> str:
    return ", ".join(f"{reason_label(k) if slugs else k}: {v}"
                     for k, v in named.items()) or "-"


def _prefix_lines(prefix: dict[str, Any]) -> list[str]:
    """Layer 1's rows: the honest hit / partial / miss split, rewrites, moves, warm count."""
    rewrites = prefix.get("rewrites") or {}
    return [
        "prefix (layer 1)",
        _row("requests / unique prefixes", f"{prefix.get('requests', 0)} / "
                                           f"{prefix.get('uniquePrefixes', 0)}"),
        _row("warm prefixes", f"{prefix.get('warmPrefixes', 0)}  (used in the last "
                              f"{prefix.get('warmWindowSeconds', 600) // 60} min)"),
        _row("hit / partial / miss", f"{prefix.get('hits', 0)} / {prefix.get('partial', 0)} / "
                                     f"{prefix.get('misses', 0)}  (+{prefix.get('storeHits', 0)}"
                                     " answered by the store)"),
        _row("why partial", _reasons(prefix.get("partialReasons") or {})),
        _row("why missed", _reasons(prefix.get("missReasons") or {})),
        _row("volatile text rewritten", f"{prefix.get('strippedSegments', 0)}  "
                                        f"({_reasons(rewrites, slugs=False)})"),
        _row("system blocks moved up", f"{prefix.get('systemBlocksMoved', 0)} in "
                                       f"{prefix.get('reorderedRequests', 0)} requests"),
        _row("tokens reused (estimated)", f"{prefix.get('reusedTokens', 0)} "
                                          f"({prefix.get('estimatedReusedTokens', 0)})"),
    ]


def prefill_lines(doc: dict[str, Any]) -> list[str]:
    """Streamed requests still prefilling, with the backend's progress (when any)."""
    prefills = doc.get("prefills") or []
    if not prefills:
        return []
    lines = [f"prefills in flight ({len(prefills)})"]
    for p in prefills:
        rate, eta = p.get("tokensPerSecond"), p.get("etaSeconds")
        lines.append(_row(str(p.get("requestId", "?"))[:28],
                          f"{p.get('doneTokens', 0)}/{p.get('totalTokens', 0)} tokens, "
                          f"{'?' if rate is None else round(rate)} tok/s, "
                          f"eta {'?' if eta is None else round(eta)} s, "
                          f"{p.get('elapsedSeconds', 0)} s so far"))
    return lines


def scale_out_lines(doc: dict[str, Any]) -> list[str]:
    """The shared store, this proxy's own totals, and each backend, where they exist."""
    lines: list[str] = []
    response = doc.get("layers", {}).get("response", {})
    shared = doc.get("shared")
    if shared is not None:
        lines += [
            f"shared store ({shared.get('store', '?')}; totals above are every proxy's)",
            _row("evicted by redis", response.get("evictedKeys", "?")),
            _row("memory / limit", f"{response.get('bytes', '?')} / "
                                   f"{response.get('limitBytes') or 'unbounded'} "
                                   f"({response.get('evictionPolicy', '?')})"),
        ]
        if shared.get("error"):
            lines.append(_row("shared ledger", shared["error"]))
    own = doc.get("thisProxy")
    if own is not None:
        mine = own.get("metrics", {})
        mine_response = own.get("layers", {}).get("response", {})
        lines += [
            "this proxy",
            _row("requests", mine.get("totalRequests", 0)),
            _row("store hits / misses", f"{mine_response.get('hits', 0)} / "
                                        f"{mine_response.get('misses', 0)}"),
            _row("tokens not recomputed", mine.get("cacheReadTokens", 0)),
        ]
    routing = doc.get("layers", {}).get("routing")
    if routing:
        lines.append(f"backends ({routing.get('mode')} routing, this proxy)")
        lines.append(f"  {'url':<32} {'up':>3} {'reqs':>7} {'errors':>7} {'kv reused':>10}")
        for b in routing.get("backends", []):
            lines.append(f"  {str(b.get('url'))[:32]:<32} {'yes' if b.get('healthy') else 'no':>3}"
                         f" {b.get('requests', 0):>7} {b.get('errors', 0):>7}"
                         f" {b.get('kvTokensReused', 0):>10}")
    return lines


def cmd_stats(args: argparse.Namespace) -> int:
    """Print the stats table (or the JSON document)."""
    try:
        doc = load_metrics(args)
    except (OSError, ValueError, urllib.error.URLError, orjson.JSONDecodeError) as exc:
        print(f"cachelayer stats: cannot read metrics: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(format_stats(doc))
    return 0


def _confirm(what: list[str], yes: bool) -> bool:
    if yes or not sys.stdin.isatty():
        return True
    answer = input(f"remove {', '.join(what)}? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def cmd_clear(args: argparse.Namespace) -> int:
    """Remove what is named; safe while a proxy or backend runs."""
    settings = data_settings(args)
    what = [name for name in ("responses", "kv", "ledger") if getattr(args, name) or args.all]
    what = what or ["responses"]
    if not _confirm(what, args.yes):
        print("nothing removed")
        return 1
    started = time.perf_counter()
    if args.store:
        from cachelayer.proxy.store.backends.redis import clear_shared

        try:
            for line in clear_shared(args.store, os.environ.get(REDIS_PASSWORD_ENV),
                                     [w for w in what if w != "kv"]):
                print(line)
        except ValueError as exc:
            print(f"cachelayer clear: {exc}", file=sys.stderr)
            return 1
        what = [w for w in what if w == "kv"]
    for name in what:
        print(f"{name}: {clear_one(name, settings)}")
    print(f"done in {time.perf_counter() - started:.2f}s")
    return 0


def clear_one(name: str, settings: Settings) -> str:
    """Clear one cache under the data dir; returns what was removed, in words."""
    if name == "responses":
        if not settings.responses_dir.exists():
            return "nothing stored"
        from cachelayer.proxy.store.backends.disk import ResponseStore

        def open_store() -> ResponseStore:
            return ResponseStore(settings.responses_dir, size_limit=1 << 62, ttl_s=0,
                                 entry_max_bytes=0)

        store = open_store()
        try:
            if store.degraded is None:
                return f"removed {store.clear()} stored answers"
            why = store.degraded
        except sqlite3.Error as exc:  # opened, but its tables are unreadable
            why = f"cannot read the response store: {exc}"
        finally:
            store.close()
        # A store that cannot be opened cannot be cleared entry by entry: it goes whole.
        shutil.rmtree(settings.responses_dir)
        fresh = open_store()
        fresh.close()
        state = "an empty one created" if fresh.degraded is None else fresh.degraded
        return f"{why}; removed the whole store ({state})"
    if name == "ledger":
        from cachelayer.telemetry.ledger import Ledger

        ledger = Ledger(settings.ledger_dir)
        ledger.clear()
        ledger.close()
        return "counters and prefix ledger reset"
    from cachelayer.backend.kv_files import clear_kv

    files, nbytes = clear_kv(settings.kv_dir)
    return f"removed {files} KV cache files ({nbytes / 1e6:.1f} MB)"
