"""The hit path's pipelined Redis reads: replies parsed as they arrive, matched in order,
failures that fail every read in flight; and the Redis tier's header-validated reads
against a real redis-server (slow: a child server)."""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from cachelayer.config import Settings
from cachelayer.protocol.chat import ChatResult, Choice, Usage
from cachelayer.proxy.store.backends import redis as redis_tier
from cachelayer.proxy.store.backends.base import StoredAnswer
from cachelayer.proxy.store.backends.redis_pipe import (
    PipeError,
    RedisPipe,
    ReplyError,
    _Protocol,
    pack,
)
from tests.support.redis_server import RedisServer, running_redis
from tests.support.wait import async_wait_until

RESULT = ChatResult(kind="chat", id="c1", created=5, model="m",
                    choices=(Choice(0, "hello", "stop", ()),), usage=Usage(10, 2, 4))


def test_commands_are_packed_as_resp2_arrays_of_bulk_strings() -> None:
    assert pack(b"GETRANGE", b"k", b"0", b"11") == (
        b"*4\r\n$8\r\nGETRANGE\r\n$1\r\nk\r\n$1\r\n0\r\n$2\r\n11\r\n")


async def test_replies_split_anywhere_reach_their_callers_in_order() -> None:
    waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
    protocol = _Protocol(waiting)
    futures = [asyncio.get_running_loop().create_future() for _ in range(5)]
    waiting.extend((f, 0.0) for f in futures)
    stream = b"$5\r\nhello\r\n$-1\r\n:42\r\n+OK\r\n-WRONGTYPE not a string\r\n"
    for i in range(len(stream)):  # one byte at a time: every split point
        protocol.data_received(stream[i:i + 1])
    assert [f.result() for f in futures[:4]] == [b"hello", None, 42, b"OK"]
    with pytest.raises(ReplyError, match="WRONGTYPE"):
        futures[4].result()
    assert not waiting and not protocol.buffer


async def test_a_reply_nobody_asked_for_fails_the_connection() -> None:
    waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
    protocol = _Protocol(waiting)
    pending = asyncio.get_running_loop().create_future()
    waiting.append((pending, 0.0))
    protocol.data_received(b"*1\r\n$1\r\na\r\n")  # an array: no read here asks for one
    with pytest.raises(PipeError, match="not a RESP2 reply"):
        pending.result()


async def test_reads_asked_for_in_one_loop_turn_leave_in_one_write() -> None:
    async def answer_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = b""
        while data := await reader.read(65536):
            buffer += data
            commands = re.findall(rb"\*2\r\n\$3\r\nGET\r\n\$\d+\r\n([^\r]*)\r\n", buffer)
            buffer = buffer[sum(len(pack(b"GET", key)) for key in commands):]
            writer.write(b"".join(b"$%d\r\n%b\r\n" % (len(k), k) for k in commands))

    server = await asyncio.start_server(answer_each, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pipe = RedisPipe(aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=5))
    try:
        assert await pipe.call(b"GET", b"first") == b"first"  # connected
        protocol = pipe._protocol
        assert protocol is not None and protocol.transport is not None
        writes: list[bytes] = []
        send = protocol.transport.write
        protocol.transport.write = lambda data: (writes.append(data), send(data))[-1]  # type: ignore[method-assign]
        keys = [b"k%d" % i for i in range(10)]
        assert await asyncio.gather(*[pipe.call(b"GET", k) for k in keys]) == keys
        assert writes == [b"".join(pack(b"GET", k) for k in keys)]
        assert await pipe.call(b"GET", b"later") == b"later"  # a later turn: its own write
        assert len(writes) == 2
    finally:
        pipe.close()
        server.close()
        await server.wait_closed()


async def test_a_server_that_never_replies_fails_the_read_within_the_timeout() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pipe = RedisPipe(aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=0.2))
    try:
        with pytest.raises(PipeError, match=r"no reply within 0\.2 s"):
            await asyncio.wait_for(pipe.call(b"GET", b"k"), 10)
    finally:
        pipe.close()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_nothing_listening_is_a_pipe_error_not_a_hang() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    pipe = RedisPipe(aioredis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1))
    with pytest.raises(PipeError, match="cannot connect"):
        await pipe.call(b"GET", b"k")


