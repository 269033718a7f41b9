"""Long prefills of sliding-window and recurrent models: kept at block boundaries and
sharing the machine, with answers equal to a cold prefill's.

Their steps end at absolute block-aligned positions (`backend/prefill.py`), so a prefill
resumed from a checkpoint runs the same model calls as a cold one; a checkpoint holds the
window or recurrent state at the boundary beside the attention blocks."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.backend.conftest import StartBackend
from tests.support.prefill_race import race
from tests.support.processes import ServerProcess
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow
# ~6,000 tokens in 16-token steps: seconds of prefill on these tiny models, long enough
# that the backend notices the hang-up (within mlx-lm's 0.5 s loop) well before the end.
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


def _answer(response: Any) -> list[tuple[str, float, list[tuple[str, float]]]]:
    return [(t.token, t.logprob, [(top.token, top.logprob) for top in t.top_logprobs])
            for t in response.choices[0].logprobs.content]


def _hang_up_half_way(server: ServerProcess,
                      then: Callable[[], None] = lambda: None) -> tuple[int, int]:
    """Stream the long prompt; once half of it is prefilled call `then` and hang up;
    returns (tokens done at half-way, tokens in all)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
    body = {"model": "m", "temperature": 0, "stream": True, "max_tokens": 6,
            "messages": [{"role": "user", "content": LONG}]}
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    response = conn.getresponse()
    try:
        for line in response:
            match = re.match(rb": keepalive (\d+)/(\d+)", line)
            if match and int(match[1]) * 2 >= int(match[2]):
                then()
                return int(match[1]), int(match[2])
            assert not line.startswith(b"data:"), "the prefill ended before half-way"
        raise AssertionError("the stream ended before half-way")
    finally:
        response.close()
        conn.close()


@pytest.mark.parametrize("family", ["gemma3_text", "nemotron_h", "qwen3_next"])
def test_a_hang_up_half_way_is_resumed_from_a_block_checkpoint_and_answers_as_cold(
    family: str, family_model_dir: Callable[[str], Path], tmp_path: Path,
    start_backend: StartBackend, api: Any,
) -> None:
    model = family_model_dir(family)
    cold = _chat(start_backend(model, tmp_path / "kv-cold", *STEP))
    assert api.cached_tokens(cold) == 0

    server = start_backend(model, tmp_path / "kv", *STEP)
    done, total = _hang_up_half_way(server)
    # The checkpoints at block boundaries up to the hang-up reach the disk: attention
    # blocks plus the sliding-window / recurrent state beside the last one.
    stats = wait_until(
        lambda: (s := api.get_json(server, "/v1/cachelayer/kv"))["pending_writes"] == 0
        and s["checkpoints_written"] >= done // 256 and s,
        "the prefill's block checkpoints on disk", timeout=120)
    assert stats["prefill_checkpoints"]["queued"] >= 1
    resent = _chat(server)
    reused = api.cached_tokens(resent)
    assert 256 <= reused < total and reused % 256 == 0
    assert _answer(resent) == _answer(cold)


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

    _, total = _hang_up_half_way(server, kill)
    restarted = start_backend(model, tmp_path / "kv", *STEP)
    resent = _chat(restarted)
    reused = api.cached_tokens(resent)
    assert 1024 <= reused < total and reused % 256 == 0
    assert _answer(resent) == _answer(cold)
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
