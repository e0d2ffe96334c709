"""The architecture is the layout: imports only go down (cli -> stages -> library), no import cycles between modules
(function-level imports count), library modules and all functions stay small, and no code outside
``mad_pipeline/tasks`` decides anything on a benchmark's name.

``python tests/test_architecture.py`` prints the import graph's layers (also printed by the test with ``-s``);
``python tests/test_architecture.py --dot | dot -Tsvg > imports.svg`` draws it.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# source folder -> installed package (pyproject's package-dir)
ROOTS = {"mad_pipeline": "mad_pipeline", "stages": "mad_pipeline.stages", "cli": "mad_pipeline.cli"}
MAX_LIBRARY_LINES = 400
MAX_FUNCTION_LINES = 80
TASK_NAMES = {"vqa", "snli-ve", "snli_ve", "vcr"}


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in ROOTS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts]) if parts else package
            if folder == "mad_pipeline" and parts and parts[0] in ("cli", "stages"):
                continue
            out[name] = path
    return out


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Modules of this project that ``name`` imports anywhere in its body (function-level imports included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if _is_package(path) else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in known:  # an attribute import: the module that holds it
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("mad_pipeline"):
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                add(sub if sub in known else mod)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


# the Python API calls stages as the CLI does; the package root re-exports it (imported on first use)
FACADE = {"mad_pipeline"}  # the namespace root: re-exports the Python API (mad_pipeline.stages.api) lazily


def layer(name: str) -> int:
    if name.startswith("mad_pipeline.cli"):
        return 2
    if name.startswith("mad_pipeline.stages") or name in FACADE:
        return 1
    return 0


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def depths(g: dict[str, set[str]]) -> dict[str, int]:
    """Longest import chain below each module (0 = imports nothing of the project); assumes no cycle."""
    memo: dict[str, int] = {}

    def depth(v: str, seen: tuple[str, ...] = ()) -> int:
        if v not in memo:
            below = [depth(w, (*seen, v)) for w in g.get(v, ()) if w not in seen]
            memo[v] = 1 + max(below) if below else 0
        return memo[v]

    return {v: depth(v) for v in g}


def render_layers(g: dict[str, set[str]]) -> str:
    by: dict[int, list[str]] = {}
    for v, d in depths(g).items():
        by.setdefault(d, []).append(v.removeprefix("mad_pipeline."))
    return "\n".join(f"layer {d:2d}: " + ", ".join(sorted(by[d])) for d in sorted(by, reverse=True))


def test_no_import_cycles():
    g = graph()
    found = cycles(g)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)
    print("\n" + render_layers(g))


def test_imports_only_go_down():
    g = graph()
    bad = [f"{a} -> {b}" for a, targets in g.items() for b in sorted(targets) if layer(b) > layer(a)]
    assert not bad, "upward imports (library -> stages/cli, stages -> cli): " + ", ".join(bad)


def test_library_modules_are_small():
    big = []
    for name, path in modules().items():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if layer(name) == 0 and n > MAX_LIBRARY_LINES:
            big.append(f"{path.relative_to(REPO)} ({n} lines)")
    assert not big, f"library modules over {MAX_LIBRARY_LINES} lines: " + ", ".join(big)


def test_functions_read_in_one_sitting():
    long = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: " + ", ".join(long)


def _names(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(*(_names(e) for e in node.elts)) if node.elts else set()
    return set()


def task_decisions(path: Path) -> list[str]:
    """``task == "vqa"``, ``task in ("vqa", ...)``, ``{"vqa": ...}``, ``match task: case "vqa"`` in one file."""
    text = path.read_text(encoding="utf-8")
    out = []
    for node in ast.walk(ast.parse(text)):
        hit = False
        if isinstance(node, ast.Compare):
            hit = any(_names(x) & TASK_NAMES for x in (node.left, *node.comparators))
        elif isinstance(node, ast.Dict):
            hit = any(k is not None and _names(k) & TASK_NAMES for k in node.keys)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
            hit = any(kw.arg in TASK_NAMES for kw in node.keywords)
        elif isinstance(node, ast.MatchValue):
            hit = bool(_names(node.value) & TASK_NAMES)
        if hit:
            out.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.get_source_segment(text, node)}")
    return out


def test_no_task_decisions_outside_tasks():
    tasks_dir = REPO / "mad_pipeline" / "tasks"
    found = []
    for path in modules().values():
        if tasks_dir not in path.parents:
            found += task_decisions(path)
    assert not found, "decisions on a task name outside mad_pipeline/tasks:\n" + "\n".join(found)


def test_the_checks_see_what_they_check(tmp_path):
    """The detectors themselves: a cycle, a function-level import and every form of task decision are found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    f = tmp_path / "m.py"
    f.write_text("def f(task, T):\n    from x import y\n    if task == 'vqa': pass\n    if task in ('vcr', 'x'): pass\n"
                 "    n = {'snli-ve': 3}[task]\n    match task:\n        case 'vcr': pass\n")
    old = globals()["REPO"]
    globals()["REPO"] = tmp_path
    try:
        assert len(task_decisions(f)) == 4
    finally:
        globals()["REPO"] = old


def render_dot(g: dict[str, set[str]]) -> str:
    """The import graph in Graphviz's dot language (``dot -Tsvg``), one cluster per layer of the layout."""
    lines = ["digraph mad {", "  rankdir=LR; node [shape=box, fontsize=10];"]
    for level, title in ((2, "cli"), (1, "stages"), (0, "library")):
        lines.append(f'  subgraph cluster_{title} {{ label="{title}";')
        lines += [f'    "{v.removeprefix("mad_pipeline.")}";' for v in sorted(g) if layer(v) == level]
        lines.append("  }")
    lines += [f'  "{a.removeprefix("mad_pipeline.")}" -> "{b.removeprefix("mad_pipeline.")}";'
              for a in sorted(g) for b in sorted(g[a])]
    return "\n".join([*lines, "}"])


if __name__ == "__main__":
    import sys

    print(render_dot(graph()) if "--dot" in sys.argv else render_layers(graph()))
