"""The package's imports, read with `ast`: no cycle, and every arrow points down.

The layering rule, top to bottom (a module may import its own package, and what is below it):

- `ctxbatch` (the public API), `ctxbatch.__main__` and `ctxbatch.cli`: anything.
- `ctxbatch.service` (the HTTP API): not `cli`.
- `ctxbatch.pipeline` (the loop, the partition flow, the worker plugin, events and subscribers):
  not `service`, `cli` or `engines`; it may import `monitoring`, a package of subscribers.
- `ctxbatch.io` (the database) and `ctxbatch.sizing` (batch sizes): neither of them, nor each other,
  nor `pipeline`, `service`, `cli`, `monitoring` or `engines`.
- `ctxbatch.config`, `errors`, `resolve`, `hosts`, `demo`, `display`: only each other.
- `ctxbatch.engines` (engines written as users write theirs): the public API only (`ctxbatch`,
  `ctxbatch.errors`).

Every import counts, at module level or inside a function or `if TYPE_CHECKING:`: a lazy import
still points where it points. `python tests/test_layering.py [package-dir]` prints the modules,
lines, cycles and upward arrows of a checkout.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ctxbatch"
BASE = {"config", "errors", "resolve", "hosts", "demo", "display"}
# For each part, the top-level parts it must not import.
FORBIDDEN = {
    "service": {"cli"},
    "pipeline": {"service", "cli", "engines"},
    "monitoring": {"service", "cli", "engines"},
    "io": {"pipeline", "service", "cli", "monitoring", "engines", "sizing"},
    "sizing": {"pipeline", "service", "cli", "monitoring", "engines", "io"},
}
PUBLIC_API = {"ctxbatch", "ctxbatch.errors"}


def module_name(path: Path, package: Path) -> str:
    parts = [package.name, *path.relative_to(package).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> tuple[dict[str, set[str]], dict[str, int]]:
    """Each module's imports of the package's own modules, and each module's line count."""
    files = {module_name(path, package): path for path in sorted(package.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import sub` imports the submodule `pkg.sub`; `from mod import name`, `mod`.
                subs = {f"{node.module}.{alias.name}" for alias in node.names} & files.keys()
                targets |= subs or {node.module}
        graph[name] = {t for t in targets if t in files and t != name}
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


def test_the_package_imports_no_cycle() -> None:
    graph, _ = import_graph()
    assert cycles(graph) == []


def test_every_import_points_down_the_layers() -> None:
    graph, _ = import_graph()
    assert upward_arrows(graph) == []


def test_the_checker_sees_a_cycle_and_an_upward_arrow() -> None:
    # A check that cannot fail proves nothing: these two graphs must be caught.
    assert cycles({"ctxbatch.a": {"ctxbatch.b"}, "ctxbatch.b": {"ctxbatch.a"}}) == [["ctxbatch.a", "ctxbatch.b"]]
    assert upward_arrows({"ctxbatch.io.store": {"ctxbatch.pipeline.scheduler"}, "ctxbatch.pipeline.scheduler": set()})


if __name__ == "__main__":
    graph, lines = import_graph(Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE)
    print(f"{len(graph)} modules, {sum(lines.values())} lines")
    print(f"cycles: {cycles(graph)}")
    print(f"upward arrows: {upward_arrows(graph)}")
