"""Faults around the proxy: the upstream down, dying, lying, hanging or hanging up; the
client going away mid-stream; the data dir full or read-only; `kill -9` mid-write.

In each case the proxy answers a clear error (or ends a begun stream with an error event),
stores nothing it should not, and keeps serving.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from cachelayer.config import Settings
from cachelayer.proxy.prefix.ledger import LEDGER, Ledger
from cachelayer.proxy.store.backends.disk import DiskTier
from cachelayer.proxy.store.layer import STORE
from tests.hardening.helpers import (
    SUMMARY,
    CountingUpstream,
    ProxyFactory,
    Upstream,
    api_of,
    error_message,
    raw_tcp_server,
    read_request_head,
)
from tests.support import http
from tests.support.fake_upstream import Reply
from tests.support.proxy_process import (
    ProxyProcess,
    running_proxy,
    spawn_proxy,
    wait_until_up,
)
from tests.support.servers import RunningServer, free_port, serve_app
from tests.support.store_writes import wait_for_writes
from tests.support.wait import wait_until

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
LONG_TEXT = " ".join(f"word{i}" for i in range(30))


def body_for(path: str, text: str = "hi", *, stream: bool = False) -> dict[str, Any]:
    """A small valid request for an OpenAI chat or an Anthropic Messages route."""
    if path == MESSAGES:
        return {"model": "claude-x", "max_tokens": 64, "stream": stream,
                "messages": [{"role": "user", "content": text}]}
    return {"model": "m", "stream": stream, "messages": [{"role": "user", "content": text}]}


def stream_failed(path: str, content: bytes) -> bool:
    """True when an SSE body ends with an error event and not with a clean end."""
    if path == MESSAGES:
        return b"event: error" in content and b"message_stop" not in content
    return b'"error"' in content and b"data: [DONE]" not in content


def assert_nothing_stored_and_healthy(proxy: RunningServer) -> None:
    """No entry in the store, and /health still answers 200."""
    wait_for_writes(proxy)
    assert len(proxy.app[STORE]) == 0
    assert http.get(proxy.url + "/health").status == 200


# -- the upstream --------------------------------------------------------------------------


def test_upstream_down_at_start_gets_502_naming_it_then_serves_once_it_is_up(
    start_proxy: ProxyFactory,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with start_proxy(upstream=url) as proxy:
        for path in (CHAT, MESSAGES):
            answer = http.post(proxy.url + path, json=body_for(path))
            assert answer.status == 502
            assert url in error_message(answer, api_of(path))
        health = http.get(proxy.url + "/health")
        assert health.status == 200 and health.json()["upstream"]["ok"] is False
        assert len(proxy.app[STORE]) == 0
        fake = CountingUpstream()
        with serve_app(fake.make_app, port=port):
            for path in (CHAT, MESSAGES):
                answer = http.post(proxy.url + path, json=body_for(path))
                assert answer.status == 200, answer.content[:300]
                assert answer.headers["X-Cache-Status"] == "MISS"
            assert http.get(proxy.url + "/health").json()["upstream"]["ok"] is True
        assert len(fake.calls) == 2


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
def test_upstream_dying_mid_stream_ends_with_an_error_event_and_stores_nothing(
    proxy: RunningServer, upstream: Upstream, path: str
) -> None:
    fake, _ = upstream
    fake.script = lambda body: Reply(text=LONG_TEXT, cut_after=3)
    for _ in range(2):
        answer = http.post(proxy.url + path, json=body_for(path, stream=True))
        assert answer.status == 200
        assert b"word0" in answer.content  # the begun stream was relayed
        assert stream_failed(path, answer.content), answer.content[-300:]
    assert len(fake.calls) == 2  # the cut answer was not replayed
    assert_nothing_stored_and_healthy(proxy)


BAD_REPLIES = [
    pytest.param(Reply(raw_body=b"\x00\x01\x02 garbage \xff"), 502, id="garbage-as-json"),
    pytest.param(Reply(raw_body=b"<html><body>502 Bad Gateway</body></html>",
                       content_type="text/html"), 502, id="html-page"),
    pytest.param(Reply(raw_body=b'{"choices": "nope"}'), 502, id="json-without-choices"),
    pytest.param(Reply(raw_body=b'{"id": "x"}'), 502, id="json-object-no-choices"),
    pytest.param(Reply(raw_body=b"[]"), 502, id="json-array"),
    pytest.param(Reply(status=500), 500, id="status-500"),
    pytest.param(Reply(status=503), 503, id="status-503"),
    pytest.param(Reply(status=500, raw_body=b"<html>Internal Server Error</html>",
                       content_type="text/html"), 500, id="status-500-html"),
]


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
@pytest.mark.parametrize(("reply", "status"), BAD_REPLIES)
def test_upstream_garbage_html_and_5xx_are_errors_in_the_api_shape_never_stored(
    proxy: RunningServer, upstream: Upstream, reply: Reply, status: int, path: str
) -> None:
    fake, _ = upstream
    fake.script = lambda body: reply
    for _ in range(2):
        answer = http.post(proxy.url + path, json=body_for(path))
        assert answer.status == status, answer.content[:300]
        error_message(answer, api_of(path))
    assert len(fake.calls) == 2
    assert_nothing_stored_and_healthy(proxy)


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
def test_garbage_sse_chunk_mid_stream_ends_with_an_error_event(
    proxy: RunningServer, upstream: Upstream, path: str
) -> None:
    fake, _ = upstream
    fake.script = lambda body: Reply(raw_body=b"data: {not json\n\n",
                                     content_type="text/event-stream")
    answer = http.post(proxy.url + path, json=body_for(path, stream=True))
    assert answer.status == 200
    assert stream_failed(path, answer.content), answer.content[-300:]
    assert_nothing_stored_and_healthy(proxy)


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
def test_hung_upstream_gets_504_in_the_api_shape(
    upstream: Upstream, start_proxy: ProxyFactory, path: str
) -> None:
    fake, server = upstream
    fake.script = lambda body: Reply(hang=True)
    with start_proxy(upstream=server.url, read_timeout_s=0.5) as proxy:
        started = time.monotonic()
        answer = http.post(proxy.url + path, json=body_for(path))
        assert answer.status == 504
        assert time.monotonic() - started < 5
        error_message(answer, api_of(path))
        assert_nothing_stored_and_healthy(proxy)


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
def test_upstream_stalling_mid_stream_ends_with_a_timeout_error_event(
    upstream: Upstream, start_proxy: ProxyFactory, path: str
) -> None:
    fake, server = upstream
    fake.script = lambda body: Reply(text=LONG_TEXT, delay_s=2.0)
    with start_proxy(upstream=server.url, read_timeout_s=0.5) as proxy:
        answer = http.post(proxy.url + path, json=body_for(path, stream=True))
        assert answer.status == 200
        assert stream_failed(path, answer.content), answer.content[-300:]
        assert b"stopped answering" in answer.content
        assert_nothing_stored_and_healthy(proxy)


def _close_at_once(conn: socket.socket) -> None:
    read_request_head(conn)


def _reset(conn: socket.socket) -> None:
    read_request_head(conn)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _half_headers(conn: socket.socket) -> None:
    read_request_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Ty")


def _short_body(conn: socket.socket) -> None:
    read_request_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{\"id\": \"x\",")


def _not_http(conn: socket.socket) -> None:
    read_request_head(conn)
    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")


HANG_UPS: list[Any] = [
    pytest.param(_close_at_once, id="closes-before-answering"),
    pytest.param(_reset, id="resets-the-connection"),
    pytest.param(_half_headers, id="closes-inside-the-headers"),
    pytest.param(_short_body, id="closes-inside-the-body"),
    pytest.param(_not_http, id="answers-not-http"),
]


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
@pytest.mark.parametrize("behaviour", HANG_UPS)
def test_upstream_closing_the_connection_gets_502(
    start_proxy: ProxyFactory, behaviour: Callable[[socket.socket], None], path: str
) -> None:
    with raw_tcp_server(behaviour) as url, start_proxy(upstream=url) as proxy:
        answer = http.post(proxy.url + path, json=body_for(path), timeout=30)
        assert answer.status == 502, answer.content[:300]
        assert url in error_message(answer, api_of(path))
        assert_nothing_stored_and_healthy(proxy)


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
def test_upstream_resetting_mid_stream_ends_with_an_error_event(
    start_proxy: ProxyFactory, path: str
) -> None:
    relayed = threading.Event()

    def sse_then_reset(conn: socket.socket) -> None:
        if not read_request_head(conn).startswith(b"POST"):
            return  # the proxy's model probe: closed unanswered, the scenario is the POST
        chunk = (b'data: {"id": "c", "model": "m", "created": 1, "choices": [{"index": 0, '
                 b'"delta": {"content": "partial"}, "finish_reason": null}]}\n\n')
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n"
                     + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        # The reset comes once the client has the partial chunk: an RST drops what the
        # proxy has not read yet, so it must not overtake the chunk.
        if relayed.wait(30):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    with raw_tcp_server(sse_then_reset) as url, start_proxy(upstream=url) as proxy:
        with http.streaming(proxy.url + path, body_for(path, stream=True), 30) as answer:
            assert answer.status == 200
            content = http.read_until(answer, b"partial")
            relayed.set()
            content += answer.read()
        assert b"partial" in content
        assert stream_failed(path, content), content[-300:]
        assert_nothing_stored_and_healthy(proxy)


# -- the client ----------------------------------------------------------------------------


def _read_until(sock: socket.socket, marker: bytes, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
def test_client_disconnecting_mid_stream_stores_nothing_and_the_upstream_sees_it(
    proxy: RunningServer, upstream: Upstream, path: str
) -> None:
    """A slow stream (30 chunks, 0.15 s apart = 4.5 s); the client hangs up after the
    first text chunk. The upstream must see its connection dropped well before the
    stream would have ended, and nothing is stored."""
    fake, _ = upstream
    fake.script = lambda body: Reply(text=LONG_TEXT, delay_s=0.15)
    payload = http.json.dumps(body_for(path, stream=True)).encode()
    port = int(proxy.url.rsplit(":", 1)[1])
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                     f"\r\n".encode() + payload)
        received = _read_until(sock, b"word0")
        assert b"200 OK" in received and b"word0" in received
    wait_until(lambda: fake.disconnects >= 1, "the upstream to see the client's disconnect "
               "(else it kept generating)", timeout=3.0)
    assert time.monotonic() - started < 4.0
    assert_nothing_stored_and_healthy(proxy)
    # Once a later request through the same proxy has completed, a retried or second
    # stream of the first would have reached the upstream: there is none.
    fake.script = lambda body: Reply(text="later")
    assert http.post(proxy.url + path, json=body_for(path, "a later question")).status == 200
    assert (fake.disconnects, len(fake.calls)) == (1, 2)


# -- the data dir: full or read-only -------------------------------------------------------


def _degraded_everywhere(proxy: RunningServer) -> tuple[Any, Any]:
    health = http.get(proxy.url + "/health")
    stats = http.get(proxy.url + "/cache/stats")
    assert health.status == 200 and stats.status == 200
    return health.json(), stats.json()["layers"]["response"]


def _healthy_everywhere(proxy: RunningServer) -> bool:
    health, response_layer = _degraded_everywhere(proxy)
    return bool(health["status"] == "ok" and not response_layer["degraded"])


STORE_FAULTS = [
    pytest.param(lambda: OSError(28, "No space left on device"), id="disk-full"),
    pytest.param(lambda: sqlite3.OperationalError("attempt to write a readonly database"),
                 id="read-only"),
    pytest.param(lambda: sqlite3.OperationalError("database or disk is full"),
                 id="sqlite-full"),
]


@pytest.mark.parametrize("fault", STORE_FAULTS)
def test_store_write_failures_keep_serving_as_pass_through_and_report_degraded(
    proxy: RunningServer, upstream: Upstream, monkeypatch: pytest.MonkeyPatch,
    fault: Callable[[], Exception],
) -> None:
    fake, _ = upstream
    cache = proxy.app[STORE].cold._cache  # the diskcache tier behind the front

    def refuse(*args: Any, **kwargs: Any) -> bool:
        raise fault()

    monkeypatch.setattr(cache, "set", refuse)
    for path in (CHAT, MESSAGES):
        for stream in (False, True):
            body = body_for(path, f"degraded {stream}", stream=stream)
            answer = http.post(proxy.url + path, json=body)
            assert answer.status == 200 and answer.headers["X-Cache-Status"] == "MISS"
            wait_for_writes(proxy)
    health, response_layer = _degraded_everywhere(proxy)
    assert health["status"] == "degraded" and health["store"]["ok"] is False
    assert response_layer["degraded"], response_layer
    assert len(proxy.app[STORE]) == 0
    # still a pass-through: a repeat goes upstream again
    calls = len(fake.calls)
    assert http.post(proxy.url + CHAT, json=body_for(CHAT, "degraded False")).status == 200
    assert len(fake.calls) == calls + 1
    # the disk recovers: the next write lands and the flag clears
    monkeypatch.undo()
    assert http.post(proxy.url + CHAT, json=body_for(CHAT, "recovered")).status == 200
    wait_for_writes(proxy)
    health, response_layer = _degraded_everywhere(proxy)
    assert health["status"] == "ok" and not response_layer["degraded"]
    assert http.post(proxy.url + CHAT, json=body_for(CHAT, "recovered")).headers[
        "X-Cache-Status"] == "HIT"


def test_a_failed_ledger_flush_shows_in_health_until_a_flush_lands(
    proxy: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = proxy.app[LEDGER]
    cache = ledger._cache

    def refuse(*args: Any, **kwargs: Any) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(cache, "incr", refuse)
    assert http.post(proxy.url + CHAT, json=body_for(CHAT, "count me")).status == 200
    wait_until(lambda: http.get(proxy.url + "/health").json()["ledger"]["ok"] is False,
               "/health to report the failed ledger flush", timeout=10.0)
    health = http.get(proxy.url + "/health").json()
    assert health["status"] == "degraded" and "flush failed" in health["ledger"]["error"]
    monkeypatch.undo()
    wait_until(lambda: http.get(proxy.url + "/health").json()["ledger"]["ok"] is True,
               "/health to report a ledger flush that landed", timeout=10.0)
    assert ledger.persisted().get("requests", 0) >= 1  # the kept counts landed


@contextlib.contextmanager
def tiny_tmpfs(where: Path, size: str = "1m") -> Iterator[Path]:
    """Mount a small tmpfs at `where` (root only); skip the test where mounting is not
    permitted, and always unmount."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def _fill(directory: Path) -> int:
    """Write a filler file until the file system is full; returns the bytes written."""
    written = 0
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            written += os.write(fd, b"\0" * 4096)
    except OSError:
        return written
    finally:
        os.close(fd)


