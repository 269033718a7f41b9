"""Claude Code's sessions through `cachelayer serve` on the demo model: what each turn prefills.

Runs the real Claude Code CLI (.e2e/, see the Makefile) through this checkout's proxy
and, with --reference DIR, through another checkout's (e.g. main before a change), one
after the other with the same turns: a new session A, a new session B, `--continue` (of
B), then `cachelayer serve` restarted and A resumed (`--resume`), a session never
continued before, as after a day's break. Each
turn's prompt and reused tokens come from the backend's own usage counts, read as
deltas of the proxy's `/cache/stats`.

    .venv/bin/python tools/claude_sessions.py --reference /path/to/main-checkout
    .venv/bin/python tools/claude_sessions.py --tools Bash,Agent     # a smaller prompt

With all of Claude Code's tools the cold turn prefills ~40k tokens: minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
sys.path[:0] = [str(TOOLS), str(TOOLS.parent)]

from benchlib import procs  # noqa: E402

from tests.e2e.claude_cli import claude  # noqa: E402

TURNS = ("new session A (cold)", "new session B", "--continue (B)",
         "--resume A after a restart")


def _counts(url: str) -> tuple[int, int]:
    doc = procs.get_json(url + "/cache/stats", 30)
    return int(doc["metrics"]["totalInputTokens"]), int(doc["layers"]["kv"]["tokensReused"])


def _turn(url: str, home: Path, prompt: str, args: list[str]) -> dict[str, Any]:
    before, started = _counts(url), time.perf_counter()
    done = claude(url, home, prompt, *args, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"claude failed: {done.stderr[-2000:]}")
    after = _counts(url)
    prompt_tokens, reused = after[0] - before[0], after[1] - before[1]
    return {"prompt": prompt_tokens, "prefilled": prompt_tokens - reused,
            "seconds": round(time.perf_counter() - started, 1)}


def _serve(checkout: Path, data: Path, name: str, log_dir: Path) -> Any:
    port = procs.free_port()
    argv = [sys.executable, "-m", "cachelayer", "serve", "--port", str(port),
            "--data-dir", str(data), "--metrics-file", str(data / "metrics.json"),
            "--max-tokens-cap", "64", "--read-timeout", "1800"]
    env = {"PYTHONPATH": os.pathsep.join([str(checkout), str(procs.TOOLS)])}
    return procs.server(name, argv, port, log_dir, timeout_s=600, env=env, cwd=checkout)


def run_checkout(checkout: Path, work: Path, extra: list[str]) -> list[dict[str, Any]]:
    """The four turns through one checkout's proxy; each turn's numbers."""
    home, data, session = work / "home", work / "data", str(uuid.uuid4())
    turns = []
    with _serve(checkout, data, "serve", work) as server:
        turns.append(_turn(server.url, home, "Say hello.", [*extra, "--session-id", session]))
        turns.append(_turn(server.url, home, "Start something else.", extra))
        turns.append(_turn(server.url, home, "Say more.", [*extra, "--continue"]))
    with _serve(checkout, data, "serve-restarted", work) as server:
        turns.append(_turn(server.url, home, "Back to the first.",
                           [*extra, "--resume", session]))
    return turns


def _cell(t: dict[str, Any]) -> str:
    return f"{t['prompt']:,} / {t['prefilled']:,} ({t['seconds']} s)"


def main() -> int:
    """Run, print a markdown table (prompt / prefilled per turn), write JSON."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, default=None,
                        help="another checkout to run the same turns through")
    parser.add_argument("--tools", default=None,
                        help="Claude Code's --tools list (default: all its tools)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    extra = ["--tools", args.tools] if args.tools else []
    checkouts = {"this": procs.REPO}
    if args.reference:
        checkouts["reference"] = args.reference.resolve()
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="claude-sessions-") as tmp:
        for label, checkout in checkouts.items():
            results[label] = run_checkout(checkout, Path(tmp) / label, extra)
    labels = list(results)
    print("| turn | " + " | ".join(f"{label}: prompt / prefilled" for label in labels)
          + (" | prefilled, this vs reference |" if "reference" in results else " |"))
    print("|---" * (len(labels) + 1 + ("reference" in results)) + "|")
    for i, name in enumerate(TURNS):
        row = [name, *(_cell(results[label][i]) for label in labels)]
        if "reference" in results:
            mine, ref = results["this"][i]["prefilled"], results["reference"][i]["prefilled"]
            row.append(f"{mine / ref:.4f}x" if ref else "-")
        print("| " + " | ".join(row) + " |")
    if args.out:
        args.out.write_text(json.dumps({"machine": procs.machine(),
                                        "tools": args.tools or "all", "turns": TURNS,
                                        "results": results,
                                        "checkouts": {k: str(v) for k, v in checkouts.items()}},
                                       indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
