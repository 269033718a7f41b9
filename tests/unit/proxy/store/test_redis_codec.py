"""What the Redis store and shared ledger write and read back, without a server."""

from __future__ import annotations

from cachelayer.protocol.chat import ChatResult, Choice, Usage
from cachelayer.proxy.store.backends.redis import MAGIC, decode, encode
from cachelayer.proxy.store.backends.redis_ledger import decode_record, encode_record
from cachelayer.telemetry.prefix_records import PrefixRecord

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


def test_prefix_record_round_trips_and_merges_by_the_ledgers_own_rule() -> None:
    record = PrefixRecord(tools=3, first_seen=10.0, last_seen=20.0, requests=2, hits=1,
                          min_prompt_tokens=500, last_miss_reason="new client")
    again = decode_record(encode_record(record))
    assert again == record
    assert again is not None
    again.merge(PrefixRecord(first_seen=5.0, last_seen=30.0, requests=3,
                             min_prompt_tokens=400))
    assert (again.requests, again.first_seen, again.last_seen, again.min_prompt_tokens) == (
        5, 5.0, 30.0, 400)


def test_stored_prefix_records_that_are_not_ours_are_skipped() -> None:
    for foreign in (b"not json", b"[1, 2]", b'"text"', 42, None):
        assert decode_record(foreign) is None
    assert decode_record(b'{"requests": 4, "alien": 1}') == PrefixRecord(requests=4)
