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
from .records import TaskState
from .resultdir import ResultDir
from .storage import (CorruptSegment, ForeignSegment, SegmentReadError, StorageFullError, _write_failed, fsync_path,
                      iter_segment_paths, read_segment_rows, stamp_of_dir, study_stamp, temp_name)
from .summary_file import read_summary, summary_is_current, write_summary

__all__ = ["reduce_results", "ReduceOutcome", "read_summary", "summary_is_current", "select_winners", "Winners"]


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
        n_success = write_summary(tmp, rd, raw, win, n, n_active, space.cells, cells, reps, present, pos, n_rows)
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
