"""Modules of the `tools/bench` benchmark command (one per scenario, plus the shared
load generator, process helpers, report and charts)."""
