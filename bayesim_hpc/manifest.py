"""The manifest: shard states, attempts, job ids and reasons, under a lock.

The manifest is the driver's notebook, not the truth: shard segments are. It is read and
rewritten whole (atomically) under ``manifest.lock`` (a :class:`~bayesim_hpc.locking.DirLock`,
safe on NFS); workers never take that lock while fitting. :func:`scan_progress` rebuilds
what is done from the segments alone, so a lost or stale manifest costs nothing but job ids.

Example:
    >>> m = Manifest(ResultDir(path))                         # doctest: +SKIP
    >>> m.update(lambda d: set_shard(d, 3, state="RUNNING"))   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .locking import DirLock
from .records import TaskState
from .resultdir import ResultDir
from .storage import (CorruptSegment, ForeignSegment, SegmentReadError, atomic_write_text, iter_segment_paths,
                      read_segment_rows, stamp_of_dir)

__all__ = ["Manifest", "set_shard", "Progress", "scan_progress", "DONE_STATES"]

#: States a shard reaches; Slurm-like names so one vocabulary serves every executor.
DONE_STATES = {"COMPLETED"}


def _empty() -> dict[str, Any]:
    return {"shards": {}, "runs": [], "submissions": []}


class Manifest:
    """The manifest of a result directory.

    ``guard``: the driver's :class:`DirLock`; once it is lost, :meth:`update` refuses to
    write (raises :class:`~bayesim_hpc.errors.LockLostError`).
    """

    def __init__(self, rd: ResultDir, lock_timeout: float = 60.0, guard: DirLock | None = None):
        self.rd = rd
        self.lock_timeout = lock_timeout
        self.guard = guard

    def read(self, repair: bool = False) -> dict[str, Any]:
        """The manifest. A damaged one (truncated, not JSON) reads as empty; with ``repair``
        (what :meth:`update` does before it writes) it is first moved aside, see :meth:`_damaged`.
        Readers such as ``status`` never change the directory."""
        try:
            text = self.rd.manifest.read_text()
        except FileNotFoundError:
            return _empty()
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:  # JSONDecodeError is a ValueError
            if repair:
                self._damaged(exc)
            return _empty()
        for key, default in _empty().items():
            data.setdefault(key, default)
        return data

    def _damaged(self, exc: Exception) -> None:
        """Move a damaged manifest aside (``manifest.json.damaged-<time>-<random>``).

        The segments are the truth: what is done is recomputed from them; only job ids and
        the run history of the damaged file are lost (and kept in the moved-aside copy)."""
        aside = self.rd.path / f"manifest.json.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        try:
            os.replace(self.rd.manifest, aside)
        except FileNotFoundError:
            return
        print(f"bayesim-hpc: {self.rd.manifest} was damaged ({exc}); moved aside to {aside.name} and rebuilt "
              "(progress comes from the shard segments)", file=sys.stderr, flush=True)

    def update(self, fn: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
        """Read, apply ``fn`` (which mutates the dict), write back atomically, under the lock."""
        if self.guard is not None:
            self.guard.check()
        # held for milliseconds: a holder on another host that does not let go for 20 s is gone
        lock = DirLock(self.rd.manifest_lock, purpose="manifest", heartbeat=False, stale_after=20)
        lock.acquire(timeout=self.lock_timeout)
        try:
            data = self.read(repair=True)
            fn(data)
            data["updated"] = time.time()
            atomic_write_text(self.rd.manifest, json.dumps(data, indent=1))
            return data
        finally:
            lock.release()


def set_shard(data: dict[str, Any], shard_id: int, **fields: Any) -> None:
    entry = data.setdefault("shards", {}).setdefault(str(shard_id), {"state": "PENDING", "attempts": 0, "job_ids": [], "reason": ""})
    for k, v in fields.items():
        if k == "job_id":
            if v not in entry["job_ids"]:
                entry["job_ids"].append(v)
        else:
            entry[k] = v
    entry["updated"] = time.time()


@dataclass
class Progress:
    """What the segments say: per task 0 = missing, 1 = success, 2 = failed."""

    state: np.ndarray
    corrupt: list[tuple[Path, str]] = field(default_factory=list)
    n_segments: int = 0
    foreign: list[tuple[Path, str]] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def problems(self) -> list[tuple[Path, str]]:
        """Every segment that was skipped, with why (damaged, foreign, unreadable)."""
        return self.corrupt + self.foreign + self.unreadable

    @property
    def n_success(self) -> int:
        return int(np.count_nonzero(self.state == TaskState.SUCCEEDED))

    @property
    def n_failed(self) -> int:
        return int(np.count_nonzero(self.state == TaskState.FAILED))

    @property
    def n_missing(self) -> int:
        return int(np.count_nonzero(self.state == TaskState.MISSING))


def scan_progress(rd: ResultDir, n_tasks: int, shard_id: int | None = None,
                  stamp: tuple[str, str] | None = None) -> Progress:
    """Read every segment's row table (one at a time) into a per-task state array.

    Segments that cannot be used (damaged, of another study generation, unreadable) are
    listed and their tasks count as missing: running them again is safe, because the
    reducer keeps exactly one row per task.
    """
    if stamp is None:
        stamp = stamp_of_dir(rd.path)
    state = np.full(n_tasks, TaskState.MISSING, dtype=np.uint8)
    prog = Progress(state)
    for path in iter_segment_paths(rd.path, shard_id):
        try:
            rows = read_segment_rows(path, (), stamp, n_tasks)
        except CorruptSegment as exc:
            prog.corrupt.append((path, str(exc)))
            continue
        except ForeignSegment as exc:
            prog.foreign.append((path, str(exc)))
            continue
        except SegmentReadError as exc:
            prog.unreadable.append((path, str(exc)))
            continue
        prog.n_segments += 1
        ok = np.array([s == "success" for s in rows.strings["status"]], dtype=bool)
        state[rows.index[ok]] = TaskState.SUCCEEDED
        failed = rows.index[~ok]
        state[failed[state[failed] == TaskState.MISSING]] = TaskState.FAILED
    return prog
