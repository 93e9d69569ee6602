"""The task space: grids, cells, task ids and shards, all computed lazily.

A *cell* is a (data row, fit row) pair; a *task* is a cell and a replicate. Tasks have a
canonical 0-based index in (data, fit, replicate) order, which is also the order of their
ids, so sorting by ``task_id`` and by index agree.

Example:
    >>> space = TaskSpace.from_grids(expand_grid({"n": [50, 100]}), expand_grid({"m": ["a"]}), 3)
    >>> space.n_tasks, space.task_id(4)
    (6, 'd002_f001_r00002')
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd

__all__ = ["expand_grid", "TaskSpace", "TaskRef", "Shard", "plan_shards"]


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
    """A task's indices (0-based) and id."""

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


class TaskSpace:
    """All tasks of a study without materialising them.

    ``cells`` is an int array of shape (n_cells, 2) with (data_idx, fit_idx), sorted.
    Canonical index = cell_pos * n_rep + rep. *Shard order* groups tasks by fit
    configuration first (fit, data, rep) so a worker reuses one compiled model.
    """

    def __init__(self, cells: np.ndarray, n_data: int, n_fit: int, n_rep: int):
        cells = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
        order = np.lexsort((cells[:, 1], cells[:, 0]))
        self.cells = cells[order]
        self.n_data, self.n_fit, self.n_rep = int(n_data), int(n_fit), int(n_rep)
        self.n_tasks = len(self.cells) * self.n_rep
        self._wd = max(3, len(str(self.n_data)))
        self._wf = max(3, len(str(self.n_fit)))
        self._wr = max(5, len(str(self.n_rep)))
        # shard order: cells sorted by (fit, data)
        self._shard_cell_order = np.lexsort((self.cells[:, 0], self.cells[:, 1]))
        self._lookup: dict[tuple[int, int], int] | None = None

    @property
    def _cell_lookup(self) -> dict[tuple[int, int], int]:
        """(data_idx, fit_idx) -> cell position; built on first use (only ``parse_id`` needs it)."""
        if self._lookup is None:
            self._lookup = {(int(d), int(f)): i for i, (d, f) in enumerate(self.cells.tolist())}
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

    # --- ids and indices -------------------------------------------------------------
    def format_id(self, d: int, f: int, r: int) -> str:
        return f"d{d + 1:0{self._wd}d}_f{f + 1:0{self._wf}d}_r{r + 1:0{self._wr}d}"

    def parse_id(self, task_id: str) -> TaskRef:
        try:
            ds, fs, rs = task_id.split("_")
            d, f, r = int(ds[1:]) - 1, int(fs[1:]) - 1, int(rs[1:]) - 1
            cell = self._cell_lookup[(d, f)]
        except (ValueError, KeyError) as exc:
            raise KeyError(f"{task_id!r} is not a task of this study") from exc
        if not 0 <= r < self.n_rep:
            raise KeyError(f"{task_id!r} is not a task of this study")
        return TaskRef(cell * self.n_rep + r, d, f, r, task_id)

    def ref(self, index: int) -> TaskRef:
        if not 0 <= index < self.n_tasks:
            raise IndexError(index)
        cell, r = divmod(int(index), self.n_rep)
        d, f = (int(v) for v in self.cells[cell])
        return TaskRef(int(index), d, f, r, self.format_id(d, f, r))

    def task_id(self, index: int) -> str:
        return self.ref(index).task_id

    def __iter__(self) -> Iterator[TaskRef]:
        for i in range(self.n_tasks):
            yield self.ref(i)

    # --- shard order -----------------------------------------------------------------
    def index_at_shard_pos(self, pos: int) -> int:
        """Canonical index of the task at position ``pos`` of shard order."""
        k, r = divmod(int(pos), self.n_rep)
        return int(self._shard_cell_order[k]) * self.n_rep + r

    def shard_indices(self, shard: Shard) -> np.ndarray:
        """Canonical indices of a shard's tasks, in the order the worker runs them."""
        pos = np.arange(shard.start, shard.stop, dtype=np.int64)
        k, r = np.divmod(pos, self.n_rep)
        return self._shard_cell_order[k] * self.n_rep + r

    def fit_idx_at_shard_pos(self, pos: int) -> int:
        k = int(pos) // self.n_rep
        return int(self.cells[self._shard_cell_order[k], 1])


def plan_shards(space: TaskSpace, shard_size: int) -> list[Shard]:
    """Cut shard order into shards of at most ``shard_size`` tasks, never mixing fit rows.

    >>> sp = TaskSpace(np.array([[0, 0], [0, 1]]), 1, 2, 5)
    >>> [(s.start, s.stop) for s in plan_shards(sp, 3)]
    [(0, 3), (3, 5), (5, 8), (8, 10)]
    """
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    shards: list[Shard] = []
    # boundaries where the fit row changes in shard order
    fits = space.cells[space._shard_cell_order, 1]
    bounds = [0] + [int(i) * space.n_rep for i in np.flatnonzero(np.diff(fits)) + 1] + [space.n_tasks]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        for start in range(lo, hi, shard_size):
            shards.append(Shard(len(shards), start, min(start + shard_size, hi)))
    return shards
