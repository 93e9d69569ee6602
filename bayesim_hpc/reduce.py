"""The reducer: merge every valid segment into one summary, one row per task.

It streams: pass 1 reads each segment's row table (one segment in memory at a time) and
picks, for every task, the row that wins — a success over a failure, then the later
attempt, then the later segment in file order — so a task that ran twice (requeue,
orphaned job) appears exactly once, chosen deterministically. Pass 2 writes each
segment's winning rows straight into their sorted positions of ``summary.h5``. Per-cell
performance measures are then computed block by block into ``cells.csv``. Both files are
written under temporary names and renamed, so a reducer killed at any instant leaves the
previous output (or none), never a broken one. Memory: a few arrays of one entry per task
(16 bytes each) plus one segment and one block of cells.

Example:
    >>> out = reduce_results("results/my_study")     # doctest: +SKIP
    >>> out.n_success, out.n_missing                   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import h5py
import numpy as np
import pandas as pd

from .aggregate import cell_measures
from .errors import BayesimError
from .grid import space_from_raw
from .names import DIAGNOSTIC_RENAMES
from .records import TaskState
from .resultdir import ResultDir
from .storage import (STR_COLS, CorruptSegment, ForeignSegment, SegmentReadError, StorageFullError, _write_failed,
                      fsync_path, iter_segment_paths, read_rows, stamp_of_dir, study_stamp, temp_name)

__all__ = ["reduce_results", "ReduceOutcome", "read_summary", "summary_is_current", "select_winners", "Winners"]

_STR = h5py.string_dtype("utf-8")
_FRONT = ["task_id", "status"]
_BACK = ["timing_total", "rep_idx"]


@dataclass
class ReduceOutcome:
    path: Path
    n_tasks: int
    n_success: int
    n_failed: int
    n_missing: int
    n_segments: int
    corrupt: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    foreign: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Winners:
    """For each task, which segment row represents it (``seg_of == -1``: no row)."""

    seg_of: np.ndarray
    row_of: np.ndarray
    segments: list[Path]
    corrupt: list[tuple[str, str]]
    colnames: list[str]
    score: np.ndarray
    tracked: dict[str, np.ndarray]
    foreign: list[tuple[str, str]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    @property
    def state(self) -> np.ndarray:
        """Per task, a :class:`~bayesim_hpc.records.TaskState`: MISSING (no row), SUCCEEDED or
        FAILED (of the winning row)."""
        st = np.where(self.seg_of >= 0, TaskState.FAILED, TaskState.MISSING).astype(np.uint8)
        st[(self.score >> 50) == 1] = TaskState.SUCCEEDED  # the score's top bits: 1 for a success
        return st

    def rows_won(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(task indices, row numbers) that segment ``k`` supplies."""
        wins = np.flatnonzero(self.seg_of == k)
        return wins, self.row_of[wins]


def read_segment_rows(path: Path, columns: Iterable[str] | None, stamp: tuple[str, str], n_tasks: int,
                      retries: int = 2, wait: float = 0.2):
    """:func:`read_rows` with this study's checks, retrying I/O errors ``retries`` times."""
    for k in range(retries + 1):
        try:
            return read_rows(path, columns=columns, stamp=stamp, n_tasks=n_tasks)
        except SegmentReadError:
            if k == retries:
                raise
            time.sleep(wait * (k + 1))
    raise AssertionError("unreachable")


def select_winners(rd: ResultDir, n_tasks: int, columns: Iterable[str] | None = None,
                   track: Iterable[str] = (), *, stamp: tuple[str, str] | None = None,
                   retries: int = 2) -> Winners:
    """Choose one row per task across all valid segments: a success over a failure, then
    the later attempt, then the later segment in file order. Reads one segment at a time.

    ``track``: numeric columns whose winning value per task is kept (NaN where absent).
    Damaged, foreign (another study generation, out-of-range tasks) and unreadable (I/O
    error after ``retries``) segments are skipped and listed in the result;
    a segment of a newer format raises :class:`~bayesim_hpc.storage.NewerFormatError`.
    """
    if stamp is None:
        stamp = stamp_of_dir(rd.path)
    tracked = {c: np.full(n_tasks, np.nan) for c in track}
    score = np.full(n_tasks, -1, dtype=np.int64)
    seg_of = np.full(n_tasks, -1, dtype=np.int32)
    row_of = np.full(n_tasks, -1, dtype=np.int32)
    segments: list[Path] = []
    corrupt: list[tuple[str, str]] = []
    foreign: list[tuple[str, str]] = []
    unreadable: list[tuple[str, str]] = []
    colnames: dict[str, None] = {}
    for path in iter_segment_paths(rd.path):
        try:
            rows = read_segment_rows(path, columns, stamp, n_tasks, retries=retries)
        except CorruptSegment as exc:
            corrupt.append((str(path.relative_to(rd.path)), str(exc)))
            continue
        except ForeignSegment as exc:
            foreign.append((str(path.relative_to(rd.path)), str(exc)))
            continue
        except SegmentReadError as exc:
            unreadable.append((str(path.relative_to(rd.path)), str(exc)))
            continue
        k = len(segments)
        segments.append(path)
        colnames.update(dict.fromkeys(rows.numbers))
        success = np.array([s == "success" for s in rows.strings["status"]], dtype=np.int64)
        s = (success << 50) | (rows.attempts.astype(np.int64) << 30) | k
        better = s > score[rows.index]
        idx = rows.index[better]
        score[idx] = s[better]
        seg_of[idx] = k
        row_of[idx] = np.flatnonzero(better)
        for c, arr in tracked.items():
            arr[idx] = rows.numbers[c][better] if c in rows.numbers else np.nan
    return Winners(seg_of, row_of, segments, corrupt, sorted(colnames), score, tracked, foreign, unreadable)


