"""Fixtures for every suite."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _no_log_handler_outlives_its_test() -> Iterator[None]:
    """Remove the stderr handlers a test's in-process CLI run put on the root logger.

    `cachelayer.cli.main` configures logging the way the product does (a handler on the
    stderr of that moment: this test's captured stderr, closed once the test ends), so a
    later test's in-process server would log into a closed file ("--- Logging error ---"
    on the terminal). pytest's own capture handlers are subclasses and are left alone.
    """
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler and handler not in before:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
