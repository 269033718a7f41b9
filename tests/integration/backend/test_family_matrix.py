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


@pytest.mark.slow
def test_two_requests_sharing_a_prefix_while_its_write_is_in_flight_answer_as_cold(
    family_model_dir: Callable[[str], Path], tmp_path: Path,
    start_backend: StartBackend, api: Any,
) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from cachelayer.backend.server import BackendServer
    from cachelayer.backend.settings import BackendSettings
    from tests.support.processes import free_port

    # An attention-only model (llama): memory restores any prefix of turn 1's cache, so
    # the questions reuse it whatever part of it the disk holds. Turn 1 and the questions
    # carry a seed, so mlx-lm serves each alone, in order (a seed cannot be honoured in a
    # batch): turn 1 writes nothing before its answer (no segment cache, no prefill
    # checkpoint), then its whole cache in one write; and no answer, here or on the cold
    # server, depends on which requests shared a batch and when (two cold prompts of this
    # model joining a batch a step apart answer unlike each alone, by ~1e-7 in logprobs).
    model = family_model_dir("llama")
    ask = {"max_tokens": 6, "logprobs": True, "top_logprobs": 3, "seed": 0}
    questions = ["Where is the config?", "Which tests are slow?"]
    block = 16

    # The backend in this process (as test_restore.py runs one), so that its writer can be
    # held: with `hold` blocks on disk, the next waits until the questions are answered.
    # Turn 1's write, the server's first, is ~120 blocks: it is held half way, whatever the
    # timing, and the questions are sent only then.
    hold = 60
    settings = BackendSettings(model=str(model), kv_dir=tmp_path / "kv", port=free_port(),
                               kv_min_tokens=256, kv_max_bytes=1 << 30,
                               kv_block_tokens=block)
    backend = BackendServer(settings)
    store = backend.prompt_cache.store
    held, release = threading.Event(), threading.Event()
    write_block = store._write_block

    def held_write_block(*args: Any) -> int:
        if store.counters.blocks_written == hold:  # the writer thread alone counts these
            held.set()
            assert release.wait(120), "the writer was never released"
        return write_block(*args)

    store._write_block = held_write_block  # type: ignore[method-assign, assignment]
    serving = threading.Thread(target=backend.serve_forever, daemon=True)
    serving.start()
    server = SimpleNamespace(url=f"http://127.0.0.1:{settings.port}")
    try:
        turn1 = api.chat(server, TURN1, **{**ask, "max_tokens": 32})
        whole = turn1.usage.prompt_tokens // block  # its cache holds at least its prompt
        assert held.wait(60), f"turn 1's write ({whole} blocks or more) never reached {hold}"
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda q: api.chat(server, q, **ask), questions))
        during = api.get_json(server, "/v1/cachelayer/kv")
        release.set()
        # Both were looked up (after turn 1) with turn 1's write held part way, and reused
        # its prefix (from memory, which holds it whole).
        assert during["lookups"] == 1 + len(questions)
        assert during["blocks_written"] == hold < whole and during["pending_writes"] >= 1
        assert all(api.cached_tokens(a) > 1000 for a in answers)
        stats = api.wait_for_writes(server)  # the held write lands, then the questions'
        assert stats["corrupt_dropped"] == 0 and stats["write_errors"] == 0
        assert stats["blocks_written"] > whole
    finally:
        release.set()
        backend.shutdown()
        serving.join(30)

    # Cold: a fresh server, each question as a tenant of its own, so neither reuses the
    # other's prefix (backend/tenants.py).
    cold_server = start_backend(model, tmp_path / "kv-cold")
    with ThreadPoolExecutor(2) as pool:
        cold_answers = list(pool.map(
            lambda q, tenant: api.chat(cold_server, q,
                                       extra_headers={"X-Cachelayer-Tenant": tenant}, **ask),
            questions, ["c01d0001", "c01d0002"]))
    assert [api.cached_tokens(a) for a in cold_answers] == [0, 0]
    cold = [_answer(a) for a in cold_answers]
    assert [_answer(a) for a in answers] == cold
    assert stop_server(cold_server) == 0

    # What landed is whole and usable: after a restart turn 1's prompt comes back from
    # disk (all its whole blocks), and a question reusing it answers as cold.
    restarted = start_backend(model, tmp_path / "kv", "--kv-block-tokens", str(block))
    turn1_again = api.chat(restarted, TURN1, max_tokens=1)
    assert api.cached_tokens(turn1_again) >= whole * block
    assert api.get_json(restarted, "/v1/cachelayer/kv")["disk_hits"] == 1
    again = api.chat(restarted, questions[0], **ask)
    assert _answer(again) == cold[0] and api.cached_tokens(again) > 1000
