"""``summary.h5``, one row per task: how the reducer writes it and how every reader reads it.

Layout: ``strings`` (text columns, ``attrs["columns"]``), ``numbers`` (float columns),
``attempt``, ``index`` (canonical task index), the 1-based ``data_idx``/``fit_idx``/``rep_idx``,
``grid/data_<col>`` and ``grid/fit_<col>``; ``attrs["column_order"]`` lists the columns as
:func:`read_summary` returns them. The reducer (:mod:`bayesim_hpc.reduce`) writes it;
``load_results``, ``status``, the CLI and the reducer's per-cell pass read it back here.

Example:
    >>> read_summary("results/s/summary.h5", columns=["task_id", "status"])   # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable

import h5py
import numpy as np
import pandas as pd

from .names import DIAGNOSTIC_RENAMES
from .resultdir import ResultDir
from .storage import STR_COLS, iter_segment_paths, read_rows

__all__ = ["read_summary", "summary_is_current", "write_summary", "DIAGNOSTIC_ORDER"]

_STR = h5py.string_dtype("utf-8")
_FRONT = ["task_id", "status"]
_BACK = ["timing_total", "rep_idx"]


def write_summary(tmp: Path, rd: ResultDir, raw: dict[str, Any], win: Any, n: int, n_active: int,
                   grid_cells: np.ndarray, cells: np.ndarray, reps: np.ndarray,
                   present: np.ndarray, pos: np.ndarray, n_rows: int) -> int:
    """Write the winning row of every present task (``win``: :class:`~bayesim_hpc.reduce.Winners`)
    into its sorted position ``pos`` of a new summary file ``tmp``; returns the successes."""
    segments, corrupt, numeric = win.segments, win.corrupt, win.colnames
    n_success = 0
    with h5py.File(tmp, "w", locking=False) as f:
        f.create_dataset("index", data=present)
        for name in ("rep_idx", "data_idx", "fit_idx"):
            f.create_dataset(name, shape=(n_rows,), dtype=np.int64)
        for a in range(0, n_rows, 50_000):  # in blocks: no further whole-study temporaries
            c = cells[a:a + 50_000]
            f["rep_idx"][a:a + c.size] = reps[a:a + 50_000] + 1
            f["data_idx"][a:a + c.size] = grid_cells[c, 0] + 1
            f["fit_idx"][a:a + c.size] = grid_cells[c, 1] + 1
        str_cols = list(STR_COLS) + ["segment"]
        strs = f.create_dataset("strings", shape=(n_rows, len(str_cols)), dtype=_STR)
        strs.attrs["columns"] = json.dumps(str_cols)
        att = f.create_dataset("attempt", shape=(n_rows,), dtype=np.int32)
        nums = f.create_dataset("numbers", shape=(n_rows, len(numeric)), dtype=np.float64, fillvalue=np.nan)
        nums.attrs["columns"] = json.dumps(numeric)
        col_of = {c: j for j, c in enumerate(numeric)}
        for k, path in enumerate(segments):
            wins, r = win.rows_won(k)
            p = pos[wins]
            keep = np.flatnonzero(p >= 0)  # rows of hidden cells are not written
            keep = keep[np.argsort(p[keep], kind="stable")]  # h5py writes need increasing positions
            wins, r, p = wins[keep], r[keep], p[keep]
            if wins.size == 0:
                continue
            rows = read_rows(path)
            rel = str(path.relative_to(rd.path))
            block = np.empty((p.size, len(str_cols)), dtype=object)
            for j, c in enumerate(STR_COLS):
                vals = rows.strings[c]
                block[:, j] = [vals[i] for i in r]
            block[:, -1] = rel
            strs[p, :] = block
            att[p] = rows.attempts[r]
            nblock = np.full((p.size, len(numeric)), np.nan)
            for c, arr in rows.numbers.items():
                nblock[:, col_of[c]] = arr[r]
            if numeric:
                nums[p, :] = nblock
            n_success += int(np.count_nonzero(block[:, 1] == "success"))
        _write_grid_columns(f, raw, grid_cells, cells)
        f.attrs.update(
            n_tasks=n_active, n_rows=n_rows, n_success=n_success, n_failed=n_rows - n_success,
            n_missing=n_active - n_rows, n_hidden=n - n_active, n_segments=len(segments), created=time.time(),
            corrupt=json.dumps(corrupt), foreign=json.dumps(win.foreign),
            column_order=json.dumps(_column_order(raw, numeric)),
        )
    return n_success


def _write_grid_columns(f: h5py.File, raw: dict[str, Any], grid_cells: np.ndarray, cells: np.ndarray,
                        block: int = 20_000) -> None:
    """``data_<col>``/``fit_<col>`` per row, written in blocks (text columns hold objects)."""
    n = cells.size
    for prefix, key, j in (("data", "data_grid", 0), ("fit", "fit_grid", 1)):
        for col, values in raw[key].items():
            arr = np.asarray(values)
            text = arr.dtype.kind in "OUS"
            ds = f.create_dataset(f"grid/{prefix}_{col}", shape=(n,), dtype=_STR if text else arr.dtype)
            for a in range(0, n, block):
                vals = arr[grid_cells[cells[a:a + block], j]]
                ds[a:a + vals.size] = np.asarray(vals, dtype=object).astype(str).astype(object) if text else vals


#: diagnostics columns in summary order; a directory of before 0.3 keeps its old names after them
DIAGNOSTIC_ORDER = ("rhat_max", "ess_bulk_min", "ess_tail_min", "n_divergent", "n_max_treedepth",
                    *DIAGNOSTIC_RENAMES)


def _column_order(raw: dict[str, Any], numeric: list[str]) -> list[str]:
    metric_names = list(raw["metric_kinds"])
    metric_cols = [c for m in metric_names for c in numeric if c.split("__", 1)[0] == m]
    diag = [c for c in DIAGNOSTIC_ORDER if c in numeric]
    rest = [c for c in numeric if c not in metric_cols and c not in diag and c not in _BACK]
    grid = [f"data_{c}" for c in raw["data_grid"]] + [f"fit_{c}" for c in raw["fit_grid"]]
    return (_FRONT + metric_cols + diag + [c for c in _BACK if c in numeric or c == "rep_idx"] + grid
            + ["data_idx", "fit_idx", "attempt", "error_type", "error_stage", "error_message", "error_traceback"]
            + rest + ["index", "segment"])


def read_summary(path: str | Path, columns: Iterable[str] | None = None, rows: slice | None = None) -> pd.DataFrame:
    """Load ``summary.h5`` (or some columns / a row slice of it) as a DataFrame."""
    sel = rows if rows is not None else slice(None)
    with h5py.File(path, "r", locking=False) as f:
        order = json.loads(f.attrs["column_order"])
        wanted = order if columns is None else [c for c in order if c in set(columns)]
        str_cols = json.loads(f["strings"].attrs["columns"])
        num_cols = json.loads(f["numbers"].attrs["columns"])
        num_idx = [num_cols.index(c) for c in wanted if c in num_cols]
        num_arr = f["numbers"][sel][:, num_idx] if num_idx else None
        data = {}
        for c in wanted:
            if c in str_cols:  # text columns are read one at a time: they are Python objects
                data[c] = f["strings"].asstr()[sel, str_cols.index(c)]
            elif c in num_cols:
                data[c] = num_arr[:, num_idx.index(num_cols.index(c))]
            elif c in f and isinstance(f[c], h5py.Dataset):
                data[c] = f[c][sel]
            elif f"grid/{c}" in f:
                ds = f[f"grid/{c}"]
                data[c] = ds.asstr()[sel] if ds.dtype.kind == "O" else ds[sel]
    return pd.DataFrame(data)


def summary_is_current(rd: ResultDir) -> bool:
    """True if summary.h5 exists and no segment is newer than it."""
    if not rd.summary.exists():
        return False
    t = rd.summary.stat().st_mtime
    return all(p.stat().st_mtime <= t for p in iter_segment_paths(rd.path))