# --- against a real redis-server --------------------------------------------------------

@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One password-protected redis-server for the module, always stopped."""
    with running_redis(tmp_path_factory.mktemp("redis"), password="pipe-pw") as server:
        yield server


@pytest.fixture
async def tier(redis_server: RedisServer, tmp_path: Path
               ) -> AsyncIterator[redis_tier.RedisTier]:
    """A started Redis tier on database 3 (the pipe must AUTH and SELECT as redis-py)."""
    redis_server.client(3).flushdb()
    settings = Settings(store_url=redis_server.url(3), data_dir=tmp_path)
    opened = redis_tier.RedisTier(redis_tier.connect(settings), settings)
    await opened.start()
    yield opened
    await opened.aclose()


def _gets(server: RedisServer) -> int:
    stats = server.client().info("commandstats")
    return int(stats.get("cmdstat_get", {}).get("calls", 0))


@pytest.mark.slow
async def test_many_reads_in_flight_on_one_connection_each_get_their_own_value(
        tier: redis_tier.RedisTier, redis_server: RedisServer) -> None:
    sync = redis_server.client(3)
    for n in range(50):
        sync.set(f"k{n}", f"value {n}" * (n * 100 + 1))
    connections = len(sync.client_list())
    replies = await asyncio.gather(*(tier.pipe.call(b"GET", f"k{n}".encode())
                                     for n in range(50)))
    assert replies == [f"value {n}".encode() * (n * 100 + 1) for n in range(50)]
    assert len(sync.client_list()) == connections + 1  # the pipe's one connection


@pytest.mark.slow
async def test_an_unchanged_entry_is_read_whole_once_then_by_its_header(
        tier: redis_tier.RedisTier, redis_server: RedisServer) -> None:
    await tier.write("k", StoredAnswer(RESULT, 100.0), RESULT.to_bytes(), 60)
    before = _gets(redis_server)
    for _ in range(5):
        found = await tier.read("k")
        assert found is not None and found[0].result == RESULT
        assert found[0].stored_at == 100.0
    assert _gets(redis_server) - before == 1


@pytest.mark.slow
async def test_an_entry_replaced_or_deleted_elsewhere_is_seen_on_the_next_read(
        tier: redis_tier.RedisTier, redis_server: RedisServer) -> None:
    await tier.write("k", StoredAnswer(RESULT, 100.0), RESULT.to_bytes(), 60)
    assert await tier.read("k") is not None
    other = ChatResult(kind="chat", id="c2", created=6, model="m",
                       choices=(Choice(0, "replaced", "stop", ()),), usage=Usage(1, 1, 0))
    redis_server.client(3).set(tier.prefix + "k", redis_tier.encode(other, 200.0))
    found = await tier.read("k")
    assert found is not None and found[0].result == other and found[0].stored_at == 200.0
    redis_server.client(3).delete(tier.prefix + "k")
    assert await tier.read("k") is None


@pytest.mark.slow
async def test_foreign_values_under_our_keys_are_misses_read_no_further(
        tier: redis_tier.RedisTier, redis_server: RedisServer) -> None:
    sync = redis_server.client(3)
    sync.set(tier.prefix + "text", b"someone else's string")
    sync.hset(tier.prefix + "hash", "field", "value")
    before = _gets(redis_server)
    assert await tier.read("text") is None
    assert await tier.read("hash") is None
    assert tier.snapshot()["foreignEntries"] == 2
    assert _gets(redis_server) == before


@pytest.mark.slow
async def test_reads_fail_while_redis_is_down_and_connect_again_after(
        tier: redis_tier.RedisTier, redis_server: RedisServer) -> None:
    await tier.write("k", StoredAnswer(RESULT, 100.0), RESULT.to_bytes(), 60)
    assert await tier.read("k") is not None
    redis_server.kill()
    try:
        assert await tier.read("k") is None
        assert tier.degraded is not None and "unavailable" in tier.degraded
    finally:
        redis_server.start()
    await async_wait_until(lambda: tier.degraded is None, "the tier's watch to see redis back")
    await tier.write("k", StoredAnswer(RESULT, 300.0), RESULT.to_bytes(), 60)
    found = await tier.read("k")
    assert found is not None and found[0].stored_at == 300.0
