"""SIGTERM and SIGINT, once or twice, stop the backend cleanly: no abort, no half-written block."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cachelayer.backend.kv_blocks import BLOCK_SUFFIX
from cachelayer.fs import TMP_PREFIX

StartBackend = Callable[..., Any]


@pytest.mark.slow
@pytest.mark.parametrize(
    "signals",
    [(signal.SIGTERM,), (signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGINT),
     (signal.SIGINT, signal.SIGTERM)],
    ids=["term", "term-term", "int-int", "int-term"],
)
def test_signals_during_a_request_never_abort_and_leave_only_whole_blocks(
    signals: tuple[signal.Signals, ...], family_model_dir: Callable[[str], Path],
    tmp_path: Path, start_backend: StartBackend, api: Any,
) -> None:
    model = family_model_dir("llama")
    kv = tmp_path / "kv"
    server = start_backend(model, kv)

    def ask() -> None:
        # The server may close the connection while it shuts down.
        with contextlib.suppress(Exception):
            api.chat(server, "Tell me a long story.", max_tokens=400)

    client = threading.Thread(target=ask)
    client.start()
    time.sleep(1.0)  # mid-prefill or mid-answer
    for sig in signals:
        server.proc.send_signal(sig)
        time.sleep(0.05)
    assert server.proc.wait(60) == 0, server.log()
    client.join(30)
    log = server.log()
    assert "terminate called" not in log and "Traceback" not in log, log
    assert not [p for p in kv.glob("*/*") if p.name.startswith(TMP_PREFIX)]

    restarted = start_backend(model, kv)
    stats = api.get_json(restarted, "/v1/cachelayer/kv")
    assert stats["corrupt_dropped"] == 0
    assert stats["blocks"] == len(list(kv.glob(f"*/*{BLOCK_SUFFIX}")))
