"""`cachelayer serve | backend | warm | stats | clear`: one parser per command, mounted here.

Only the cli package reads the environment; everything below it gets a frozen Settings.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from cachelayer import __version__
from cachelayer.cli.backend import add_backend_parser, add_warm_parser
from cachelayer.cli.maintenance import add_clear_parser
from cachelayer.cli.serve import add_serve_parser, store_secrets
from cachelayer.cli.stats import add_stats_parser
from cachelayer.fs import PRIVATE_UMASK
from cachelayer.telemetry.logs import configure_logging


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(
        prog="cachelayer",
        description="A caching proxy for coding agents on local MLX servers.",
    )
    parser.add_argument("--version", action="version", version=f"cachelayer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_serve_parser(sub)
    add_stats_parser(sub)
    add_clear_parser(sub)
    add_backend_parser(sub)
    add_warm_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `cachelayer` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # Whatever cachelayer creates (stores, ledger, KV blocks, models, metrics) is for
    # its owner only: files 0600 and directories 0700, whatever the user's umask.
    os.umask(PRIVATE_UMASK)
    # The Redis password is known here, before anything logs: no line may carry it.
    configure_logging(str(getattr(args, "log_level", "info")),
                      hidden=store_secrets(args, os.environ))
    return int(args.func(args) or 0)
