"""A real redis-server (Debian's package) on a free 127.0.0.1 port in a temp dir: started
for a test, killable and restartable on the same port mid-test, always stopped."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.support.processes import free_port, terminate
from tests.support.tls import TlsFiles
from tests.support.wait import wait_until

REDIS_SERVER = "redis-server"


@dataclass
class RedisServer:
    """One redis-server child; no persistence, so a restart comes back empty."""

    directory: Path
    password: str | None = None
    maxmemory: str | None = None
    # TLS only (`--port 0 --tls-port`): clients must use rediss:// and trust `tls.ca`.
    tls: TlsFiles | None = None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0, *, with_password: bool = True) -> str:
        """redis://[:password@]127.0.0.1:port/db (rediss:// when TLS only)."""
        auth = f":{self.password}@" if self.password and with_password else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        """A blocking client for assertions."""
        tls = {"ssl": True, "ssl_ca_certs": str(self.tls.ca)} if self.tls else {}
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, password=self.password,
                           socket_timeout=5, **tls)  # type: ignore[arg-type]

    def start(self, timeout_s: float = 10.0) -> None:
        """Start (or restart) on the same port and wait until it answers PING."""
        binary = shutil.which(REDIS_SERVER)
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server; "
                               ".ci/run does it)")
        self.directory.mkdir(parents=True, exist_ok=True)
        ports = ["--port", str(self.port)]
        if self.tls:
            ports = ["--port", "0", "--tls-port", str(self.port),
                     "--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key),
                     "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no"]
        argv = [binary, *ports, "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]
        if self.password:
            argv += ["--requirepass", self.password]
        if self.maxmemory:
            argv += ["--maxmemory", self.maxmemory, "--maxmemory-policy", "allkeys-lru"]
        log = (self.directory / "redis.log").open("ab")
        with log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        proc = self.proc

        def answers() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}")
            return bool(self.client().ping())

        try:
            wait_until(answers, f"redis-server on port {self.port} to answer PING",
                       timeout=timeout_s, interval=0.05, errors=(redis.RedisError, OSError))
        except BaseException:
            self.stop()
            raise

    def kill(self) -> None:
        """SIGKILL: the data is gone, clients see refused connections."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL."""
        if self.proc is not None:
            terminate(self.proc, 10)


@contextlib.contextmanager
def running_redis(directory: Path, **kwargs: object) -> Iterator[RedisServer]:
    """A started RedisServer, always stopped on exit."""
    server = RedisServer(directory, **kwargs)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()
