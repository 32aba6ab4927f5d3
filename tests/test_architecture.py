"""The house rules of docs/ARCHITECTURE.md, read from the code's own imports (every `import`,
also those inside functions): no import cycle among saesteer's modules, each module imports only
its own stage or the stages above it in the document's table, and no module grows past
MAX_LINES lines."""

import ast
import re
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "saesteer"
MAX_LINES = 450
"""About 400 is the aim (sparsify-sized modules); past this a module wants splitting along a seam."""
SPLIT_PENDING = {
}
"""Modules allowed over MAX_LINES while their split waits, each with why; a warning says when one
is small again and should leave this list."""


def modules() -> dict[str, Path]:
    """Dotted name -> file, a package by its `__init__.py`."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The saesteer modules `name` imports: `from a.b import c` counts as a.b.c when c is a
    module, else as a.b (a package's `__init__`)."""

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            if target == "saesteer" or target.startswith("saesteer."):
                module = resolve(target)
                if module is not None and module != name:
                    found.add(module)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def stage(module: str) -> str:
    """saesteer.evaluate.refusal -> evaluate; saesteer.generate -> generate."""
    return module.split(".")[1]


def table_order() -> dict[str, int]:
    """Stage -> its row in ARCHITECTURE.md's table of modules in import order."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text.split("## The package, in the order modules may import each other", 1)[1].split("\n## ", 1)[0]
    order: dict[str, int] = {}
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    for row_number, line in enumerate(rows):
        for name in re.findall(r"`([\w.]+?)(?:\.py|/)`", line.split("|")[1]):
            order[name] = row_number
    return order


def test_finds_cycles_and_their_members():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(edges) == [["a", "b", "c"]]


def test_reads_imports_inside_functions_and_from_packages(tmp_path):
    known = {"saesteer.data": Path(), "saesteer.data.corpus": Path(), "saesteer.steer.directions": Path(),
             "saesteer.x": tmp_path / "x.py"}
    known["saesteer.x"].write_text("from saesteer.data import load_records, corpus\n"
                                   "def f():\n    from saesteer.steer.directions import REFUSAL_REPLIES\n")
    assert imports("saesteer.x", known["saesteer.x"], known) == {
        "saesteer.data", "saesteer.data.corpus", "saesteer.steer.directions"}


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, "import cycles among saesteer modules: " + "; ".join(" <-> ".join(c) for c in found)


def test_stages_import_only_stages_above_them():
    order = table_order()
    edges = graph()
    missing = sorted({stage(m) for m in edges if m != "saesteer"} - set(order))
    assert not missing, f"docs/ARCHITECTURE.md's table of modules does not list: {', '.join(missing)}"
    upward = [f"{m} -> {t}" for m, targets in sorted(edges.items()) for t in sorted(targets)
              if m != "saesteer" and t != "saesteer" and order[stage(t)] > order[stage(m)]]
    assert not upward, "imports of a stage below in docs/ARCHITECTURE.md's table: " + ", ".join(upward)


def test_modules_stay_small():
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()}
    large = {name: n for name, n in sizes.items() if n > MAX_LINES and name not in SPLIT_PENDING}
    assert not large, f"modules over {MAX_LINES} lines (split them along a seam): " + ", ".join(
        f"{name} ({n})" for name, n in sorted(large.items()))
    assert set(SPLIT_PENDING) <= set(sizes), "SPLIT_PENDING names a module that does not exist"
    done = [name for name in SPLIT_PENDING if sizes[name] <= MAX_LINES]
    if done:
        warnings.warn(f"under {MAX_LINES} lines now, remove from SPLIT_PENDING: {', '.join(done)}", stacklevel=1)
