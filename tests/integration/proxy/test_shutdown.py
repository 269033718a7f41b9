"""SIGTERM: in-flight streams finish, then the ledger and the metrics file are flushed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from tests.support import http
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.servers import RunningServer, free_port, serve_app


def _wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "the proxy exited during start-up"
        try:
            urllib.request.urlopen(url + "/health", timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the proxy never answered /health")


def test_sigterm_drains_a_stream_then_flushes_metrics(tmp_path: Path) -> None:
    fake = FakeUpstream(lambda body: Reply(text=" ".join(["word"] * 20), delay_s=0.1))
    with serve_app(fake.make_app) as upstream:
        _run_and_terminate(upstream, tmp_path)


def _run_and_terminate(upstream: RunningServer, tmp_path: Path) -> None:
    port = free_port()
    metrics = tmp_path / "metrics.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "cachelayer", "serve", "--upstream", upstream.url,
         "--port", str(port), "--data-dir", str(tmp_path / "data"),
         "--metrics-file", str(metrics), "--metrics-interval", "3600",
         "--shutdown-timeout", "20"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    answers: list[http.Answer] = []
    try:
        _wait_healthy(url, process)
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "go"}]}
        client = threading.Thread(
            target=lambda: answers.append(http.post(url + "/v1/chat/completions", json=body)))
        client.start()
        time.sleep(0.5)  # the stream is under way (it takes about 2 s)
        assert not metrics.exists()
        process.send_signal(signal.SIGTERM)
        client.join(30)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    [answer] = answers
    assert answer.status == 200 and answer.content.endswith(b"data: [DONE]\n\n")
    assert http.sse_text(answer.content) == " ".join(["word"] * 20)
    doc = json.loads(metrics.read_text())
    assert doc["metrics"]["totalRequests"] == 1
    assert doc["layers"]["response"]["stored"] == 1
