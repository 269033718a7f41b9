"""Prefill that shares the machine: a short request sent while a long prompt prefills gets
its first token before that prefill ends, even when the long prompt fits in one of
mlx-lm's fixed steps (the backend sizes its steps by time instead)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.backend.conftest import StartBackend
from tests.support.long_prefill import race

pytestmark = pytest.mark.slow
# ~8,000 tokens: one step of 8192 for mlx-lm's fixed steps, seconds of prefill here.
LONG = " ".join(f"line {i} of the long file says hello." for i in range(600))


def test_a_short_request_gets_its_first_token_before_a_long_prefill_ends(
    demo_model: Path, tmp_path: Path, start_backend: StartBackend,
) -> None:
    server = start_backend(demo_model, tmp_path / "kv", "--prefill-step-size", "8192",
                           "--prefill-step-seconds", "0.3")
    long_first, short_first = race(server, LONG)
    assert short_first < long_first, server.log()[-2000:]


def test_with_fixed_steps_the_short_request_waits_for_the_whole_prefill(
    demo_model: Path, tmp_path: Path, start_backend: StartBackend,
) -> None:
    # The reference: mlx-lm's own scheduling (one 8192-token step) holds it up.
    server = start_backend(demo_model, tmp_path / "kv", "--prefill-step-size", "8192",
                           "--prefill-step-seconds", "0")
    long_first, short_first = race(server, LONG)
    assert short_first >= long_first
