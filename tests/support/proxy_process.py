"""`python -m cachelayer serve` as a real child process: started on a free port, waited
for, its output kept in files, always stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.processes import free_port, terminate, wait_healthy

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ProxyProcess:
    """`python -m cachelayer serve` running as a child process, its output in files."""

    proc: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    metrics_file: Path
    stdout_path: Path
    stderr_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def rss_kib(self) -> int:
        """Resident memory of the child (VmRSS from /proc), in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS line")

    def output(self) -> str:
        """Everything the child wrote to stdout and stderr so far."""
        return (self.stdout_path.read_text(errors="replace")
                + self.stderr_path.read_text(errors="replace"))

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        return terminate(self.proc, timeout)

    def stop_cleanly(self, timeout: float = 20.0) -> None:
        """stop(), failing with the tail of the child's output (its stacks, if it hung)
        unless it exited 0."""
        status = self.stop(timeout)
        assert status == 0, f"exit status {status}:\n{self.output()[-6000:]}"

    def kill9(self) -> None:
        """SIGKILL: no clean-up of any kind runs."""
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(10)


def spawn_proxy(tmp: Path, upstream_url: str | None, *extra: str, name: str = "proxy",
                data_dir: Path | None = None, port: int | None = None,
                wait: bool = True, up_timeout: float = 30.0) -> ProxyProcess:
    """Start `python -m cachelayer serve` on a free loopback port and (by default) wait
    until /health answers. Without an upstream it runs its embedded demo backend."""
    port = port or free_port()
    data_dir = data_dir or tmp / "data"
    metrics_file = tmp / f"{name}-metrics.json"
    stdout_path, stderr_path = tmp / f"{name}.stdout", tmp / f"{name}.stderr"
    upstream = ["--upstream", upstream_url] if upstream_url else []
    args = [sys.executable, "-m", "cachelayer", "serve", *upstream,
            "--port", str(port), "--data-dir", str(data_dir),
            "--metrics-file", str(metrics_file), "--metrics-interval", "0.5",
            "--connect-timeout", "2", "--read-timeout", "10", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1",
           "PYTHONFAULTHANDLER": "1"}
    env.pop("CACHELAYER_ADMIN_TOKEN", None)
    with stdout_path.open("ab") as out, stderr_path.open("ab") as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err, env=env, cwd=str(tmp),
                                stdin=subprocess.DEVNULL)
    host = "127.0.0.1"
    if "--host" in extra:
        host = extra[extra.index("--host") + 1]
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    child = ProxyProcess(proc, f"http://{host}:{port}", data_dir, metrics_file,
                         stdout_path, stderr_path, args)
    if wait:
        wait_until_up(child, up_timeout)
    return child


def wait_until_up(child: ProxyProcess, timeout: float = 30.0) -> None:
    """Wait for the child's /health to answer 200; fail with its output if it dies."""
    try:
        wait_healthy(child.proc, child.url, timeout, output=child.output)
    except (RuntimeError, TimeoutError) as exc:
        child.stop()
        raise RuntimeError(f"proxy did not come up: {exc}") from exc


@contextlib.contextmanager
def running_proxy(tmp: Path, upstream_url: str | None, *extra: str,
                  **kwargs: Any) -> Iterator[ProxyProcess]:
    """spawn_proxy, always stopped on exit."""
    child = spawn_proxy(tmp, upstream_url, *extra, **kwargs)
    try:
        yield child
    finally:
        child.stop()
