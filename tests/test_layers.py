"""The import graph points one way: pipeline at the bottom, then models, methods, engine, and
flows / tasks / cli on top; and no module imports itself back through others (no cycles).

Read from the source (ast), so it sees imports inside functions too: a lazy import is still a
dependency a reader has to follow. Imports under ``if TYPE_CHECKING:`` are left out: they name a
type for an annotation and never run.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "models", "methods", "engine", "flows", "tasks", "cli")
# What each package must never import (the layers above it).
FORBIDDEN = {
    "pipeline": {"models", "methods", "engine", "flows", "tasks", "cli"},
    "models": {"methods", "engine", "flows", "tasks", "cli"},
    "methods": {"engine", "flows", "tasks", "cli"},
    "engine": {"flows", "tasks", "cli"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (annotations only, never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _imports(path: Path, name: str) -> set[str]:
    """Project modules ``path`` imports (absolute names), wherever in the file the import is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # "from pkg import module"
    return {m for m in found if m.split(".")[0] in PACKAGES}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    return {name: {m for m in _imports(path, name) if m in files and m != name} for name, path in files.items()}


def test_every_package_imports_only_the_layers_below_it():
    wrong = [f"{mod} imports {dep}" for mod, deps in _graph().items() for dep in deps
             if dep.split(".")[0] in FORBIDDEN.get(mod.split(".")[0], ())]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_between_modules():
    graph = _graph()
    # A package's __init__ importing its own submodules (to re-export or register them) is how
    # Python packages work, not a cycle a reader has to untangle: leave those edges out.
    graph = {m: {d for d in deps if not (d.startswith(m + ".") and (ROOT / m.replace(".", "/")).is_dir())}
             for m, deps in graph.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_a_violation(tmp_path):
    """The walk above finds lazy and relative imports: a check that finds nothing proves nothing."""
    probe = tmp_path / "probe.py"
    probe.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import cli.main\n"
                     "def f():\n    from ..engine import sequence\n    import flows.render\n")
    found = _imports(probe, "pipeline.probe")
    assert {"engine", "engine.sequence", "flows.render"} <= found and "cli.main" not in found
