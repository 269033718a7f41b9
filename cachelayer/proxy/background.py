"""Work that runs off the request path (store writes, prefix size counts), awaited at
shutdown so nothing half-done is lost.

Layer 1 spawns its prefix measurements here. Layer 2's writes queue in its store front
(proxy/store/front.py), which bounds them itself. The observer drains both before the
last metrics export, so the export counts every write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Background:
    """Tasks still running off the request path; awaited at shutdown."""

    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine in the background and keep a reference until it ends."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def __len__(self) -> int:
        return len(self.tasks)

    async def drain(self) -> None:
        """Wait for every background task to finish (new ones spawned meanwhile too)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)


BACKGROUND = web.AppKey("background", Background)
