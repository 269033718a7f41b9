"""One proxy, three scripted backends: 30 interleaved conversations keep landing on the
backend that holds their prefix; one backend dies mid-run and comes back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from cachelayer.config import Settings
from cachelayer.proxy.app import make_app
from tests.support import http
from tests.support.kv_fake import KvFake
from tests.support.servers import RunningServer, free_port, serve_app
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow
ROUTE = "/v1/chat/completions"
CONVERSATIONS = 30
PREFIXES = 10  # conversation c uses system prompt c % 10 (agents of ten projects)


class Backend:
    """A KvFake served on a fixed port, stoppable and restartable."""

    def __init__(self) -> None:
        self.fake = KvFake()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._ctx: AbstractContextManager[RunningServer] | None = None

    def start(self) -> None:
        """Serve (again) on the same port."""
        self._ctx = serve_app(self.fake.upstream.make_app, port=self.port)
        self._ctx.__enter__()

    def stop(self) -> None:
        """Stop serving: connections are refused from now on."""
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    """Three running backends, always stopped."""
    trio = [Backend() for _ in range(3)]
    for b in trio:
        b.start()
    yield trio
    for b in trio:
        with contextlib.suppress(Exception):
            b.stop()


class Conversation:
    """One agent conversation: a fixed system prompt and tools, growing messages."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.messages: list[dict[str, Any]] = [
            {"role": "system", "content": f"You are the agent of project {n % PREFIXES}. "
                                          + "Follow the rules. " * 40}]
        self.tools = [{"type": "function", "function": {
            "name": f"tool_{n % PREFIXES}", "parameters": {"type": "object"}}}]

    def turn(self, proxy_url: str, k: int) -> int:
        """Send the next user turn; the status."""
        self.messages.append({"role": "user", "content": f"conversation {self.n} turn {k}"})
        answer = http.post(proxy_url + ROUTE, {"model": "m", "messages": self.messages,
                                               "tools": self.tools})
        if answer.status == 200:
            text = answer.json()["choices"][0]["message"]["content"]
            self.messages.append({"role": "assistant", "content": text})
        return answer.status


def landed(backends: list[Backend], conversation: int, turn: int) -> list[int]:
    """Which backends received this conversation's turn."""
    marker = f"conversation {conversation} turn {turn}"
    return [i for i, b in enumerate(backends)
            if any(call["messages"][-1].get("content") == marker for call in b.fake.upstream.calls)]


def run_turn(proxy_url: str, conversations: list[Conversation], k: int) -> list[int]:
    """Turn k of every conversation, interleaved, three at a time."""
    with ThreadPoolExecutor(3) as pool:
        return list(pool.map(lambda c: c.turn(proxy_url, k), conversations))


def wait_health(url: str, predicate: Any, timeout_s: float = 5.0) -> dict[str, Any]:
    """Poll /health until predicate(body) holds; its body then."""
    def holds() -> dict[str, Any] | None:
        body = dict(http.get(url + "/health").json())
        return body if predicate(body) else None

    found = wait_until(holds, "the health document to change", timeout=timeout_s)
    assert found is not None
    return found


def test_conversations_stay_on_their_backend_through_a_failure_and_a_return(
        tmp_path: Path, backends: list[Backend]) -> None:
    settings = Settings(upstream=backends[0].url, upstreams=tuple(b.url for b in backends),
                        data_dir=tmp_path / "data", metrics_file=tmp_path / "metrics.json",
                        health_interval_s=0.3, connect_timeout_s=1.0, read_timeout_s=5.0)
    conversations = [Conversation(n) for n in range(CONVERSATIONS)]
    with serve_app(lambda: make_app(settings)) as proxy:
        for k in (1, 2):
            assert set(run_turn(proxy.url, conversations, k)) == {200}
        home = {}
        for c in conversations:
            first, second = landed(backends, c.n, 1), landed(backends, c.n, 2)
            assert first == second and len(first) == 1, (c.n, first, second)
            home[c.n] = first[0]
        assert len(set(home.values())) >= 2  # ten prefixes spread over the backends
        victim = max(set(home.values()), key=list(home.values()).count)
        backends[victim].stop()
        # Turn 3 starts at once: the first requests find the victim refusing connections
        # and go on to the next backend on the ring; none fails.
        assert set(run_turn(proxy.url, conversations, 3)) == {200}
        health = wait_health(proxy.url, lambda h: not h["backends"][victim]["healthy"])
        assert not health["backends"][victim]["healthy"] and health["upstream"]["ok"]
        moved = {}
        for c in conversations:
            (now,) = landed(backends, c.n, 3)
            if home[c.n] == victim:
                moved[c.n] = now
            else:
                assert now == home[c.n], c.n  # survivors keep their conversations
        assert set(run_turn(proxy.url, conversations, 4)) == {200}
        for n, where in moved.items():
            assert landed(backends, n, 4) == [where]  # the moved ones stay together
        backends[victim].start()
        health = wait_health(proxy.url, lambda h: h["backends"][victim]["healthy"])
        assert health["backends"][victim]["healthy"]
        assert set(run_turn(proxy.url, conversations, 5)) == {200}
        for c in conversations:
            assert landed(backends, c.n, 5) == [home[c.n]]  # its share comes back
        rows = {b["url"]: b for b in health["backends"]}
        assert sum(r["requests"] for r in rows.values()) >= CONVERSATIONS * 4
        assert all(r["kvTokensReused"] > 0 for r in rows.values())
        metrics = http.get(proxy.url + "/metrics").content.decode()
        assert f'cachelayer_backend_healthy{{backend="{backends[victim].url}"}} 1' in metrics
        doc = http.get(proxy.url + "/cache/stats").json()
        assert len(doc["layers"]["routing"]["backends"]) == 3


def test_one_upstream_shows_no_routing_and_answers_as_before(
        tmp_path: Path, backends: list[Backend]) -> None:
    settings = Settings(upstream=backends[0].url, data_dir=tmp_path / "data",
                        metrics_file=tmp_path / "metrics.json")
    with serve_app(lambda: make_app(settings)) as proxy:
        assert Conversation(0).turn(proxy.url, 1) == 200
        health = http.get(proxy.url + "/health").json()
        assert "backends" not in health and health["upstream"]["url"] == backends[0].url
        assert "routing" not in http.get(proxy.url + "/cache/stats").json()["layers"]
        assert "cachelayer_backend_" not in http.get(proxy.url + "/metrics").content.decode()
