"""Long prefills, side by side: stock `mlx_lm.server` vs `cachelayer backend`, one run.

On a model of a real model's KV width (48 layers x 4 KV heads x head_dim 128, bf16; tiny
hidden size, random weights, built here), for each server:

  1. a short request's time to first token alone;
  2. the same while another request's long cold prefill runs (sent 0.5 s after it);
  3. the same while the long prompt is restored after a restart (cachelayer: from disk;
     stock keeps nothing across a restart, so it prefills again);
  4. the time an interruption loses: the long request is abandoned half-way through its
     prefill and re-sent at once; lost = (time until the hang-up + the re-send's time to
     first token) - a cold prefill's time to first token;
  5. restore speed (GB/s) against the disk's sequential read and memcpy, with the page
     cache warm and cold (cold without root: fadvise DONTNEED, checked with mincore):
     `benchlib/restore_speed.py`. Stock keeps nothing on disk, so this row has no
     stock column.

Writes bench-prefill.json to --out and prints markdown tables.

    python tools/bench_prefill.py [--lines 60] [--out DIR] [--work-dir DIR]
                                  [--restore-tokens 2048] [--only servers|restore]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# Run from a checkout without installing: make the repository importable.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from tests.support.processes import (  # noqa: E402
    ServerProcess,
    backend_command,
    free_port,
    start_server,
    stock_command,
    stop_server,
)

SHORT = "What is in README.md?"


def build_geometry_model(path: Path) -> Path:
    """A model directory with GEOMETRY's KV width (bf16), built once."""
    if (path / "config.json").exists():
        return path
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    from cachelayer.backend.demo_model import EOS_TOKEN, save_model_files, train_tokenizer
    from tests.support.family_models import GEOMETRY

    tokenizer = train_tokenizer(int(GEOMETRY["vocab_size"]))
    config = {**GEOMETRY, "vocab_size": max(int(GEOMETRY["vocab_size"]),
                                            tokenizer.get_vocab_size()),
              "eos_token_id": tokenizer.token_to_id(EOS_TOKEN),
              "bos_token_id": tokenizer.token_to_id("<|begin|>"), "torch_dtype": "bfloat16",
              "max_position_embeddings": 131072}
    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    model.set_dtype(mx.bfloat16)
    path.mkdir(parents=True, exist_ok=True)
    save_model_files(path, dict(tree_flatten(model.parameters())), config, tokenizer)
    return path


