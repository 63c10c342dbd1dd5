"""The package's shape, as the style guide asks: no import cycle among probe modules, and no
module much over the ~400 lines that keep one module to one job.

Why a cycle is an error even when Python copes with it: which module finishes importing first
then depends on who imported whom, so a name is missing at import time only for some entry
points (`probe check` but not `probe run`), and the modules can no longer be read or tested on
their own. Only module-level imports count: an import inside a function runs after every module
has loaded, and one under `if TYPE_CHECKING:` never runs.

Run as a script (`python3 tests/test_structure.py`) to print the import graph's cycles and the
line counts over the limit.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "probe"
MAX_LINES = 450  # ~400 is the aim; past this a module is split
OVER_ALLOWED: frozenset[str] = frozenset()  # modules allowed over MAX_LINES, by dotted name


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its __init__.py)."""
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _run_at_import(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements executed when the module loads: not those in a function body or
    under `if TYPE_CHECKING:` (its `else:` does run); a class body runs, so it counts."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        elif isinstance(node, ast.If) and _type_checking(node.test):
            yield from _run_at_import(node.orelse)
        else:
            for name in ("body", "orelse", "finalbody", "handlers", "cases"):
                for child in getattr(node, name, None) or []:
                    inner = child.body if isinstance(child, ast.ExceptHandler | ast.match_case) \
                        else [child]
                    yield from _run_at_import(inner)


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The probe modules `name` imports at module level."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _run_at_import(ast.parse(path.read_text(encoding="utf-8")).body):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in known:  # `from probe import metrics`: the submodule
                found.add(sub)
            elif base in known:
                found.add(base)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def long_modules() -> dict[str, int]:
    """Modules over MAX_LINES lines, by dotted name."""
    counts = {name: len(path.read_text(encoding="utf-8").splitlines())
              for name, path in modules().items()}
    return {name: n for name, n in sorted(counts.items()) if n > MAX_LINES}


def test_no_import_cycle_among_probe_modules() -> None:
    graph = import_graph()
    assert "probe.config" in graph["probe.readiness"]  # the graph sees the package's imports
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_module_over_the_line_limit() -> None:
    over = {name: n for name, n in long_modules().items() if name not in OVER_ALLOWED}
    assert not over, f"modules over {MAX_LINES} lines (split them): {over}"


def test_the_graph_sees_the_imports_that_make_a_cycle(tmp_path: Path) -> None:
    """The detector itself: a real cycle is found, while function-level and TYPE_CHECKING
    imports and an `else:` of TYPE_CHECKING are told apart."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    files = {
        "__init__.py": "",
        "a.py": "from pkg import b\n",
        "b.py": "from .c import x\n",
        "c.py": "try:\n    import pkg.a\nexcept ImportError:\n    pass\n",
        "d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import e\n"
                "def f():\n    from pkg import e\n",
        "e.py": "import typing\nif typing.TYPE_CHECKING:\n    pass\nelse:\n    import pkg.f\n",
        "f.py": "from pkg.d import f\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text, encoding="utf-8")
    known = {"pkg", *(f"pkg.{n[:-3]}" for n in files if n != "__init__.py")}
    graph = {n: imports_of(n, pkg / (f"{n[4:]}.py" if n != "pkg" else "__init__.py"), known)
             for n in known}
    assert graph["pkg.d"] == set()  # TYPE_CHECKING and function-level: not at import
    assert graph["pkg.e"] == {"pkg.f"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]


if __name__ == "__main__":
    graph = import_graph()
    for component in cycles(graph):
        print("cycle:", " <-> ".join(component))
    for name, n in long_modules().items():
        print(f"over {MAX_LINES} lines: {name} ({n})")
    for a, b in (("probe.metrics", "probe.exposition"), ("probe.exposition", "probe.metrics")):
        print(f"{a} imports {b}: {b in graph.get(a, set())}")
