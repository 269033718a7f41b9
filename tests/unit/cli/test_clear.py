"""`cachelayer clear` asks before it removes anything, and only --yes answers for a script."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cachelayer.backend.kv_files import BLOCK_SUFFIX
from cachelayer.cli.main import main


def _kv_file(data_dir: Path) -> Path:
    block = data_dir / "kv" / "model-fp" / ("b0" + BLOCK_SUFFIX)
    block.parent.mkdir(parents=True)
    block.write_bytes(b"kv bytes")
    return block


def test_clear_kv_without_a_terminal_and_without_yes_deletes_nothing_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    block = _kv_file(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))  # a pipe, even one saying yes
    assert main(["clear", "--kv", "--data-dir", str(tmp_path)]) == 1
    assert block.exists()
    err = capsys.readouterr().err
    assert "not a terminal" in err and "--yes" in err and "not removing kv" in err


def test_clear_kv_with_yes_without_a_terminal_removes_the_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    block = _kv_file(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["clear", "--kv", "--yes", "--data-dir", str(tmp_path)]) == 0
    assert not block.exists()
    assert "removed 1 KV cache files" in capsys.readouterr().out


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bytes], None]]:
    """Make stdin a real pseudo-terminal on which the given bytes have been typed."""
    opened: list[Any] = []

    def type_in(typed: bytes) -> None:
        master, slave = os.openpty()
        stdin = os.fdopen(slave, "r")
        opened.extend((master, stdin))
        os.write(master, typed)
        monkeypatch.setattr("sys.stdin", stdin)

    yield type_in
    for thing in opened:
        thing.close() if hasattr(thing, "close") else os.close(thing)


def test_ctrl_d_at_the_prompt_cancels_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], terminal: Callable[[bytes], None]
) -> None:
    block = _kv_file(tmp_path)
    terminal(b"\x04")  # Ctrl-D: end of input
    assert main(["clear", "--kv", "--data-dir", str(tmp_path)]) == 1
    assert block.exists()
    captured = capsys.readouterr()
    assert "cancelled: nothing removed" in captured.err
    assert "Traceback" not in captured.err + captured.out


def test_answering_y_in_a_terminal_removes(
    tmp_path: Path, terminal: Callable[[bytes], None]
) -> None:
    block = _kv_file(tmp_path)
    terminal(b"y\n")
    assert main(["clear", "--kv", "--data-dir", str(tmp_path)]) == 0
    assert not block.exists()
