"""Prefill that is kept: a long prompt is checkpointed to disk as it prefills, so a client
that hangs up half-way, or a backend killed half-way, costs only what was not yet written:
the re-sent request restores the checkpointed blocks (its `cached_tokens`) and answers
exactly as a cold prefill does, token and logprob."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.backend.conftest import StartBackend
from tests.support.long_prefill import answer_with_top, hang_up_half_way
from tests.support.processes import ServerProcess
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow
# ~4,000 tokens prefilled in 16-token steps: seconds on the tiny model, so "half-way" is
# a moment a test can catch; blocks are 256 tokens.
LONG = " ".join(f"line {i} of the long file says hello." for i in range(300))
STEP = ("--prefill-step-size", "16")
ASK = {"max_tokens": 6, "logprobs": True, "top_logprobs": 3}


def _chat(server: ServerProcess, tenant: str = "") -> Any:
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0,
                    default_headers={"X-Cachelayer-Tenant": tenant} if tenant else None)
    return client.chat.completions.create(model="m", temperature=0,
                                          messages=[{"role": "user", "content": LONG}], **ASK)


def _wait_for_blocks(server: ServerProcess, api: Any, blocks: int) -> None:
    wait_until(lambda: api.get_json(server, "/v1/cachelayer/kv")["blocks"] >= blocks,
               f"a prefill checkpoint of {blocks} block(s) on disk", timeout=60)


@pytest.fixture
def cold(demo_model: Path, tmp_path: Path, start_backend: StartBackend) -> Any:
    """The long prompt's answer from a cold backend, prefilled in the same steps."""
    response = _chat(start_backend(demo_model, tmp_path / "kv-cold", *STEP))
    assert response.usage.prompt_tokens_details.cached_tokens == 0
    return response


def test_a_hang_up_half_way_keeps_the_prefill_and_the_resend_answers_as_cold(
    demo_model: Path, tmp_path: Path, start_backend: StartBackend, api: Any, cold: Any,
) -> None:
    server = start_backend(demo_model, tmp_path / "kv", *STEP)
    done, total = hang_up_half_way(server, LONG)
    stats = api.wait_for_writes(server)
    assert stats["prefill_checkpoints"]["queued"] >= 1
    resent = _chat(server)
    reused = resent.usage.prompt_tokens_details.cached_tokens
    # Everything up to the last whole block before the hang-up was kept, and the
    # abandoned prefill stopped within a block of it (`stops.StopBudget`): had it run on,
    # its cache would hold more (mlx-lm's own loop ran it up to 0.5 s further, often to
    # its end).
    assert done // 256 * 256 <= reused <= done // 256 * 256 + 256
    assert reused < total and reused % 256 == 0
    assert answer_with_top(resent) == answer_with_top(cold)


def test_a_kill_9_half_way_keeps_the_checkpointed_blocks_for_the_restart(
    demo_model: Path, tmp_path: Path, start_backend: StartBackend, api: Any, cold: Any,
) -> None:
    server = start_backend(demo_model, tmp_path / "kv", *STEP)

    def kill() -> None:
        _wait_for_blocks(server, api, 4)  # 1,024 tokens on disk, more on the way
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(30)

    done, _ = hang_up_half_way(server, LONG, then=kill)
    restarted = start_backend(demo_model, tmp_path / "kv", *STEP)
    resent = _chat(restarted)
    reused = resent.usage.prompt_tokens_details.cached_tokens
    assert 1024 <= reused <= done and reused % 256 == 0
    assert answer_with_top(resent) == answer_with_top(cold)
    stats = api.get_json(restarted, "/v1/cachelayer/kv")
    assert stats["tokens_restored_disk"] == reused


def test_a_checkpointed_prefill_is_reused_by_its_own_tenant_only(
    demo_model: Path, tmp_path: Path, start_backend: StartBackend, api: Any,
) -> None:
    server = start_backend(demo_model, tmp_path / "kv", *STEP)
    done, _ = hang_up_half_way(server, LONG, tenant="a" * 16)
    api.wait_for_writes(server)
    other = _chat(server, tenant="b" * 16)
    assert other.usage.prompt_tokens_details.cached_tokens == 0
    own = _chat(server, tenant="a" * 16)
    assert own.usage.prompt_tokens_details.cached_tokens >= done // 256 * 256 > 0
