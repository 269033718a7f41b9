"""Every child process the tests and benchmarks start: spawned, health-polled, stopped.

No mlx import: this only spawns commands, polls `/health` and cleans up. The benchmarks
in tools/ use it too (they put the repository on sys.path).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cachelayer.cli.serve import free_port as free_port
from cachelayer.proxy.embedded import backend_command as backend_command
from tests.support.wait import WaitTimeout, wait_until


@dataclass
class ServerProcess:
    """A server child process listening on 127.0.0.1:`port`."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:8080."""
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        """The server's combined output so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def stock_command(model: Path | str, port: int, *extra: str) -> list[str]:
    """argv for the unmodified `mlx_lm.server` on `port`."""
    return [
        sys.executable,
        "-m",
        "mlx_lm",
        "server",
        "--model",
        str(model),
        "--port",
        str(port),
        *extra,
    ]


def wait_healthy(proc: subprocess.Popen[bytes], url: str, timeout: float, *,
                 output: Callable[[], str] = lambda: "", path: str = "/health") -> None:
    """Poll GET url+path until it answers 200; raise with the output if it never does.

    RuntimeError at once if the process exits; TimeoutError (the benchmarks catch it)
    naming the URL and carrying the output if it is still not healthy after `timeout`.
    """
    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}:\n{output()}")
        with urllib.request.urlopen(url + path, timeout=2) as r:
            return bool(r.status == 200)

    try:
        wait_until(healthy, f"{url}{path} to answer 200", timeout=timeout, interval=0.1,
                   errors=(OSError, urllib.error.URLError, ValueError))
    except WaitTimeout as exc:
        raise TimeoutError(f"{exc}\n{output()}") from exc


def start_server(
    argv: Sequence[str],
    port: int,
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    ready_timeout: float = 180.0,
) -> ServerProcess:
    """Spawn `argv`, wait for /health; the caller must stop_server() it."""
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("HF_HUB_OFFLINE", "1")
    child_env.setdefault("PYTHONFAULTHANDLER", "1")
    log = log_path.open("wb")
    proc = subprocess.Popen(
        list(argv), stdout=log, stderr=subprocess.STDOUT, env=child_env, cwd=cwd
    )
    log.close()
    server = ServerProcess(proc, port, log_path)
    try:
        wait_healthy(proc, server.url, ready_timeout, output=server.log)
    except BaseException:
        stop_server(server)
        raise
    return server


def terminate(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM, then SIGABRT and SIGKILL after `timeout`; returns the exit status.

    The SIGABRT is for the post-mortem: a Python child started with PYTHONFAULTHANDLER=1
    writes every thread's stack to its stderr before it dies (exit status -6), so a hung
    shutdown says where it hung instead of only "-9".
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return int(proc.returncode)


def stop_server(server: ServerProcess, timeout: float = 30.0) -> int:
    """Stop a server started by start_server; returns the exit status."""
    return terminate(server.proc, timeout)


@contextlib.contextmanager
def running_server(
    argv: Sequence[str],
    port: int,
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[ServerProcess]:
    """Context manager around start_server/stop_server."""
    server = start_server(argv, port, log_path, env=env, cwd=cwd)
    try:
        yield server
    finally:
        stop_server(server)
