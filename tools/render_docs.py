#!/usr/bin/env python3
"""Render the benchmark tables in docs/ from the JSON in docs/benchmarks/.

    python tools/render_docs.py           # rewrite every marked block in docs/*.md
    python tools/render_docs.py --check   # exit 1 if a block differs from its JSON

A block sits between `<!-- render:NAME -->` and `<!-- /render:NAME -->` (names and
renderers: tools/benchlib/docblocks.py). Each is rendered as one provenance line (the
JSON file, the commit it was measured at, dirty or not, how many commits before the
rendered checkout, the machine) and the block's lines. Prose outside the markers is
not touched: it may cite only numbers the rendered blocks show.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path[:0] = [str(TOOLS), str(REPO)]

from benchlib import provenance  # noqa: E402
from benchlib.docblocks import BLOCKS  # noqa: E402

DOCS = REPO / "docs"
DATA = DOCS / "benchmarks"
BLOCK_RE = re.compile(
    r"<!-- render:(?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /render:(?P=name) -->\n", re.S)
PROVENANCE_PREFIX = "<sub>Rendered by `make bench-docs` from"


def load(source: str) -> dict[str, Any]:
    """One JSON file of docs/benchmarks/."""
    return dict(json.loads((DATA / source).read_text()))


def measured_commit(data: dict[str, Any]) -> tuple[str | None, bool | None, dict[str, Any]]:
    """(commit, dirty, machine) as the JSON records them (bench.json keeps them in meta)."""
    machine = data.get("machine") or data.get("meta", {}).get("machine") or {}
    if not isinstance(machine, dict):
        return None, None, {"description": str(machine)}
    return machine.get("git_commit"), machine.get("git_dirty"), machine


def provenance_line(source: str, data: dict[str, Any], head: str) -> str:
    """Where a block's numbers come from and how old they are."""
    commit, dirty, machine = measured_commit(data)
    if commit:
        age = provenance.commits_between(commit, "HEAD")
        when = (f"measured at commit `{commit}`"
                + (" with uncommitted changes" if dirty else "")
                + (f", {age} commits before `{head}` (the checkout rendered)" if age is not None
                   else f", a commit not in the history of `{head}`"))
    else:
        last = provenance.last_commit_of(DATA / source)
        age = provenance.commits_between(last, "HEAD") if last else None
        when = ("the JSON records no commit (written before the tools stamped one); "
                f"committed in `{last}`, {age} commits before `{head}` (the checkout rendered)")
    if "cpu_model" in machine:
        where = (f"{machine['cpu_model']}, {machine['cores']} cores, {machine['os']}, "
                 f"Python {machine['python']}")
    else:
        where = machine.get("description", "machine not recorded")
    return (f"{PROVENANCE_PREFIX} `docs/benchmarks/{source}`: {when}; {where}; a shared, "
            "busy machine.</sub>")


def render_block(name: str, head: str) -> tuple[list[str], list[str]]:
    """(provenance lines, body lines) of one block."""
    block = BLOCKS[name]
    data = [load(s) for s in block.sources]
    lines = [provenance_line(s, d, head) for s, d in zip(block.sources, data, strict=True)]
    return lines, block.render(*data)


def split_body(body: str) -> tuple[list[str], list[str]]:
    """A block's text as (provenance lines, the rest, without the blank line between)."""
    lines = body.rstrip("\n").split("\n")
    prov = [ln for ln in lines if ln.startswith(PROVENANCE_PREFIX)]
    rest = [ln for ln in lines if not ln.startswith(PROVENANCE_PREFIX)]
    while rest and not rest[0]:
        rest.pop(0)
    return prov, rest


def render_text(text: str, head: str) -> str:
    """The document with every marked block re-rendered."""
    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        prov, body = render_block(name, head)
        return (f"<!-- render:{name} -->\n" + "\n".join([*prov, "", *body]) + "\n"
                f"<!-- /render:{name} -->\n")
    return BLOCK_RE.sub(replace, text)


def stale_blocks(path: Path) -> list[str]:
    """Names of the blocks in `path` whose body differs from a fresh render."""
    stale = []
    for match in BLOCK_RE.finditer(path.read_text()):
        _, body = split_body(match["body"])
        if body != render_block(match["name"], "HEAD")[1]:
            stale.append(match["name"])
    return stale


def main(argv: list[str] | None = None) -> int:
    """Render (or check) every marked block in docs/*.md."""
    parser = argparse.ArgumentParser(prog="tools/render_docs.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if a block differs from its JSON")
    args = parser.parse_args(argv)
    head = provenance.head()
    bad = 0
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text()
        if args.check:
            for name in stale_blocks(path):
                print(f"{path.relative_to(REPO)}: block {name} differs from its JSON")
                bad += 1
            continue
        new = render_text(text, head)
        if new != text:
            path.write_text(new)
            print(f"rendered {path.relative_to(REPO)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
