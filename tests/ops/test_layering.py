"""The server, its TCP frontend, the HTTP API and the operations layer import one way (issue 9).

An edge A -> B is any ``import`` statement of module A naming module B, at module level or inside a
function (an import hidden in a function is still a dependency, and a circle through one was what the
issue found), except under ``if TYPE_CHECKING:`` (annotations only: never run). ``from .x import y`` is an
edge to ``.x.y`` when that is a module, else to ``.x``. Parent packages are not implied: ``from .session
import S`` depends on ``runq.app.server.session``, not on what ``runq/app/server/__init__.py`` imports.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("runq.app.server", "runq.app.http", "runq.app.ops")


def _modules(root: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        folder = root / Path(*pkg.split("."))
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of ``PACKAGES`` it imports (see the module docstring)."""
    mods = _modules(root)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            graph[name] |= {t for t in targets if t in mods and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path (first node repeated at its end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_among_server_http_and_operations() -> None:
    graph = import_graph(ROOT)
    assert "runq.app.ops.operations" in graph and "runq.app.server.tcp" in graph  # (the walk found them)
    assert find_cycle(graph) is None


def test_the_graph_walk_sees_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    """The checker itself: tcp.py and server.py importing each other, one import inside a function (as before
    issue 9), is a cycle; the same import under ``if TYPE_CHECKING:`` is not."""
    pkg = tmp_path / "runq" / "app"
    for sub in PACKAGES:
        (tmp_path / Path(*sub.split("."))).mkdir(parents=True, exist_ok=True)
        (tmp_path / Path(*sub.split(".")) / "__init__.py").write_text("")
    (pkg / "server" / "tcp.py").write_text("from .server import Server\n")
    (pkg / "server" / "server.py").write_text("def serve():\n    from .tcp import TcpFrontend\n")
    assert find_cycle(import_graph(tmp_path)) == ["runq.app.server.server", "runq.app.server.tcp",
                                                  "runq.app.server.server"]
    (pkg / "server" / "tcp.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                           "    from .server import Server\n")
    assert find_cycle(import_graph(tmp_path)) is None


def test_transports_reach_the_server_only_through_its_public_surface() -> None:
    """HTTP never imports the module that starts it (``runq.app.server.server``, nor the package that
    re-exports it); the TCP frontend does not import the server module either; the operations layer
    imports neither transport."""
    graph = import_graph(ROOT)
    for name, deps in graph.items():
        if name.startswith("runq.app.http"):
            assert not deps & {"runq.app.server", "runq.app.server.server", "runq.app.server.tcp"}, name
        if name.startswith("runq.app.ops"):
            assert not {d for d in deps if d.startswith(("runq.app.server", "runq.app.http"))}, name
    assert "runq.app.server.server" not in graph["runq.app.server.tcp"]
    assert graph["runq.app.server.server"] >= {"runq.app.server.tcp", "runq.app.http"}  # (it starts both)


@pytest.mark.parametrize("module", sorted(_modules(ROOT)))
def test_each_module_imports_alone(module: str) -> None:
    """In a fresh interpreter, importing any one of these modules first works (no circle that only an
    import order elsewhere hides)."""
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], check=False, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
