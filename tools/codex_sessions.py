"""Codex CLI sessions through `cachelayer serve` on the demo model: what each turn prefills.

Runs the real Codex CLI (.e2e-codex/, see the Makefile) through this checkout's proxy,
with the ~/.codex/config.toml of docs/codex.md: a new session A, a new session B,
`codex exec resume --last` (B), then `cachelayer serve` restarted and A resumed by its
session id, as after a day's break. Each turn's prompt and reused tokens come from the
backend's own usage counts, read as deltas of the proxy's `/cache/stats`; seconds are
the wall time of the whole `codex exec` run.

    .venv/bin/python tools/codex_sessions.py --out docs/benchmarks/codex-sessions.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
sys.path[:0] = [str(TOOLS), str(TOOLS.parent)]

from benchlib import procs  # noqa: E402

from tests.e2e.codex_cli import codex  # noqa: E402

TURNS = ("new session A (cold)", "new session B", "resume --last (B)",
         "resume A after a restart")
_SESSION = re.compile(r"session id: ([0-9a-f-]{36})")


def _counts(url: str) -> tuple[int, int]:
    doc = procs.get_json(url + "/cache/stats", 30)
    return int(doc["metrics"]["totalInputTokens"]), int(doc["layers"]["kv"]["tokensReused"])


def _turn(url: str, home: Path, *args: str) -> tuple[dict[str, Any], str]:
    before, started = _counts(url), time.perf_counter()
    done = codex(url, home, *args, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"codex failed: {done.stderr[-2000:]}")
    after = _counts(url)
    prompt_tokens, reused = after[0] - before[0], after[1] - before[1]
    found = _SESSION.search(done.stderr)
    return ({"prompt": prompt_tokens, "prefilled": prompt_tokens - reused,
             "seconds": round(time.perf_counter() - started, 1)},
            found.group(1) if found else "")


def _serve(data: Path, name: str, log_dir: Path) -> Any:
    port = procs.free_port()
    argv = [sys.executable, "-m", "cachelayer", "serve", "--port", str(port),
            "--data-dir", str(data), "--metrics-file", str(data / "metrics.json"),
            "--max-tokens-cap", "64", "--read-timeout", "1800"]
    env = {"PYTHONPATH": os.pathsep.join([str(procs.REPO), str(procs.TOOLS)])}
    return procs.server(name, argv, port, log_dir, timeout_s=600, env=env, cwd=procs.REPO)


def run(work: Path) -> list[dict[str, Any]]:
    """The four turns; each turn's numbers."""
    home, data = work / "home", work / "data"
    turns = []
    with _serve(data, "serve", work) as server:
        first, session_a = _turn(server.url, home, "Say hello.")
        turns.append(first)
        turns.append(_turn(server.url, home, "Start something else.")[0])
        turns.append(_turn(server.url, home, "resume", "--last", "Say more.")[0])
    with _serve(data, "serve-restarted", work) as server:
        turns.append(_turn(server.url, home, "resume", session_a, "Back to the first.")[0])
    return turns


def main() -> int:
    """Run, print a markdown table (prompt / prefilled per turn), write JSON."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="codex-sessions-") as tmp:
        turns = run(Path(tmp))
    print("| turn | prompt tokens | prefilled | seconds |")
    print("|---|---:|---:|---:|")
    for name, t in zip(TURNS, turns, strict=True):
        print(f"| {name} | {t['prompt']:,} | {t['prefilled']:,} | {t['seconds']} |")
    if args.out:
        args.out.write_text(json.dumps({"turns": TURNS, "results": turns}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
