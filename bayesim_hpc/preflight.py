"""Preflight: run the first replicate of every cell in this process before anything is submitted.

``bayesim-hpc check my_study.py`` (or :func:`preflight`) tells, per cell, whether a task
succeeds, with what warnings, in how long and with how much memory, so a bug in one cell is
found in a minute on the login node instead of after a day in the queue. A task here is the
very task the study will run (same id, same seeds): what fails here fails there.

Example:
    >>> checks = preflight(config)                                  # doctest: +SKIP
    >>> [c.cell for c in checks if not c.ok]                        # doctest: +SKIP
    ['d002_f001']
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .config import Study
from .task import run_task

__all__ = ["CellCheck", "preflight", "render_checks"]


@dataclass
class CellCheck:
    """The outcome of one cell's first task."""

    cell: str                      #: ``d002_f001``
    label: str                     #: the cell's grid values, ``n=50, sigma=0.5 | model=linear``
    task_id: str
    ok: bool
    seconds: float                 #: wall time of the task (the first of a model includes its compile)
    peak_rss_mb: float             #: peak resident memory of this process after the task
    error: str = ""                #: ``"in generate: TypeError: ..."``
    traceback: str = ""
    warnings: list[str] = field(default_factory=list)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def preflight(study: Study, cells: Iterable[str] | None = None,
              on_cell: Callable[[CellCheck], None] | None = None) -> list[CellCheck]:
    """Run replicate 1 of each cell (or of the cells named, like ``"d002_f001"``) in this process.

    Nothing is written anywhere. ``on_cell`` is called after each cell (to print as it goes).
    """
    space = study.space
    wanted = set(cells) if cells is not None else None
    out = []
    for k, (d, f) in enumerate(space.cells):
        ref = space.ref(k * space.n_rep)
        cell = ref.task_id.rsplit("_", 1)[0]
        if wanted is not None and cell not in wanted:
            continue
        t0 = time.perf_counter()
        rec = run_task(study, ref)
        check = CellCheck(
            cell=cell, label=study.cell_label(int(d), int(f)), task_id=ref.task_id, ok=rec.status == "success",
            seconds=time.perf_counter() - t0, peak_rss_mb=_peak_rss_mb(), warnings=list(rec.warnings),
            error="" if rec.status == "success" else f"in {rec.error_stage}: {rec.error_type}: {rec.error_message}",
            traceback=rec.error_traceback)
        out.append(check)
        if on_cell:
            on_cell(check)
    if wanted is not None and not out:
        raise KeyError(f"no cell {', '.join(sorted(wanted))} in this study (cells are named like "
                       f"{space.ref(0).task_id.rsplit('_', 1)[0]})")
    return out


def render_check(c: CellCheck, study_file: str = "STUDY.py", show_traceback: bool = False) -> str:
    """One cell's lines for the terminal."""
    head = f"  {c.cell}  {c.label}"
    if c.ok:
        warn = f", {len(c.warnings)} warning(s)" if c.warnings else ""
        lines = [f"{head}\n      ok in {c.seconds:.2f} s, process peak RSS {c.peak_rss_mb:.0f} MB{warn}"]
        lines += [f"      warning: {w}" for w in c.warnings[:3]]
        return "\n".join(lines)
    first = c.error.splitlines()[0] if c.error else ""
    lines = [f"{head}\n      FAILED {first}"]
    if show_traceback and c.traceback:
        lines += ["      " + line for line in c.traceback.rstrip().splitlines()]
    else:
        lines.append(f"      see its traceback: bayesim-hpc check {study_file} --cell {c.cell} --traceback")
    return "\n".join(lines)


def render_checks(checks: list[CellCheck]) -> str:
    """The closing line: how many cells passed, and the slowest and largest."""
    bad = [c for c in checks if not c.ok]
    good = [c for c in checks if c.ok]
    line = f"check: {len(good)} of {len(checks)} cell(s) ran a task successfully"
    if good:
        slow = max(good, key=lambda c: c.seconds)
        line += f"; slowest {slow.cell} ({slow.seconds:.2f} s, the first fit of a model includes its compile)"
    if bad:
        line += f"; FAILED: {', '.join(c.cell for c in bad)}"
    return line
