"""Every third-party module the package imports is a declared dependency of pyproject.toml.

The test environment has more installed than a user's (the test extra, the conformance
servers), so a missing declaration passes every other test here and fails only where the
package is installed alone: in the image, or for a user (an HTTP/2 import without `h2`
declared did exactly that). Imports guarded by `except ImportError` are optional by design.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def _optional(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside a `try:` whose handlers catch ImportError (or ModuleNotFoundError)."""
    while node in parents:
        parent = parents[node]
        if isinstance(parent, ast.Try) and node in parent.body:
            for handler in parent.handlers:
                names = {n.id for n in ast.walk(handler.type) if isinstance(n, ast.Name)} \
                    if handler.type is not None else {"ImportError"}
                if names & {"ImportError", "ModuleNotFoundError", "Exception"}:
                    return True
        node = parent
    return False


def imported_top_levels() -> dict[str, str]:
    """Top-level module -> the first file importing it, for absolute, non-optional imports."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "probe").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            if _optional(node, parents):
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {Requirement(r).name.lower().replace("_", "-") for r in project["dependencies"]}
    providers = md.packages_distributions()
    missing = []
    for module, where in imported_top_levels().items():
        if module == "probe" or module in sys.stdlib_module_names:
            continue
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [])}
        # A module is covered when its distribution is declared, or pulled in by one declared
        # (e.g. `websockets`' own imports are not ours; ours must be named).
        if not dists & declared:
            missing.append(f"{module} (imported in {where}; from {sorted(dists) or '?'})")
    assert not missing, "imported but not in pyproject.toml dependencies: " + ", ".join(missing)
