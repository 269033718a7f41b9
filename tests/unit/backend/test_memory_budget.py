"""The hot tier's budget: the default, the write queue's byte bound, eviction counting."""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

import pytest

from cachelayer.backend.kv_blocks import chain_seed
from cachelayer.backend.memory_budget import (
    AUTO_MIN_BYTES,
    ByteBoundedQueue,
    auto_prompt_cache_bytes,
    weights_bytes,
    write_queue_bytes,
)
from cachelayer.backend.settings import MlxOptions
from cachelayer.backend.variant import variant_key
from tests.support.wait import wait_until

GB = 10**9


def test_default_budget_is_a_quarter_of_what_the_weights_leave_free() -> None:
    assert auto_prompt_cache_bytes(64 * GB, 16 * GB) == 12 * GB
    assert auto_prompt_cache_bytes(32 * GB, 16 * GB) == 4 * GB


def test_default_budget_has_a_floor_and_is_never_unbounded() -> None:
    assert auto_prompt_cache_bytes(8 * GB, 9 * GB) == AUTO_MIN_BYTES
    unknown = auto_prompt_cache_bytes(None, 0)
    assert AUTO_MIN_BYTES <= unknown <= 4 * GB


def test_model_size_counts_weights_of_every_directory_given(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "m" / "tokenizer.json").write_bytes(b"x" * 7)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "model-1.safetensors").write_bytes(b"x" * 10)
    assert weights_bytes(tmp_path / "m", tmp_path / "d", None) == 110


def test_write_queue_bound_is_a_quarter_of_the_budget_with_a_floor() -> None:
    assert write_queue_bytes(8 * GB) == 2 * GB
    assert write_queue_bytes(1) == 32 * 10**6


def _queue(max_bytes: int, wait_s: float = 0.05) -> ByteBoundedQueue:
    return ByteBoundedQueue(max_bytes, lambda item: int(item[1]) if item else 0, wait_s)


def test_write_queue_admits_one_item_of_any_size_and_then_waits_for_room() -> None:
    q = _queue(100)
    q.put(("a", 500))  # alone, anything fits
    with pytest.raises(queue.Full):
        q.put(("b", 1))
    assert q.nbytes == 500 and q.waits == 1
    assert q.get() == ("a", 500) and q.nbytes == 0
    q.put(("b", 60))
    q.put(("c", 40))
    assert q.nbytes == 100 and q.peak_bytes == 500


def test_a_waiting_write_goes_in_once_the_writer_takes_an_item() -> None:
    q = _queue(100, wait_s=30)
    q.put(("a", 80))
    done = threading.Event()

    def producer() -> None:
        q.put(("b", 80))
        done.set()

    t = threading.Thread(target=producer)
    t.start()
    # The queue counts a put that has to wait: once it has, the producer is blocked.
    wait_until(lambda: q.waits == 1, "the producer's put to wait for room")
    assert not done.is_set()
    assert q.get() == ("a", 80)
    assert done.wait(10)
    t.join()
    assert q.nbytes == 80


def test_zero_byte_items_always_fit() -> None:
    q = _queue(10)
    q.put(("a", 50))
    q.put(None)  # the writer's stop sentinel must never wait
    assert q.qsize() == 2


def test_chain_seed_is_the_bare_fingerprint_for_a_plain_model() -> None:
    assert chain_seed("f" * 24) == "f" * 24
    seeds = {chain_seed("f" * 24, v, t) for v in ("", "a", "b") for t in ("", "a")}
    assert len(seeds) == 6  # variant and tenant never collide with each other


def test_variant_names_adapter_content_draft_and_kv_quantization(tmp_path: Path) -> None:
    assert variant_key(MlxOptions()) == ""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapters.safetensors").write_bytes(b"one")
    (adapter / "adapter_config.json").write_text("{}")
    first = variant_key(MlxOptions(adapter_path=str(adapter)))
    (adapter / "adapters.safetensors").write_bytes(b"two")
    assert variant_key(MlxOptions(adapter_path=str(adapter))) not in ("", first)
    kv: Any = [variant_key(MlxOptions(kv_bits=b, kv_group_size=g)) for b, g in
               ((4, 64), (8, 64), (8, 32))]
    assert len(set(kv)) == 3 and "" not in kv
