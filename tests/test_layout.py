"""The package's structure: imports point one way (no circles), and no module uses another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "glowtorch"


def module_name(path: Path) -> str:
    parts = ["glowtorch", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """``(module imported, names taken from it)`` for every import of glowtorch modules in ``path``,
    at any depth (function-local imports count)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
            names = [alias.name for alias in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            if submodules:  # ``from . import training``: the submodules themselves
                found += [(s, []) for s in submodules]
            elif target in known:
                found.append((target, names))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name in known]
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {t for t, _ in imports(name, path, known) if t != name} for name, path in known.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of two or more modules (Tarjan): the import circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def borrowed_private_names() -> list[str]:
    known = modules()
    return [
        f"{name} takes {taken} from {target}"
        for name, path in known.items()
        for target, names in imports(name, path, known)
        for taken in names
        if taken.startswith("_") and not taken.startswith("__")
    ]


def test_no_import_circles() -> None:
    graph = import_graph()
    assert len(graph) > 30  # the walk saw the package
    assert not circles(graph)


def test_private_names_stay_in_their_module() -> None:
    assert not borrowed_private_names()


def test_the_checks_find_a_circle_and_a_borrowed_private_name(tmp_path, monkeypatch) -> None:
    """A package whose two modules import each other (one inside a function) and share a private name fails both."""
    package = tmp_path / "glowtorch"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import _hidden\n")
    (package / "b.py").write_text("def f():\n    from .a import g\n\n\n_hidden = 1\n")
    (package / "c.py").write_text("from . import a\n")
    monkeypatch.setitem(globals(), "PACKAGE", package)
    assert circles(import_graph()) == [["glowtorch.a", "glowtorch.b"]]
    assert borrowed_private_names() == ["glowtorch.a takes _hidden from glowtorch.b"]
