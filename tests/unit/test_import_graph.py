"""The package's import graph, read from the source with `ast` (nothing is imported).

Arrows go one way: no cycle between cachelayer's subpackages (and, inside the proxy,
between its layers and shared modules); telemetry is a leaf that imports nothing from
the proxy or the CLI; mlx is imported only under cachelayer/backend/ (the proxy runs
where mlx is absent). Every import counts, wherever it sits (inside a function, under
TYPE_CHECKING): an arrow is an arrow.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "cachelayer"


def module_name(path: Path) -> str:
    """`cachelayer/proxy/prefix/layer.py` -> `cachelayer.proxy.prefix.layer`."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def parsed(path: Path) -> ast.Module:
    """A file's syntax tree, parsed once for all the tests here."""
    return ast.parse(path.read_text(), str(path))


def _names(node: ast.stmt, package: str, *, submodules: bool = False) -> Iterator[str]:
    """The modules one import statement names, relative ones resolved (with `submodules`,
    also `module.name` for each name of a `from module import name`)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            yield ".".join(base + ([node.module] if node.module else []))
        elif node.module:
            yield node.module
            if submodules:
                yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _package(path: Path) -> str:
    module = module_name(path)
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def imported(path: Path) -> Iterator[str]:
    """Every module a file imports, relative imports resolved."""
    package = _package(path)
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.stmt):
            yield from _names(node, package)


def loaded_on_import(path: Path) -> Iterator[str]:
    """The modules a file imports when it is imported: module-level imports (also under
    `if`/`try`), not those inside functions (which load only when called) nor those under
    `if TYPE_CHECKING:`."""
    package = _package(path)

    def walk(body: list[ast.stmt]) -> Iterator[str]:
        for node in body:
            # `from package import name` may name a submodule, which loads too.
            yield from _names(node, package, submodules=True)
            if isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    yield from walk(node.body)
                yield from walk(node.orelse)
            elif isinstance(node, ast.Try):
                for part in (node.body, node.orelse, node.finalbody,
                             *(h.body for h in node.handlers)):
                    yield from walk(part)

    yield from walk(parsed(path).body)


def loaded_by(start: str) -> set[str]:
    """Every module importing `start` loads (its packages' __init__ too), transitively."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    # Names that are not modules (`from aiohttp import web` gives `aiohttp.web`, a
    # module, but also `cachelayer.config.Settings`) are kept and simply lead nowhere.
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        parents = [".".join(parts[:i]) for i in range(1, len(parts))]
        path = files.get(module)
        targets = list(loaded_on_import(path)) if path is not None else []
        todo += [*parents, *targets]
    return seen


def unit(module: str) -> str:
    """The graph's node a module belongs to: a subpackage of cachelayer (`telemetry`),
    and inside the proxy each layer package or shared module (`proxy.prefix`,
    `proxy.state`), so an arrow back up between layers shows as a cycle too."""
    parts = module.split(".")
    if parts[:2] == ["cachelayer", "proxy"] and len(parts) > 2:
        return ".".join(parts[:3])
    return ".".join(parts[:2])


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """node -> the nodes it imports (within cachelayer, self-loops left out)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        source = unit(module_name(path))
        graph.setdefault(source, set())
        for target in imported(path):
            if target.startswith("cachelayer.") and unit(target) != source:
                graph[source].add(unit(target))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def imports_under(subpackage: str) -> dict[str, set[str]]:
    """Each module under cachelayer/<subpackage>/ and every module it imports."""
    return {module_name(path): set(imported(path))
            for path in sorted((PACKAGE / subpackage).rglob("*.py"))}


def test_no_cycle_between_subpackages_or_proxy_layers() -> None:
    assert cycles(import_graph()) == []


def test_telemetry_imports_nothing_from_the_proxy_or_the_cli() -> None:
    upward = {module: sorted(t for t in targets
                             if t.startswith(("cachelayer.proxy", "cachelayer.cli")))
              for module, targets in imports_under("telemetry").items()}
    assert {m: t for m, t in upward.items() if t} == {}


def test_state_imports_no_layer() -> None:
    targets = imports_under("proxy")["cachelayer.proxy.state"]
    layers = ("cachelayer.proxy.edge", "cachelayer.proxy.prefix", "cachelayer.proxy.store",
              "cachelayer.proxy.forward", "cachelayer.telemetry")
    assert sorted(t for t in targets if t.startswith(layers)) == []


def test_mlx_is_imported_only_under_backend() -> None:
    outside = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(PACKAGE / "backend"):
            continue
        mlx = sorted(t for t in imported(path) if t == "mlx" or t.startswith(("mlx.", "mlx_")))
        if mlx:
            outside[module_name(path)] = mlx
    assert outside == {}


def test_the_proxy_and_its_cli_load_no_mlx_when_imported() -> None:
    # The proxy runs where mlx is absent: importing the CLI entry point or the app may
    # load backend modules that are pure (kv_files), never one that imports mlx.
    for start in ("cachelayer.cli.main", "cachelayer.proxy.app"):
        mlx = sorted(m for m in loaded_by(start) if m == "mlx" or m.startswith(("mlx.", "mlx_")))
        assert mlx == [], f"{start} loads {mlx}"


def test_the_graph_sees_a_cycle_when_there_is_one() -> None:
    # The reader itself is checked: a graph with an arrow back is reported, not missed.
    graph = import_graph()
    graph["cachelayer.telemetry"].add("cachelayer.proxy.prefix")  # prefix imports telemetry
    assert any("cachelayer.telemetry" in c for c in cycles(graph))
