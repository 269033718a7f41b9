"""`cachelayer serve` supervises its embedded backend: a kill -9 of the backend makes
/health say degraded (503, why), requests that need it get a 503 in their API's shape
with Retry-After, and once the restart is done /health is ok and requests are answered."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cachelayer.backend.demo_model import build_demo_model
from tests.support import http
from tests.support.proxy_process import ProxyProcess, running_proxy
from tests.support.wait import WaitTimeout, wait_until

pytestmark = pytest.mark.slow
USER = [{"role": "user", "content": "hi"}]


def _until(condition: Callable[[], Any], timeout: float, what: str,
           child: ProxyProcess) -> Any:
    """wait_until, failing with the tail of the proxy's output (the supervisor's log)."""
    try:
        return wait_until(condition, what, timeout=timeout, interval=0.1)
    except WaitTimeout as exc:
        raise WaitTimeout(f"{exc}\n{child.output()[-4000:]}") from exc


def _health(child: ProxyProcess) -> http.Answer:
    return http.get(child.url + "/health", timeout=10)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random-weight demo model."""
    return build_demo_model(tmp_path_factory.mktemp("supervised") / "demo")


def test_a_killed_embedded_backend_is_restarted_and_health_goes_degraded_and_back(
    model: Path, tmp_path: Path
) -> None:
    with running_proxy(tmp_path, None, "--model", str(model), up_timeout=180) as proxy:
        first = _health(proxy).json()
        assert first["status"] == "ok" and first["backend"]["restarts"] == 0
        old_pid = first["backend"]["pid"]
        chat = {"model": "m", "messages": USER, "max_tokens": 2}
        assert http.post(proxy.url + "/v1/chat/completions", chat).status == 200

        os.kill(old_pid, signal.SIGKILL)
        degraded = _until(lambda: (a := _health(proxy)).status == 503 and a, 30,
                          "/health to say degraded", proxy).json()
        assert degraded["status"] == "degraded"
        assert "exited with status -9" in degraded["reason"]
        # While it restarts, a request that needs it is told to come back, in its API shape.
        down = http.post(proxy.url + "/v1/chat/completions", {**chat, "seed": 1})
        assert down.status == 503, down.content
        assert int(down.headers["Retry-After"]) >= 1
        assert "restart" in down.json()["error"]["message"]
        message = {"model": "m", "max_tokens": 2, "messages": USER}
        down = http.post(proxy.url + "/v1/messages", message)
        assert down.status == 503 and "Retry-After" in down.headers
        assert down.json()["type"] == "error"
        models = http.get(proxy.url + "/v1/models")
        assert models.status == 503 and "Retry-After" in models.headers

        back = _until(lambda: (a := _health(proxy)).status == 200 and a.json(), 180,
                      "/health to be ok again", proxy)
        assert back["status"] == "ok"
        assert back["backend"]["restarts"] == 1 and back["backend"]["last_exit"] == -9
        assert back["backend"]["pid"] != old_pid
        answer = http.post(proxy.url + "/v1/chat/completions", {**chat, "seed": 2})
        assert answer.status == 200, answer.content
        assert http.post(proxy.url + "/v1/messages", message).status == 200
        proxy.stop_cleanly()
    log = proxy.output()
    assert "exited with status -9" in log and "last stderr lines" in log
