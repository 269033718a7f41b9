"""SIGTERM and SIGINT, once or twice, stop the backend cleanly: no abort, no half-written block.

Each case sends its signals while a streamed request is verifiably in flight: mid-prefill
(the backend has sent a `: keepalive N/M` progress comment with N < M) or mid-answer (it
has sent an answer chunk and not the end of the stream).
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cachelayer.backend.demo_model import EOS_TOKEN
from cachelayer.backend.kv_blocks import BLOCK_SUFFIX
from cachelayer.fs import TMP_PREFIX

StartBackend = Callable[..., Any]
# ~3k tokens of prompt, prefilled 32 at a time: many progress comments before the answer.
LONG_SYSTEM = " ".join(f"Rule {i}: read file number {i} before editing it." for i in range(260))
# The ways the server may end a stream it is shutting down under: a cut connection.
CUT = (http.client.IncompleteRead, http.client.RemoteDisconnected, ConnectionError)


@dataclass
class Stream:
    """What a raw streaming client saw, with monotonic times."""

    progress: list[tuple[int, int, float]] = field(default_factory=list)
    chunks: list[float] = field(default_factory=list)
    done_at: float | None = None
    cut: str | None = None
    error: BaseException | None = None
    changed: threading.Condition = field(default_factory=threading.Condition)

    def __str__(self) -> str:
        last = self.progress[-1][:2] if self.progress else None
        return (f"Stream(last progress {last}, {len(self.chunks)} chunks, "
                f"done={self.done_at is not None}, cut={self.cut}, error={self.error!r})")


def _eos_id(model: Path) -> int:
    from tokenizers import Tokenizer

    eos = Tokenizer.from_file(str(model / "tokenizer.json")).token_to_id(EOS_TOKEN)
    assert eos is not None
    return int(eos)


def _stream(port: int, body: dict[str, Any], seen: Stream) -> None:
    """POST a streamed chat request and record each progress comment and data line."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200, response.read()
        while line := response.readline():
            now = time.monotonic()
            with seen.changed:
                if line.startswith(b": keepalive "):
                    done, total = line.split()[-1].split(b"/")
                    seen.progress.append((int(done), int(total), now))
                elif line.startswith(b"data: [DONE]"):
                    seen.done_at = now
                elif line.startswith(b"data: "):
                    seen.chunks.append(now)
                seen.changed.notify_all()
    except CUT as e:  # expected: the server exits while this request is in flight
        seen.cut = type(e).__name__
    except BaseException as e:  # anything else fails the test in the main thread
        seen.error = e
    finally:
        conn.close()
        with seen.changed:
            seen.changed.notify_all()


def _in_flight(seen: Stream, stage: str) -> bool:
    if seen.done_at is not None or seen.cut or seen.error:
        raise AssertionError(f"the request ended before the signal: {seen!s}")
    if stage == "prefill":
        return any(done < total for done, total, _ in seen.progress) and not seen.chunks
    return len(seen.chunks) >= 2  # the first chunk is the role; then answer tokens


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signals", "stage"),
    [((signal.SIGTERM,), "prefill"), ((signal.SIGTERM,), "answer"),
     ((signal.SIGTERM, signal.SIGTERM), "answer"), ((signal.SIGINT, signal.SIGINT), "prefill"),
     ((signal.SIGINT, signal.SIGTERM), "answer")],
    ids=["term-mid-prefill", "term-mid-answer", "term-term-mid-answer",
         "int-int-mid-prefill", "int-term-mid-answer"],
)
def test_signals_during_a_request_never_abort_and_leave_only_whole_blocks(
    signals: tuple[signal.Signals, ...], stage: str, family_model_dir: Callable[[str], Path],
    tmp_path: Path, start_backend: StartBackend, api: Any,
) -> None:
    model = family_model_dir("llama")
    kv = tmp_path / "kv"
    server = start_backend(model, kv, "--prefill-step-size", "32")
    body = {
        "model": "m", "stream": True, "max_tokens": 4000, "temperature": 0,
        # No end-of-sequence: the answer runs for seconds, so "mid-answer" stays true.
        "logit_bias": {str(_eos_id(model)): -100},
        "messages": [{"role": "system", "content": LONG_SYSTEM},
                     {"role": "user", "content": "Tell me a long story."}],
    }
    seen = Stream()
    client = threading.Thread(target=_stream, args=(server.port, body, seen))
    client.start()
    with seen.changed:
        assert seen.changed.wait_for(lambda: _in_flight(seen, stage), timeout=120), str(seen)
        signalled_at = time.monotonic()
    for sig in signals:
        server.proc.send_signal(sig)
    assert server.proc.wait(60) == 0, server.log()
    client.join(30)
    assert not client.is_alive()
    if seen.error is not None:
        raise seen.error
    # Still in flight when signalled: its stream had not ended by then.
    assert seen.done_at is None or seen.done_at > signalled_at, str(seen)
    log = server.log()
    assert "terminate called" not in log and "Traceback" not in log, log
    assert not [p for p in kv.glob("*/*") if p.name.startswith(TMP_PREFIX)]

    restarted = start_backend(model, kv)
    stats = api.get_json(restarted, "/v1/cachelayer/kv")
    assert stats["corrupt_dropped"] == 0
    assert stats["blocks"] == len(list(kv.glob(f"*/*{BLOCK_SUFFIX}")))
