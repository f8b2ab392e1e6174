"""The house drawn from the imports: files as rooms, project imports as arrows, layers as floors.

    python sometest/import_map.py                  # the check, in words
    python sometest/import_map.py --png house.png  # and the picture

Floors, bottom up: models/ (torch and diffusers only), lm2a/, the stage scripts, sometest/. An arrow
may only point down or along its floor; there is no circle; a project import stands at the top of
its file (one inside a function hides what the file depends on); and no function of lm2a/ or a stage
script is longer than MAX_FUNCTION_LINES. tests/test_layers.py asserts all four.
"""
import argparse
import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: lm2a/ lives in the repository root

from lm2a.plots import pyplot  # noqa: E402

STAGE_SCRIPTS = ("preprocess", "newsplit_npz", "dataset", "train", "sample", "val", "testwav")
FLOORS = ("models", "lm2a", "scripts", "sometest")
MAX_FUNCTION_LINES = 60


def source_files(root=REPO):
    """{module name: path} of models/, lm2a/, the stage scripts and sometest/."""
    files = {name: root / f"{name}.py" for name in STAGE_SCRIPTS}
    for package in ("models", "lm2a", "sometest"):
        for path in sorted((root / package).glob("*.py")):
            files[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return files


def floor(module):
    top = module.split(".")[0]
    return FLOORS.index(top) if top in FLOORS else FLOORS.index("scripts")


def _target(node, module, modules):
    """The project module an import statement names (the deepest that exists), or None."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from .x import y inside a package
            package = module if module in ("models", "lm2a") else module.rsplit(".", 1)[0]
            base = f"{package}.{base}" if base else package
        names = [f"{base}.{a.name}" for a in node.names] + [base]
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name:
            return name
    return None


def imports(root=REPO):
    """[(importer, imported, line, inside a function)] of every project import."""
    modules = source_files(root)
    edges = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        for node, in_function in _walk(tree, False):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                target = _target(node, module, modules)
                if target and target != module:
                    edges.append((module, target, node.lineno, in_function))
    return edges


def _walk(node, in_function):
    for child in ast.iter_child_nodes(node):
        yield child, in_function
        yield from _walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))


def upward(edges):
    return [e for e in edges if floor(e[1]) > floor(e[0])]


def circles(edges):
    """Strongly connected groups of more than one module (Tarjan)."""
    graph = {}
    for a, b, _, _ in edges:
        graph.setdefault(a, set()).add(b)
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def long_functions(root=REPO, limit=MAX_FUNCTION_LINES):
    """[(lines, module, function)] longer than `limit` in lm2a/ and the stage scripts, longest first."""
    out = []
    for module, path in source_files(root).items():
        if floor(module) in (FLOORS.index("lm2a"), FLOORS.index("scripts")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > limit:
                        out.append((n, module, node.name))
    return sorted(out, reverse=True)


def draw(edges, path):
    """A PNG: one row of boxes per floor (bottom: models), an arrow per importing pair, red when it
    points up."""
    plt = pyplot()
    modules = sorted({m for e in edges for m in e[:2]}, key=lambda m: (floor(m), m))
    rows = {f: [m for m in modules if floor(m) == f] for f in range(len(FLOORS))}
    width = max(len(r) for r in rows.values())
    at = {m: ((i + 0.5) * width / len(rows[f]), 2.0 * f) for f, r in rows.items() for i, m in enumerate(r)}
    fig, ax = plt.subplots(figsize=(min(1.3 * width + 1, 24), 8), constrained_layout=True)
    for a, b in {(a, b) for a, b, _, _ in edges}:
        up = floor(b) > floor(a)
        ax.annotate("", at[b], at[a], arrowprops=dict(arrowstyle="->", lw=1.2 if up else 0.4, alpha=0.9 if up else 0.25,
                                                      color="red" if up else "gray"))
    for m, (x, y) in at.items():
        ax.text(x, y, m.split(".")[-1] if "." in m else m, ha="center", va="center", fontsize=7, rotation=30,
                bbox=dict(boxstyle="round", fc="white", ec="black", lw=0.5))
    for f, name in enumerate(FLOORS):
        ax.text(-0.5, 2.0 * f, name, ha="right", va="center", fontsize=10, weight="bold")
    ax.set_xlim(-2.5, width + 0.5)
    ax.set_ylim(-1, 2.0 * len(FLOORS) - 1)
    ax.axis("off")
    ax.set_title(f"project imports: {len(edges)} arrows, {len(upward(edges))} pointing up (red), "
                 f"{len(circles(edges))} circles", fontsize=10)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--png", help="draw the house into this PNG")
    args = p.parse_args(argv)
    edges = imports()
    local = [e for e in edges if e[3]]
    problems = ([f"up: {a} -> {b} (line {n})" for a, b, n, _ in upward(edges)]
                + [f"circle: {' <-> '.join(c)}" for c in circles(edges)]
                + [f"inside a function: {a} -> {b} (line {n})" for a, b, n, _ in local]
                + [f"long: {m}.{f} {n} lines" for n, m, f in long_functions()])
    for line in problems:
        print(f"import_map.py: {line}")
    if args.png:
        draw(edges, args.png)
    print(f"import_map.py: {len(source_files())} files, {len(edges)} project imports ({len(local)} inside "
          f"functions), {len(upward(edges))} upward, {len(circles(edges))} circles, "
          f"{len(long_functions())} functions over {MAX_FUNCTION_LINES} lines"
          + (f"; drew {args.png}" if args.png else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
