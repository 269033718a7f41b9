"""`cachelayer serve`'s layer-1 flags reach the frozen Settings the app reads."""

from __future__ import annotations

from cachelayer.cli.main import build_parser
from cachelayer.cli.serve import settings_from_args
from cachelayer.config import Settings


def _settings(*argv: str) -> Settings:
    args = build_parser().parse_args(["serve", "--upstream", "http://127.0.0.1:9", *argv])
    return settings_from_args(args, {})


def test_system_turns_move_by_default_and_keep_system_order_turns_it_off() -> None:
    assert _settings().keep_system_order is False
    assert _settings("--keep-system-order").keep_system_order is True


def test_volatile_patterns_add_up_in_order() -> None:
    settings = _settings("--volatile-pattern", "a+", "--volatile-pattern", "b+")
    assert settings.volatile_patterns == ("a+", "b+")
