"""The package layout's rule, read from the source: no import circles, and no import up the layers.

Every ``import`` statement counts, wherever it is (top level, inside a function, under ``TYPE_CHECKING``):
a lazy import hides a circle from Python, not from a reader. The layers, lowest first (CONTRIBUTING.md
draws them): a module may import its own package and any package on a lower line, never one on the same
line or above.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. The root modules (errors, io, …) are the base; the package facade and the CLI are the top.
LAYERS: list[tuple[str, ...]] = [
    ("thinkaloud.errors", "thinkaloud.io", "thinkaloud.version"),
    ("thinkaloud.config", "thinkaloud.hub"),
    ("thinkaloud.model",),
    ("thinkaloud.data",),
    ("thinkaloud.measures",),
    ("thinkaloud.report",),
    ("thinkaloud.train",),
    ("thinkaloud.eval",),
    ("thinkaloud.risk", "thinkaloud.serve"),
    ("thinkaloud.experiments",),
    ("thinkaloud", "thinkaloud.cli"),
    ("thinkaloud.__main__",),
]


def module_files(src: Path = SRC) -> dict[str, Path]:
    """{dotted module name: file} for every module under ``src`` (a package by its ``__init__``)."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that ``name`` imports anywhere in its file (``from p import m`` → ``p.m`` when
    ``m`` is a module, else ``p``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target in modules and target != name:
                found.add(target)
    return found


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    modules = module_files(src)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(module: str) -> int:
    """Index in ``LAYERS`` of the longest entry that is ``module`` or a package holding it."""
    best, best_len = -1, -1
    for i, entries in enumerate(LAYERS):
        for entry in entries:
            if (module == entry or module.startswith(entry + ".")) and len(entry) > best_len:
                best, best_len = i, len(entry)
    if best < 0:
        raise AssertionError(f"{module} is in no layer: add its package to LAYERS (and to CONTRIBUTING's diagram)")
    return best


def package_of(module: str) -> str:
    """The entry of ``LAYERS`` that holds ``module`` (its package, or the root module itself)."""
    return max((e for es in LAYERS for e in es if module == e or module.startswith(e + ".")), key=len)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """'a imports b' for every import of a package on the same line (other than its own) or a higher one."""
    bad = []
    for module, deps in sorted(graph.items()):
        for dep in sorted(deps):
            if package_of(dep) == package_of(module):
                continue
            if layer_of(dep) >= layer_of(module):
                where = "beside" if layer_of(dep) == layer_of(module) else "above"
                bad.append(f"{module} imports {dep}, a layer {where} it ({package_of(dep)})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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


def test_no_import_circles():
    found = cycles(import_graph())
    assert not found, "import circles:\n" + "\n".join(" → ".join(c) for c in found)


def test_no_upward_imports():
    bad = upward_imports(import_graph())
    assert not bad, "imports against the layers (CONTRIBUTING.md, 'Layout'):\n" + "\n".join(bad)


def test_every_module_has_a_layer():
    for module in import_graph():
        layer_of(module)


def test_checker_catches_an_upward_import_and_a_circle(tmp_path):
    """The checker itself, on a planted tree: model importing train is upward; a ↔ b is a circle."""
    pkg = tmp_path / "thinkaloud"
    for sub in ("model", "train"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "model" / "a.py").write_text("def f():\n    from thinkaloud.train import b\n")
    (pkg / "train" / "b.py").write_text("from thinkaloud.model import a\n")
    graph = import_graph(tmp_path)
    assert upward_imports(graph) == [
        "thinkaloud.model.a imports thinkaloud.train.b, a layer above it (thinkaloud.train)"
    ]
    assert cycles(graph) == [["thinkaloud.model.a", "thinkaloud.train.b"]]


def test_packages_stay_small(limit: int = 12):
    """No package holds more than ~12 modules without a sub-package."""
    modules = module_files()
    for package in {m.rpartition(".")[0] for m in modules}:
        direct = [m for m in modules if m.rpartition(".")[0] == package and modules[m].name != "__init__.py"]
        assert len(direct) <= limit, f"{package} has {len(direct)} modules: split it into sub-packages"
