"""Checkpoints (segments) of a result directory: list them, clean what is superseded, sizes.

In bayesim-hpc the checkpoints are the shard segments, and they are the results: cleaning
never deletes a segment holding the only copy of a task's row. What can go is what is
*superseded* (every row of the segment lost the reducer's de-duplication to a row in a
newer segment), damaged segments, temporary files of killed workers and reducers, and old
``shards.discarded-*`` folders beyond the newest ``keep_n``.

Example:
    >>> list_checkpoints("results/my_study")[:2]            # doctest: +SKIP
    ['shards/s00000/a001-00000-3f2a9c1e.h5', 'shards/s00000/a001-00001-77b0e1d2.h5']
    >>> clean_old_checkpoints("results/my_study", keep_n=3)  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .reduce import select_winners
from .resultdir import ResultDir
from .storage import iter_segment_paths

__all__ = ["list_checkpoints", "clean_old_checkpoints", "estimate_size", "CleanReport"]


def list_checkpoints(path: str | Path) -> list[str]:
    """Segment ids (paths relative to the result directory), oldest first."""
    rd = ResultDir(path)
    segs = list(iter_segment_paths(rd.path))
    segs.sort(key=lambda p: (p.stat().st_mtime, str(p)))
    return [str(p.relative_to(rd.path)) for p in segs]


@dataclass
class CleanReport:
    removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0


def clean_old_checkpoints(path: str | Path, keep_n: int = 3) -> CleanReport:
    """Remove superseded and damaged segments, temp files, and discarded folders beyond ``keep_n``."""
    if keep_n < 0:
        raise ValueError("keep_n must be >= 0")
    rd = ResultDir(path)
    report = CleanReport()

    def drop(p: Path) -> None:
        size = sum(f.stat().st_size for f in p.rglob("*")) if p.is_dir() else p.stat().st_size
        shutil.rmtree(p) if p.is_dir() else p.unlink()
        report.removed.append(str(p.relative_to(rd.path)))
        report.bytes_freed += size

    leftovers = list(rd.shards_dir.glob("*/.*.tmp")) if rd.shards_dir.exists() else []
    leftovers += list(rd.path.glob(".summary.*.tmp")) + list(rd.path.glob(".cells.*.tmp"))
    for tmp in leftovers:  # files of writers killed before their rename
        drop(tmp)
    win = select_winners(rd, rd.read_frozen().n_tasks, columns=())
    for seg, _ in win.corrupt:
        drop(rd.path / seg)
    for k, p in enumerate(win.segments):
        if win.rows_won(k)[0].size == 0:
            drop(p)
    discarded = sorted(rd.path.glob("shards.discarded-*"))
    for d in discarded[: max(0, len(discarded) - keep_n)]:
        drop(d)
    return report


def estimate_size(obj: Any, _seen: set[int] | None = None) -> int:
    """Approximate bytes held by an object and what it references (arrays by ``nbytes``)."""
    seen = _seen if _seen is not None else set()
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes) + sys.getsizeof(obj) - (obj.nbytes if obj.flags.owndata else 0)
    if hasattr(obj, "memory_usage") and hasattr(obj, "columns"):
        return int(obj.memory_usage(deep=True).sum())
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(estimate_size(k, seen) + estimate_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        size += sum(estimate_size(v, seen) for v in obj)
    elif hasattr(obj, "__dict__"):
        size += estimate_size(vars(obj), seen)
    return int(size)
