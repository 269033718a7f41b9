"""SIGTERM: in-flight streams finish, then the ledger and the metrics file are flushed."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import pytest

from tests.support import http
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.proxy_process import running_proxy
from tests.support.servers import serve_app
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow  # real mlx inference, child servers or CLIs


def test_sigterm_drains_a_stream_then_flushes_metrics(tmp_path: Path) -> None:
    fake = FakeUpstream(lambda body: Reply(text=" ".join(["word"] * 20), delay_s=0.1))
    answers: list[http.Answer] = []
    with serve_app(fake.make_app) as upstream, running_proxy(
            tmp_path, upstream.url, "--metrics-interval", "3600",
            "--shutdown-timeout", "20") as child:
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "go"}]}
        client = threading.Thread(
            target=lambda: answers.append(http.post(child.url + "/v1/chat/completions",
                                                    json=body)))
        client.start()
        # The stream is under way: the upstream has the request (its 20 words take 2 s).
        wait_until(lambda: fake.calls, "the upstream to receive the streamed request")
        assert not child.metrics_file.exists()
        child.proc.send_signal(signal.SIGTERM)
        client.join(30)
        assert child.proc.wait(30) == 0
    [answer] = answers
    assert answer.status == 200 and answer.content.endswith(b"data: [DONE]\n\n")
    assert http.sse_text(answer.content) == " ".join(["word"] * 20)
    doc = json.loads(child.metrics_file.read_text())
    assert doc["metrics"]["totalRequests"] == 1
    assert doc["layers"]["response"]["stored"] == 1
