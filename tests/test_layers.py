"""The floors of LAYOUT.md hold: imports only point down (import-linter's `layers` contract in
pyproject.toml), no import cycles among our modules, and no module past 400 lines without a
one-line reason at its top."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "retrieval", "ingest", "tuning", "answer", "eval", "policyrag")
MAX_LINES = 400


def our_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def test_lint_imports_keeps_the_floors():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint, "import-linter is a dev dependency: pip install -e '.[dev]'"
    done = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout


def test_core_imports_nothing_of_ours():
    for name, path in our_modules().items():
        if name.split(".")[0] != "core":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = [node.module] if isinstance(node, ast.ImportFrom) and node.module else (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for target in targets:
                top = target.split(".")[0]
                assert top not in PACKAGES or top == "core", f"{name} imports {target}"


def test_no_import_cycles_among_our_modules():
    modules = our_modules()
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):  # function-level imports count too
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            edges[name].update(t for t in targets if t in modules and t != name)
    # Tarjan's strongly connected components: any with two or more modules is a cycle
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(modules):
        if v not in index:
            visit(v)
    assert cycles == [], cycles


@pytest.mark.parametrize("name", sorted(our_modules()))
def test_a_long_module_says_why_at_its_top(name):
    path = our_modules()[name]
    lines = path.read_text().splitlines()
    if len(lines) <= MAX_LINES:
        return
    head = "\n".join(lines[:3]).lower()
    assert "over 400 lines" in head, f"{name} has {len(lines)} lines: split it, or say in its first lines why not"
