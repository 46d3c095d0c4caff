"""The package's floors (DESIGN.md §2): nothing imports a higher floor, no two modules import
each other, and the integration libraries stay in the CLI layer.

Imports inside functions count too: a lazy import up the floors is still an upward edge.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "pp_sarathi"

# Bottom to top. Same floor: allowed both ways (cycles are caught separately).
FLOORS = {
    "config": 0,
    "workload": 1, "model": 1,
    "scheduler": 2, "cost": 2,
    "metrics": 3,
    "runtime": 4,
    "sim": 5,
    "bench": 6,
    "cli": 7, "api": 7,
    "__init__": 8, "__main__": 8,
}
INTEGRATION = ("hydra", "omegaconf", "wandb", "matplotlib", "deepspeed", "pandas")


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 2:
        parts = parts[:-1]
    return ".".join(parts)


def floor_of(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    if key not in FLOORS:
        raise AssertionError(f"{module}: no floor assigned; add its package to FLOORS in this test")
    return FLOORS[key]


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, relative ones resolved."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from . import x`` may name a submodule: count it as one.
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub if (PKG.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                            or (PKG.parent / sub.replace(".", "/")).is_dir() else target, node.lineno))
    return out


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def internal_edges() -> list[tuple[str, str, int]]:
    mods = all_modules()
    edges = []
    for name, path in mods.items():
        for target, line in imports_of(path):
            if not target.startswith("pp_sarathi"):
                continue
            # resolve to the longest known module name
            while target not in mods and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != name:
                edges.append((name, target, line))
    return edges


def test_every_module_has_a_floor():
    for name in all_modules():
        floor_of(name)


def test_no_module_imports_a_higher_floor():
    bad = [f"{a}:{line} imports {b} (floor {floor_of(b)} > {floor_of(a)})"
           for a, b, line in internal_edges()
           if b != "pp_sarathi" and floor_of(b) > floor_of(a)]
    assert not bad, "imports running up the floors:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph: dict[str, set[str]] = {}
    for a, b, _ in internal_edges():
        if b == "pp_sarathi" or b.endswith("__init__"):
            continue
        graph.setdefault(a, set()).add(b)
    # package __init__ files re-export their submodules: an edge into a package is not a cycle
    # back to its members, so only module -> module edges are checked.
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(n: str, stack: list[str]) -> bool:
        state[n] = 1
        for m in graph.get(n, ()):
            if m in all_modules() and (PKG.parent / m.replace(".", "/")).is_dir():
                continue
            if state.get(m) == 1:
                cycle.extend(stack[stack.index(m):] + [m] if m in stack else [n, m])
                return True
            if state.get(m) is None and visit(m, stack + [m]):
                return True
        state[n] = 2
        return False

    for n in list(graph):
        if state.get(n) is None and visit(n, [n]):
            break
    assert not cycle, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("lib", INTEGRATION)
def test_integration_libraries_only_in_the_cli_layer(lib):
    bad = [f"{module_name(p)}:{line}" for p in PKG.rglob("*.py")
           for target, line in imports_of(p)
           if target.split(".")[0] == lib and floor_of(module_name(p)) < FLOORS["cli"]]
    assert not bad, f"{lib} imported below the CLI layer: {bad}"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The walker itself: a scheduler module importing the runtime is flagged."""
    fake = PKG / "scheduler" / "_layers_probe.py"
    fake.write_text("from ..runtime import driver\n")
    try:
        ups = [(a, b) for a, b, _ in internal_edges() if a.endswith("_layers_probe")]
        assert ("pp_sarathi.scheduler._layers_probe", "pp_sarathi.runtime.driver") in ups
        assert floor_of(ups[0][1]) > floor_of(ups[0][0])
    finally:
        fake.unlink()