def test_a_real_full_disk_keeps_serving_reports_degraded_and_recovers(
    upstream: Upstream, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """A 1 MiB tmpfs as the data dir, filled up under a running proxy: both APIs keep
    answering (streamed or not), /health and /cache/stats say degraded, earlier entries
    still replay, and freeing space clears the flag."""
    fake, server = upstream
    fake.script = lambda body: Reply(text="z" * 40_000 + str(len(fake.calls)))
    with tiny_tmpfs(tmp_path / "mnt") as mnt:
        data_dir = mnt / "data"
        with start_proxy(upstream=server.url, data_dir=data_dir) as proxy:
            first = http.post(proxy.url + CHAT, json=body_for(CHAT, "before"))
            wait_for_writes(proxy)
            assert http.post(proxy.url + CHAT, json=body_for(CHAT, "before")).headers[
                "X-Cache-Status"] == "HIT"
            assert _fill(mnt) > 0
            for i, path in enumerate((CHAT, MESSAGES, CHAT)):
                answer = http.post(proxy.url + path, json=body_for(path, f"full {i}"))
                assert answer.status == 200, answer.content[:300]
                wait_for_writes(proxy)
            health, response_layer = _degraded_everywhere(proxy)
            assert health["status"] == "degraded" and response_layer["degraded"]
            for path in (CHAT, MESSAGES):  # streams pass through a full disk too
                answer = http.post(proxy.url + path, json=body_for(path, "s", stream=True))
                assert answer.status == 200 and not stream_failed(path, answer.content)
                wait_for_writes(proxy)
            again = http.post(proxy.url + CHAT, json=body_for(CHAT, "before"))
            assert again.status == 200
            assert http.answer_of(again.content) == http.answer_of(first.content)
            # space comes back: the next write lands and the flag clears
            (mnt / "filler").unlink()
            assert http.post(proxy.url + CHAT, json=body_for(CHAT, "after")).status == 200
            wait_for_writes(proxy)
            # the store's flag clears with that write, the ledger's at its next flush
            wait_until(lambda: _healthy_everywhere(proxy), "both flags to clear")


def test_proxy_starts_on_a_read_only_data_dir_as_a_degraded_pass_through(
    upstream: Upstream, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """A laptop whose cache disk is full or read-only at start still gets a proxy: it
    serves as a pass-through and says so in /health."""
    _, server = upstream
    with tiny_tmpfs(tmp_path / "mnt") as mnt:
        remount = subprocess.run(["mount", "-o", "remount,ro", str(mnt)],
                                 capture_output=True, check=False)
        assert remount.returncode == 0, remount.stderr
        with start_proxy(upstream=server.url, data_dir=mnt / "data") as proxy:
            for path in (CHAT, MESSAGES):
                assert http.post(proxy.url + path, json=body_for(path)).status == 200
            health, response_layer = _degraded_everywhere(proxy)
            assert health["status"] == "degraded" and response_layer["degraded"]


# -- kill -9 during a write storm ----------------------------------------------------------


@dataclass
class Served:
    """One answer the client got before the kill."""

    path: str
    body: dict[str, Any]
    content: bytes


def _storm(url: str, stop: threading.Event, served: list[Served], lock: threading.Lock,
           worker: int) -> int:
    sent = 0
    while not stop.is_set():
        path = CHAT if sent % 2 else MESSAGES
        body = body_for(path, f"storm worker {worker} request {sent}")
        sent += 1
        try:
            answer = http.post(url + path, json=body, timeout=10)
        except OSError:
            break  # the proxy is gone
        if answer.status == 200 and answer.headers.get("X-Cache-Status") == "MISS":
            with lock:
                served.append(Served(path, body, answer.content))
    return sent


def _integrity(db: Path) -> str:
    with contextlib.closing(sqlite3.connect(str(db))) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def test_kill_9_during_a_write_storm_leaves_a_clean_store_that_replays_byte_identical(
    upstream: Upstream, tmp_path: Path
) -> None:
    _, server = upstream
    child = spawn_proxy(tmp_path, server.url, name="storm")
    served: list[Served] = []
    lock = threading.Lock()
    stop = threading.Event()
    try:
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(_storm, child.url, stop, served, lock, w) for w in range(16)]
            wait_until(lambda: len(served) >= 300, "300 answers before the kill", timeout=60)
            child.kill9()
            stop.set()
            sent = sum(f.result(30) for f in futures)
    finally:
        child.stop()
    assert len(served) >= 100, f"only {len(served)} answers before the kill"
    # The files open cleanly and pass SQLite's own check before anything touches them.
    data = tmp_path / "data"
    for db in (data / "responses" / "cache.db", data / "ledger" / "cache.db"):
        assert _integrity(db) == "ok"
    store = DiskTier(data / "responses", size_limit=1 << 30)
    entries = len(store)
    store.close()
    Ledger(data / "ledger").close()
    with running_proxy(tmp_path, server.url, name="after-kill") as again:
        stats = http.get(again.url + "/cache/stats")
        assert stats.status == 200
        hits = mismatched = 0
        for answer in served:
            replay = http.post(again.url + answer.path, json=answer.body, timeout=10)
            assert replay.status == 200
            if replay.headers["X-Cache-Status"] == "HIT":
                hits += 1
                mismatched += http.answer_of(replay.content) != http.answer_of(answer.content)
    lost = len(served) - hits
    SUMMARY.append(f"kill -9 storm: {sent} requests sent, {len(served)} answered MISS before "
                   f"the kill, {entries} entries on disk after it, {hits} replayed as HIT "
                   f"with the same answer ({mismatched} differed), {lost} lost (write not landed)")
    assert mismatched == 0
    assert hits <= entries
    # Writes land off the request path; only those still queued at the kill may be lost:
    # the queue holds at most max_pending_writes, and past it each of the 16 clients waits
    # for its own write (whose streamed answer it may already have).
    bound = Settings().max_pending_writes + 16
    assert lost <= bound, f"{lost} of {len(served)} served answers were never stored"


def _holds_open(pid: int, path: Path) -> bool:
    """True when process `pid` has `path` open (read from /proc/<pid>/fd)."""
    target = str(path.resolve())
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == target:
                    return True
    return False


def _stopped(pid: int) -> bool:
    """True once process `pid` is in the stopped state (SIGSTOP has landed)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def _frozen_mid_start_up(child: ProxyProcess, db: Path) -> bool:
    """Freeze the child and look: True, leaving it frozen, when it holds `db` open and
    has not printed its banner (aiohttp prints it after every cleanup context ran), so a
    kill now lands mid-start-up for certain; otherwise let it run on."""
    os.kill(child.pid, signal.SIGSTOP)
    wait_until(partial(_stopped, child.pid), "the child to stop", timeout=5, interval=0)
    if _holds_open(child.pid, db) and "cachelayer listening on" not in child.output():
        return True
    os.kill(child.pid, signal.SIGCONT)
    return False


def _kill_mid_start_up(tmp_path: Path, upstream_url: str) -> None:
    """kill -9 a proxy once its response store's database is open and before its start-up
    finished. The child is frozen for each look, so the state seen is the state killed;
    a child that got past start-up between looks is replaced by a new one."""
    for attempt in range(5):
        child = spawn_proxy(tmp_path, upstream_url, name=f"mid-start-{attempt}", wait=False)
        db = child.data_dir / "responses" / "cache.db"

        def frozen_or_done(child: ProxyProcess = child, db: Path = db) -> str:
            if _frozen_mid_start_up(child, db):
                return "frozen"
            return "up" if "cachelayer listening on" in child.output() else ""

        try:
            seen = wait_until(frozen_or_done, f"the child to open {db}", timeout=30,
                              interval=0.001)
        except BaseException:
            child.stop()
            print(child.output())  # shown with the failure
            raise
        child.kill9()
        if seen == "frozen":
            return
    raise AssertionError("every child finished its start-up between two looks")


@pytest.mark.parametrize("stage", ["mid-start-up", "serving"])
def test_restart_after_kill_9_needs_no_repair_step(
    upstream: Upstream, tmp_path: Path, stage: str
) -> None:
    """A second kill -9 at a verified point (mid-start-up with the response store open,
    or once /health answers), then a clean start: it opens and replays the entry."""
    _, server = upstream
    child = spawn_proxy(tmp_path, server.url, name="first")
    assert http.post(child.url + CHAT, json=body_for(CHAT, "x")).status == 200
    wait_until(lambda: http.get(child.url + "/cache/stats").json()["layers"]["response"][
        "entries"] == 1, "the answer to be stored")
    child.kill9()
    if stage == "serving":
        child = spawn_proxy(tmp_path, server.url, name="second")
        child.kill9()
    else:
        _kill_mid_start_up(tmp_path, server.url)
    child = spawn_proxy(tmp_path, server.url, name="third", wait=False)
    try:
        wait_until_up(child)
        replay = http.post(child.url + CHAT, json=body_for(CHAT, "x"))
        assert replay.status == 200 and replay.headers["X-Cache-Status"] == "HIT"
    finally:
        child.stop()
