"""Time-aware planning: which shards one Slurm array element runs, sized by cost, not by count.

Every element pays a fixed start-up (a Python process, imports, loading the study) and, per fit
configuration, a first-fit cost (e.g. a PyMC/nutpie compile), then a per-task time that differs
between cells (n=40 vs n=1000). The frozen shard plan (``study.json``) stays the unit of
durability; the *element plan* packs whole shards into elements so that each element runs about
``target_s`` seconds of work (or less, when the study is small: then about one element per
parallel slot). Heavy cells therefore get fewer tasks per element.

The figures come from (first that knows, per cell):

1. ``segments``: timings of tasks already run (``timing_total`` of earlier attempts);
2. ``pilot``: a few tasks per cell run in the driver before submitting (their results are kept:
   they are the same tasks, with the same seeds, as the elements would run);
3. ``hint``: ``task_seconds`` given by the user (a number, or ``{fit column value: seconds}``);
4. ``guess``: nothing known; every task is assumed to cost the same.

Plans only decide *where* a task runs. Seeds follow task identity, so any plan gives the same
results, bit for bit.

Example:
    >>> import numpy as np
    >>> from bayesim_hpc.grid import TaskSpace, plan_shards
    >>> sp = TaskSpace(np.array([[0, 0], [1, 0]]), 2, 1, 10)
    >>> model = CostModel({0: CellCost(1.0, 0.0, "hint"), 1: CellCost(10.0, 0.0, "hint")}, startup_s=5.0)
    >>> plan = plan_elements(sp, plan_shards(sp, 5), model, slots=4, target_s=60)
    >>> [e.shards for e in plan]
    [[0, 1], [2], [3]]
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Mapping

import numpy as np

from .grid import Shard, TaskSpace

__all__ = ["CellCost", "CostModel", "PlannedElement", "plan_elements", "plan_shards_by_cost", "measure_segments",
           "cost_model", "DEFAULT_STARTUP_S", "describe_plan"]

DEFAULT_STARTUP_S = 5.0
"""Element start-up (Python, imports, study) assumed when nothing better is known."""


@dataclass(frozen=True)
class CellCost:
    """Seconds per task of one cell, extra seconds of the first task of a fit row in a process
    (a compile), where the figures came from and how many tasks they rest on."""

    task_s: float
    first_s: float = 0.0
    source: str = "guess"
    n: int = 0


@dataclass
class CostModel:
    """Per-cell costs (keyed by cell position in ``TaskSpace.cells``) and the element start-up."""

    cells: dict[int, CellCost]
    startup_s: float = DEFAULT_STARTUP_S
    startup_source: str = "guess"

    def task_seconds(self, n_cells: int) -> np.ndarray:
        """Seconds per task of every cell (cells without figures: the mean of those with)."""
        known = [c.task_s for c in self.cells.values() if c.source != "guess"]
        fill = float(np.mean(known)) if known else 1.0
        out = np.full(n_cells, fill, dtype=np.float64)
        for k, c in self.cells.items():
            out[k] = c.task_s if c.source != "guess" or not known else fill
        return out

    def first_seconds(self, space: TaskSpace) -> dict[int, float]:
        """Extra seconds of the first task of each fit row in a process (the largest seen)."""
        out: dict[int, float] = {}
        for k, c in self.cells.items():
            f = int(space.cells[k, 1])
            out[f] = max(out.get(f, 0.0), c.first_s)
        return out

    @property
    def known(self) -> bool:
        return any(c.source != "guess" for c in self.cells.values())


@dataclass
class PlannedElement:
    """One array element of a plan: its shards (run in this order), tasks, predicted seconds."""

    shards: list[int]
    n_tasks: int
    predicted_s: float
    resources: Hashable = None
    fits: list[int] = field(default_factory=list)


def shard_costs(space: TaskSpace, shards: list[Shard], task_s: np.ndarray) -> np.ndarray:
    """Predicted task seconds of each shard (start-up not included), in O(cells + shards)
    (a grown study, with several blocks of tasks: in O(tasks))."""
    if len(space.blocks) > 1:
        return np.array([float(task_s[space.cell_and_rep(space.shard_indices(s))[0]].sum()) for s in shards])
    order = space.shard_cell_order
    per_cell = task_s[order]  # cells in shard order
    prefix = np.concatenate([[0.0], np.cumsum(per_cell * space.n_rep)])

    def upto(pos: np.ndarray) -> np.ndarray:
        k, r = np.divmod(pos, space.n_rep)
        kk = np.minimum(k, len(per_cell) - 1)
        return prefix[k] + np.where(k < len(per_cell), r * per_cell[kk], 0.0)

    starts = np.array([s.start for s in shards], dtype=np.int64)
    stops = np.array([s.stop for s in shards], dtype=np.int64)
    return upto(stops) - upto(starts)


def plan_elements(space: TaskSpace, shards: list[Shard], model: CostModel, *, slots: int, target_s: float,
                  resources_of: Callable[[Shard], Hashable] | None = None,
                  max_elements: int | None = None) -> list[PlannedElement]:
    """Pack shards (in order) into elements of about ``min(target_s, work / slots)`` seconds each.

    Shards of one resource class (``resources_of``) go together; an element never mixes classes.
    A shard is never split; a shard alone above the budget is an element of its own.
    ``max_elements`` (e.g. for a scheduler limit) raises the budget until the plan fits.
    """
    if not shards:
        return []
    task_s = model.task_seconds(len(space.cells))
    costs = shard_costs(space, shards, task_s)
    first = model.first_seconds(space)
    fit_of = [space.fit_idx_at_shard_pos(s.start) for s in shards]
    classes: dict[Hashable, list[int]] = {}
    for i, s in enumerate(shards):
        classes.setdefault(resources_of(s) if resources_of else None, []).append(i)
    total = float(costs.sum())
    budget = max(1e-9, min(float(target_s), total / max(1, slots)))
    while True:
        out = _pack(classes, shards, costs, fit_of, first, model.startup_s, budget)
        if max_elements is None or len(out) <= max_elements or budget >= total:
            return out
        budget *= 1.25


def _pack(classes: Mapping[Hashable, list[int]], shards: list[Shard], costs: np.ndarray, fit_of: list[int],
          first: Mapping[int, float], startup_s: float, budget: float) -> list[PlannedElement]:
    out: list[PlannedElement] = []
    for res, idx in classes.items():
        class_work = float(costs[idx].sum())
        n_el = max(1, math.ceil(class_work / budget - 1e-9))
        even = class_work / n_el  # even out the elements of the class
        # shard i goes to element floor(midpoint of its work / even): in order, at most n_el elements
        mids = np.cumsum(costs[idx]) - costs[idx] / 2
        slot = np.minimum(n_el - 1, np.floor(mids / max(even, 1e-12))).astype(np.int64)
        cur: PlannedElement | None = None
        last = -1
        for i, k in zip(idx, slot):
            if cur is None or k != last:
                if cur is not None:
                    out.append(cur)
                cur, last = PlannedElement([], 0, startup_s, res), int(k)
            cur.shards.append(shards[i].shard_id)
            cur.n_tasks += shards[i].n_tasks
            if fit_of[i] not in cur.fits:
                cur.fits.append(fit_of[i])
                cur.predicted_s += first.get(fit_of[i], 0.0)
            cur.predicted_s += float(costs[i])
        if cur is not None:
            out.append(cur)
    return out


def plan_shards_by_cost(space: TaskSpace, task_s: np.ndarray, max_shard_s: float, max_size: int) -> list[Shard]:
    """Shards of at most ``max_size`` tasks and (where a task allows) ``max_shard_s`` seconds.

    Like :func:`bayesim_hpc.grid.plan_shards` (shard order, never mixing fit rows), but a heavy
    cell's shards hold fewer tasks, so an element can be given about its target of work.

    >>> sp = TaskSpace(np.array([[0, 0], [1, 0]]), 2, 1, 10)
    >>> [s.n_tasks for s in plan_shards_by_cost(sp, np.array([1.0, 10.0]), 30.0, 8)]
    [8, 4, 3, 3, 2]
    """
    if max_size < 1:
        raise ValueError("max_size must be >= 1")
    order = space.shard_cell_order
    fits = space.cells[order, 1]
    shards: list[Shard] = []
    start = pos = 0
    acc = 0.0
    for j, k in enumerate(order):
        if j and fits[j] != fits[j - 1] and pos > start:  # never mix fit rows
            shards.append(Shard(len(shards), start, pos))
            start, acc = pos, 0.0
        c = float(task_s[k])
        per = max(1, min(max_size, int(max_shard_s // c) if c > 0 else max_size))
        left = space.n_rep
        while left:
            room = min(max_size - (pos - start), max(0, int((max_shard_s - acc) // c)) if c > 0 else left)
            if room <= 0:
                if pos > start:
                    shards.append(Shard(len(shards), start, pos))
                    start, acc = pos, 0.0
                    continue
                room = 1  # one task above the budget: a shard of its own
            take = min(left, room, per)
            pos += take
            left -= take
            acc += take * c
    if pos > start:
        shards.append(Shard(len(shards), start, pos))
    return shards


# ------------------------------------------------------------------------------------------ figures


def measure_segments(result_dir: str | Path, space: TaskSpace) -> dict[int, CellCost]:
    """Per-cell costs from the ``timing_total`` of tasks already in segments (any attempt).

    The per-task time is the median; the first-fit extra is the largest time minus the median
    (the compile of the first task of a process).
    """
    from .storage import CorruptSegment, iter_segment_paths, read_rows

    times: dict[int, list[np.ndarray]] = {}
    for path in iter_segment_paths(Path(result_dir)):
        try:
            rows = read_rows(path, columns=("timing_total",))
        except CorruptSegment:
            continue
        t = rows.numbers.get("timing_total")
        if t is None or not rows.n_rows:
            continue
        cells, _ = space.cell_and_rep(rows.index)  # blocks of a grown study too
        for k in np.unique(cells):
            times.setdefault(int(k), []).append(t[cells == k])
    out = {}
    for k, parts in times.items():
        t = np.concatenate(parts)
        t = t[np.isfinite(t)]
        if t.size:
            med = float(np.median(t))
            out[k] = CellCost(med, max(0.0, float(t.max()) - med) if t.size > 1 else 0.0, "segments", int(t.size))
    return out


def hinted(space: TaskSpace, fit_specs: list[dict], hint: Any) -> dict[int, CellCost]:
    """Per-cell costs from ``task_seconds``: a number, ``{value: seconds}`` matched against any fit
    column's value, or a function ``(data_spec, fit_spec) -> seconds`` (called with ``None`` data)."""
    if hint is None:
        return {}
    out = {}
    for k in range(len(space.cells)):
        f = int(space.cells[k, 1])
        if isinstance(hint, (int, float)) and not isinstance(hint, bool):
            s = float(hint)
        elif isinstance(hint, Mapping):
            vals = [hint[v] for v in fit_specs[f].values() if isinstance(v, Hashable) and v in hint]
            if not vals:
                continue
            s = float(vals[0])
        else:
            raise ValueError(f"task_seconds must be a number or a mapping {{fit value: seconds}}, got {hint!r}")
        out[k] = CellCost(s, 0.0, "hint", 0)
    return out


