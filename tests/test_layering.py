"""The package's imports, read with `ast`: no cycle between modules or packages, and every arrow points down.

The layering rule, top to bottom (a module may import its own package, and what is below it):

- `ctxbatch` (the public API), `ctxbatch.__main__` and `ctxbatch.cli`: anything.
- `ctxbatch.service` (the HTTP API): not `cli`.
- `ctxbatch.run` (builds a run: the loop wired to its cluster and subscribers): not `service` or `cli`.
- `ctxbatch.monitoring` (metrics, alerts, the dashboard: subscribers of the loop, readers of the
  database): not `run`, `service`, `cli` or `engines`.
- `ctxbatch.pipeline` (the loop, the partition flow, the worker plugin, events): not `monitoring`,
  `run`, `service`, `cli` or `engines`.
- `ctxbatch.io` (the database) and `ctxbatch.sizing` (batch sizes): neither of them, nor each other,
  nor anything above them.
- `ctxbatch.config`, `errors`, `resolve`, `hosts`, `demo`, `display`: only each other.
- `ctxbatch.engines` (engines written as users write theirs): the public API only (`ctxbatch`,
  `ctxbatch.errors`).

Every import counts, at module level or inside a function: a lazy import still points where it
points. An import under `if TYPE_CHECKING:` never runs, so it cannot make a cycle; it must still
point down. `python tests/test_layering.py [package-dir]` prints the modules, lines, cycles and
upward arrows of a checkout.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ctxbatch"
BASE = {"config", "errors", "resolve", "hosts", "demo", "display"}
# For each part, the top-level parts it must not import.
ABOVE_THE_LOOP = {"run", "service", "cli", "engines"}
FORBIDDEN = {
    "service": {"cli"},
    "run": {"service", "cli"},
    "monitoring": ABOVE_THE_LOOP,
    "pipeline": {"monitoring", *ABOVE_THE_LOOP},
    "io": {"pipeline", "monitoring", "sizing", *ABOVE_THE_LOOP},
    "sizing": {"pipeline", "monitoring", "io", *ABOVE_THE_LOOP},
}
PUBLIC_API = {"ctxbatch", "ctxbatch.errors"}


def module_name(path: Path, package: Path) -> str:
    parts = [package.name, *path.relative_to(package).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class _Imports(ast.NodeVisitor):
    """The modules a file imports; with `runtime`, leaving out what sits under `if TYPE_CHECKING:`."""

    def __init__(self, known: set[str], runtime: bool) -> None:
        self.known, self.runtime = known, runtime
        self.targets: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        checking = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        )
        if checking and self.runtime:
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.targets |= {alias.name for alias in node.names}

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and node.level == 0:
            # `from pkg import sub` imports the submodule `pkg.sub`; `from mod import name`, `mod`.
            subs = {f"{node.module}.{alias.name}" for alias in node.names} & self.known
            self.targets |= subs or {node.module}


def import_graph(package: Path = PACKAGE, *, runtime: bool = False) -> tuple[dict[str, set[str]], dict[str, int]]:
    """Each module's imports of the package's own modules (`runtime`: those that run), and its line count."""
    files = {module_name(path, package): path for path in sorted(package.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        imports = _Imports(set(files), runtime)
        imports.visit(ast.parse(path.read_text()))
        graph[name] = {t for t in imports.targets if t in files and t != name}
    lines = {name: len(path.read_text().splitlines()) for name, path in files.items()}
    return graph, lines


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def part(module: str) -> str:
    """`ctxbatch.io.store` -> `io`; the package itself -> `ctxbatch`."""
    return module.split(".")[1] if "." in module else module


def upward_arrows(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    wrong = []
    for source, targets in sorted(graph.items()):
        here = part(source)
        for target in sorted(targets):
            there = part(target)
            if here == "engines":
                bad = there != "engines" and target not in PUBLIC_API
            elif here in BASE:
                bad = there not in BASE
            else:
                bad = there in FORBIDDEN.get(here, set())
            if bad:
                wrong.append((source, target))
    return wrong


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same arrows between parts (`io`, `pipeline`, `config`, ...) rather than modules."""
    parts: dict[str, set[str]] = {part(module): set() for module in graph}
    for source, targets in graph.items():
        parts[part(source)] |= {part(t) for t in targets} - {part(source)}
    return parts


def test_the_package_imports_no_cycle_between_modules() -> None:
    graph, _ = import_graph(runtime=True)
    assert cycles(graph) == []


def test_the_package_imports_no_cycle_between_packages() -> None:
    graph, _ = import_graph(runtime=True)
    assert cycles(package_graph(graph)) == []


def test_every_import_points_down_the_layers() -> None:
    graph, _ = import_graph()
    assert upward_arrows(graph) == []


def test_the_checker_sees_a_cycle_and_an_upward_arrow() -> None:
    # A check that cannot fail proves nothing: these two graphs must be caught.
    assert cycles({"ctxbatch.a": {"ctxbatch.b"}, "ctxbatch.b": {"ctxbatch.a"}}) == [["ctxbatch.a", "ctxbatch.b"]]
    assert upward_arrows({"ctxbatch.io.store": {"ctxbatch.pipeline.loop"}, "ctxbatch.pipeline.loop": set()})
    assert upward_arrows({"ctxbatch.pipeline.loop": {"ctxbatch.monitoring.metrics"}})
    modules = {"ctxbatch.io.a": {"ctxbatch.sizing.b"}, "ctxbatch.sizing.b": {"ctxbatch.io.c"}, "ctxbatch.io.c": set()}
    assert cycles(modules) == [] and cycles(package_graph(modules)) == [["io", "sizing"]]


def test_an_import_under_type_checking_is_left_out_of_the_cycles_only(tmp_path: Path) -> None:
    package = tmp_path / "ctxbatch"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import ctxbatch.b\n")
    (package / "b.py").write_text("def f():\n    import ctxbatch.a\n")
    assert import_graph(package)[0]["ctxbatch.a"] == {"ctxbatch.b"}
    assert import_graph(package, runtime=True)[0] == {
        "ctxbatch": set(),
        "ctxbatch.a": set(),
        "ctxbatch.b": {"ctxbatch.a"},
    }


if __name__ == "__main__":
    where = Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE
    graph, lines = import_graph(where)
    running, _ = import_graph(where, runtime=True)
    print(f"{len(graph)} modules, {sum(lines.values())} lines")
    print(f"cycles: {cycles(running)}")
    print(f"cycles between packages: {cycles(package_graph(running))}")
    print(f"upward arrows: {upward_arrows(graph)}")
