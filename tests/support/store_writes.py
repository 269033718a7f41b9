"""Wait for an in-process proxy's background work (layer 2's store writes, layer 1's
token counts) to land before the next request or assertion depends on it.

One helper for every suite that runs the proxy in a thread (`serve_app`): the answer
has already been sent when its store write is still running, so a test that asks again
at once would race the write. It fails loudly if the writes never finish.
"""

from __future__ import annotations

from cachelayer.proxy.background import BACKGROUND
from cachelayer.proxy.store.layer import STORE
from tests.support.servers import RunningServer
from tests.support.wait import wait_until


def pending_writes(proxy: RunningServer) -> int:
    """How many background tasks and queued store writes the proxy still has (read on its
    own loop thread)."""
    count = proxy.call(lambda: len(proxy.app[BACKGROUND]) + proxy.app[STORE].pending_writes)
    assert isinstance(count, int)
    return count


def wait_for_writes(proxy: RunningServer, timeout: float = 10.0) -> None:
    """Wait until the proxy's background writes have all finished; fail if they do not
    within `timeout` seconds."""
    wait_until(lambda: pending_writes(proxy) == 0, "the proxy's background store writes to "
               "finish", timeout=timeout, interval=0.01)