def reduce_results(result_dir: str | Path, cell_block_rows: int = 5_000) -> ReduceOutcome:
    """Write ``summary.h5`` and ``cells.csv`` from the segments; see the module docstring."""
    t0 = time.perf_counter()
    rd = ResultDir(result_dir)
    frozen = rd.read_frozen()
    raw = frozen.raw
    n = frozen.n_tasks
    space = space_from_raw(raw)
    win = select_winners(rd, n, stamp=study_stamp(raw))
    if win.unreadable:
        seg, why = win.unreadable[0]
        raise BayesimError(
            f"could not read {len(win.unreadable)} segment(s) of {rd.path}, e.g. {why}. A summary now would miss "
            f"their rows; nothing was changed. Retry when the storage answers: bayesim-hpc reduce {rd.path}")
    segments, corrupt = win.segments, win.corrupt
    active = space.active_mask()  # tasks of hidden cells (rows the study dropped) are left out
    n_active = int(np.count_nonzero(active))
    present = np.flatnonzero((win.seg_of >= 0) & active)
    cells, reps = space.cell_and_rep(present)
    # summary order: (data row, fit row, replicate); for a study that never grew, index order
    order = np.lexsort((reps, space.cells[cells, 1], space.cells[cells, 0]))
    present, cells, reps = present[order], cells[order], reps[order]
    pos = np.full(n, -1, dtype=np.int64)
    pos[present] = np.arange(present.size)
    n_rows = int(present.size)
    # --- pass 2: write rows into their sorted positions ------------------------------------
    tmp = temp_name(rd.summary)
    try:
        n_success = _write_summary(tmp, rd, raw, win, n, n_active, space.cells, cells, reps, present, pos, n_rows)
        fsync_path(tmp)
        os.replace(tmp, rd.summary)
    except BaseException as exc:  # no temp file outlives a failed reducer (disk full, I/O error, Ctrl-C)
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, StorageFullError):
            raise _write_failed(exc, rd.path) from exc
        raise
    fsync_path(rd.path)
    _write_cells(rd, raw, cell_block_rows)
    return ReduceOutcome(rd.summary, n_active, n_success, n_rows - n_success, n_active - n_rows, len(segments),
                         corrupt, time.perf_counter() - t0, win.foreign)


def _write_summary(tmp: Path, rd: ResultDir, raw: dict[str, Any], win: Winners, n: int, n_active: int,
                   grid_cells: np.ndarray, cells: np.ndarray, reps: np.ndarray,
                   present: np.ndarray, pos: np.ndarray, n_rows: int) -> int:
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


def _write_cells(rd: ResultDir, raw: dict[str, Any], block_rows: int) -> None:
    kinds = raw["metric_kinds"]
    with h5py.File(rd.summary, "r", locking=False) as f:  # rows are grouped by cell (summary order)
        d_idx, f_idx = f["data_idx"][...], f["fit_idx"][...]
    bounds = np.flatnonzero((np.diff(d_idx) != 0) | (np.diff(f_idx) != 0)) + 1
    starts = np.concatenate([[0], bounds]).astype(int) if d_idx.size else np.array([], dtype=int)
    stops = np.concatenate([bounds, [d_idx.size]]).astype(int) if d_idx.size else np.array([], dtype=int)
    skip = {"task_id", "error_type", "error_stage", "error_message", "error_traceback", "segment", "attempt", "index", "rep_idx"}
    with h5py.File(rd.summary, "r", locking=False) as f:
        wanted = [c for c in json.loads(f.attrs["column_order"]) if c not in skip]
    frames: list[pd.DataFrame] = []  # per-cell measures, one compact frame per block of cells
    i = 0
    while i < len(starts):
        j = i
        while j + 1 < len(starts) and stops[j + 1] - starts[i] <= block_rows:
            j += 1
        block = read_summary(rd.summary, columns=wanted, rows=slice(int(starts[i]), int(stops[j])))
        rows = []
        for a, b in zip(starts[i:j + 1] - starts[i], stops[i:j + 1] - starts[i]):
            cell = block.iloc[a:b]
            key = {c: cell[c].iloc[0] for c in cell.columns if c.startswith(("data_", "fit_"))}
            rows.append({**key, **cell_measures(cell, kinds)})
        frames.append(pd.DataFrame(rows))
        i = j + 1
    tmp = temp_name(rd.cells)
    try:
        with open(tmp, "w") as fh:
            (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()).to_csv(fh, index=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, rd.cells)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, StorageFullError):
            raise _write_failed(exc, rd.path) from exc
        raise
    fsync_path(rd.path)