def stream(server: ServerProcess, text: str, *, hang_up_after: float | None = None
           ) -> dict[str, Any]:
    """One streamed chat request: its time to first token (or when it hung up)."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=3600)
    body = {"model": "default_model", "temperature": 0, "stream": True, "max_tokens": 2,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": text}]}
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    out: dict[str, Any] = {"sent": started}
    sock = conn.sock  # getresponse() hands it to the response (conn.sock becomes None)
    if hang_up_after is not None:
        def hang_up() -> None:
            out["hung_up_s"] = time.monotonic() - started
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        timer = threading.Timer(hang_up_after, hang_up)
        timer.start()
    response = conn.getresponse()
    try:
        for line in response:
            if line.startswith(b"data:") and "ttft_s" not in out:
                out["ttft_s"] = time.monotonic() - started
            if b'"usage"' in line and b'"prompt_tokens"' in line:
                usage = json.loads(line[5:])["usage"]
                out["prompt_tokens"] = usage["prompt_tokens"]
                out["cached_tokens"] = (usage.get("prompt_tokens_details") or {}).get(
                    "cached_tokens", 0)
    except (OSError, http.client.HTTPException):
        pass  # the hang-up
    finally:
        if hang_up_after is not None:
            timer.cancel()
        response.close()
        conn.close()
    return out


def short_during(server: ServerProcess, long_text: str, delay_s: float = 0.5
                 ) -> dict[str, Any]:
    """A short request's TTFT, sent `delay_s` after a long one; and the long one's."""
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(long=stream(server, long_text)))
    worker.start()
    time.sleep(delay_s)
    result["short"] = stream(server, SHORT)
    worker.join()
    return {"short_ttft_s": round(result["short"]["ttft_s"], 2),
            "long_ttft_s": round(result["long"]["ttft_s"], 2),
            "long_cached_tokens": result["long"].get("cached_tokens")}


def run_server(kind: str, model: Path, work: Path, long_text: str) -> dict[str, Any]:
    """Every measurement on one server kind."""
    kv = work / f"kv-{kind}"
    shutil.rmtree(kv, ignore_errors=True)

    def start(n: int) -> ServerProcess:
        port = free_port()
        argv = (stock_command(model, port) if kind == "stock"
                else backend_command(model, port, kv))
        env = {**os.environ, "HF_HOME": str(work / "hf"), "HF_HUB_OFFLINE": "1"}
        (work / "hf").mkdir(exist_ok=True)
        return start_server(argv, port, work / f"{kind}-{n}.log", cwd=ROOT, env=env)

    out: dict[str, Any] = {"server": kind}
    server = start(0)
    try:
        stream(server, "warm up")
        out["alone_ttft_s"] = round(statistics.median(
            stream(server, SHORT)["ttft_s"] for _ in range(3)), 2)
        print(f"  {kind}: alone {out['alone_ttft_s']} s", file=sys.stderr)
        out["during_cold"] = short_during(server, long_text)
        print(f"  {kind}: during a cold prefill {out['during_cold']}", file=sys.stderr)
    finally:
        stop_server(server)
    server = start(1)  # memory empty: the long prompt comes from disk (or not at all)
    try:
        stream(server, "warm up")
        out["during_restore"] = short_during(server, long_text)
        print(f"  {kind}: during a restore {out['during_restore']}", file=sys.stderr)
    finally:
        stop_server(server)
    shutil.rmtree(kv, ignore_errors=True)
    server = start(2)
    try:
        stream(server, "warm up")
        cold = out["during_cold"]["long_ttft_s"]
        first = stream(server, long_text, hang_up_after=cold / 2)
        resent = stream(server, long_text)
        lost = first.get("hung_up_s", 0.0) + resent["ttft_s"] - cold
        out["interrupted"] = {"hung_up_after_s": round(first.get("hung_up_s", 0.0), 2),
                              "resent_ttft_s": round(resent["ttft_s"], 2),
                              "resent_cached_tokens": resent.get("cached_tokens"),
                              "lost_s": round(lost, 2)}
        print(f"  {kind}: interrupted {out['interrupted']}", file=sys.stderr)
    finally:
        stop_server(server)
    return out


def markdown(report: dict[str, Any]) -> str:
    """The results as markdown tables, both servers side by side."""
    from benchlib.restore_speed import markdown as restore_markdown

    tables = []
    if report.get("servers"):
        tables.append(servers_markdown(report))
    if report.get("restore_speed"):
        tables.append(restore_markdown(report["restore_speed"]))
    return "\n\n".join(tables)


def servers_markdown(report: dict[str, Any]) -> str:
    """The server measurements, stock and cachelayer side by side."""
    rows = {r["server"]: r for r in report["servers"]}
    stock, ours = rows["stock"], rows["cachelayer"]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.1f}x" if b else "-"

    lines = ["| measurement | stock mlx_lm.server | cachelayer backend | stock / cachelayer |",
             "|---|---:|---:|---:|"]
    for label, a, b in [
        ("short request TTFT, alone (s)", stock["alone_ttft_s"], ours["alone_ttft_s"]),
        ("short request TTFT during a cold prefill (s)",
         stock["during_cold"]["short_ttft_s"], ours["during_cold"]["short_ttft_s"]),
        ("the long prompt's own TTFT, cold (s)",
         stock["during_cold"]["long_ttft_s"], ours["during_cold"]["long_ttft_s"]),
        ("short request TTFT during a restore after a restart (s)",
         stock["during_restore"]["short_ttft_s"], ours["during_restore"]["short_ttft_s"]),
        ("the long prompt's TTFT after a restart (s)",
         stock["during_restore"]["long_ttft_s"], ours["during_restore"]["long_ttft_s"]),
        ("time lost to a hang-up half-way (s)",
         stock["interrupted"]["lost_s"], ours["interrupted"]["lost_s"]),
    ]:
        lines.append(f"| {label} | {a} | {b} | {ratio(a, b)} |")
    lines.append(f"| tokens reused by the re-send after the hang-up | "
                 f"{stock['interrupted']['resent_cached_tokens']} | "
                 f"{ours['interrupted']['resent_cached_tokens']} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run both servers and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=60,
                        help="lines of the long prompt (about 14 tokens each; default 60)")
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--restore-tokens", type=int, default=2048,
                        help="tokens of the chain whose restore speed is measured "
                             "(96 KiB each; default 2048)")
    parser.add_argument("--only", choices=("servers", "restore"), default=None,
                        help="run only the server comparison or only the restore speed")
    args = parser.parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-prefill-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"lines": args.lines, "load_average": os.getloadavg(),
                              "cpus": os.cpu_count(), "servers": []}
    if args.only != "restore":
        model = build_geometry_model(work / "geometry-model")
        long_text = " ".join(f"line {i} of the long file says hello."
                             for i in range(args.lines))
        for kind in ("stock", "cachelayer"):
            report["servers"].append(run_server(kind, model, work, long_text))
    if args.only != "servers":
        from benchlib.restore_speed import bench_restore_speed

        report["restore_speed"] = bench_restore_speed(work, args.restore_tokens)
    report["load_average_after"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench-prefill.json").write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
