"""The package's dependency graph is visible and acyclic.

Every import of one of the kit's own modules sits at the top of its file (function-level imports are
for optional heavy third-party packages only), and no chain of own imports leads back to where it
started. Both are read from the source with `ast`, so the test needs no import side effects.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "fpdm_core"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def own_imports(path: Path) -> list[tuple[str, ast.stmt, bool]]:
    """(imported own module, the statement, at top level?) for every import of a kit module in `path`."""
    tree = ast.parse(path.read_text())
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = ".".join(base[: len(base) - node.level + 1])
                prefix = f"{base}.{node.module}" if node.module else base
            else:
                prefix = node.module or ""
            # `from . import x` names a module; `from .m import f` names module m
            names = [f"{prefix}.{a.name}" if not node.module else prefix for a in node.names]
        else:
            continue
        for name in names:
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                found.append((resolve(name), node, id(node) in top))
    return found


def resolve(name: str) -> str:
    """`name` if it is a module of the package, else its parent (an attribute imported from a module)."""
    while name != PACKAGE:
        rel = Path(*name.split(".")[1:])
        if (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file():
            return name
        name = name.rsplit(".", 1)[0]
    return name


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
GRAPH = {m: sorted({dep for dep, _, _ in own_imports(p) if dep != m}) for m, p in MODULES.items()}


def test_own_modules_are_imported_at_the_top():
    late = [*dict.fromkeys(f"{p.relative_to(ROOT.parent)}:{node.lineno} imports {dep}"
            for p in MODULES.values() for dep, node, at_top in own_imports(p) if not at_top)]
    assert not late, "move these imports to the top of their files:\n" + "\n".join(late)


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One cycle of `graph` as a list of nodes (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in graph:
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_cycles():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


def test_no_import_cycles():
    # A package's __init__ re-exporting its submodules is not a cycle of logic: leave __init__ edges out
    # when the importer is the package's own submodule.
    graph = {m: [d for d in deps if not (MODULES[d].name == "__init__.py" and m.startswith(d + "."))]
             for m, deps in GRAPH.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
