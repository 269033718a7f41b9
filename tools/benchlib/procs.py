"""Child processes for the benchmark: servers on free 127.0.0.1 ports, the load generator.

Every server is its own process, and so is the load generator, so no two of them share
an event loop (or a GIL). Servers are always stopped: `server()` is a context manager
that sends SIGTERM, then SIGKILL, whatever happened inside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.processes import free_port as free_port
from tests.support.processes import terminate, wait_healthy

TOOLS = Path(__file__).resolve().parents[1]
REPO = TOOLS.parent


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for children: benchlib and the repo importable, nothing online."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TOOLS), str(REPO), env.get("PYTHONPATH", "")])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra or {})
    return env


@dataclass
class Server:
    """A running server child."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log_tail(self, n: int = 3000) -> str:
        """The end of its output, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def wait_ready(server: Server, path: str, timeout_s: float) -> None:
    """Poll `path` until it answers 200; raise with the server's log if it never does."""
    wait_healthy(server.proc, server.url, timeout_s, output=server.log_tail, path=path)


def stop(server: Server, grace_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after the grace period."""
    terminate(server.proc, grace_s)


@contextlib.contextmanager
def server(name: str, argv: Sequence[str], port: int, log_dir: Path, *,
           ready_path: str = "/health", timeout_s: float = 120.0,
           env: Mapping[str, str] | None = None, cwd: Path = REPO) -> Iterator[Server]:
    """Run `argv` (which listens on `port`) until the block ends."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT,
                                env=child_env(env), cwd=str(cwd))
    srv = Server(name, proc, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_ready(srv, ready_path, timeout_s)
        yield srv
    finally:
        stop(srv)


def target_argv(kind: str, port: int, *extra: str) -> list[str]:
    """argv of a benchlib.targets server."""
    return [sys.executable, "-m", "benchlib.targets", kind, "--port", str(port), *extra]


def cachelayer_argv(port: int, upstream: str, data_dir: Path, *extra: str) -> list[str]:
    """argv of `cachelayer serve` in front of `upstream`, with its own data directory."""
    return [sys.executable, "-m", "cachelayer", "serve", "--upstream", upstream,
            "--port", str(port), "--data-dir", str(data_dir),
            "--metrics-file", str(data_dir / "metrics.json"), *extra]


def run_loadgen(spec: dict[str, Any], timeout_s: float = 600.0) -> dict[str, Any]:
    """Run one load-generator job in its own process; returns its JSON result."""
    done = subprocess.run([sys.executable, "-m", "benchlib.loadgen"],
                          input=json.dumps(spec).encode(), capture_output=True,
                          env=child_env(), cwd=str(REPO), timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}):\n"
                           f"{done.stderr.decode(errors='replace')[-3000:]}")
    return dict(json.loads(done.stdout))


def get_json(url: str, timeout_s: float = 10.0) -> Any:
    """GET a URL and parse its JSON body."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


def post(url: str, body: bytes, headers: Mapping[str, str] | None = None,
         timeout_s: float = 120.0) -> tuple[int, dict[str, str], bytes]:
    """POST raw bytes; HTTP error statuses are returned, not raised."""
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def _version(module: str) -> str | None:
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        return version(module)
    return None


def machine() -> dict[str, Any]:
    """What the numbers were measured on: commit, dirty flag, machine (provenance.stamp)."""
    from benchlib.provenance import stamp

    return stamp()


def run_parts(prefix: str, out: dict[str, Any],
              parts: Callable[[Path], None], path: Path | None,
              finish: Callable[[dict[str, Any]], None] = lambda out: None) -> int:
    """Run `parts(work_dir)` (which fills `out`) in a fresh work dir, kept only if it
    fails; then `finish(out)`, print the JSON and write it to `path` if given."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        parts(work)
    except BaseException:
        print(f"work dir kept: {work}", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)
    finish(out)
    text = json.dumps(out, indent=2)
    print(text)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return 0
