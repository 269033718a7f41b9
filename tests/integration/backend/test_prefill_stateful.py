"""Long prefills of sliding-window and recurrent models: kept at block boundaries and
sharing the machine, with answers equal to a cold prefill's.

Their steps end at absolute block-aligned positions (`backend/prefill.py`), so a prefill
resumed from a checkpoint runs the same model calls as a cold one; a checkpoint holds the
window or recurrent state at the boundary beside the attention blocks."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.backend.conftest import StartBackend
from tests.support.long_prefill import answer_with_top, hang_up_half_way, race
from tests.support.processes import ServerProcess
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow
# ~6,000 tokens in 16-token steps: a second or more of prefill on these tiny models; the
# backend stops an abandoned prompt a step or two after its client has gone.
LONG = " ".join(f"line {i} of the long file says hello." for i in range(450))
STEP = ("--prefill-step-size", "16")
# ~40,000 tokens: these tiny models prefill ~15,000 tokens/s here, and mlx-lm's server
# takes new requests only between its 0.5 s loops; a few seconds of prefill is a race
# the short request can only win by being let in between steps.
LONGER = " ".join(f"line {i} of the long file says hello." for i in range(3000))
ASK = {"max_tokens": 6, "logprobs": True, "top_logprobs": 3}


def _chat(server: ServerProcess) -> Any:
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    return client.chat.completions.create(model="m", temperature=0,
                                          messages=[{"role": "user", "content": LONG}], **ASK)


@pytest.mark.parametrize("family", ["gemma3_text", "nemotron_h", "qwen3_next"])
def test_a_hang_up_half_way_is_resumed_from_a_block_checkpoint_and_answers_as_cold(
    family: str, family_model_dir: Callable[[str], Path], tmp_path: Path,
    start_backend: StartBackend, api: Any,
) -> None:
    model = family_model_dir(family)
    cold = _chat(start_backend(model, tmp_path / "kv-cold", *STEP))
    assert api.cached_tokens(cold) == 0

    server = start_backend(model, tmp_path / "kv", *STEP)
    done, total = hang_up_half_way(server, LONG)
    # The checkpoints at block boundaries up to the hang-up reach the disk: attention
    # blocks plus the sliding-window / recurrent state beside the last one.
    stats = wait_until(
        lambda: (s := api.get_json(server, "/v1/cachelayer/kv"))["pending_writes"] == 0
        and s["checkpoints_written"] >= done // 256 and s,
        "the prefill's block checkpoints on disk", timeout=120)
    assert stats["prefill_checkpoints"]["queued"] >= 1
    resent = _chat(server)
    reused = api.cached_tokens(resent)
    # Kept up to the hang-up, and the abandoned prefill stopped within a block of it.
    assert 256 <= done // 256 * 256 <= reused <= done // 256 * 256 + 256
    assert reused < total and reused % 256 == 0
    assert answer_with_top(resent) == answer_with_top(cold)


def test_a_kill_9_half_way_keeps_a_recurrent_models_block_checkpoints_for_the_restart(
    family_model_dir: Callable[[str], Path], tmp_path: Path, start_backend: StartBackend,
    api: Any,
) -> None:
    model = family_model_dir("nemotron_h")
    cold = _chat(start_backend(model, tmp_path / "kv-cold", *STEP))
    server = start_backend(model, tmp_path / "kv", *STEP)

    def kill() -> None:
        wait_until(lambda: api.get_json(server, "/v1/cachelayer/kv")["checkpoints_written"]
                   >= 4, "four block checkpoints (1,024 tokens) on disk", timeout=120)
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(30)

    _, total = hang_up_half_way(server, LONG, then=kill)
    restarted = start_backend(model, tmp_path / "kv", *STEP)
    resent = _chat(restarted)
    reused = api.cached_tokens(resent)
    assert 1024 <= reused < total and reused % 256 == 0
    assert answer_with_top(resent) == answer_with_top(cold)
    assert api.get_json(restarted, "/v1/cachelayer/kv")["tokens_restored_disk"] == reused


# One mlx-lm step would hold the whole prompt (65536 > its ~40,000 tokens).
ONE_STEP = ("--prefill-step-size", "65536")


@pytest.mark.parametrize("family", ["gemma3_text", "nemotron_h"])
def test_a_short_request_gets_its_first_token_before_a_stateful_models_long_prefill_ends(
    family: str, family_model_dir: Callable[[str], Path], tmp_path: Path,
    start_backend: StartBackend,
) -> None:
    # Block-aligned steps (256 tokens) let the short request in between them.
    server = start_backend(family_model_dir(family), tmp_path / "kv", *ONE_STEP)
    long_first, short_first = race(server, LONGER)
    assert short_first < long_first, server.log()[-2000:]


def test_with_mlx_lms_fixed_steps_the_short_request_waits_for_the_stateful_prefill(
    family_model_dir: Callable[[str], Path], tmp_path: Path, start_backend: StartBackend,
) -> None:
    # The reference: --prefill-step-seconds 0 is mlx-lm's own scheduling (one step).
    server = start_backend(family_model_dir("nemotron_h"), tmp_path / "kv", *ONE_STEP,
                           "--prefill-step-seconds", "0")
    long_first, short_first = race(server, LONGER)
    assert short_first >= long_first
