"""No import cycles among our own modules, and no hidden imports of our own code.

An AST walk over include/backup, dags/ and plugins/ collects every import of our
own modules -- at module top and inside functions alike (an import inside a
function still runs, it only runs later), but not inside `if TYPE_CHECKING:`
blocks, which never run. `from include.backup.x import y` counts as importing
`x.y` when y is a submodule and `x` (its `__init__`) otherwise. The module graph
must have no cycle (Tarjan's strongly connected components).

A function-level import of our own code is allowed only with a `# cycle:` or
`# lazy:` reason on its line; a function-level import of anything else needs a
`# lazy:` reason (only heavy third-party libraries stay lazy).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OWN_PREFIX = "include.backup"
SCANNED = (ROOT / "include" / "backup", ROOT / "dags", ROOT / "plugins")
REASON_MARKS = ("# cycle:", "# lazy:")


@dataclass(frozen=True)
class Import:
    """One import statement's target module, where it sits and whether it is nested."""

    module: str
    path: Path
    line: int
    nested: bool
    source_line: str


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _all_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for base in SCANNED:
        for path in sorted(base.rglob("*.py")):
            modules[_module_name(path)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(node: ast.stmt, module: str, is_package: bool, modules: dict[str, Path]) -> list[str]:
    """Modules an import statement loads (any module, own or not)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    base = _absolute(node, module, is_package)
    found = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        found.append(sub if sub in modules else base)
    return found


class _Collector(ast.NodeVisitor):
    def __init__(self, path: Path, module: str, modules: dict[str, Path]) -> None:
        self.path, self.module, self.modules = path, module, modules
        self.is_package = path.name == "__init__.py"
        self.lines = path.read_text().splitlines()
        self.depth = 0
        self.found: list[Import] = []

    def _record(self, node: ast.Import | ast.ImportFrom) -> None:
        text = " ".join(self.lines[node.lineno - 1 : (node.end_lineno or node.lineno)])
        for target in _targets(node, self.module, self.is_package, self.modules):
            self.found.append(Import(target, self.path, node.lineno, self.depth > 0, text))

    visit_Import = _record
    visit_ImportFrom = _record

    def _nested(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = _nested
    visit_AsyncFunctionDef = _nested
    visit_Lambda = _nested

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for stmt in node.orelse:
                self.visit(stmt)
            return
        self.generic_visit(node)


def _imports() -> dict[str, list[Import]]:
    modules = _all_modules()
    result = {}
    for module, path in modules.items():
        collector = _Collector(path, module, modules)
        collector.visit(ast.parse(path.read_text(), str(path)))
        result[module] = collector.found
    return result


def _own(module: str) -> bool:
    return module == OWN_PREFIX or module.startswith(OWN_PREFIX + ".")


def _loaded(target: str, importer: str, modules: dict[str, Path]) -> set[str]:
    """Modules that importing `target` from `importer` runs: target and its packages.

    Packages that enclose the importer itself are left out: they are already being
    initialised when the importer runs, so importing them starts nothing new.
    """
    parts = target.split(".")
    chain = {".".join(parts[:n]) for n in range(1, len(parts) + 1)}
    enclosing = {".".join(importer.split(".")[:n]) for n in range(1, importer.count(".") + 1)}
    return {m for m in chain - enclosing if m in modules or m == target}


def _graph() -> dict[str, set[str]]:
    modules = _all_modules()
    graph: dict[str, set[str]] = {}
    for module, imports in _imports().items():
        graph[module] = {
            loaded
            for i in imports
            if _own(i.module)
            for loaded in _loaded(i.module, module, modules)
            if loaded != module
        }
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(components)


def _describe(component: list[str], graph: dict[str, set[str]]) -> str:
    members = set(component)
    edges = [f"    {a} -> {b}" for a in component for b in sorted(graph[a] & members)]
    return "cycle among " + ", ".join(component) + ":\n" + "\n".join(edges)


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_importing_a_submodule_runs_its_packages() -> None:
    modules = {"a": Path(), "a.b": Path(), "a.b.c": Path(), "a.x": Path()}
    assert _loaded("a.b.c", "z", modules) == {"a", "a.b", "a.b.c"}
    assert _loaded("a.b.c", "a.x", modules) == {"a.b", "a.b.c"}


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles = _cycles(graph)
    assert not cycles, "\n".join(_describe(c, graph) for c in cycles)


def _where(imp: Import) -> str:
    return f"{imp.path.relative_to(ROOT)}:{imp.line}: {imp.source_line.strip()}"


def test_function_level_imports_of_own_code_give_a_reason() -> None:
    bare = sorted({
        _where(i)
        for imports in _imports().values()
        for i in imports
        if i.nested and _own(i.module) and not any(m in i.source_line for m in REASON_MARKS)
    })
    assert not bare, f"{len(bare)} function-level imports of our own code:\n" + "\n".join(bare)


def test_function_level_imports_of_libraries_say_why() -> None:
    bare = sorted({
        _where(i)
        for imports in _imports().values()
        for i in imports
        if i.nested and not _own(i.module) and "# lazy:" not in i.source_line
    })
    assert not bare, f"{len(bare)} function-level library imports without '# lazy:':\n" + "\n".join(bare)