def cost_model(space: TaskSpace, *, measured: Mapping[int, CellCost] = (), pilot: Mapping[int, CellCost] = (),
               hint: Mapping[int, CellCost] = (), startup_s: float | None = None,
               startup_source: str = "hint") -> CostModel:
    """Combine figures per cell: segments, then pilot, then hint, else a guess."""
    cells: dict[int, CellCost] = {}
    for k in range(len(space.cells)):
        for src in (measured, pilot, hint):
            if k in src:
                cells[k] = src[k]
                break
        else:
            cells[k] = CellCost(1.0, 0.0, "guess", 0)
    if startup_s is None:
        return CostModel(cells, DEFAULT_STARTUP_S, "guess")
    return CostModel(cells, float(startup_s), startup_source)


def run_pilot(study: Any, cells: Iterable[int], per_cell: int,
              keep: Callable[[list[Any]], None] | None = None) -> dict[int, CellCost]:
    """Run the first tasks of each of ``cells`` here and time them: ``per_cell`` for the first cell
    of a fit row, one fewer (at least one) for its other cells.

    ``keep(records)`` receives the task records (the caller writes them as segments, so the
    tasks are not run again). The first task of each fit row carries the compile: its extra over
    the later ones is the row's ``first_s``; later cells of the row reuse the compiled model, so
    one task tells their per-task time.
    """
    from .task import run_task

    out: dict[int, CellCost] = {}
    seen_fit: set[int] = set()
    for k in cells:
        recs, times = [], []
        f = int(study.space.cells[k, 1])
        n = per_cell if f not in seen_fit else max(1, per_cell - 1)
        d = int(study.space.cells[k, 0])
        for r in range(min(n, int(study.space.cell_reps[k]))):
            t0 = time.perf_counter()  # the task by identity: right for the blocks of a grown study too
            rec = run_task(study, study.space.parse_id(study.space.format_id(d, f, r)))
            times.append(time.perf_counter() - t0)
            recs.append(rec)
        if keep is not None:
            keep(recs)
        steady = float(np.median(times[1:])) if len(times) > 1 and f not in seen_fit else float(np.median(times))
        first = max(0.0, times[0] - steady) if f not in seen_fit else 0.0
        seen_fit.add(f)
        out[int(k)] = CellCost(steady, first, "pilot", len(times))
    return out


