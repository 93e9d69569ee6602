"""Layers point one way (issue 20): a module imports only modules of its own layer or below.

Every ``from .x import`` / ``import bayesim_hpc.x`` in the package, at module level or inside
a function, is checked against the layer table below. A new module must be placed in a layer;
an import that goes up fails this test with both names, so the dependency gets a second look.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "bayesim_hpc"

#: low to high. Lower layers never import higher ones.
LAYERS: list[tuple[str, ...]] = [
    # plain data, pure functions, no I/O of their own
    ("errors", "deprecation", "records", "seeding", "names", "retention", "diagnostics", "fingerprint", "relay", "sbc", "grid",
     "data", "history"),
    # the study definition, the fitters and metrics that run inside a task
    ("config", "fitters", "metrics", "locking"),
    # one task; durable storage of its record
    ("task", "storage"),
    # the result directory and the readers of what workers wrote
    ("resultdir", "extend", "summary_file", "reduce", "aggregate", "compare", "manifest", "checkpoints", "planning"),
    # what runs on a compute node, and what reads the results
    ("worker", "results", "report", "report_plots", "export", "preflight", "recompute", "adaptive",
     "run_messages"),
    # where tasks run
    ("executors",),
    # progress as the segments and the scheduler tell it
    ("status", "efficiency", "efficiency_study", "notify"),
    # the driver
    ("runner", "prepare"),
    # the front doors
    ("cli", "__init__", "__main__"),
]
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}


def _top(module: str) -> str:
    """``bayesim_hpc.executors.slurm`` -> ``executors``; ``bayesim_hpc.cli`` -> ``cli``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 2:
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported bayesim_hpc module, line) for every import in a file."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # from . import x, y
                    out += [(f"{target}.{a.name}", node.lineno) for a in node.names]
                    continue
            else:
                target = node.module or ""
            if target.startswith("bayesim_hpc"):
                out.append((target, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("bayesim_hpc")]
    return out


FILES = sorted(p for p in PKG.rglob("*.py"))


def test_every_module_has_a_layer():
    missing = sorted({_top(_module_name(p)) for p in FILES} - set(LEVEL))
    assert not missing, f"place these modules in a layer of tests/test_layers.py: {missing}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_down(path):
    me = _top(_module_name(path))
    if me not in LEVEL:
        pytest.skip("not placed (see test_every_module_has_a_layer)")
    up = [(t, line) for t, line in _imports(path)
          if _top(t) in LEVEL and _top(t) != me and LEVEL[_top(t)] > LEVEL[me]]
    assert not up, "\n".join(f"{path.relative_to(PKG)}:{line} ({me}, layer {LEVEL[me]}) imports {t} "
                             f"(layer {LEVEL[_top(t)]})" for t, line in up)
