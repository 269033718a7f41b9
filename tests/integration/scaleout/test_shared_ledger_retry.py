"""The shared ledger's "exactly once": a batch whose reply was lost lands in Redis, is
re-sent under the same id, and is not counted twice (counters and prefix records).

The reply is lost for real: the proxy's Redis client (built by `connect`, as in
production) talks to a real redis-server through a TCP relay that forwards every
command and, when told, drops the connection instead of passing back the reply to the
command that writes the batch (EVALSHA for counters, EXEC for prefix records).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cachelayer.config import Settings
from cachelayer.proxy.store.backends.redis import connect
from cachelayer.proxy.store.backends.redis_ledger import _ADD_COUNTERS, SharedLedger
from cachelayer.telemetry.prefix_records import PrefixRecord
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.slow
NAMESPACE = "t"


@dataclass
class Relay:
    """127.0.0.1:port -> redis; `eat_reply_to` (a RESP command name) drops the connection
    where the reply to that command would have gone back, once."""

    redis_port: int
    port: int = 0
    eat_reply_to: bytes | None = None
    eaten: int = 0

    async def _pump_up(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       armed: asyncio.Event) -> None:
        while data := await reader.read(65536):
            if self.eat_reply_to and self.eat_reply_to in data.upper():
                armed.set()
            writer.write(data)
            await writer.drain()

    async def _pump_down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         armed: asyncio.Event) -> None:
        while data := await reader.read(65536):
            if armed.is_set():
                self.eat_reply_to, self.eaten = None, self.eaten + 1
                writer.transport.abort()  # the command ran; its reply never arrives
                return
            writer.write(data)
            await writer.drain()

    async def handle(self, client_r: asyncio.StreamReader,
                     client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.redis_port)
        armed = asyncio.Event()
        pumps = [asyncio.create_task(self._pump_up(client_r, server_w, armed)),
                 asyncio.create_task(self._pump_down(server_r, client_w, armed))]
        with contextlib.suppress(ConnectionError, OSError):
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for w in (server_w, client_w):
            w.transport.abort()


@pytest.fixture
async def relayed(redis_server: RedisServer) -> AsyncIterator[tuple[Relay, SharedLedger]]:
    """A relay in front of the real redis-server, and a SharedLedger whose client uses it."""
    relay = Relay(redis_server.port)
    server = await asyncio.start_server(relay.handle, "127.0.0.1", 0)
    relay.port = server.sockets[0].getsockname()[1]
    client = connect(Settings(store_url=f"redis://127.0.0.1:{relay.port}/0",
                              data_dir=Path("/nonexistent")))
    try:
        yield relay, SharedLedger(client, NAMESPACE)
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


async def test_a_counter_batch_resent_after_a_lost_reply_is_counted_once(
    relayed: tuple[Relay, SharedLedger], redis_server: RedisServer
) -> None:
    relay, ledger = relayed
    direct = redis_server.client()
    direct.script_load(_ADD_COUNTERS)  # so the EVALSHA that writes is the first one sent
    ledger.take_counters(Counter({"requests": 3, "response.hits": 2}))
    relay.eat_reply_to = b"EVALSHA"
    assert await ledger.push() is False  # as far as the proxy knows, it failed
    assert relay.eaten == 1
    landed = {k.decode(): int(v) for k, v in direct.hgetall(f"{NAMESPACE}:counters").items()}
    assert landed == {"requests": 3, "response.hits": 2}  # ...but it landed
    ledger.take_counters(Counter({"requests": 1}))  # counted meanwhile: the next batch
    assert await ledger.push() is True  # the same batch again, under its id
    assert await ledger.push() is True  # then the new one
    totals = {k.decode(): int(v) for k, v in direct.hgetall(f"{NAMESPACE}:counters").items()}
    assert totals == {"requests": 4, "response.hits": 2}


async def test_a_prefix_batch_resent_after_a_lost_reply_is_merged_once(
    relayed: tuple[Relay, SharedLedger], redis_server: RedisServer
) -> None:
    relay, ledger = relayed
    ledger.take_prefixes({"p1": PrefixRecord(requests=5, hits=4, prompt_tokens=500)})
    relay.eat_reply_to = b"EXEC"
    # The lost reply surfaces inside the optimistic transaction as a WatchError, so the
    # merge goes round again at once: it finds the batch's mark and stops.
    pushed = await ledger.push()
    assert relay.eaten == 1
    if not pushed:
        assert await ledger.push() is True
    assert await ledger.refresh() is True
    record = ledger.records()["p1"]
    assert (record.requests, record.hits, record.prompt_tokens) == (5, 4, 500)
