"""A backend that cannot start exits at once with status 1 and says why."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import backend_command, free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]


def test_a_taken_port_ends_the_process_with_status_1_after_the_model_loaded(
    demo_model: Path, tmp_path: Path
) -> None:
    """The socket is bound after the model loads and the generation thread starts; a
    taken port used to leave that (non-daemon) thread running and the process alive."""
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        proc = subprocess.run(backend_command(demo_model, port, tmp_path / "kv"), cwd=ROOT,
                              capture_output=True, timeout=120, check=False)
    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode == 1, stderr[-3000:]
    assert "failed to start" in stderr and "Address already in use" in stderr
