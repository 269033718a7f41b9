"""`cachelayer serve` hands its backend flags to the embedded backend, and shows the
backend's hot tier in /metrics."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from tests.support.family_models import build_family_model
from tests.support.proxy_process import running_proxy
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow  # real mlx inference, child servers

SYSTEM = " ".join(f"Rule {i}: read file number {i} before editing it." for i in range(30))


def test_serve_passes_the_budget_and_kv_flags_and_metrics_show_the_hot_tier(
    tmp_path: Path,
) -> None:
    model = build_family_model(tmp_path / "llama", "llama")
    with running_proxy(tmp_path, None, "--model", str(model), "--prompt-cache-bytes", "8M",
                       "--kv-min-tokens", "64", "--kv-max-bytes", "64M",
                       up_timeout=300) as proxy:
        body = {"model": "m", "max_tokens": 2, "temperature": 0,
                "messages": [{"role": "system", "content": SYSTEM},
                             {"role": "user", "content": "hi"}]}
        request = urllib.request.Request(f"{proxy.url}/v1/chat/completions",
                                         data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as r:
            assert r.status == 200
        def metrics_with_kv_memory() -> str | None:
            with urllib.request.urlopen(f"{proxy.url}/metrics", timeout=30) as r:
                text = r.read().decode()
            held = "kv_memory_bytes" in text and "cachelayer_kv_memory_bytes 0" not in text
            return text if held else None

        text = wait_until(metrics_with_kv_memory, "/metrics to show KV memory in use",
                          timeout=60, interval=0.2)
        assert "cachelayer_kv_memory_budget_bytes 8000000" in text
    exported = json.loads((tmp_path / "data" / "kv" / "kv-stats.json").read_text())
    assert exported["max_bytes"] == 64 << 20 and exported["min_tokens"] == 64
    assert exported["blocks"] > 0  # a ~400-token prompt persisted under --kv-min-tokens 64
