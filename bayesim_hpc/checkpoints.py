"""Checkpoints (segments) of a result directory: list them, clean what is superseded, sizes.

In bayesim-hpc the checkpoints are the shard segments, and they are the results: cleaning
never deletes a segment holding the only copy of a task's row. What can go is what is
*superseded* (every row of the segment lost the reducer's de-duplication to a row in a
newer segment), temporary files whose writer is dead, and old ``shards.discarded-*``
folders beyond the newest ``keep_n``. Segments with *proven* damage (checksum or
structure) and segments of another study generation are moved to ``quarantine/``, never
deleted. A segment that cannot be read for an I/O error is kept and reported; one of a
newer format stops ``clean`` with an error. ``clean`` refuses while a driver holds the
result directory, and holds the driver lock itself while it works.

Example:
    >>> list_checkpoints("results/my_study")[:2]            # doctest: +SKIP
    ['shards/s00000/a001-00000-3f2a9c1e.h5', 'shards/s00000/a001-00001-77b0e1d2.h5']
    >>> clean_old_checkpoints("results/my_study", keep_n=3)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from .errors import DriverLockedError
from .locking import DirLock
from .reduce import select_winners
from .resultdir import ResultDir
from .storage import iter_segment_paths, study_stamp, temp_writer

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
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (path, why): looked at, left alone


def _writer_alive(pid: int, host: str, since: float) -> bool | None:
    """Whether the writer of a temp file (pid@host, file last written at ``since``) lives;
    None when it cannot be known (another host)."""
    me = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())
    if host != me:
        return None
    try:
        started = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True
    return started <= since + 1.0  # a process started after the file's last write is not its writer


def clean_old_checkpoints(path: str | Path, keep_n: int = 3, tmp_max_age: float = 7 * 86400.0) -> CleanReport:
    """Remove superseded segments, dead writers' temp files and discarded folders beyond
    ``keep_n``; quarantine damaged and foreign segments. See the module docstring.

    ``tmp_max_age``: a temp file whose writer cannot be checked (another host, or an old
    name without pid@host) is removed only when it was last written this many seconds ago.
    Raises :class:`~bayesim_hpc.errors.DriverLockedError` while a driver runs.
    """
    if keep_n < 0:
        raise ValueError("keep_n must be >= 0")
    rd = ResultDir(path)
    if not rd.exists():
        raise FileNotFoundError(f"{path} is not a bayesim-hpc result directory (no study.json)")
    lock = DirLock(rd.driver_lock, purpose="clean", heartbeat=False)
    try:
        lock.acquire()
    except DriverLockedError as exc:
        raise DriverLockedError(f"clean refuses to run while a driver works: {exc}") from None
    try:
        return _clean(rd, keep_n, tmp_max_age)
    finally:
        lock.release()


def _clean(rd: ResultDir, keep_n: int, tmp_max_age: float) -> CleanReport:
    report = CleanReport()

    def rel(p: Path) -> str:
        return str(p.relative_to(rd.path))

    def drop(p: Path) -> None:
        try:
            size = sum(f.stat().st_size for f in p.rglob("*")) if p.is_dir() else p.stat().st_size
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        except FileNotFoundError:  # gone meanwhile (its writer renamed it): nothing to do
            return
        report.removed.append(rel(p))
        report.bytes_freed += size

    def quarantine(p: Path, why: str) -> None:
        target = rd.path / "quarantine" / p.relative_to(rd.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(p, target)
        target.with_name(target.name + ".why.txt").write_text(why + "\n")
        report.quarantined.append((rel(p), why))

    leftovers = list(rd.shards_dir.glob("*/.*.tmp")) if rd.shards_dir.exists() else []
    leftovers += list(rd.path.glob(".*.tmp"))
    now = time.time()
    for tmp in leftovers:
        try:
            mtime = tmp.stat().st_mtime
        except FileNotFoundError:
            continue
        writer = temp_writer(tmp)
        alive = _writer_alive(*writer, since=mtime) if writer else None
        if alive is False or (alive is None and now - mtime > tmp_max_age):
            drop(tmp)
        elif alive:
            report.kept.append((rel(tmp), f"its writer (pid {writer[0]}) is alive"))
        else:
            report.kept.append((rel(tmp), "its writer cannot be checked from this host; removed once "
                                f"{tmp_max_age / 86400:.0f} days old"))
    raw = rd.read_frozen().raw
    win = select_winners(rd, int(raw["n_tasks"]), columns=(), stamp=study_stamp(raw))
    for seg, why in win.corrupt + win.foreign:
        quarantine(rd.path / seg, why)
    for seg, why in win.unreadable:
        report.kept.append((seg, f"unreadable now, kept: {why}"))
    for k, p in enumerate(win.segments):
        if win.rows_won(k)[0].size == 0:
            drop(p)
    discarded = sorted(rd.path.glob("shards.discarded-*"), key=lambda d: d.name)
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
