"""Every benchmark table in docs/ is what its JSON renders to, names the commit it was
measured at, and every stated target has a verdict computed by code (quick: no runs)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
DOCS = REPO / "docs"


@pytest.fixture(scope="module")
def render_docs() -> ModuleType:
    """tools/render_docs.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("render_docs", REPO / "tools" / "render_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _blocks() -> list[tuple[Path, str, str]]:
    """(doc, block name, block text) for every marked block in docs/*.md."""
    pattern = re.compile(
        r"<!-- render:(?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /render:(?P=name) -->\n", re.S)
    return [(path, m["name"], m["body"]) for path in sorted(DOCS.glob("*.md"))
            for m in pattern.finditer(path.read_text())]


NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?")


def _table_numbers(lines: list[str]) -> list[str]:
    """The numbers in the table rows of a block (headers and the |---| line skipped)."""
    rows = [ln for ln in lines if ln.startswith("|") and not ln.startswith("|---")]
    return [n for row in rows[1:] for n in NUMBER.findall(row)]


def test_every_renderer_has_its_block_in_the_docs(render_docs: ModuleType) -> None:
    assert sorted({name for _, name, _ in _blocks()}) == sorted(render_docs.BLOCKS)


@pytest.mark.parametrize(("doc", "name", "text"), _blocks(),
                         ids=[f"{p.name}:{n}" for p, n, _ in _blocks()])
def test_each_rendered_block_is_what_its_json_renders_to(
    render_docs: ModuleType, doc: Path, name: str, text: str
) -> None:
    provenance, body = render_docs.split_body(text)
    fresh_provenance, fresh = render_docs.render_block(name, "HEAD")
    # A number typed into a table by hand, or a JSON changed without a re-render:
    # `make bench-docs` puts it right.
    missing = [n for n in _table_numbers(body) if n not in _table_numbers(fresh)]
    assert not missing, f"{doc.name}:{name}: numbers not rendered from its JSON: {missing}"
    assert body == fresh, f"{doc.name}:{name} differs from its JSON: run `make bench-docs`"
    # The provenance line names each source and the commit it records.
    assert len(provenance) == len(fresh_provenance) == len(render_docs.BLOCKS[name].sources)
    for line, source in zip(provenance, render_docs.BLOCKS[name].sources, strict=True):
        assert f"`docs/benchmarks/{source}`" in line
        commit, dirty, _ = render_docs.measured_commit(render_docs.load(source))
        if commit:
            assert f"measured at commit `{commit}`" in line
            assert "commits before" in line or "not in the history" in line  # shallow clone
            assert ("uncommitted changes" in line) == bool(dirty)
        else:
            assert "records no commit" in line and "committed in `" in line


def test_a_number_edited_by_hand_is_caught(render_docs: ModuleType, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    doc = DOCS / "benchmarks.md"
    text = doc.read_text()
    row = next(ln for ln in text.splitlines() if ln.startswith("| 1024 | "))
    cells = row.split(" | ")
    cells[1] += "9"  # one more digit than the JSON gave
    edited = text.replace(row, " | ".join(cells), 1)
    assert edited != text
    copy = tmp_path / "benchmarks.md"
    copy.write_text(edited)
    assert render_docs.stale_blocks(copy) == ["bench-kv"]
    assert render_docs.stale_blocks(doc) == []


def test_verdicts_are_computed_for_every_kv_target(render_docs: ModuleType) -> None:
    from benchlib.verdicts import kv_paged_verdicts, verdicts  # render_docs put tools/ on the path

    kv_run = render_docs.load("kv.json")
    by_name: dict[str, Any] = {v["name"]: v for v in verdicts(kv_run["results"])}
    for row in kv_run["results"]["kv"]["sizes"]:
        # each size's verdict reads that size's own ratio, and a ratio over the goal
        # is reported as missed (not rounded into a pass)
        warm = by_name[f"kv: warm second turn (b) / stock's, {row['tokens']} tokens"]
        ratio = row["ratios"]["b_cachelayer_over_stock"]
        assert warm["value"] == ratio
        assert warm["status"] == ("met" if ratio <= 1.10 else "missed"), warm
    assert by_name["kv: after restart (c) / cold (a), 16384 tokens"]["status"] == "met"
    paged = kv_paged_verdicts(render_docs.load("kv-paged.json"))
    assert [v["status"] for v in paged] == ["met", "met", "met"]


def test_every_benchmark_json_names_its_commit_or_is_traced_to_one(
    render_docs: ModuleType,
) -> None:
    for path in sorted((DOCS / "benchmarks").glob("*.json")):
        data = json.loads(path.read_text())
        commit, _, _ = render_docs.measured_commit(data)
        assert commit or render_docs.provenance.last_commit_of(path), path.name
    assert "benchlib" in sys.modules  # the tools' own package, not a copy
