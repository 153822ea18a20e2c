"""The project's import structure, measured from the code: module-level import circles, the layering rules of
docs/DESIGN.md, and a picture of the package graph.

    python scripts/import_graph.py         # this checkout: rules + circles, exit 1 on a violation
    python scripts/import_graph.py --root /tmp/old --png docs/images/structure_before.png --no-check

Every ``import`` / ``from ... import`` of a project module counts, also those inside functions (a lazy import
is still a dependency). The on-disk folder ``training/`` is the package ``cleanpose_training`` (setup.py maps
it); an older checkout's ``import training`` reads as the same package, so before/after pictures compare.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import defaultdict
from pathlib import Path

# Import name -> folder, for the packages that make up the project (tests and scripts are not part of it).
PACKAGES = {
    "cleanpose_model": "cleanpose_model",
    "cleanpose_ros": "cleanpose_ros",
    "cleanpose_tools": "cleanpose_tools",
    "cleanpose_training": "training",
    "benchmarks": "benchmarks",
    "bench": "bench",
}
ALIASES = {"training": "cleanpose_training"}

# The layering of docs/DESIGN.md: a module under the key may not import one under any of its values.
FORBIDDEN = {
    # the model is the ground floor: no ROS runtime, no training, no tools
    "cleanpose_model": ("cleanpose_ros", "cleanpose_tools", "cleanpose_training", "benchmarks"),
    # the ROS package is the runtime only
    "cleanpose_ros": ("cleanpose_training", "cleanpose_tools", "benchmarks"),
    # training and the runtime are two wings that never import each other
    "cleanpose_training": ("cleanpose_ros", "cleanpose_tools", "benchmarks"),
}
# Reference networks are plain torch: they import no inference form and no kernel.
REFERENCE = (
    "cleanpose_model.net",
    "cleanpose_model.nn",
    "cleanpose_model.ops.pointnet2",
    "cleanpose_model.ops.gather",
)
FAST_FORMS = ("cleanpose_model.inference", "cleanpose_model.ops.triton")


def is_fast_form(mod: str) -> bool:
    """An inference form or kernel module (also by the older layout's names: fast.py, fused_*, *_triton)."""
    leaf = mod.rpartition(".")[2]
    return (
        mod.startswith(FAST_FORMS)
        or mod == "cleanpose_model.fast"
        or leaf.startswith("fused_")
        or leaf.endswith("_triton")
    )


def modules(root: Path) -> dict[str, Path]:
    """Import name -> file of every module of the project's packages under ``root``."""
    out = {}
    for name, folder in PACKAGES.items():
        base = root / folder
        if not (base / "__init__.py").is_file():
            continue
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("")
            parts = [name, *rel.parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _canonical(name: str) -> str:
    head, _, rest = name.partition(".")
    head = ALIASES.get(head, head)
    return f"{head}.{rest}" if rest else head


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` (a module or a name inside one) refers to."""
    name = _canonical(name)
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(known: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> project modules it imports."""
    graph: dict[str, set[str]] = {m: set() for m in known}
    for mod, path in known.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*up, base] if base else up)
                targets = [f"{base}.{a.name}" for a in node.names] or [base]
            for t in targets:
                hit = _resolve(t, known)
                if hit and hit != mod:
                    graph[mod].add(hit)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports that break the layering rules, as 'a -> b (rule)'."""
    out = []
    for mod, deps in sorted(graph.items()):
        for dep in sorted(deps):
            for src, banned in FORBIDDEN.items():
                if (mod == src or mod.startswith(src + ".")) and dep.startswith(banned):
                    out.append(f"{mod} -> {dep} ({src} may not import {dep.split('.')[0]})")
            if mod.startswith(REFERENCE) and is_fast_form(dep) and not is_fast_form(mod):
                out.append(f"{mod} -> {dep} (a reference module imports an inference form or kernel)")
    return out


def group(mod: str) -> str:
    """The box a module is drawn in: each top-level module of the model on its own (they are its layers),
    each subpackage as one box (ops/triton apart from the torch ops), other packages' top levels as one."""
    parts = mod.split(".")
    if parts[0] == "cleanpose_model" and len(parts) > 1:
        if parts[1:3] == ["ops", "triton"]:
            return "cleanpose_model.ops.triton"
        return ".".join(parts[:2])
    return ".".join(parts[:2]) if len(parts) > 2 else parts[0]


def draw(graph: dict[str, set[str]], known: dict[str, Path], png: Path, title: str, notes: list[str]) -> None:
    """Boxes (area ~ lines) in layers, each above what it imports; red arrows run back up or tie a circle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, int] = defaultdict(int)
    for mod, path in known.items():
        lines[group(mod)] += sum(1 for _ in path.open(encoding="utf-8"))
    edges = {(group(a), group(b)) for a, deps in graph.items() for b in deps if group(a) != group(b)}
    nodes = sorted(lines)
    # Layer = longest import chain below a box; boxes in a circle share the layer the first visit gives them.
    depth: dict[str, int] = {}

    def layer(n: str, seen: frozenset = frozenset()) -> int:
        if n in depth:
            return depth[n]
        below = [b for a, b in edges if a == n and b not in seen]
        depth[n] = 1 + max((layer(b, seen | {n}) for b in below), default=-1)
        return depth[n]

    for n in nodes:
        layer(n)
    rows: dict[int, list[str]] = defaultdict(list)
    for n in nodes:
        rows[depth[n]].append(n)
    pos = {}
    width = max(len(r) for r in rows.values())
    for d, row in rows.items():
        for i, n in enumerate(sorted(row)):
            pos[n] = ((i + 0.5) * width / len(row), d)
    fig, ax = plt.subplots(figsize=(max(10, 2.3 * width), 1.6 * (len(rows) + 1)))
    for a, b in sorted(edges):
        (x0, y0), (x1, y1) = pos[a], pos[b]
        bad = y1 >= y0
        ax.annotate(
            "",
            xy=(x1, y1 + 0.18),
            xytext=(x0, y0 - 0.18),
            arrowprops={"arrowstyle": "->", "color": "red" if bad else "0.55", "lw": 1.6 if bad else 0.8},
        )
    for n, (x, y) in pos.items():
        size = 7 + min(5, lines[n] / 800)
        ax.text(
            x,
            y,
            f"{n}\n{lines[n]} lines",
            ha="center",
            va="center",
            fontsize=size,
            bbox={"boxstyle": "round", "fc": "#e8eef7", "ec": "#4a6fa5"},
        )
    ax.set_xlim(-0.2, width + 0.2)
    ax.set_ylim(-0.7, max(rows) + 0.7)
    ax.axis("off")
    ax.set_title(title)
    ax.text(0, -0.6, "\n".join(notes), fontsize=8, va="top", family="monospace")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent, help="checkout root")
    ap.add_argument("--png", type=Path, help="write the package picture here")
    ap.add_argument("--title", default=None, help="picture title (default: the root's name)")
    ap.add_argument("--json", type=Path, help="write modules, circles and violations here")
    ap.add_argument("--no-check", action="store_true", help="report only; exit 0 even with violations")
    args = ap.parse_args(argv)
    known = modules(args.root)
    graph = imports(known)
    circ, bad = circles(graph), violations(graph)
    print(f"{len(known)} modules, {sum(len(d) for d in graph.values())} imports between them")
    print(f"import circles: {len(circ)}")
    for c in circ:
        print("  circle: " + " <-> ".join(c))
    print(f"layering violations: {len(bad)}")
    for v in bad:
        print("  " + v)
    if args.png:
        notes = [f"import circles: {len(circ)}", *("  " + " <-> ".join(c) for c in circ)]
        notes += [f"layering violations: {len(bad)}", *("  " + v for v in bad)]
        draw(graph, known, args.png, args.title or f"package imports of {args.root.name}", notes)
        print(f"picture: {args.png}")
    if args.json:
        args.json.write_text(
            json.dumps({"modules": len(known), "circles": circ, "violations": bad}, indent=1)
        )
    return 0 if args.no_check or not (circ or bad) else 1


if __name__ == "__main__":
    sys.exit(main())
