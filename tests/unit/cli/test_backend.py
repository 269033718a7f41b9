"""CLI flags -> BackendSettings; sizes; the default cache directory."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from cachelayer.backend.settings import default_kv_dir, parse_size
from cachelayer.cli.backend import add_backend_parser, add_warm_parser, run_backend, run_warm


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cachelayer")
    sub = parser.add_subparsers(dest="command", required=True)
    add_backend_parser(sub)
    add_warm_parser(sub)
    return parser


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4096", 4096), ("512M", 512 << 20), ("2G", 2 << 30), ("1.5GiB", 3 << 29), ("10kb", 10240)],
)
def test_parse_size_accepts_binary_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "12X", "-1G", "1 2"])
def test_parse_size_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_default_kv_dir_prefers_absolute_xdg_cache_home() -> None:
    assert default_kv_dir({"XDG_CACHE_HOME": "/x", "HOME": "/h"}) == Path("/x/cachelayer/kv")
    assert default_kv_dir({"XDG_CACHE_HOME": "rel", "HOME": "/h"}) == Path(
        "/h/.cache/cachelayer/kv"
    )
    assert default_kv_dir({"HOME": "/h"}) == Path("/h/.cache/cachelayer/kv")


def test_backend_flags_become_frozen_settings() -> None:
    from cachelayer.cli.backend import settings_from_args

    args = _parser().parse_args(
        [
            *("backend", "--model", "m", "--port", "9"),
            *("--kv-max-bytes", "2G", "--kv-min-tokens", "8"),
            *("--chat-template-args", '{"enable_thinking": false}'),
        ]
    )
    assert args.func is run_backend
    settings = settings_from_args(args, {"HOME": "/h"})
    assert settings.kv_max_bytes == 2 << 30 and settings.kv_min_tokens == 8
    assert settings.port == 9 and settings.host == "127.0.0.1"
    assert settings.kv_dir == Path("/h/.cache/cachelayer/kv")
    assert settings.chat_template_args == {"enable_thinking": False}
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


def test_backend_rejects_bad_size_and_json() -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["backend", "--model", "m", "--kv-max-bytes", "lots"])
    with pytest.raises(SystemExit):
        _parser().parse_args(["backend", "--model", "m", "--chat-template-args", "[1]"])


def test_warm_needs_exactly_one_target() -> None:
    args = _parser().parse_args(["warm", "--system", "s.txt", "--upstream", "http://h:1"])
    assert args.func is run_warm and args.model is None
    with pytest.raises(SystemExit):
        _parser().parse_args(["warm", "--system", "s.txt"])
    with pytest.raises(SystemExit):
        _parser().parse_args(["warm", "--system", "s", "--model", "m", "--upstream", "u"])
