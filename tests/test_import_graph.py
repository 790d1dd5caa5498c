"""The import graph of the code, read from the source (nothing is imported): the layering rules.

- avatar_server modules import each other without a cycle, counting lazy imports inside functions
  (imports under `if TYPE_CHECKING:` are for annotations only and do not count);
- avatar_server.testing (the test generator and in-process server) is imported by tests and by the
  `omnilive bench serve` command alone, never by other production code;
- avatar_server never imports the trainer (model.train), the studio (model.data.studio) or the CLI;
- model never imports avatar_server or the CLI;
- ray is imported inside avatar_server.cluster alone, and other modules import that package only inside a
  function (cluster mode), so single-process `omnilive serve` never loads Ray.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("avatar_server", "model", "omnilive_cli")
TESTING = "avatar_server.testing"
TESTING_IMPORTERS = frozenset({"avatar_server.commands.bench_serve"})  # the benchmark of the server
CLUSTER = "avatar_server.cluster"


@dataclass(frozen=True)
class Import:
    source: str       # the importing module
    target: str       # the imported module (or the package a name was imported from)
    line: int
    typing_only: bool  # under `if TYPE_CHECKING:`
    lazy: bool = False  # inside a function: imported when it runs


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports_of(tree: ast.Module, module: str, is_package: bool, known: set[str]) -> list[Import]:
    """Every import in the module, at any depth (functions, classes, branches), resolved to module names."""
    found: list[Import] = []
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST, typing_only: bool, lazy: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True, lazy)
            for child in node.orelse:
                visit(child, typing_only, lazy)
            return
        lazy = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(module, alias.name, node.lineno, typing_only, lazy))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append(Import(module, candidate if candidate in known else base, node.lineno, typing_only, lazy))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append(Import(module, node.args[0].value, node.lineno, typing_only, lazy))
        for child in ast.iter_child_nodes(node):
            visit(child, typing_only, lazy)

    visit(tree, False, False)
    return found


def read_imports(root: Path, packages: tuple[str, ...]) -> list[Import]:
    """The imports of every module under `root`/<package> for each package."""
    files = {module_name(path, root): path for package in packages for path in sorted((root / package).rglob("*.py"))}
    imports: list[Import] = []
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        imports += _imports_of(tree, module, path.name == "__init__.py", set(files))
    return imports


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def find_cycle(imports: list[Import], package: str) -> list[str] | None:
    """One import cycle among the modules of `package` (runtime imports only), or None."""
    edges: dict[str, set[str]] = {}
    for imp in imports:
        if not imp.typing_only and within(imp.source, package) and within(imp.target, package) \
                and imp.source != imp.target:
            edges.setdefault(imp.source, set()).add(imp.target)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def forbidden(imports: list[Import], source_package: str, targets: tuple[str, ...]) -> list[str]:
    return [f"{imp.source}:{imp.line} imports {imp.target}" for imp in imports
            if within(imp.source, source_package) and any(within(imp.target, t) for t in targets)]


IMPORTS = read_imports(ROOT, PACKAGES)


def test_the_graph_is_read() -> None:
    """A sanity check of the reader: known edges, one of them a lazy import inside a function."""
    edges = {(imp.source, imp.target) for imp in IMPORTS}
    assert ("omnilive_cli.main", "avatar_server.commands.serve") in edges
    assert ("avatar_server.commands.serve", "avatar_server.app") in edges  # inside run()
    assert ("model.pipeline", "model.dit") in edges


def test_no_cycle_among_server_modules() -> None:
    cycle = find_cycle(IMPORTS, "avatar_server")
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cycle_finder_sees_lazy_imports(tmp_path: Path) -> None:
    """The check itself: a cycle closed by an import inside a function is found."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from . import a\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    assert find_cycle(read_imports(tmp_path, ("pkg",)), "pkg") == ["pkg.a", "pkg.b", "pkg.a"]


def test_the_test_generator_stays_out_of_production_code() -> None:
    importers = {imp.source for imp in IMPORTS if within(imp.target, TESTING) and imp.source != TESTING}
    assert importers <= TESTING_IMPORTERS, f"{TESTING} imported by {sorted(importers - TESTING_IMPORTERS)}"


def test_server_imports_neither_trainer_studio_nor_cli() -> None:
    assert forbidden(IMPORTS, "avatar_server", ("model.train", "model.data.studio", "omnilive_cli")) == []


def test_model_imports_neither_server_nor_cli() -> None:
    assert forbidden(IMPORTS, "model", ("avatar_server", "omnilive_cli")) == []


def test_ray_stays_in_the_cluster_package() -> None:
    """Only avatar_server.cluster imports ray; everything else reaches that package lazily (cluster mode)."""
    outside = [f"{imp.source}:{imp.line} imports {imp.target}" for imp in IMPORTS
               if within(imp.target, "ray") and not within(imp.source, CLUSTER)]
    assert outside == []
    eager = [f"{imp.source}:{imp.line} imports {imp.target} at import time" for imp in IMPORTS
             if within(imp.target, CLUSTER) and not within(imp.source, CLUSTER) and not imp.lazy]
    assert eager == []
    assert any(within(imp.target, "ray") for imp in IMPORTS), "the reader sees the cluster's ray imports"


def test_lazy_imports_are_told_apart(tmp_path: Path) -> None:
    """The check itself: an import inside a function is lazy, one at module level is not."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("import ray\n\ndef f():\n    import ray.util\n")
    found = {(imp.target, imp.lazy) for imp in read_imports(tmp_path, ("pkg",))}
    assert found == {("ray", False), ("ray.util", True)}
