"""The file tree is the architecture: no import circles, small modules, engines that never ask which algorithm they run."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import firm.algorithms

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "firm"
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import the module can execute: top level, inside functions and classes; not `if TYPE_CHECKING:` blocks."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (relative imports resolved against `module`)."""
    if not node.level:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(module: str) -> set[str]:
    """The firm modules `module` imports: `from a import b` names module a.b when b is one, else a.

    The implicit import of each parent package (importing firm.x runs firm/__init__.py) is not an
    edge: it is the same for every module and would make every lazy import in a package's
    `__init__` look like a circle.
    """
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    found: set[str] = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        source = _resolve(module, node)
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            found.add(sub if sub in MODULES else source)
    return {m for m in found if m in MODULES and m != module}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
    return found


def _path(graph: dict[str, set[str]], component: list[str]) -> str:
    """One import circle inside a component, written a -> b -> ... -> a, for the failure message."""
    members = set(component)
    start = component[0]
    trail, seen, node = [start], {start}, start
    while True:
        node = sorted(n for n in graph[node] if n in members)[0]
        if node in seen:
            return " -> ".join([*trail[trail.index(node) :], node])
        trail.append(node)
        seen.add(node)


def test_the_cycle_finder_finds_a_circle_through_a_function_level_import() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert _path(graph, ["a", "b", "c"]) == "a -> b -> c -> a"
    tree = ast.parse("import os\ndef f():\n    from firm import train\nif TYPE_CHECKING:\n    from firm import cli\n")
    assert sorted(str(getattr(n, "module", None)) for n in _import_nodes(tree)) == ["None", "firm"]  # cli is type-only


def test_no_import_circle_in_the_package() -> None:
    graph = {m: imports_of(m) for m in MODULES}
    assert graph["firm.train"] >= {"firm.engines.inprocess", "firm.config"}  # the walk sees real edges
    found = cycles(graph)
    assert not found, "import circles: " + "; ".join(_path(graph, c) for c in found)


def test_no_module_over_500_lines() -> None:
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_engines_never_name_an_algorithm() -> None:
    """An engine reads the algorithm's `RoundShape`; it never tests which algorithm it runs."""
    names = sorted(firm.algorithms.REGISTRY)
    pattern = re.compile(r"\b(" + "|".join(n for n in names if n != "firm") + r")\b", re.IGNORECASE)
    found = {}
    for path in sorted((PACKAGE / "engines").rglob("*.py")):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if (m := pattern.search(line)) or re.search(r"algorithm\.name\s*[=!]=", line):
                found[f"{path.relative_to(ROOT)}:{lineno}"] = m.group(0) if m else line.strip()
    assert not found, found
