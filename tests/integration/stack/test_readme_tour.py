"""The README's 60-second tour, as written, on `cachelayer serve` with its embedded demo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import http
from tests.support.proxy_process import REPO_ROOT, running_proxy

pytestmark = pytest.mark.slow  # child servers, real mlx inference

TOUR_BODY = {"model": "demo", "messages": [{"role": "user", "content": "hello"}],
             "max_tokens": 16}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cachelayer", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, check=False)


def _access_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if " INFO cachelayer.access " in line and "path=/v1/chat/completions" in line]


def test_the_readme_tour_behaves_as_written(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running_proxy(tmp_path, None, data_dir=data, up_timeout=240) as proxy:
        chat = proxy.url + "/v1/chat/completions"
        first = http.post(chat, json=TOUR_BODY)
        assert first.status == 200 and first.headers["X-Cache-Status"] == "MISS"
        again = http.post(chat, json=TOUR_BODY)
        assert again.headers["X-Cache-Status"] == "HIT"
        assert http.answer_of(again.content) == http.answer_of(first.content)
        usage = again.json()["usage"]
        assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"]
        assert first.json()["model"] == "demo"
        assert [m["id"] for m in http.get(proxy.url + "/v1/models").json()["data"]] == ["demo"]

        stats = _cli("stats", "--url", proxy.url)
        assert stats.returncode == 0, stats.stderr
        answered = next(line for line in stats.stdout.splitlines() if "answered" in line)
        assert answered.split()[-1] == "2"

        cleared = _cli("clear", "--responses", "--yes", "--data-dir", str(data))
        assert cleared.returncode == 0 and "removed 1 stored answers" in cleared.stdout
        assert http.post(chat, json=TOUR_BODY).headers["X-Cache-Status"] == "MISS"
        assert http.get(proxy.url + "/dashboard").status == 200
    first_run = proxy.stderr_path.read_text()
    assert first_run.count("first run: building the demo model") == 1
    # one INFO access line per request, and nothing else per request at INFO
    assert len(_access_lines(first_run)) == 3, first_run[-3000:]
    assert "Prompt processing progress" not in first_run
    assert '"POST /v1/chat/completions HTTP/1.1"' not in first_run

    with running_proxy(tmp_path, None, data_dir=data, up_timeout=240, name="again") as second:
        assert http.post(second.url + "/v1/chat/completions", json=TOUR_BODY).status == 200
    second_run = second.stderr_path.read_text()
    assert "building the demo model" not in second_run  # said once, the first time
    assert "demo model ready" not in second_run
