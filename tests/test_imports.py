"""The import graph of the tree: the library (spokenlm/) imports no surface (pipelines/, serve/, ui/,
bench/), and no module reaches itself again through imports, lazy ones inside functions included.

The graph is read from the source (ast), so an import that only runs on one code path counts as much
as a module-level one; `if TYPE_CHECKING:` blocks do not count (they never run). Edges go from a module
to what it names: `from a.b import c` is an edge to a.b, and to a.b.c where that is a module. A
package's own __init__ importing its submodules is the usual layout, not a circle, and is no edge.
The surfaces add their commands to `spokenlm` through entry points (pyproject.toml), not imports.
"""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY = "spokenlm"
SURFACES = ("pipelines", "serve", "ui", "bench")


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the library and the surface packages."""
    found = {}
    for package in (LIBRARY, "pipelines", "serve", "ui"):
        for file in sorted((REPO / package).rglob("*.py")):
            parts = list(file.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = file
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for n in ast.walk(node)}
    return skipped


def _imported(name: str, file: Path, known: dict[str, Path]) -> set[str]:
    """Every module `name` imports (absolute dotted names, as far as they are ours or surfaces')."""
    tree = ast.parse(file.read_text(), filename=str(file))
    skipped = _type_checking_nodes(tree)
    package = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in known}
    ours = (LIBRARY, *SURFACES)
    return {n for n in names if n.split(".")[0] in ours}


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imported(name, file, known) for name, file in known.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
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
            if len(component) > 1 or v in graph[v]:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def test_the_library_imports_no_surface():
    graph = _graph()
    assert "spokenlm.model" in graph and "serve.app" in graph  # the walk found the tree
    offending = {
        name: sorted(d for d in deps if d.split(".")[0] in SURFACES)
        for name, deps in graph.items()
        if name.split(".")[0] == LIBRARY and any(d.split(".")[0] in SURFACES for d in deps)
    }
    assert offending == {}


def test_no_module_imports_itself_through_others():
    assert _circles(_graph()) == []


def test_the_checks_see_lazy_imports_and_circles():
    """The two checks on a made-up graph: a lazy import is an edge, and a circle through three modules
    is found (as the library's CLI -> serve -> demo -> CLI once was)."""
    tree = ast.parse("def f():\n    from serve.app import build_app\n")
    assert any(isinstance(n, ast.ImportFrom) and n.module == "serve.app" for n in ast.walk(tree))
    circle = {"spokenlm.cli": {"serve.app"}, "serve.app": {"spokenlm.demo"}, "spokenlm.demo": {"spokenlm.cli"}}
    assert _circles(circle) == [["serve.app", "spokenlm.cli", "spokenlm.demo"]]
    assert _circles({"a": {"b"}, "b": set()}) == []
