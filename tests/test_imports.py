"""The packages import one way: bert_mini <- pea_kd <- pea_kd_bench, and no module imports itself back.

Read from the code (ast), every import counted, those inside functions too: an import made lazily is still a
dependency. Fails on
* a cycle of imports between the modules of the repository's packages (glue <-> glue_download, say);
* bert_mini importing pea_kd or pea_kd_bench (the model knows nothing of distillation);
* pea_kd importing pea_kd_bench (the method never depends on its benchmarks).
Shared helpers live below their users (pea_kd.defaults: default_lr, configure_logging; pea_kd.methods: METHODS).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bert_mini", "pea_kd", "pea_kd_bench")
# (importer's package, package it must never import)
NEVER = (("bert_mini", "pea_kd"), ("bert_mini", "pea_kd_bench"), ("pea_kd", "pea_kd_bench"))


def module_names(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """{dotted module name: file} for every .py file of `packages` under `root` (a package is its __init__.py)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of `modules` that module `name` (file `path`) imports, anywhere in its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from . import x`: module x where x is one, else what the package (or module) `base` defines
            targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    found = set()
    for target in targets:
        while target and target not in modules:  # pea_kd.glue.get_task -> pea_kd.glue
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def import_graph(root: Path = ROOT, packages=PACKAGES) -> dict[str, set[str]]:
    """{module: the modules it imports} over the repository's packages."""
    modules = module_names(root, packages)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan): each is a cycle of imports."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def forbidden_imports(graph: dict[str, set[str]]) -> list[str]:
    """"importer -> imported" for every import that NEVER rules out."""
    top = lambda module: module.split(".")[0]  # noqa: E731
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if (top(a), top(b)) in NEVER)


# ------------------------------------------------------------------------------------------------ the tests

def test_the_packages_import_no_module_back():
    graph = import_graph()
    assert len(graph) > 40 and sum(map(len, graph.values())) > 100, "too few modules or imports found"
    cycles = import_cycles(graph)
    assert not cycles, "import cycles (move the shared part below its users):\n" + \
        "\n".join(" <-> ".join(c) for c in cycles)


def test_bert_mini_and_pea_kd_import_nothing_from_above():
    forbidden = forbidden_imports(import_graph())
    assert not forbidden, "imports from a lower package up to a higher one:\n" + "\n".join(forbidden)


def test_the_checks_find_a_cycle_and_an_upward_import(tmp_path):
    """The checks themselves can fail: a cycle made by a lazy relative import, and bert_mini importing pea_kd."""
    (tmp_path / "pea_kd" / "sub").mkdir(parents=True)
    (tmp_path / "bert_mini").mkdir()
    files = {"pea_kd/__init__.py": "", "pea_kd/glue.py": "from .sub import loader\n",
             "pea_kd/sub/__init__.py": "", "pea_kd/sub/loader.py": "def f():\n    from ..glue import g\n",
             "pea_kd/apart.py": "import pea_kd.sub\n",
             "bert_mini/__init__.py": "", "bert_mini/model.py": "from pea_kd import apart\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    graph = import_graph(tmp_path)
    assert graph["pea_kd.glue"] == {"pea_kd.sub.loader"} and graph["pea_kd.sub.loader"] == {"pea_kd.glue"}
    assert import_cycles(graph) == [["pea_kd.glue", "pea_kd.sub.loader"]]
    assert forbidden_imports(graph) == ["bert_mini.model -> pea_kd.apart"]
    (tmp_path / "pea_kd/sub/loader.py").write_text("def f():\n    pass\n", encoding="utf-8")
    assert import_cycles(import_graph(tmp_path)) == []

