"""`cachelayer clear`, and what the maintenance commands share (`cachelayer stats` lives in
cli/stats.py): reset the caches from the shell."""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from cachelayer.config import REDIS_PASSWORD_ENV, Settings, default_data_dir


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    """The --data-dir option every command that touches the caches takes."""
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="cache root (default: $XDG_CACHE_HOME/cachelayer)")


def data_settings(args: argparse.Namespace) -> Settings:
    """Settings naming the data dir a maintenance command works on (--data-dir, else the
    per-user default from the environment)."""
    return Settings(data_dir=args.data_dir or default_data_dir(os.environ))


def add_clear_parser(sub: argparse._SubParsersAction) -> None:
    """Register `cachelayer clear`."""
    p = sub.add_parser("clear", help="remove cached answers, KV files or the ledger")
    p.add_argument("--responses", action="store_true", help="stored answers (the default)")
    p.add_argument("--kv", action="store_true", help="prompt KV cache files")
    p.add_argument("--ledger", action="store_true", help="counters and the prefix ledger")
    p.add_argument("--all", action="store_true", help="all of the above")
    p.add_argument("--yes", "-y", action="store_true",
                   help="do not ask for confirmation (required without a terminal)")
    p.add_argument("--store", default=None, metavar="URL",
                   help="the Redis/Valkey store the proxies share (as given to serve --store): "
                        "answers and ledger are cleared there, for every proxy")
    add_data_dir(p)
    p.set_defaults(func=cmd_clear)


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


def _row(label: str, value: Any) -> str:
    return f"  {label:<28} {value}"


def confirm(what: list[str], yes: bool) -> str | None:
    """None if removing `what` may go ahead, else why not (in words).

    Without a terminal nobody can answer the question, so only --yes removes anything:
    a script or a pipe never wipes a cache by accident. Ctrl-D at the prompt is a no.
    """
    if yes:
        return None
    if not sys.stdin.isatty():
        return (f"not removing {', '.join(what)}: stdin is not a terminal, so nobody can "
                "confirm; add --yes to remove without asking")
    try:
        answer = input(f"remove {', '.join(what)}? [y/N] ")
    except (EOFError, KeyboardInterrupt):
        print()
        return "cancelled: nothing removed"
    if answer.strip().lower() in ("y", "yes"):
        return None
    return "nothing removed"


def cmd_clear(args: argparse.Namespace) -> int:
    """Remove what is named; safe while a proxy or backend runs."""
    settings = data_settings(args)
    what = [name for name in ("responses", "kv", "ledger") if getattr(args, name) or args.all]
    what = what or ["responses"]
    refused = confirm(what, args.yes)
    if refused is not None:
        print(f"cachelayer clear: {refused}", file=sys.stderr)
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
        from cachelayer.proxy.store.backends.disk import DiskTier

        def open_store() -> DiskTier:
            return DiskTier(settings.responses_dir, size_limit=1 << 62)

        store = open_store()
        try:
            if store.degraded is None:
                return f"removed {store.clear_now()} stored answers"
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
        from cachelayer.proxy.prefix.ledger import Ledger

        ledger = Ledger(settings.ledger_dir)
        ledger.clear()
        ledger.close()
        return "counters and prefix ledger reset"
    from cachelayer.backend.kv_files import clear_kv

    files, nbytes = clear_kv(settings.kv_dir)
    return f"removed {files} KV cache files ({nbytes / 1e6:.1f} MB)"
