"""make_app walks the layer objects in order: each installs its own keys, and their
start-up/shutdown contexts sit in the order the shutdown relies on."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from cachelayer.config import Settings
from cachelayer.proxy.activity import ACTIVITY
from cachelayer.proxy.app import make_app
from cachelayer.proxy.edge import CODECS, PARSE_MEMO
from cachelayer.proxy.fast_path import FAST_PATH
from cachelayer.proxy.forward.layer import PREFILLS, UPSTREAM_LATENCY
from cachelayer.proxy.layer import LAYERS
from cachelayer.proxy.observe import observe_ctx
from cachelayer.proxy.prefix.layer import PREFIX_MEMO, PREFIX_SIZER, VOLATILE_RULES
from cachelayer.proxy.store.layer import COALESCER, KEY_MEMO, RENDER_MEMO


def _app(tmp_path: Path) -> web.Application:
    return make_app(Settings(upstream="http://127.0.0.1:9", data_dir=tmp_path))


def test_the_layers_are_set_up_in_the_order_a_request_meets_them(tmp_path: Path) -> None:
    app = _app(tmp_path)
    assert list(app[LAYERS]) == ["fast_path", "edge", "responses", "activity", "prefix",
                                 "store", "forward"]


def test_each_layer_installs_its_own_keys(tmp_path: Path) -> None:
    app = _app(tmp_path)
    for key in (CODECS, PARSE_MEMO, ACTIVITY, VOLATILE_RULES, PREFIX_MEMO, PREFIX_SIZER,
                KEY_MEMO, RENDER_MEMO, COALESCER, PREFILLS, UPSTREAM_LATENCY, FAST_PATH):
        assert key in app, key


def test_the_ledger_closes_last_and_the_observer_exports_before_any_layer_closes(
    tmp_path: Path,
) -> None:
    # aiohttp unwinds cleanup contexts in reverse: the observer (drain, last export) must
    # be the last registered, the prefix layer's ledger before the store's, the store's
    # before the forward layer's client session.
    app = _app(tmp_path)
    layers = app[LAYERS]
    order = [getattr(ctx, "__func__", ctx) for ctx in app.cleanup_ctx]
    ledger = order.index(type(layers["prefix"])._ledger_ctx)  # type: ignore[attr-defined]
    store = order.index(type(layers["store"])._store_ctx)  # type: ignore[attr-defined]
    session = order.index(type(layers["forward"])._upstream_ctx)  # type: ignore[attr-defined]
    assert ledger < store < session
    assert order[-1] is observe_ctx
