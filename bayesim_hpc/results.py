"""Results of a study, loaded lazily from its result directory.

Example:
    >>> res = load_results("results/my_study")            # doctest: +SKIP
    >>> res.summary.groupby("fit_model")["bias__slope"].mean()   # doctest: +SKIP
    >>> res.cells[["data_n", "fit_model", "cover90__slope", "cover90__slope__wilson_low"]]  # doctest: +SKIP
    >>> res.task_results["d001_f001_r00001"]["draws"]["slope"].shape   # doctest: +SKIP
    >>> res.draws("d001_f001_r00001")                    # an xarray.Dataset  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from .names import add_current_names, add_legacy_names, current_name
from .reduce import ReduceOutcome, reduce_results
from .summary_file import read_summary, summary_is_current
from .resultdir import ResultDir
from .storage import read_task_artifacts

__all__ = ["SimulationResult", "load_results", "TaskResults"]


class TaskResults(Mapping):
    """``task_id -> dict of retained artifacts``, read from the shard files on access.

    Always has ``metrics`` (the task's summary row as a dict); other keys per retention:
    ``diagnostics``, ``draws``, ``predictions``, ``data``, ``warnings``, ``fit``.
    """

    def __init__(self, result: "SimulationResult"):
        self._result = result

    @cached_property
    def _position(self) -> pd.Index:
        return pd.Index(self._result.summary["task_id"])

    def _row(self, task_id: str) -> pd.Series:
        try:
            return self._result.summary.iloc[self._position.get_loc(task_id)]
        except KeyError:
            raise KeyError(f"{task_id!r} has no result (not a task of this study, or missing)") from None

    def __getitem__(self, task_id: str) -> dict[str, Any]:
        row = self._row(task_id)
        out: dict[str, Any] = {"metrics": {k: v for k, v in row.items() if k not in ("segment",)}}
        art = read_task_artifacts(self._result.path / row["segment"], task_id)
        if "fit_bytes" in art:
            import cloudpickle

            out["fit"] = cloudpickle.loads(art.pop("fit_bytes"))
        out.update(art)
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self._result.summary["task_id"])

    def __len__(self) -> int:
        return len(self._result.summary)


class SimulationResult:
    """A study's results: ``summary`` (one row per task), ``cells`` (per-cell measures with
    MCSE) and ``task_results`` (retained artifacts, loaded per task on demand)."""

    def __init__(self, path: str | Path, reduce_outcome: ReduceOutcome | None = None, _tmpdir: Any = None,
                 dry_run: bool = False):
        self.rd = ResultDir(path)
        self.dry_run = dry_run  # a dry run: nothing ran, nothing was kept
        self.path = self.rd.path
        self.reduce_outcome = reduce_outcome
        self._tmpdir = _tmpdir  # keeps a temporary result directory alive with the result

    @cached_property
    def _stored_summary(self) -> pd.DataFrame:
        return read_summary(self.rd.summary)

    @cached_property
    def legacy_columns(self) -> list[str]:
        """Pre-0.2 per-parameter names in this directory's summary (empty for new directories)."""
        return [c for c in self._stored_summary.columns if current_name(c)]

    @cached_property
    def summary(self) -> pd.DataFrame:
        """One row per task. In a directory written before 0.2, the current name of every old
        per-parameter column is added beside it (see :mod:`bayesim_hpc.names`)."""
        return add_current_names(self._stored_summary)

    @cached_property
    def cells(self) -> pd.DataFrame:
        """Per-cell measures with MCSE; old directories get both current and old names."""
        cells = add_current_names(pd.read_csv(self.rd.cells))
        return add_legacy_names(cells, self.legacy_columns) if self.legacy_columns else cells

    def compare(self, reference: int | dict | None = None):
        """Paired differences between each fit row and ``reference``: see :func:`bayesim_hpc.compare.compare`."""
        from .compare import compare

        return compare(self, reference=reference)

    def select(self, table: str = "summary", **grid_values: Any) -> pd.DataFrame:
        """Rows of ``summary`` (or ``cells``) whose grid values match, by grid column name.

        A name is looked up as ``data_<name>`` or ``fit_<name>`` (or give the prefixed name);
        a value may be a list of values to accept.

        >>> res.select(n=50, model="t")                       # doctest: +SKIP
        >>> res.select("cells", n=[50, 100])                  # doctest: +SKIP
        """
        if table not in ("summary", "cells"):
            raise ValueError(f"table={table!r}: use 'summary' or 'cells'")
        frame = self.summary if table == "summary" else self.cells
        mask = pd.Series(True, index=frame.index)
        for name, value in grid_values.items():
            cols = [c for c in (name, f"data_{name}", f"fit_{name}") if c in frame.columns]
            if not cols:
                grid = sorted(c for c in frame.columns if c.startswith(("data_", "fit_")) and c not in ("data_idx", "fit_idx"))
                raise KeyError(f"no grid column {name!r}; the grid columns are: {', '.join(grid)}")
            if len(cols) > 1 and cols[0] != name:
                raise KeyError(f"{name!r} is a column of both grids: say {cols[1]!r} or {cols[2]!r}")
            accepted = value if isinstance(value, (list, tuple, set)) else [value]
            mask &= frame[cols[0]].isin(list(accepted))
        return frame[mask]

    @cached_property
    def task_results(self) -> TaskResults:
        return TaskResults(self)

    @property
    def n_missing(self) -> int:
        import h5py

        with h5py.File(self.rd.summary, "r", locking=False) as f:
            return int(f.attrs["n_missing"])

    @property
    def complete(self) -> bool:
        return self.n_missing == 0

    def draws(self, task_id: str):
        """Retained draws of one task as an ``xarray.Dataset`` with dims (chain, draw, ...)."""
        import xarray as xr

        art = self.task_results[task_id]
        if "draws" not in art:
            raise KeyError(f"{task_id} has no retained draws (retention: add 'draws')")
        return xr.Dataset({k: (("chain", "draw") + tuple(f"{k}_dim_{i}" for i in range(v.ndim - 2)), v)
                           for k, v in art["draws"].items()})

    def __repr__(self) -> str:
        s = self.summary
        ok = int((s["status"] == "success").sum()) if len(s) else 0
        return f"<SimulationResult {self.path}: {len(s)} tasks, {ok} succeeded, {len(s) - ok} failed, {self.n_missing} missing>"


def load_results(path: str | Path, reduce: str = "auto") -> SimulationResult:
    """Open a result directory; ``reduce="auto"`` re-reduces when segments are newer."""
    rd = ResultDir(path)
    if not rd.exists():
        raise FileNotFoundError(f"{path} is not a bayesim-hpc result directory (no study.json)")
    outcome = None
    if reduce == "always" or (reduce == "auto" and not summary_is_current(rd)):
        outcome = reduce_results(rd.path)
    return SimulationResult(rd.path, outcome)

