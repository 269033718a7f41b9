"""The diskcache cold tier on a real directory: reopening, eviction, corruption, a full
disk, permissions."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from cachelayer.protocol.chat import ChatResult, Choice, ToolCall, Usage
from cachelayer.proxy.store.backends.base import StoredAnswer
from cachelayer.proxy.store.backends.disk import DiskTier

RESULT = ChatResult(kind="chat", id="c1", created=5, model="m",
                    choices=(Choice(0, "hello", "stop", (ToolCall("t", "ls", "{}"),)),),
                    usage=Usage(10, 2, 4))


def make(tmp_path: Path, size_limit: int = 1 << 30) -> DiskTier:
    return DiskTier(tmp_path / "responses", size_limit=size_limit)


def answer(result: ChatResult = RESULT, stored_at: float | None = None) -> StoredAnswer:
    return StoredAnswer(result, time.time() if stored_at is None else stored_at)


def test_write_then_read_round_trips_the_result_and_its_time(tmp_path: Path) -> None:
    tier = make(tmp_path)
    stored_at = time.time() - 5
    assert tier.write_now("k", answer(stored_at=stored_at)).stored
    found = tier.read_now("k")
    assert found is not None and found[0].result == RESULT and found[0].stored_at == stored_at
    tier.close()


def test_entries_survive_reopening_the_tier(tmp_path: Path) -> None:
    tier = make(tmp_path)
    tier.write_now("k", answer())
    tier.close()
    again = make(tmp_path)
    found = again.read_now("k")
    assert found is not None and found[0].result == RESULT
    again.close()


def test_size_limit_evicts_the_oldest_and_names_them(tmp_path: Path) -> None:
    tier = make(tmp_path, size_limit=200_000)
    big = ChatResult(kind="chat", id="b", created=0, model="m",
                     choices=(Choice(0, "x" * 50_000, "stop"),))
    evicted: list[str] = []
    for i in range(12):
        evicted += tier.write_now(f"k{i}", answer(big)).evicted_keys
    assert evicted and evicted[0] == "k0"
    assert tier.volume() <= 200_000 + 60_000  # one entry of slack past the limit at most
    assert tier.read_now("k11") is not None  # the newest survives
    assert all(tier.read_now(k) is None for k in evicted)
    tier.close()


def test_corrupted_entry_is_dropped_as_a_miss(tmp_path: Path) -> None:
    tier = make(tmp_path)
    assert tier._cache is not None
    tier._cache.set("k", b"\x00" * 8 + b"not json")
    assert tier.read_now("k") is None
    assert "k" not in tier._cache
    tier.close()


def test_store_directory_is_owner_only(tmp_path: Path) -> None:
    tier = make(tmp_path)
    mode = stat.S_IMODE(os.stat(tmp_path / "responses").st_mode)
    assert mode == 0o700
    tier.close()


def test_clear_removes_everything_and_moves_the_generation(tmp_path: Path) -> None:
    tier = make(tmp_path)
    tier.write_now("a", answer())
    tier.write_now("b", answer())
    before = tier.generation()
    assert tier.clear_now() == 2
    assert tier.read_now("a") is None
    assert tier.generation() != before
    tier.close()


def test_full_disk_degrades_instead_of_raising(tmp_path: Path) -> None:
    tier = make(tmp_path)
    assert tier._cache is not None

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    tier._cache.set = disk_full  # type: ignore[method-assign]
    outcome = tier.write_now("k", answer())
    assert not outcome.stored
    assert tier.degraded and "No space left" in tier.degraded
    del tier._cache.set
    assert tier.write_now("k", answer()).stored
    assert tier.degraded is None
    tier.close()
