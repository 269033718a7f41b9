"""What the Redis store and shared ledger write and read back, without a server."""

from __future__ import annotations

from cachelayer.protocol.chat import ChatResult, Choice, Usage
from cachelayer.proxy.prefix.ledger import PrefixRecord
from cachelayer.proxy.store.backends.redis import MAGIC, decode, encode
from cachelayer.proxy.store.backends.redis_ledger import record_from_hash, record_ops

RESULT = ChatResult(kind="chat", id="c1", created=5, model="m",
                    choices=(Choice(0, "hello", "stop", ()),), usage=Usage(10, 2, 4))


def test_entry_round_trips_with_its_stored_time() -> None:
    found = decode(encode(RESULT, 1234.5))
    assert found is not None and found.result == RESULT and found.stored_at == 1234.5


def test_values_cachelayer_did_not_write_are_misses() -> None:
    raw = encode(RESULT, 1.0)
    for foreign in (b"", b"hello", raw[4:], b"XXXX" + raw[4:], MAGIC + b"\x00" * 20,
                    raw[:-5], "a str", 42, None, [b"a list"]):
        assert decode(foreign) is None, foreign


def test_prefix_record_ops_sum_counts_and_keep_extremes() -> None:
    record = PrefixRecord(tools=3, first_seen=10.0, last_seen=20.0, requests=2, hits=1,
                          min_prompt_tokens=500, last_miss_reason="new client")
    ops = record_ops(record)
    assert ops["inc"] == {"requests": 2, "hits": 1}
    assert ops["set"] == {"tools": 3, "last_miss_reason": "new client"}
    assert ops["min"] == {"first_seen": 10.0, "min_prompt_tokens": 500}
    assert ops["max"] == {"last_seen": 20.0}


def test_prefix_record_reads_back_from_a_hash_and_ignores_garbage() -> None:
    raw = {b"tools": b"3", b"requests": b"7", b"first_seen": b"10.5",
           b"last_miss_reason": b"tools changed", b"hits": b"not a number", b"alien": b"1"}
    record = record_from_hash(raw)
    assert (record.tools, record.requests, record.first_seen) == (3, 7, 10.5)
    assert record.last_miss_reason == "tools changed" and record.hits == 0
