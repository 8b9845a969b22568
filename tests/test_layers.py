"""The package's layers, checked from its source: no import cycle, and no layer imports one above it.

The order (lowest first) is the one the package docstrings state: base modules (errors, config,
digests, atomic writes, ...), then ``spec`` < ``resources`` < ``plan`` < ``install`` < ``oci`` <
``legacy`` < ``project`` (with ``runconfig``) < ``cli``. Every import counts for the order, also one inside a function or
under ``TYPE_CHECKING``; cycles are looked for among the imports a module runs when it is loaded.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "ocrd_models.modelsync"
ROOT = Path(__file__).resolve().parents[1] / "ocrd_models" / "modelsync"
ORDER = ["base", "spec", "resources", "plan", "install", "oci", "legacy", "project", "cli"]
SUBPACKAGES = set(ORDER) - {"base", "project"}
PROJECT_MODULES = {"project", "runconfig"}  # the orchestration layer: one run's configuration and its project


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def layer(module: str) -> str:
    rest = module[len(PACKAGE) + 1:].split(".")[0] if module != PACKAGE else ""
    if rest in SUBPACKAGES:
        return rest
    if rest == "__main__":
        return "cli"
    return "project" if rest in PROJECT_MODULES else "base"


def _is_module(name: str) -> bool:
    rel = Path(*name[len(PACKAGE) + 1:].split(".")) if name != PACKAGE else Path()
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def imports(path: Path, source: str | None = None) -> list[tuple[str, bool]]:
    """(imported module, imported while loading) for every import of the package's own modules in the
    module at ``path`` (its text: ``source``, else the file's)."""
    me = module_name(path)
    here = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
    tree = ast.parse(source if source is not None else path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    # imports guarded by `if TYPE_CHECKING:` at module level do not run when loading
    for node in tree.body:
        if isinstance(node, ast.If):
            top |= {id(n) for n in node.body} if "TYPE_CHECKING" not in ast.unparse(node.test) else set()
        if isinstance(node, ast.Try):
            top |= {id(n) for n in node.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            target = ".".join(base + (node.module.split(".") if node.module else [])) if node.level else node.module
            if not target or not target.startswith(PACKAGE):
                continue
            for alias in node.names:  # `from . import x` imports the module x
                sub = f"{target}.{alias.name}"
                found.append((sub if _is_module(sub) else target, id(node) in top))
        elif isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names if a.name.startswith(PACKAGE)]
    return found


GRAPH = {module_name(p): imports(p) for p in sorted(ROOT.rglob("*.py"))}


def test_every_module_is_seen():
    assert len(GRAPH) > 40 and f"{PACKAGE}.plan.planner" in GRAPH and f"{PACKAGE}.cli" in GRAPH
    for deps in GRAPH.values():
        for dep, _ in deps:
            assert dep in GRAPH, f"an import names {dep}, which is not a module of the package"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_upward_import(module):
    found = upward(module, GRAPH[module])
    assert not found, f"{module} ({layer(module)}) imports from a higher layer: {found}"


def test_the_package_root_imports_nothing_while_loading():
    # `import ocrd_models.modelsync` must stay cheap and below every layer: its public names load lazily
    assert [dep for dep, loading in GRAPH[PACKAGE] if loading] == []


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> modules it imports while loading), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in graph:
        if state.get(start):
            continue
        state[start] = 1
        stack, path = [(start, iter(graph[start]))], [start]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif state.get(child) is None:
                state[child] = 1
                stack.append((child, iter(graph.get(child, []))))
                path.append(child)
    return None


def test_no_import_cycle():
    loading = {m: sorted({d for d, at_load in deps if at_load and d != m}) for m, deps in GRAPH.items()}
    cycle = find_cycle(loading)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_cycle_is_caught():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": []}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


def upward(module: str, deps: list[tuple[str, bool]]) -> list[str]:
    mine = ORDER.index(layer(module))
    return [dep for dep, _ in deps if dep != PACKAGE and ORDER.index(layer(dep)) > mine]


def test_an_upward_import_is_caught():
    """The walk itself: a spec module importing the planner, even inside a function, is reported."""
    path = ROOT / "spec" / "lockfile.py"
    source = path.read_text(encoding="utf-8") + "\n\ndef f():\n    from ..plan.planner import Plan\n"
    assert upward(module_name(path), imports(path, source)) == [f"{PACKAGE}.plan.planner"]
