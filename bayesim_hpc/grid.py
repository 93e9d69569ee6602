"""The task space: grids, cells, task ids and shards, all computed lazily.

A *cell* is a (data row, fit row) pair; a *task* is a cell and a replicate. Tasks have a
canonical 0-based index in (data, fit, replicate) order, which is also the order of their
ids, so sorting by ``task_id`` and by index agree -- until the study grows: tasks an
extension adds get the next indices (see :class:`TaskSpace`).

Example:
    >>> space = TaskSpace.from_grids(expand_grid({"n": [50, 100]}), expand_grid({"m": ["a"]}), 3)
    >>> space.n_tasks, space.task_id(4)
    (6, 'd002_f001_r00002')
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd

__all__ = ["expand_grid", "TaskSpace", "TaskRef", "Shard", "plan_shards", "space_from_raw"]


def expand_grid(grid: Mapping[str, Any] | pd.DataFrame) -> pd.DataFrame:
    """A DataFrame as given, or a dict of lists expanded to all combinations.

    The first key varies slowest. Scalars count as one-element lists.

    >>> expand_grid({"n": [1, 2], "s": [0.5]}).to_dict("records")
    [{'n': 1, 's': 0.5}, {'n': 2, 's': 0.5}]
    """
    if isinstance(grid, pd.DataFrame):
        return grid.reset_index(drop=True)
    keys = list(grid)
    values = [v if isinstance(v, (list, tuple, np.ndarray, pd.Series)) else [v] for v in grid.values()]
    rows = list(itertools.product(*[list(v) for v in values]))
    return pd.DataFrame(rows, columns=keys)


@dataclass(frozen=True)
class TaskRef:
    """A task's positions, 0-based (the summary's ``data_idx``/``fit_idx``/``rep_idx`` and the
    id ``d001_f001_r00001`` count from 1: the summary row has ``data_idx == ref.data_idx + 1``)."""

    index: int
    data_idx: int
    fit_idx: int
    rep_idx: int
    task_id: str


@dataclass(frozen=True)
class Shard:
    """The tasks one worker (one array element) runs: positions [start, stop) in shard order."""

    shard_id: int
    start: int
    stop: int

    @property
    def n_tasks(self) -> int:
        return self.stop - self.start


class _Block:
    """Tasks added together: some cells (cell numbers, sorted by (data, fit)) x replicates [r0, r1)."""

    def __init__(self, cell_nums: np.ndarray, r0: int, r1: int, offset: int, all_cells: np.ndarray,
                 presorted: bool = False):
        self.r0, self.r1, self.offset = int(r0), int(r1), int(offset)
        cn = np.asarray(cell_nums, dtype=np.int64)
        if not presorted and cn.size:
            pairs = all_cells[cn]
            cn = cn[np.lexsort((pairs[:, 1], pairs[:, 0]))]
        self.cells = cn
        self.nr = self.r1 - self.r0
        self.size = int(self.cells.size) * self.nr
        self._cells_list: list[int] | None = None
        self._pos_of: dict[int, int] | None = None
        pairs = all_cells[self.cells]
        # shard order: this block's cells sorted by (fit, data); positions into self.cells
        self.shard_cellpos = np.lexsort((pairs[:, 0], pairs[:, 1])) if self.cells.size else self.cells

    @property
    def cells_list(self) -> list[int]:
        """Cell numbers as plain ints (built on first use: per-task lookups without numpy scalars)."""
        if self._cells_list is None:
            self._cells_list = self.cells.tolist()
        return self._cells_list

    @property
    def pos_of(self) -> dict[int, int]:
        """Cell number -> position in this block (built on first use: only ``parse_id`` needs it)."""
        if self._pos_of is None:
            self._pos_of = {k: i for i, k in enumerate(self.cells_list)}
        return self._pos_of

    def to_json(self) -> dict[str, Any]:
        return {"cells": [int(k) for k in self.cells], "reps": [self.r0, self.r1]}


class TaskSpace:
    """All tasks of a study without materialising them.

    ``cells`` is an int array of shape (n_cells, 2) with (data_idx, fit_idx), indexed by
    *cell number*. Tasks come in *blocks*: the tasks a study started with, then those each
    extension added (:meth:`extend`). Within a block of cells C x replicates [r0, r1), the
    canonical index is ``offset + pos(cell in C) * (r1 - r0) + (rep - r0)``, so a task keeps
    its index (and id, and seeds) whatever is added later. A study that never grew has one
    block: index = cell_pos * n_rep + rep, cells sorted by (data, fit), as before.

    *Shard order* groups a block's tasks by fit configuration first (fit, data, rep), so a
    worker reuses one compiled model; blocks follow each other in shard order too.

    Task ids ``d<data>_f<fit>_r<rep>`` are 1-based and zero-padded to widths fixed when the
    study was created (``widths``, frozen in ``study.json``); a grid that grows past a width
    gets longer numbers, never renumbered ones.
    """

    def __init__(self, cells: np.ndarray, n_data: int, n_fit: int, n_rep: int,
                 blocks: list[tuple[Any, int, int]] | None = None, widths: tuple[int, int, int] | None = None,
                 hidden: Any = ()):
        cells = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
        presorted = blocks is None
        if blocks is None:  # one block: every cell, replicates [0, n_rep), cells in (data, fit) order
            cells = cells[np.lexsort((cells[:, 1], cells[:, 0]))]
            blocks = [(np.arange(len(cells)), 0, n_rep)]
        self.cells = cells
        self.n_data, self.n_fit, self.n_rep = int(n_data), int(n_fit), int(n_rep)
        self.widths = tuple(int(w) for w in widths) if widths is not None else (
            max(3, len(str(self.n_data))), max(3, len(str(self.n_fit))), max(5, len(str(self.n_rep))))
        self._wd, self._wf, self._wr = self.widths
        self.blocks: list[_Block] = []
        off = 0
        for cn, r0, r1 in blocks:
            b = _Block(np.asarray(cn, dtype=np.int64), r0, r1, off, self.cells, presorted=presorted)
            self.blocks.append(b)
            off += b.size
        self.n_tasks = off
        self._offsets = np.array([b.offset for b in self.blocks], dtype=np.int64)
        self._offsets_list = self._offsets.tolist()
        self._cells_l: list[list[int]] | None = None
        self._lookup: dict[tuple[int, int], int] | None = None
        self.hidden = np.zeros(len(self.cells), dtype=bool)
        self.hidden[np.asarray(list(hidden), dtype=np.int64)] = True
        self.cell_reps = np.zeros(len(self.cells), dtype=np.int64)
        for b in self.blocks:
            self.cell_reps[b.cells] = np.maximum(self.cell_reps[b.cells], b.r1)

    @property
    def _cells_list(self) -> list[list[int]]:
        """``cells`` as plain ints, built on first use (per-task lookups without numpy scalars)."""
        if self._cells_l is None:
            self._cells_l = self.cells.tolist()
        return self._cells_l

    @property
    def _cell_lookup(self) -> dict[tuple[int, int], int]:
        """(data_idx, fit_idx) -> cell number; built on first use (``parse_id`` and extensions need it)."""
        if self._lookup is None:
            self._lookup = {(d, f): i for i, (d, f) in enumerate(self._cells_list)}
        return self._lookup

    @classmethod
    def from_grids(
        cls,
        data_grid: pd.DataFrame,
        fit_grid: pd.DataFrame,
        n_rep: int,
        task_grid: pd.DataFrame | None = None,
    ) -> "TaskSpace":
        nd, nf = len(data_grid), len(fit_grid)
        if task_grid is None:
            cells = np.stack(np.meshgrid(np.arange(nd), np.arange(nf), indexing="ij"), axis=-1).reshape(-1, 2)
        else:
            cells = task_grid[["data_idx", "fit_idx"]].to_numpy(dtype=np.int64) - 1
        return cls(cells.reshape(-1, 2), nd, nf, n_rep)

    # --- the frozen layout -----------------------------------------------------------
    def to_layout(self) -> dict[str, Any]:
        """The layout as frozen in ``study.json`` (``"layout"``); :meth:`from_layout` reads it back."""
        return {"cells": self.cells.tolist(), "blocks": [b.to_json() for b in self.blocks],
                "widths": list(self.widths), "hidden": [int(k) for k in np.flatnonzero(self.hidden)],
                "n_data": self.n_data, "n_fit": self.n_fit, "n_rep": self.n_rep}

    @classmethod
    def from_layout(cls, layout: dict[str, Any]) -> "TaskSpace":
        return cls(np.array(layout["cells"], dtype=np.int64).reshape(-1, 2), layout["n_data"], layout["n_fit"],
                   layout["n_rep"], blocks=[(b["cells"], b["reps"][0], b["reps"][1]) for b in layout["blocks"]],
                   widths=tuple(layout["widths"]), hidden=layout.get("hidden", ()))

    def extend(self, want: dict[tuple[int, int], int], n_data: int, n_fit: int, n_rep: int | None = None,
               hidden: Any = None) -> "TaskSpace":
        """A space with blocks added so that cell (d, f) has ``want[(d, f)]`` replicates.

        Existing tasks keep their indices; a cell never loses replicates. New cells get the
        next cell numbers, in (data, fit) order. ``hidden``: cell numbers to hide (default: as now).

        >>> sp = TaskSpace(np.array([[0, 0]]), 1, 1, 2)
        >>> sp2 = sp.extend({(0, 0): 3, (1, 0): 3}, 2, 1)
        >>> [sp2.task_id(i) for i in range(sp2.n_tasks)]
        ['d001_f001_r00001', 'd001_f001_r00002', 'd002_f001_r00001', 'd002_f001_r00002', 'd002_f001_r00003', 'd001_f001_r00003']
        """
        cells = self.cells.tolist()
        lookup = dict(self._cell_lookup)
        for d, f in sorted(want):
            if (d, f) not in lookup:
                lookup[(d, f)] = len(cells)
                cells.append([d, f])
        reps = np.zeros(len(cells), dtype=np.int64)
        reps[: len(self.cell_reps)] = self.cell_reps
        groups: dict[tuple[int, int], list[int]] = {}
        for (d, f), target in want.items():
            k = lookup[(d, f)]
            if target > reps[k]:
                groups.setdefault((int(reps[k]), int(target)), []).append(k)
        blocks = [(b.cells, b.r0, b.r1) for b in self.blocks]
        blocks += [(np.array(ks), r0, r1) for (r0, r1), ks in sorted(groups.items())]
        n_rep = max(self.n_rep, int(n_rep or 0), *(int(t) for t in want.values())) if want else self.n_rep
        hid = np.flatnonzero(self.hidden) if hidden is None else hidden
        return TaskSpace(np.array(cells, dtype=np.int64), n_data, n_fit, n_rep, blocks=blocks,
                         widths=self.widths, hidden=hid)

    # --- ids and indices -------------------------------------------------------------
    def format_id(self, d: int, f: int, r: int) -> str:
        return f"d{d + 1:0{self._wd}d}_f{f + 1:0{self._wf}d}_r{r + 1:0{self._wr}d}"

    def parse_id(self, task_id: str) -> TaskRef:
        try:
            ds, fs, rs = task_id.split("_")
            d, f, r = int(ds[1:]) - 1, int(fs[1:]) - 1, int(rs[1:]) - 1
            k = self._cell_lookup[(d, f)]
        except (ValueError, KeyError) as exc:
            raise KeyError(f"{task_id!r} is not a task of this study") from exc
        for b in self.blocks:
            if b.r0 <= r < b.r1 and k in b.pos_of:
                return TaskRef(b.offset + b.pos_of[k] * b.nr + r - b.r0, d, f, r, task_id)
        raise KeyError(f"{task_id!r} is not a task of this study")

    def ref(self, index: int) -> TaskRef:
        index = int(index)
        if not 0 <= index < self.n_tasks:
            raise IndexError(index)
        b = self.blocks[bisect.bisect_right(self._offsets_list, index) - 1] if len(self.blocks) > 1 else self.blocks[0]
        pos, rr = divmod(index - b.offset, b.nr)
        d, f = self._cells_list[b.cells_list[pos]]
        r = b.r0 + rr
        return TaskRef(index, d, f, r, self.format_id(d, f, r))

    def task_id(self, index: int) -> str:
        return self.ref(index).task_id

    def __iter__(self) -> Iterator[TaskRef]:
        for i in range(self.n_tasks):
            yield self.ref(i)

    def cell_and_rep(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised: the cell number and 0-based replicate of each canonical index."""
        idx = np.asarray(indices, dtype=np.int64)
        cell = np.empty(idx.size, dtype=np.int64)
        rep = np.empty(idx.size, dtype=np.int64)
        which = np.searchsorted(self._offsets, idx, side="right") - 1
        for j, b in enumerate(self.blocks):
            sel = which == j
            if sel.any():
                pos, rr = np.divmod(idx[sel] - b.offset, b.nr)
                cell[sel] = b.cells[pos]
                rep[sel] = b.r0 + rr
        return cell, rep

    def active_mask(self) -> np.ndarray:
        """Per task: False if its cell is hidden (a grid row the study no longer names)."""
        if not self.hidden.any():
            return np.ones(self.n_tasks, dtype=bool)
        cell, _ = self.cell_and_rep(np.arange(self.n_tasks))
        return ~self.hidden[cell]

    # --- shard order -----------------------------------------------------------------
    @property
    def shard_cell_order(self) -> np.ndarray:
        """Cell numbers in shard order, block after block (for a study that never grew: every
        cell once, sorted by (fit, data)); cost-sized planning of a new study walks this."""
        return np.concatenate([b.cells[b.shard_cellpos] for b in self.blocks]) if self.blocks else \
            np.empty(0, dtype=np.int64)

    def shard_indices(self, shard: Shard) -> np.ndarray:
        """Canonical indices of a shard's tasks, in the order the worker runs them."""
        pos = np.arange(shard.start, shard.stop, dtype=np.int64)
        out = np.empty(pos.size, dtype=np.int64)
        which = np.searchsorted(self._offsets, pos, side="right") - 1
        for j in np.unique(which):
            b = self.blocks[int(j)]
            sel = which == j
            k, r = np.divmod(pos[sel] - b.offset, b.nr)
            out[sel] = b.offset + b.shard_cellpos[k] * b.nr + r
        return out

    def fit_idx_at_shard_pos(self, pos: int) -> int:
        return int(self.cells[self._cell_at_shard_pos(pos), 1])

    def _cell_at_shard_pos(self, pos: int) -> int:
        b = self.blocks[int(np.searchsorted(self._offsets, pos, side="right")) - 1]
        return int(b.cells[b.shard_cellpos[(int(pos) - b.offset) // b.nr]])


def plan_shards(space: TaskSpace, shard_size: int, first_block: int = 0, first_id: int = 0) -> list[Shard]:
    """Cut shard order into shards of at most ``shard_size`` tasks, never mixing fit rows or
    blocks. ``first_block``/``first_id``: plan only the blocks an extension added, numbering
    their shards after the existing ones.

    >>> sp = TaskSpace(np.array([[0, 0], [0, 1]]), 1, 2, 5)
    >>> [(s.start, s.stop) for s in plan_shards(sp, 3)]
    [(0, 3), (3, 5), (5, 8), (8, 10)]
    """
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    shards: list[Shard] = []
    for b in space.blocks[first_block:]:
        if b.size == 0:
            continue
        fits = space.cells[b.cells[b.shard_cellpos], 1]
        bounds = [0] + [int(i) * b.nr for i in np.flatnonzero(np.diff(fits)) + 1] + [b.size]
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            for start in range(lo, hi, shard_size):
                shards.append(Shard(first_id + len(shards), b.offset + start, b.offset + min(start + shard_size, hi)))
    return shards


def space_from_raw(raw: dict[str, Any]) -> TaskSpace:
    """The task space of a frozen study (``study.json``), without loading its code."""
    if raw.get("layout"):
        return TaskSpace.from_layout(raw["layout"])
    nd, nf, n_rep = int(raw["n_data"]), int(raw["n_fit"]), int(raw["n_replicates"])
    if raw.get("task_grid"):
        tg = raw["task_grid"]
        cells = np.column_stack([np.asarray(tg["data_idx"]) - 1, np.asarray(tg["fit_idx"]) - 1])
    else:
        cells = np.stack(np.meshgrid(np.arange(nd), np.arange(nf), indexing="ij"), axis=-1).reshape(-1, 2)
    return TaskSpace(cells.reshape(-1, 2), nd, nf, n_rep)
