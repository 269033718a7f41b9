"""The shape every layer of the proxy has: one object that installs its own state and
reports its own figures.

`make_app` (app.py) builds the layer objects, then walks them in order calling
`setup(app)`: each registers its typed app keys, its routes, its background work and
its start-up/shutdown (`cleanup_ctx`, which aiohttp runs in that order and unwinds in
reverse). A layer's middleware is a plain function in its package; app.py lists the
middlewares itself so the order a request passes them is read in one place.

`snapshot()` returns the layer's figures as plain data (dicts, lists, dataclasses from
`telemetry/`), which the observer (observe.py) hands to the renderers in `telemetry/`:
the metrics file, `/metrics`, `/cache/stats`. A snapshot may block (diskcache, the
ledger's disk): it is taken off the event loop.
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web


class Layer(Protocol):
    """One layer of the proxy: its name, its set-up, its figures."""

    name: str

    def setup(self, app: web.Application) -> None:
        """Register this layer's app keys, routes, background work and cleanup contexts."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """This layer's figures now (plain data; may block: called off the loop)."""
        ...


def setup_layers(app: web.Application, layers: list[Layer]) -> dict[str, Layer]:
    """Set the layers up in order; the layers by name (for the observer)."""
    by_name: dict[str, Layer] = {}
    for layer in layers:
        if layer.name in by_name:
            raise ValueError(f"two layers are named {layer.name!r}")
        layer.setup(app)
        by_name[layer.name] = layer
    return by_name


LAYERS = web.AppKey("layers", dict[str, Layer])
