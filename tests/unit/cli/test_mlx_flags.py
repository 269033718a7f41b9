"""Every mlx_lm.server 0.32 option: `cachelayer backend` parses it as mlx-lm does, and hands
mlx-lm the namespace its own `main()` would build; `cachelayer serve` passes them on."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from cachelayer.backend.memory_budget import parse_mlx_size
from cachelayer.cli.backend import add_backend_parser, settings_from_args
from cachelayer.cli.serve import add_serve_parser
from cachelayer.cli.serve import settings_from_args as serve_settings

# Every option with a value unlike its default (model and port aside).
ALL_OPTIONS = [
    "--adapter-path", "/a", "--host", "127.0.0.2", "--allowed-origins", "http://x,http://y",
    "--draft-model", "/d", "--num-draft-tokens", "5", "--trust-remote-code",
    "--log-level", "DEBUG", "--chat-template", "{{ messages }}", "--use-default-chat-template",
    "--temp", "0.7", "--top-p", "0.9", "--top-k", "40", "--min-p", "0.05",
    "--max-tokens", "99", "--chat-template-args", '{"enable_thinking": false}',
    "--decode-concurrency", "4", "--prompt-concurrency", "2", "--prefill-step-size", "512",
    "--prompt-cache-size", "3", "--prompt-cache-bytes", "1.5G", "--kv-bits", "4",
    "--kv-group-size", "32", "--quantized-kv-start", "100", "--pipeline",
]


def stock_namespace(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What mlx_lm.server's own main() parses from `argv` (its server is not started)."""
    import mlx_lm.server as stock

    seen: dict[str, Any] = {}
    monkeypatch.setattr("sys.argv", ["mlx_lm.server", *argv])
    monkeypatch.setattr(stock, "ModelProvider", lambda args: args)
    monkeypatch.setattr(stock, "run", lambda host, port, args: seen.update(vars(args)))
    monkeypatch.setattr(stock, "maybe_set_recommended_wired_limit", lambda: None)
    monkeypatch.setattr(stock.logging, "basicConfig", lambda **kw: None)
    stock.main()
    return seen


def ours(argv: list[str]) -> dict[str, Any]:
    """The namespace `cachelayer backend` hands mlx-lm for the same `argv`."""
    from cachelayer.backend.server import mlx_cli_args

    parser = argparse.ArgumentParser()
    add_backend_parser(parser.add_subparsers(dest="command"))
    settings = settings_from_args(parser.parse_args(["backend", *argv]), {"HOME": "/h"})
    return vars(mlx_cli_args(settings))


@pytest.mark.parametrize("extra", [[], ALL_OPTIONS], ids=["defaults", "every-option"])
def test_backend_hands_mlx_lm_what_mlx_lm_server_would_parse(
    extra: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["--model", "m", "--port", "9", *extra]
    stock, mine = stock_namespace(argv, monkeypatch), ours(argv)
    assert set(mine) == set(stock)  # no option missing, none invented
    if not extra:
        # The one documented exception: no CORS origin unless given (mlx-lm: "*").
        assert (stock.pop("allowed_origins"), mine.pop("allowed_origins")) == (["*"], [])
    assert mine == stock


@pytest.mark.parametrize("text", ["256M", "8G", "1.5GB", "123", "2MB", "0.5g"])
def test_prompt_cache_bytes_uses_mlx_lm_units(text: str) -> None:
    from mlx_lm.utils import _parse_size

    assert parse_mlx_size(text) == _parse_size(text)


@pytest.mark.parametrize("text", ["", "G", "12X", "1 2", "-1G"])
def test_prompt_cache_bytes_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        parse_mlx_size(text)


def _serve(argv: list[str]) -> Any:
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    return serve_settings(parser.parse_args(["serve", *argv]), {"HOME": "/h"})


def test_serve_passes_given_backend_flags_to_its_embedded_backend() -> None:
    settings = _serve(["--model", "/m", "--kv-max-bytes", "2G", "--kv-min-tokens", "64",
                       "--prompt-cache-bytes", "512M", "--kv-bits", "8", "--draft-model", "/d",
                       "--trust-remote-code", "--chat-template-args", '{"a": 1}'])
    args = list(settings.backend_args)
    assert args[args.index("--kv-max-bytes") + 1] == str(2 << 30)
    assert args[args.index("--kv-min-tokens") + 1] == "64"
    assert args[args.index("--prompt-cache-bytes") + 1] == "512000000"
    assert args[args.index("--kv-bits") + 1] == "8"
    assert args[args.index("--draft-model") + 1] == "/d"
    assert "--trust-remote-code" in args
    assert args[args.index("--chat-template-args") + 1] == '{"a": 1}'
    # What was not given is not passed: the backend's own defaults apply.
    assert "--temp" not in args and "--kv-group-size" not in args


def test_serve_passes_nothing_when_no_backend_flag_is_given() -> None:
    assert _serve(["--model", "/m"]).backend_args == ()


def test_serve_refuses_backend_flags_with_an_external_upstream() -> None:
    with pytest.raises(ValueError, match="--kv-bits"):
        _serve(["--upstream", "http://127.0.0.1:1", "--kv-bits", "4"])


def test_a_zero_budget_is_kept_not_replaced_by_the_default() -> None:
    from cachelayer.backend.server import mlx_cli_args

    parser = argparse.ArgumentParser()
    add_backend_parser(parser.add_subparsers(dest="command"))
    settings = settings_from_args(
        parser.parse_args(["backend", "--model", "m", "--prompt-cache-bytes", "0"]), {})
    assert settings.mlx.prompt_cache_bytes == 0
    assert mlx_cli_args(settings, 0).prompt_cache_bytes == 0
    assert mlx_cli_args(settings, 5).prompt_cache_bytes == 5
