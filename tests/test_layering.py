"""The layers point down: core packages never import plug-in packages, packages import each
other without cycles at module level, imports inside functions are few (optional heavy
dependencies), and no source module is past the size where it is two concepts."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "fedfm"
CORE = {"state", "config", "server", "client", "strategies", "codecs", "data", "methods", "tasks"}
PLUGINS = ("privacy", "fm4fl", "governance", "bench", "attacks", "trust", "runtimes.grpc")
MAX_LINES = 450  # generated code (gRPC stubs) aside
MAX_LOCAL_IMPORTS = 40


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        if "_pb2" in path.name:
            continue
        name = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
        yield name.removesuffix(".__init__"), path, ast.parse(path.read_text(encoding="utf-8"))


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(module: str, path: Path, tree: ast.Module):
    """(target, at module level?) for every fedfm import of a module."""
    top = {id(node) for node in tree.body}
    for node in tree.body:
        if isinstance(node, ast.If | ast.Try):
            top |= {id(child) for child in node.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                keep = len(base) - node.level + (1 if path.name == "__init__.py" else 0)
                targets = [".".join(base[:keep] + ([node.module] if node.module else []))]
            else:
                targets = [node.module or ""]
        else:
            continue
        for target in targets:
            if target.startswith("fedfm"):
                yield target, id(node) in top


def test_core_packages_import_no_plugin_package():
    bad = [
        f"{module} imports {target}"
        for module, path, tree in _modules()
        if _package(module) in CORE
        for target, _ in _imports(module, path, tree)
        if target.startswith(tuple(f"fedfm.{p}" for p in PLUGINS))
    ]
    assert bad == []


def test_packages_import_each_other_without_cycles():
    edges: dict[str, set[str]] = defaultdict(set)
    for module, path, tree in _modules():
        for target, at_top in _imports(module, path, tree):
            a, b = _package(module), _package(target)
            if at_top and a and b and a != b:
                edges[a].add(b)

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = sorted(p for p in list(edges) if p in reachable(p))
    assert cycles == [], f"packages in an import cycle: {cycles}"


def test_few_imports_inside_functions():
    local = [
        f"{module}: {target}"
        for module, path, tree in _modules()
        for target, at_top in _imports(module, path, tree)
        if not at_top
    ]
    assert len(local) <= MAX_LOCAL_IMPORTS, local


def test_no_module_is_two_concepts():
    big = {
        module: n
        for module, path, _ in _modules()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert big == {}


def test_the_checker_sees_a_planted_violation(tmp_path, monkeypatch):
    """The rules can fail: a core module importing a plug-in is found."""
    package = tmp_path / "fedfm" / "server"
    package.mkdir(parents=True)
    (package / "bad.py").write_text("from fedfm.privacy.dp import clip\n")
    monkeypatch.setitem(globals(), "SRC", tmp_path / "fedfm")
    bad = [
        target
        for module, path, tree in _modules()
        if _package(module) in CORE
        for target, _ in _imports(module, path, tree)
    ]
    assert bad == ["fedfm.privacy.dp"]
