"""The response store on a real diskcache: round trips, TTL, size limit, corruption."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from cachelayer.protocol.chat import ChatResult, Choice, ToolCall, Usage
from cachelayer.proxy.store.backends.disk import ResponseStore

RESULT = ChatResult(kind="chat", id="c1", created=5, model="m",
                    choices=(Choice(0, "hello", "stop", (ToolCall("t", "ls", "{}"),)),),
                    usage=Usage(10, 2, 4))


def make(tmp_path: Path, **kw: int) -> ResponseStore:
    opts = {"size_limit": 1 << 30, "ttl_s": 3600.0, "entry_max_bytes": 1 << 20} | kw
    return ResponseStore(tmp_path / "responses", **opts)  # type: ignore[arg-type]


def test_put_then_get_round_trips_the_result(tmp_path: Path) -> None:
    store = make(tmp_path)
    stored_at = time.time() - 5
    assert store.put("k", RESULT, now=stored_at).stored
    store._hot.discard("k")  # read it back from disk, not from memory
    found = store.get("k")
    assert found is not None and found.result == RESULT and found.stored_at == stored_at
    store.close()


def test_entries_survive_reopening_the_store(tmp_path: Path) -> None:
    store = make(tmp_path)
    store.put("k", RESULT)
    store.close()
    again = make(tmp_path)
    found = again.get("k")
    assert found is not None and found.result == RESULT
    again.close()


def test_staged_answer_is_visible_before_the_write(tmp_path: Path) -> None:
    store = make(tmp_path)
    store.stage("k", RESULT)
    assert store.get("k") is not None
    assert len(store) == 0
    store.put("k", RESULT)
    assert len(store) == 1 and store.get("k") is not None
    store.close()


def test_entry_over_the_cap_is_not_stored(tmp_path: Path) -> None:
    store = make(tmp_path, entry_max_bytes=64)
    assert not store.put("k", RESULT).stored
    assert store.get("k") is None
    store.close()


def test_size_limit_evicts_and_counts(tmp_path: Path) -> None:
    store = make(tmp_path, size_limit=200_000)
    big = ChatResult(kind="chat", id="b", created=0, model="m",
                     choices=(Choice(0, "x" * 50_000, "stop"),))
    evicted = sum(store.put(f"k{i}", big).evicted for i in range(12))
    assert evicted > 0
    assert store.volume() <= 200_000 + 60_000  # one entry of slack past the limit at most
    assert store.get("k11") is not None  # the newest survives
    store.close()


def test_expired_entries_are_misses(tmp_path: Path) -> None:
    store = make(tmp_path)
    store.ttl_s = -1.0
    store.put("k", RESULT)
    assert store.get("k") is None
    store.close()


def test_corrupted_entry_is_dropped_as_a_miss(tmp_path: Path) -> None:
    store = make(tmp_path)
    store._cache.set("k", b"\x00" * 8 + b"not json")
    assert store.get("k") is None
    assert "k" not in store._cache
    store.close()


def test_store_directory_is_owner_only(tmp_path: Path) -> None:
    store = make(tmp_path)
    mode = stat.S_IMODE(os.stat(tmp_path / "responses").st_mode)
    assert mode == 0o700
    store.close()


def test_clear_removes_everything(tmp_path: Path) -> None:
    store = make(tmp_path)
    store.put("a", RESULT)
    store.put("b", RESULT)
    assert store.clear() == 2
    assert store.get("a") is None
    store.close()


def test_full_disk_degrades_instead_of_raising(tmp_path: Path, monkeypatch: object) -> None:
    store = make(tmp_path)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    store._cache.set = disk_full  # type: ignore[method-assign]
    outcome = store.put("k", RESULT)
    assert not outcome.stored
    assert store.degraded and "No space left" in store.degraded
    del store._cache.set
    assert store.put("k", RESULT).stored
    assert store.degraded is None
    store.close()


def test_a_clear_from_another_process_empties_this_ones_memory(tmp_path: Path) -> None:
    running = make(tmp_path)
    running.put("k", RESULT)
    assert running.get("k") is not None  # now served from memory
    other = make(tmp_path)  # e.g. `cachelayer clear` in another process
    assert other.clear() == 1
    time.sleep(0.3)
    assert running.get("k") is None
    running.close()
    other.close()


def test_memory_never_outlives_the_ttl(tmp_path: Path) -> None:
    store = make(tmp_path)
    store.put("k", RESULT, now=1.0)  # stored long ago
    assert store.get("k") is None
    store.close()
