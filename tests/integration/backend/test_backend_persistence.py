"""`cachelayer backend` as a real process: prompt caches survive restarts."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cachelayer.backend.demo_model import build_demo_model
from cachelayer.backend.kv_blocks import BLOCK_SUFFIX
from cachelayer.backend.kv_files import STATS_NAME, clear_kv, kv_stats
from tests.support.processes import stop_server
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow  # real mlx inference, child servers or CLIs

StartBackend = Callable[..., Any]


def _files(kv_dir: Path) -> list[Path]:
    return sorted(kv_dir.glob(f"*/*{BLOCK_SUFFIX}"))


def _wait_for_files(kv_dir: Path, n: int = 1, timeout: float = 30.0) -> list[Path]:
    """The block files once at least `n` are on disk; fails if they never are."""
    wait_until(lambda: len(_files(kv_dir)) >= n, f"{n} block file(s) in {kv_dir}",
               timeout=timeout)
    return _files(kv_dir)


def _model_dirs(kv_dir: Path) -> set[str]:
    return {p.parent.name for p in _files(kv_dir)}


def _restart_after(start_backend: StartBackend, api: Any, model: Path, kv: Path,
                   question: str = "hello", restart_model: Path | None = None) -> Any:
    """Ask one question, stop cleanly (queued writes land), start again on the same kv dir."""
    first = start_backend(model, kv)
    api.chat(first, question)
    assert stop_server(first) == 0
    assert _files(kv)
    return start_backend(restart_model or model, kv)


def test_first_request_after_restart_reuses_the_prefix_from_disk(
    demo_model: Path, tmp_path: Path, start_backend: StartBackend, api: Any
) -> None:
    kv = tmp_path / "kv"
    first = start_backend(demo_model, kv)
    cold = api.chat(first, "What is in README.md?")
    assert api.cached_tokens(cold) == 0
    # A clean stop finishes the queued writes.
    assert stop_server(first) == 0
    assert _files(kv)

    second = start_backend(demo_model, kv)
    warm = api.chat(second, "And what is in setup.py?")
    assert warm.choices[0].message is not None
    assert api.cached_tokens(warm) > 1000
    assert api.cached_tokens(warm) < warm.usage.prompt_tokens
    stats = api.get_json(second, "/v1/cachelayer/kv")
    assert stats["tokens_restored_disk"] == api.cached_tokens(warm)
    assert stats["disk_hits"] == 1 and stats["blocks"] >= 1


def _tokens_and_logprobs(response: Any) -> list[tuple[str, float, list[tuple[str, float]]]]:
    """Greedy tokens with their logprobs and top logprobs: a wrong restore moves these."""
    return [
        (t.token, t.logprob, [(top.token, top.logprob) for top in t.top_logprobs])
        for t in response.choices[0].logprobs.content
    ]


def test_an_answer_from_a_restored_cache_equals_the_cold_answer(
    family_model_dir: Callable[[str], Path], tmp_path: Path, start_backend: StartBackend,
    api: Any,
) -> None:
    # A family model (random weights, undamped layers), not the demo model: the demo
    # model answers the same text whatever its cache holds, so comparing its text
    # cannot see a wrong restore. Tokens plus top logprobs can.
    model = family_model_dir("llama")
    ask = {"max_tokens": 8, "logprobs": True, "top_logprobs": 3}
    first = start_backend(model, tmp_path / "kv")
    api.chat(first, "Same question twice.", **ask)
    assert stop_server(first) == 0
    restored = start_backend(model, tmp_path / "kv")
    warm = api.chat(restored, "Same question twice.", **ask)
    # All but the last prompt token come from disk (mlx-lm always prefills one).
    assert api.cached_tokens(warm) == warm.usage.prompt_tokens - 1
    assert api.get_json(restored, "/v1/cachelayer/kv")["tokens_restored_disk"] == (
        api.cached_tokens(warm))
    cold_server = start_backend(model, tmp_path / "kv-cold")
    cold = api.chat(cold_server, "Same question twice.", **ask)
    assert api.cached_tokens(cold) == 0
    assert _tokens_and_logprobs(warm) == _tokens_and_logprobs(cold)


def test_streamed_answer_reports_disk_tokens_in_usage(
    demo_model: Path, tmp_path: Path, start_backend: StartBackend, api: Any
) -> None:
    kv = tmp_path / "kv"
    second = _restart_after(start_backend, api, demo_model, kv)
    chunks = list(
        api.chat(second, "hello again", stream=True, stream_options={"include_usage": True})
    )
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens_details.cached_tokens > 1000


def test_a_changed_model_reuses_nothing(
    demo_model: Path, tmp_path: Path, start_backend: StartBackend, api: Any
) -> None:
    kv = tmp_path / "kv"
    other_model = build_demo_model(tmp_path / "other", seed=1)
    second = _restart_after(start_backend, api, demo_model, kv, restart_model=other_model)
    answer = api.chat(second, "hello again")
    assert api.cached_tokens(answer) == 0
    assert api.get_json(second, "/v1/cachelayer/kv")["tokens_restored_disk"] == 0
    # The second model's blocks land after its answer, in a directory of their own.
    wait_until(lambda: len(_model_dirs(kv)) >= 2, "the second model's block directory")
    assert len(_model_dirs(kv)) == 2, _files(kv)


def test_a_block_corrupted_while_running_is_survived_and_removed(
    demo_model: Path, tmp_path: Path, start_backend: StartBackend, api: Any
) -> None:
    kv = tmp_path / "kv"
    second = _restart_after(start_backend, api, demo_model, kv)
    first_block = min(_files(kv), key=lambda p: p.stat().st_mtime_ns)
    # Damaged after the index was built: only loading it can notice.
    data = bytearray(first_block.read_bytes())
    data[-10] ^= 0xFF
    first_block.write_bytes(bytes(data))
    answer = api.chat(second, "hello again")
    assert answer.choices
    stats = api.get_json(second, "/v1/cachelayer/kv")
    assert stats["corrupt_dropped"] >= 1
    assert "dropping" in second.log()


def test_clear_while_running_turns_hits_into_misses(
    demo_model: Path, tmp_path: Path, start_backend: StartBackend, api: Any
) -> None:
    kv = tmp_path / "kv"
    second = _restart_after(start_backend, api, demo_model, kv)
    removed, freed = clear_kv(kv)
    assert removed >= 1 and freed > 0
    answer = api.chat(second, "hello again")
    assert api.cached_tokens(answer) == 0
    assert api.get_json(second, "/v1/cachelayer/kv")["missing_files"] >= 1
    # The answer itself is persisted again.
    assert _wait_for_files(kv)


def test_eviction_keeps_the_disk_under_the_limit(
    demo_model: Path, tmp_path: Path, start_backend: StartBackend, api: Any
) -> None:
    kv = tmp_path / "kv"
    server = start_backend(demo_model, kv, "--kv-max-bytes", "3M")
    for i in range(4):
        api.chat(server, "hi", system=f"Session {i}. {api.system}")
    wait_until(lambda: api.get_json(server, "/v1/cachelayer/kv")["blocks_written"] >= 16,
               "16 blocks written")
    # A write evicts once its blocks are on disk: measure after the writer is idle, not
    # between the 16th block and that eviction (the window a loaded machine widens).
    api.wait_for_writes(server)
    stats = kv_stats(kv)
    assert 0 < stats["bytes"] <= 3 << 20
    assert api.get_json(server, "/v1/cachelayer/kv")["evicted_blocks"] >= 1


def test_concurrent_requests_sharing_a_prefix_are_all_answered(
    demo_model: Path, tmp_path: Path, start_backend: StartBackend, api: Any
) -> None:
    kv = tmp_path / "kv"
    second = _restart_after(start_backend, api, demo_model, kv, "warm up")
    questions = [f"question number {i}" for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda q: api.chat(second, q), questions))
    counts = [
        api.post_json(
            second,
            "/v1/cachelayer/count_tokens",
            {
                "messages": [
                    {"role": "system", "content": api.system},
                    {"role": "user", "content": q},
                ],
                "tools": api.tools,
            },
        )["input_tokens"]
        for q in questions
    ]
    for answer, count in zip(answers, counts, strict=True):
        assert answer.choices[0].finish_reason in {"length", "stop"}
        assert answer.usage.prompt_tokens == count
        assert 0 < api.cached_tokens(answer) < count
    stats = api.get_json(second, "/v1/cachelayer/kv")
    assert stats["tokens_restored_disk"] + stats["tokens_restored_memory"] == sum(
        api.cached_tokens(a) for a in answers
    )


def test_stats_file_is_exported_for_readers_without_a_backend(
    demo_model: Path, tmp_path: Path, start_backend: StartBackend, api: Any
) -> None:
    kv = tmp_path / "kv"
    server = start_backend(demo_model, kv)
    api.chat(server, "hello")
    stop_server(server)
    exported = json.loads((kv / STATS_NAME).read_text())
    assert exported["lookups"] == 1 and exported["tokens_prefilled"] > 1000
    stats = kv_stats(kv)
    assert stats["blocks"] >= 1 and stats["lookups"] == 1
