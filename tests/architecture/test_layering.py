"""The package layout is the data flow: each subpackage imports only from those before it.

The walk reads every ``import`` in ``engine/`` with :mod:`ast`, wherever it sits (module
level, inside a function, under ``TYPE_CHECKING``), so a lazy import cannot hide a
dependency that runs the wrong way.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "engine"

# Floors in data-flow order. A module may import from its own floor and the floors before it.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("errors", "types", "_blas", "runtime", "files"),
    ("config",),
    ("telemetry",),
    ("data",),
    ("sandbox",),
    ("endpoints",),
    ("policies",),
    ("rewards",),
    ("environments",),
    ("rollout",),
    ("learning",),
    ("training",),
    ("cluster",),
    ("evaluation",),
    ("testing",),
    ("cli",),
)
TOP = ("engine", "engine.__main__")  # the public API and the entry point see everything


def floor_of(module: str) -> int:
    """Floor index of a dotted ``engine...`` module name."""
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else ""
    for i, names in enumerate(FLOORS):
        if head in names:
            return i
    raise AssertionError(f"{module}: not in any floor; add its subpackage to FLOORS")


def module_name(path: Path, root: Path = ENGINE) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def engine_imports(path: Path, root: Path = ENGINE) -> Iterator[tuple[int, str, bool]]:
    """Yield ``(line, imported module, inside a function)`` for each engine import of a file."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(), str(path))
    known = {module_name(p, root) for p in root.rglob("*.py")}

    def visit(node: ast.AST, in_function: bool) -> Iterator[tuple[int, str, bool]]:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == root.name:
                        yield child.lineno, alias.name, in_function
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - child.level + 1]
                    target = ".".join([*base, child.module] if child.module else base)
                else:
                    target = child.module or ""
                if target.split(".")[0] != root.name:
                    continue
                for alias in child.names:  # ``from engine.data import tasks`` imports a module
                    sub = f"{target}.{alias.name}"
                    yield child.lineno, sub if sub in known else target, in_function
            yield from visit(child, nested)

    yield from visit(tree, False)


def import_graph(root: Path = ENGINE) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        graph[module_name(path, root)] = {m for _, m, _ in engine_imports(path, root)}
    return graph


def layering_violations(root: Path = ENGINE) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        if module in TOP:
            continue
        for line, target, _ in engine_imports(path, root):
            if target in TOP or floor_of(target) > floor_of(module):
                problems.append(
                    f"{path.relative_to(root.parent)}:{line}: {module} imports {target}"
                )
    return problems


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among engine modules (package ``__init__`` edges included), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in TOP or nxt == node:
                continue
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := dfs(node)):
            return found
    return None


def test_every_import_runs_forward() -> None:
    assert layering_violations() == []


def test_no_import_cycle() -> None:
    assert find_cycle(import_graph()) is None


def test_engine_imports_inside_functions_are_few() -> None:
    lazy = sorted(
        {
            f"{path.relative_to(ENGINE.parent)}:{line}: {target}"
            for path in sorted(ENGINE.rglob("*.py"))
            if module_name(path) not in TOP
            for line, target, inside in engine_imports(path)
            if inside
        }
    )
    assert len(lazy) <= 10, "\n".join(lazy)


def test_no_function_is_long() -> None:
    long = []
    for path in sorted(ENGINE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long.append(f"{path.relative_to(ENGINE.parent)}:{node.lineno} {node.name}: {n}")
    assert long == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from ..training.trainer import TrainingManager\n", "imports engine.training.trainer"),
        ("def f():\n    from ..cli import compare\n", "imports engine.cli.compare"),
    ],
)
def test_a_backward_import_is_caught(tmp_path: Path, source: str, expected: str) -> None:
    root = tmp_path / "engine"
    for sub in ("endpoints", "training", "cli"):
        (root / sub).mkdir(parents=True)
        (root / sub / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "training" / "trainer.py").write_text("")
    (root / "cli" / "compare.py").write_text("")
    (root / "endpoints" / "client.py").write_text(source)
    found = layering_violations(root)
    assert len(found) == 1 and expected in found[0], found


def test_a_cycle_is_caught(tmp_path: Path) -> None:
    root = tmp_path / "engine"
    (root / "data").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "data" / "__init__.py").write_text("")
    (root / "data" / "a.py").write_text("def f():\n    from . import b\n")
    (root / "data" / "b.py").write_text("from .a import f\n")
    assert find_cycle(import_graph(root)) == ["engine.data.a", "engine.data.b", "engine.data.a"]
