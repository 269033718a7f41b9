"""`cachelayer serve` with its embedded backend, run under umask 000 and 022: every
directory it creates (data dir, store, ledger, KV, hf, the demo model) is 0700 and every
file 0600, and the working directory (the metrics file's parent) keeps its own mode."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.support import http
from tests.support.proxy_process import spawn_proxy
from tests.support.wait import WaitTimeout, wait_until

pytestmark = pytest.mark.slow
# Long enough for the backend to persist KV blocks (--kv-min-tokens defaults to 256).
SYSTEM = " ".join(f"Rule {i}: read file number {i} before editing it." for i in range(60))


@pytest.mark.parametrize(("umask", "cwd_mode"), [(0o000, 0o1777), (0o022, 0o755)])
def test_serve_creates_only_private_files_and_leaves_the_cwd_alone(
    tmp_path: Path, umask: int, cwd_mode: int
) -> None:
    os.chmod(tmp_path, cwd_mode)
    data = tmp_path / "state" / "cachelayer"  # its parent does not exist either
    old = os.umask(umask)
    try:
        proxy = spawn_proxy(tmp_path, None, data_dir=data, up_timeout=300)
    finally:
        os.umask(old)
    try:
        body = {"model": "m", "max_tokens": 2, "messages": [
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]}
        assert http.post(proxy.url + "/v1/chat/completions", body).status == 200
        try:
            wait_until(lambda: list((data / "kv").rglob("*.kvb"))
                       and proxy.metrics_file.exists(),
                       "a KV block and the metrics file on disk", timeout=60, interval=0.2)
        except WaitTimeout:
            print(proxy.output()[-3000:])  # shown with the failure
            raise
        proxy.stop_cleanly()
    finally:
        proxy.stop()
    wrong = []
    seen = {"dirs": 0, "files": 0}
    for path in [tmp_path / "state", data, *data.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        want = 0o700 if path.is_dir() else 0o600
        seen["dirs" if path.is_dir() else "files"] += 1
        if mode != want:
            wrong.append(f"{path.relative_to(tmp_path)} {oct(mode)} (want {oct(want)})")
    assert not wrong, wrong
    assert {"kv", "hf", "models", "responses", "ledger"} <= {p.name for p in data.iterdir()}
    assert seen["files"] > 10
    assert stat.S_IMODE(proxy.metrics_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(tmp_path.stat().st_mode) == cwd_mode
