"""
The package's shape: no import cycle anywhere in omega_ws/ (TYPE_CHECKING
imports included), modules of a few hundred lines, short functions, and
no wire that reaches past its seam (the factory, the broker).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "omega_ws"
MAX_MODULE_LINES = 520
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The omega_ws modules C{name} imports, however (relative, absolute, typing-only)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # "from . import systemd" imports the module omega_ws.systemd, not omega_ws.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for neighbour in sorted(graph[node]):
            if state.get(neighbour) == 1:
                return stack[stack.index(neighbour):] + [neighbour]
            if neighbour not in state and (found := visit(neighbour)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle() -> None:
    graph = _graph()
    assert "omega_ws.factory" in graph["omega_ws.service"]  # the graph is real
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_wires_reach_neither_the_factory_nor_the_broker() -> None:
    graph = _graph()
    for wire in ("omega_ws.raw", "omega_ws.centrifuge"):
        reached = graph[wire]
        assert "omega_ws.protocol" not in reached, wire
        assert not {"omega_ws.broker.memory", "omega_ws.broker.interface"} & reached, wire


def test_modules_and_functions_stay_small() -> None:
    too_long = []
    for name, path in _modules().items():
        lines = path.read_text().count("\n")
        if lines > MAX_MODULE_LINES and not name.startswith("omega_ws.bench"):
            too_long.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES and not name.startswith("omega_ws.bench"):
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert not too_long, too_long


def test_every_package_is_installed() -> None:
    """A package missing from setup.cfg works from the checkout and not once installed."""
    import configparser

    config = configparser.ConfigParser()
    config.read(Path(__file__).parent.parent / "setup.cfg")
    listed = {p.strip() for p in config["options"]["packages"].split(",")}
    root = Path(__file__).parent.parent
    packages = {str(init.parent.relative_to(root)).replace("/", ".")
                for init in (root / "omega_ws").rglob("__init__.py")}
    assert packages <= listed, sorted(packages - listed)
