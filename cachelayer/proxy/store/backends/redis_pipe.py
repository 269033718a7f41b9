"""A lean pipelined Redis connection for the hit path's reads.

redis-py spends 80-180 µs of CPU on every command (pool checkout, packing, its reply
parser), more than the rest of a store hit. This connection is the hit path's only: the
reads asked for in one turn of the event loop leave in one write at its end, replies are
matched to callers in order (RESP2), and concurrent hits share the socket and its system
calls: a 12-byte read costs a fraction of redis-py's CPU (tools/bench_redis_reads.py
measures both in one run).

It connects as the redis-py client it is made from does (host, port, database, user,
password, and TLS with that client's own context, so a URL's `ssl_*` options hold), and
lazily: a Redis that is down costs nothing until a read. A reply that has not come within
the client's socket timeout, or a lost connection, fails every read in flight with
`PipeError` (an `OSError`, as redis-py's own connection errors are) and the next read
connects again.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import redis.asyncio as aioredis

Reply = bytes | int | None


class PipeError(OSError):
    """The connection failed, timed out or spoke something other than RESP2."""


class ReplyError(Exception):
    """Redis answered the command with an error (`-WRONGTYPE ...`)."""


def pack(*args: bytes) -> bytes:
    """One command in RESP2's request form."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    """Parses replies as bytes arrive and hands each to the oldest waiting caller."""

    def __init__(self, waiting: collections.deque[tuple[asyncio.Future[Reply], float]]) -> None:
        self.waiting = waiting
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport to write commands on."""
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail everything in flight: no reply can come now."""
        self.fail(PipeError(f"connection lost: {exc}" if exc else "connection closed"))
        if not self.lost.done():
            self.lost.set_result(None)

    def fail(self, exc: BaseException) -> None:
        """Every caller in flight gets exc."""
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(exc)

    def data_received(self, data: bytes) -> None:
        """Resolve as many callers as the buffer holds whole replies for."""
        buf = self.buffer
        buf += data
        while buf:
            end = buf.find(b"\r\n")
            if end < 0:
                return
            kind = buf[0]
            value: Reply | ReplyError
            if kind == 0x24:  # $: a bulk string
                size = int(buf[1:end])
                if size < 0:
                    value, used = None, end + 2
                elif len(buf) < end + size + 4:
                    return
                else:
                    value, used = bytes(buf[end + 2:end + 2 + size]), end + size + 4
            elif kind == 0x3A:  # :
                value, used = int(buf[1:end]), end + 2
            elif kind == 0x2B:  # +
                value, used = bytes(buf[1:end]), end + 2
            elif kind == 0x2D:  # -
                value, used = ReplyError(buf[1:end].decode(errors="replace")), end + 2
            else:
                self.abort(PipeError(f"not a RESP2 reply: {bytes(buf[:16])!r}"))
                return
            del buf[:used]
            if not self.waiting:
                self.abort(PipeError("a reply nobody asked for"))
                return
            future, _ = self.waiting.popleft()
            if future.done():
                continue  # its caller went away; the reply is still consumed in order
            if isinstance(value, ReplyError):
                future.set_exception(value)
            else:
                future.set_result(value)

    def abort(self, exc: BaseException) -> None:
        """Drop the connection (its replies can no longer be matched) and fail callers."""
        self.fail(exc)
        if self.transport is not None:
            self.transport.abort()


class RedisPipe:
    """One shared connection; `call()` many times at once, replies come in order."""

    def __init__(self, client: aioredis.Redis) -> None:
        kwargs: dict[str, Any] = client.connection_pool.connection_kwargs
        self._template = client.connection_pool.make_connection()
        self.timeout_s = float(kwargs.get("socket_timeout") or 5.0)
        self.connect_timeout_s = float(kwargs.get("socket_connect_timeout") or self.timeout_s)
        self._waiting: collections.deque[tuple[asyncio.Future[Reply], float]] = (
            collections.deque())
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        # Commands asked for in this turn of the loop, written together at its end: the
        # hits that arrived together share one send.
        self._outbox: list[bytes] = []
        self._outbox_for: _Protocol | None = None

    async def _connect(self) -> _Protocol:
        conn: Any = self._template
        ssl_context = conn.ssl_context.get() if hasattr(conn, "ssl_context") else None
        loop = asyncio.get_running_loop()
        _, protocol = await asyncio.wait_for(loop.create_connection(
            lambda: _Protocol(self._waiting), conn.host, conn.port, ssl=ssl_context),
            self.connect_timeout_s)
        handshake: list[tuple[bytes, ...]] = []
        if conn.password:
            handshake.append((b"AUTH", *([conn.username.encode()] if conn.username else []),
                              conn.password.encode()))
        if int(conn.db or 0):
            handshake.append((b"SELECT", str(conn.db).encode()))
        self._protocol = protocol
        try:
            for command in handshake:
                await self.call(*command)
        except ReplyError as exc:  # a wrong password: the connection is no use
            self.close()
            raise PipeError(f"redis refused the connection: {exc}") from exc
        except BaseException:
            self.close()
            raise
        return protocol

    async def call(self, *args: bytes) -> Reply:
        """Send one command and wait for its reply; PipeError if the connection fails,
        ReplyError if Redis refuses the command."""
        protocol = self._protocol
        if protocol is None or protocol.lost.done():
            protocol = await self._connected()
        if protocol.lost.done() or protocol.transport is None:
            raise PipeError("connection lost")  # nothing written now could be answered
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        self._waiting.append((future, time.monotonic()))
        if self._outbox_for is not protocol:
            # Queued for a lost connection: their callers have failed already.
            self._outbox.clear()
            self._outbox_for = protocol
        if not self._outbox:
            loop.call_soon(self._flush)
        self._outbox.append(pack(*args))
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout_s, self._check)
        return await future

    async def _connected(self) -> _Protocol:
        """A live connection: the one being made, or a new one (reads waiting for it
        share it)."""
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        task = self._connecting
        try:
            return await asyncio.shield(task)
        except (OSError, asyncio.TimeoutError) as exc:
            raise PipeError(f"cannot connect: {exc or type(exc).__name__}") from exc
        finally:
            if self._connecting is task and task.done():
                self._connecting = None

    def _flush(self) -> None:
        """Write this loop turn's commands in one go."""
        protocol, data = self._outbox_for, b"".join(self._outbox)
        self._outbox.clear()
        if protocol is not None and protocol.transport is not None and not protocol.lost.done():
            protocol.transport.write(data)

    def _check(self) -> None:
        """The oldest reply is overdue: the connection is stuck, fail it; else look again
        when it would be. One timer for all reads, not one per read."""
        self._watchdog = None
        if not self._waiting:
            return
        overdue = self._waiting[0][1] + self.timeout_s - time.monotonic()
        if overdue <= 0 and self._protocol is not None:
            self._protocol.abort(PipeError(f"no reply within {self.timeout_s:g} s"))
            return
        self._watchdog = asyncio.get_running_loop().call_later(max(overdue, 0.01),
                                                               self._check)

    def close(self) -> None:
        """Close the connection; reads in flight fail."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._protocol is not None:
            self._protocol.abort(PipeError("closed"))
            self._protocol = None
