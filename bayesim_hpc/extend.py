"""Growing a study in place: tell an *extended* study from a *changed* one.

``run`` on an existing result directory compares the study file with the frozen study.
These are *extensions*, accepted: more ``n_replicates``, new data-grid rows, new fit-grid
rows (or new task-grid cells), new metrics, and a different retention (it applies to the
tasks run from then on). Only the new tasks run; every existing task keeps its index, id,
seeds and stored rows. Grid rows the study file no longer names are *hidden* from
``summary`` and ``cells``, never deleted; naming them again brings them back.

These are *changes*, refused with :class:`StudyChangedError` naming what changed: a
different generator, fitter or metric (code or settings), seed, grid columns, a value in an
existing row (a row gone and a new one added in the same grid), fewer replicates,
``draws_dtype`` or ``compression``. See docs/growing-a-study.md.

Example:
    >>> ext = plan_extension(rd, study)                # doctest: +SKIP
    >>> ext.what                                       # doctest: +SKIP
    ['n_replicates 20 -> 40', 'data_grid: 1 new row(s) {...}']
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .config import Study
from .errors import StudyChangedError
from .fingerprint import code_diff, describe
from .grid import TaskSpace, space_from_raw

__all__ = ["Extension", "plan_extension", "metric_code", "merge_grid_rows", "history_entry"]


@dataclass
class Extension:
    """What a run adds to a frozen study; ``study`` is the merged study to freeze and run."""

    study: Study
    space: TaskSpace
    what: list[str] = field(default_factory=list)
    n_new_tasks: int = 0
    new_metrics: list[str] = field(default_factory=list)
    retain_changed: bool = False

    @property
    def empty(self) -> bool:
        return not self.what


def metric_code(study: Study) -> dict[str, str]:
    """The description text of each metric, by name (frozen in ``study.json`` "metric_code")."""
    return {m.name: describe(m) for m in study.metrics}


def _row_keys(df: pd.DataFrame, columns: list[str]) -> list[tuple]:
    cols = [[(type(v).__name__, v) for v in (x.item() if isinstance(x, np.generic) else x for x in df[c].tolist())]
            for c in columns]
    return list(zip(*cols)) if cols else [() for _ in range(len(df))]


def merge_grid_rows(name: str, frozen: pd.DataFrame, new: pd.DataFrame, active: set[int],
                    changed: list[str]) -> tuple[pd.DataFrame, list[int], list[int]]:
    """Match the new grid's rows with the frozen ones by value (types count).

    Returns the union grid (frozen rows, then new rows in order), the union index of each new
    row, and the indices of new rows. Appends to ``changed`` when the grids cannot be merged.
    """
    fcols = [str(c) for c in frozen.columns]
    if sorted(fcols) != sorted(str(c) for c in new.columns):
        changed.append(f"{name} changed: columns {fcols} -> {[str(c) for c in new.columns]} (a column added or removed "
                       "changes every existing row)")
        return frozen, [], []
    fkeys = _row_keys(frozen, fcols)
    nkeys = _row_keys(new, fcols)
    where = {k: i for i, k in enumerate(fkeys)}
    mapped, added = [], []
    for j, k in enumerate(nkeys):
        if k in where:
            mapped.append(where[k])
        else:
            mapped.append(len(fkeys) + len(added))
            added.append(j)
    gone = sorted(i for i in active if i not in set(mapped))
    if gone and added:
        def show(df: pd.DataFrame, i: int) -> str:
            return str({c: (df[c].iloc[i].item() if isinstance(df[c].iloc[i], np.generic) else df[c].iloc[i])
                        for c in fcols})
        changed.append(
            f"{name} changed: a value in an existing row: row(s) {', '.join(show(frozen, i) for i in gone[:3])} "
            f"are gone and {', '.join(show(new, j) for j in added[:3])} new. To add rows keep every existing row; "
            "to drop rows (their results are hidden, not deleted), drop them in a run of their own")
        return frozen, [], []
    union = pd.concat([frozen, new.iloc[added][fcols]], ignore_index=True) if added else frozen
    return union, mapped, [len(fkeys) + i for i in range(len(added))]


def history_entry(what: list[str], **extra: Any) -> dict[str, Any]:
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "what": list(what), **extra}


def plan_extension(raw: dict[str, Any], frozen: Study, new: Study, path: str = "") -> Extension:
    """Compare ``new`` (from the study file) with the frozen study; the merged study, or a refusal.

    ``raw`` is ``study.json``; ``frozen`` the study read back from the directory.
    """
    changed: list[str] = []
    diffs: list[str] = []
    code_then = raw.get("code") or {}
    for part, obj in (("data_generator", new.data_generator), ("fitter", new.fitter)):
        now = describe(obj)
        if part in code_then and code_then[part] != now:
            changed.append(f"{part} changed")
            diffs.append(code_diff(code_then[part], now, part))
    if int(raw["seed"]) != new.seed:
        changed.append(f"seed changed ({raw['seed']} -> {new.seed})")
    for attr in ("draws_dtype", "compression"):
        if getattr(frozen, attr) != getattr(new, attr):
            changed.append(f"{attr} changed ({getattr(frozen, attr)!r} -> {getattr(new, attr)!r})")
    # metrics: same name, same code; new names are added; names no longer listed are kept
    then_m = raw.get("metric_code") or metric_code(frozen)
    now_m = metric_code(new)
    for name, text in now_m.items():
        if name in then_m and then_m[name] != text:
            changed.append(f"metrics changed: metric {name!r} (to recompute it from retained draws: bayesim-hpc remetric DIR STUDY_FILE)")
            diffs.append(code_diff(then_m[name], text, f"metric {name}"))
    new_metrics = [n for n in now_m if n not in then_m]
    n_rep_then = int(raw["n_replicates"])
    if new.n_replicates < n_rep_then:
        changed.append(f"n_replicates changed ({n_rep_then} -> {new.n_replicates}: fewer replicates; results are never "
                       "dropped, keep n_replicates at least as large)")
    space = space_from_raw(raw)
    active_cells = np.flatnonzero(~space.hidden)
    active_d = {int(d) for d in space.cells[active_cells, 0]}
    active_f = {int(f) for f in space.cells[active_cells, 1]}
    dg, dmap, dnew = merge_grid_rows("data_grid", frozen.data_grid, new.data_grid, active_d, changed)
    fg, fmap, fnew = merge_grid_rows("fit_grid", frozen.fit_grid, new.fit_grid, active_f, changed)
    if changed:
        raise StudyChangedError(
            f"the study in {path} was defined differently: {'; '.join(changed)}; since "
            f"{raw.get('created', 'it was created')}."
            + "".join(f"\n{d}" for d in diffs if d)
            + "\nAccepted on an existing directory: more replicates, new grid rows, new metrics, another retention "
            "(docs/growing-a-study.md). What you can do: run the changed study into a new result directory; or "
            f"finish the study as it was frozen with `bayesim-hpc resume {path}`; or --force to move the old "
            "results aside and start again.")
    # cells the new study names, in union numbering
    wanted = {(dmap[int(d)], fmap[int(f)]) for d, f in new.space.cells}
    n_rep = max(n_rep_then, new.n_replicates)
    want = {c: n_rep for c in wanted}
    ext_space = space.extend(want, len(dg), len(fg), n_rep=n_rep)
    hidden = [k for k, (d, f) in enumerate(ext_space.cells.tolist()) if (d, f) not in wanted]
    ext_space = TaskSpace(ext_space.cells, ext_space.n_data, ext_space.n_fit, ext_space.n_rep,
                          blocks=[(b.cells, b.r0, b.r1) for b in ext_space.blocks], widths=ext_space.widths,
                          hidden=hidden)
    metrics = [m for m in new.metrics if m.name in then_m] + [m for m in frozen.metrics if m.name not in now_m] \
        + [m for m in new.metrics if m.name in new_metrics]
    order = list(then_m) + new_metrics  # frozen order first
    metrics.sort(key=lambda m: order.index(m.name))
    merged = dataclasses.replace(new, data_grid=dg, fit_grid=fg, metrics=tuple(metrics), n_replicates=n_rep,
                                 task_grid=None, layout=ext_space.to_layout(), frozen_in=None)
    what: list[str] = []
    if n_rep > n_rep_then:
        what.append(f"n_replicates {n_rep_then} -> {n_rep}")
    for name, df, idx in (("data_grid", dg, dnew), ("fit_grid", fg, fnew)):
        if idx:
            rows = [{c: (df[c].iloc[i].item() if isinstance(df[c].iloc[i], np.generic) else df[c].iloc[i])
                     for c in df.columns} for i in idx[:5]]  # column-wise: a row Series would make ints floats
            what.append(f"{name}: {len(idx)} new row(s) {rows}" + (" ..." if len(idx) > 5 else ""))
    n_new = ext_space.n_tasks - space.n_tasks
    if n_new:
        what.append(f"{n_new} new task(s)")
    if new_metrics:
        what.append(f"new metric(s) {new_metrics}: computed for new tasks; for the earlier ones run "
                    "`bayesim-hpc remetric DIR` (needs retained draws)")
    now_hidden = set(hidden)
    was_hidden = set(int(k) for k in np.flatnonzero(space.hidden))
    for label, ks in (("hidden (no longer named by the study file; kept, not deleted)", sorted(now_hidden - was_hidden)),
                      ("shown again", sorted(was_hidden - now_hidden))):
        if ks:
            cells = [ext_space.format_id(*ext_space.cells[k], 0).rsplit("_", 1)[0] for k in ks[:8]]
            what.append(f"{len(ks)} cell(s) {label}: {', '.join(cells)}" + (" ..." if len(ks) > 8 else ""))
    retain_changed = tuple(raw.get("retain", frozen.retain)) != tuple(new.retain)
    if retain_changed:
        what.append(f"retain {list(raw.get('retain', frozen.retain))} -> {list(new.retain)}: applies to tasks run "
                    "from now on; tasks already done keep what they retained")
    return Extension(merged, ext_space, what, n_new, new_metrics, retain_changed)