def pilot_cells(space: TaskSpace, max_cells: int) -> list[int]:
    """Up to ``max_cells`` cells spread over shard order, every fit row first."""
    order = [int(k) for k in space.shard_cell_order]
    firsts, seen = [], set()
    for k in order:
        f = int(space.cells[k, 1])
        if f not in seen:
            seen.add(f)
            firsts.append(k)
    rest = [k for k in order if k not in set(firsts)]
    n_more = max(0, max_cells - len(firsts))
    if n_more and rest:
        step = max(1, len(rest) // n_more)
        firsts += rest[::step][:n_more]
    return firsts[:max(max_cells, 1)]


def describe_plan(space: TaskSpace, model: CostModel, plan: list[PlannedElement], *, slots: int, target_s: float,
                  label: Callable[[Hashable], str] = str, specs: Callable[[int], str] | None = None,
                  max_cells: int = 20) -> list[str]:
    """Lines for ``--dry-run``: the figures (per cell, with their source) and the plan per class."""
    lines = [f"planning: target {target_s / 60:.1f} min per element, {slots} parallel slot(s), start-up "
             f"{model.startup_s:.1f} s per element ({model.startup_source})"]
    lines.append("  cell           s/task   first-fit s  source    tasks timed")
    for k in sorted(model.cells)[:max_cells]:
        c = model.cells[k]
        d, f = (int(v) for v in space.cells[k])
        name = f"d{d + 1:03d}_f{f + 1:03d}"
        extra = f"  {specs(k)}" if specs else ""
        lines.append(f"  {name:<13} {c.task_s:8.3f} {c.first_s:12.2f}   {c.source:<8} {c.n:6d}{extra}")
    if len(model.cells) > max_cells:
        lines.append(f"  ... {len(model.cells) - max_cells} more cell(s)")
    by_class: dict[Hashable, list[PlannedElement]] = {}
    for e in plan:
        by_class.setdefault(e.resources, []).append(e)
    for res, els in by_class.items():
        pred = [e.predicted_s for e in els]
        lines.append(f"class {label(res)}: {len(els)} element(s), {sum(e.n_tasks for e in els)} task(s), "
                     f"predicted {min(pred):.0f}-{max(pred):.0f} s per element")
    return lines
