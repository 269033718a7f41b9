"""Every model family's cache kinds survive a restart: reuse as in memory, answers as cold."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.family_models import FAMILIES
from tests.support.processes import stop_server

StartBackend = Callable[..., Any]
TURN1 = "What is in README.md?"
TURN2 = "And what is in setup.py?"


def _answer(response: Any) -> list[tuple[str, float, list[tuple[str, float]]]]:
    """Tokens with their logprobs and top logprobs: what must match exactly."""
    return [
        (t.token, t.logprob, [(top.token, top.logprob) for top in t.top_logprobs])
        for t in response.choices[0].logprobs.content
    ]


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_after_a_restart_a_new_turn_reuses_what_memory_does_and_answers_as_cold(
    family: str, family_model_dir: Callable[[str], Path], tmp_path: Path,
    start_backend: StartBackend, api: Any,
) -> None:
    model = family_model_dir(family)
    ask = {"max_tokens": 6, "logprobs": True, "top_logprobs": 3}
    before_turn2 = tmp_path / "kv-after-turn1"

    # The reference: turn 2 in the same process as turn 1 (memory only helps here).
    same_process = start_backend(model, tmp_path / "kv")
    api.chat(same_process, TURN1, **ask)
    assert api.wait_for_writes(same_process)["blocks"] > 0
    shutil.copytree(tmp_path / "kv", before_turn2, ignore=shutil.ignore_patterns(".tmp-*"))
    in_memory = api.cached_tokens(api.chat(same_process, TURN2, **ask))
    assert stop_server(same_process) == 0
    assert in_memory > 1000

    # Turn 2 after a restart, from what turn 1 left on disk.
    restarted = start_backend(model, before_turn2)
    warm = api.chat(restarted, TURN2, **ask)
    stats = api.get_json(restarted, "/v1/cachelayer/kv")
    assert api.cached_tokens(warm) >= in_memory
    assert stats["tokens_restored_disk"] == api.cached_tokens(warm)
    assert stats["family"] == family and stats["persisted"] is True

    cold_server = start_backend(model, tmp_path / "kv-cold")
    cold = api.chat(cold_server, TURN2, **ask)
    assert api.cached_tokens(cold) == 0
    assert _answer(warm) == _answer(cold)


def _flip(path: Path, _: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x10
    path.write_bytes(bytes(data))


def _truncate(path: Path, _: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _foreign(path: Path, foreign: Path) -> None:
    shutil.copyfile(foreign, path)


def _block_at(kv: Path, start: int) -> Path:
    """The block file whose chain position starts at `start` (read from its header)."""
    import io

    from cachelayer.backend.kv_blocks import BLOCK_SUFFIX, read_header

    for path in kv.glob(f"*/*{BLOCK_SUFFIX}"):
        data = path.read_bytes()
        if read_header(io.BytesIO(data), len(data))[0]["start"] == start:
            return path
    raise AssertionError(f"no block at {start}")


@pytest.mark.slow
def test_a_flipped_truncated_or_foreign_block_is_dropped_and_the_answer_equals_cold(
    family_model_dir: Callable[[str], Path], tmp_path: Path,
    start_backend: StartBackend, api: Any,
) -> None:
    model, other = family_model_dir("llama"), family_model_dir("qwen3_moe")
    ask = {"max_tokens": 6, "logprobs": True, "top_logprobs": 3}
    for name, m in (("kv", model), ("kv-other", other)):
        server = start_backend(m, tmp_path / name)
        api.chat(server, TURN1, **ask)
        assert stop_server(server) == 0
    cold = _answer(api.chat(start_backend(model, tmp_path / "kv-cold"), TURN2, **ask))
    foreign = _block_at(tmp_path / "kv-other", 256)
    for damage in (_flip, _truncate, _foreign):
        kv = tmp_path / f"kv-{damage.__name__}"
        shutil.copytree(tmp_path / "kv", kv)
        server = start_backend(model, kv)
        damage(_block_at(kv, 512), foreign)  # while running: found on load, or at start-up
        answer = api.chat(server, TURN2, **ask)
        stats = api.get_json(server, "/v1/cachelayer/kv")
        assert stats["corrupt_dropped"] == 1, damage.__name__
        assert api.cached_tokens(answer) == 512, damage.__name__  # the chain is cut there
        assert _answer(answer) == cold, damage.__name__
        assert stop_server(server) == 0


def _blocks_written(stats: dict[str, Any]) -> int:
    # Blocks only: each block of a prompt is written once, whatever the timing (window
    # checkpoints beside them are skipped when the writer is busy: 77-102 for one turn).
    return int(stats["blocks_written"])


def _ask_while_turn1_is_written(
    server: Any, reference: Any, api: Any, system: str, questions: list[str],
    ask: dict[str, Any],
) -> list[Any] | None:
    """Turn 1, then the questions at once; their answers if one of them was looked up
    while turn 1's write was unfinished (seen by polling the counters), else None."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    # How many blocks turn 1 alone writes: the same turn on a reference server.
    ref_base = _blocks_written(api.get_json(reference, "/v1/cachelayer/kv"))
    api.chat(reference, TURN1, system=system, **ask)
    turn1_blocks = _blocks_written(api.wait_for_writes(reference)) - ref_base
    assert turn1_blocks > 0

    base = api.get_json(server, "/v1/cachelayer/kv")
    api.chat(server, TURN1, system=system, **ask)
    turn1_lookups = api.get_json(server, "/v1/cachelayer/kv")["lookups"]
    samples: list[tuple[int, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            stats = api.get_json(server, "/v1/cachelayer/kv")
            samples.append((stats["lookups"], _blocks_written(stats)))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(
                lambda q: api.chat(server, q, system=system, **ask), questions))
    finally:
        done.set()
        sampler.join(30)
    # A question was looked up (lookups past turn 1's) while fewer blocks were on disk
    # than turn 1 alone writes: its write was in flight at that lookup.
    overlapped = any(
        lookups > turn1_lookups and written - _blocks_written(base) < turn1_blocks
        for lookups, written in samples
    )
    return answers if overlapped else None


@pytest.mark.xfail(strict=False, reason=(
    "open defect: whether turn 1's write is still in flight when the questions are looked "
    "up is a race this test does not yet control; it passes alone (3 of 3) and failed the "
    "last two clean CI runs here ('never seen in flight in 4 attempts')"))
@pytest.mark.slow
def test_two_requests_sharing_a_prefix_while_its_write_is_in_flight_answer_as_cold(
    family_model_dir: Callable[[str], Path], tmp_path: Path,
    start_backend: StartBackend, api: Any,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    # An attention-only model: its prompt prefills in one step, so turn 1's blocks are
    # all written after its answer (a model with a sliding window prefills in block-sized
    # steps, each followed by a checkpoint, and has them on disk before the questions
    # come). 16-token blocks: turn 1's write is ~100 files, so it is still running when
    # the questions arrive. Each attempt is a new prefix; one seen in flight is required.
    model = family_model_dir("llama")
    ask = {"max_tokens": 6, "logprobs": True, "top_logprobs": 3}
    questions = ["Where is the config?", "Which tests are slow?"]
    server = start_backend(model, tmp_path / "kv", "--kv-block-tokens", "16")
    reference = start_backend(model, tmp_path / "kv-ref", "--kv-block-tokens", "16")
    for attempt in range(4):
        system = f"Attempt {attempt}. {api.system}"
        answers = _ask_while_turn1_is_written(server, reference, api, system, questions, ask)
        if answers is not None:
            break
    assert answers is not None, "turn 1's write was never seen in flight in 4 attempts"
    assert stop_server(reference) == 0
    assert all(api.cached_tokens(a) > 1000 for a in answers)
    stats = api.wait_for_writes(server)
    assert stats["corrupt_dropped"] == 0 and stats["write_errors"] == 0
    assert stop_server(server) == 0

    cold_server = start_backend(model, tmp_path / "kv-cold")
    with ThreadPoolExecutor(2) as pool:
        cold = [_answer(a) for a in pool.map(
            lambda q: api.chat(cold_server, q, system=system, **ask), questions)]
    assert [_answer(a) for a in answers] == cold
    assert stop_server(cold_server) == 0

    restarted = start_backend(model, tmp_path / "kv")  # what landed is whole and usable
    again = api.chat(restarted, questions[0], system=system, **ask)
    assert _answer(again) == cold[0] and api.cached_tokens(again) > 1000
