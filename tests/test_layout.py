"""The package's imports run one way: no module imports, directly or through others, one that
imports it back (lazy imports included, since they are the same arrow read later)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "splitcli"


def _imports() -> dict[str, set[str]]:
    def name_of(path: Path) -> str:
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name_of(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("splitcli"):
                found |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                          for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name.startswith("splitcli")}
        graph[name] = {other for other in found if other in modules and other not in (name, "splitcli")}
    return graph


def test_no_import_circle_in_the_package() -> None:
    graph, state, circles = _imports(), {}, []

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                circles.append(" -> ".join([*path[path.index(other):], other]))
            elif other not in state:
                visit(other, [*path, other])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == []


def test_the_session_does_not_reach_up_into_modes_or_servers() -> None:
    graph = _imports()
    assert not graph["splitcli.session"] & {"splitcli.modes", "splitcli.servers", "splitcli.solve"}
