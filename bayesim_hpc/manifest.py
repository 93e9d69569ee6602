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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .locking import DirLock
from .resultdir import ResultDir
from .storage import CorruptSegment, atomic_write_text, iter_segment_paths, read_rows

__all__ = ["Manifest", "set_shard", "Progress", "scan_progress", "DONE_STATES"]

#: States a shard reaches; Slurm-like names so one vocabulary serves every executor.
DONE_STATES = {"COMPLETED"}


class Manifest:
    def __init__(self, rd: ResultDir, lock_timeout: float = 60.0):
        self.rd = rd
        self.lock_timeout = lock_timeout

    def read(self) -> dict[str, Any]:
        try:
            return json.loads(self.rd.manifest.read_text())
        except FileNotFoundError:
            return {"shards": {}, "runs": [], "submissions": []}

    def update(self, fn: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
        """Read, apply ``fn`` (which mutates the dict), write back atomically, under the lock."""
        lock = DirLock(self.rd.manifest_lock, purpose="manifest", heartbeat=False, stale_after=60)
        lock.acquire(timeout=self.lock_timeout)
        try:
            data = self.read()
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

    @property
    def n_success(self) -> int:
        return int(np.count_nonzero(self.state == 1))

    @property
    def n_failed(self) -> int:
        return int(np.count_nonzero(self.state == 2))

    @property
    def n_missing(self) -> int:
        return int(np.count_nonzero(self.state == 0))


def scan_progress(rd: ResultDir, n_tasks: int, shard_id: int | None = None) -> Progress:
    """Read every segment's row table (one at a time) into a per-task state array."""
    state = np.zeros(n_tasks, dtype=np.uint8)
    prog = Progress(state)
    for path in iter_segment_paths(rd.path, shard_id):
        try:
            rows = read_rows(path, columns=())
        except CorruptSegment as exc:
            prog.corrupt.append((path, str(exc)))
            continue
        prog.n_segments += 1
        ok = np.array([s == "success" for s in rows.strings["status"]], dtype=bool)
        state[rows.index[ok]] = 1
        failed = rows.index[~ok]
        state[failed[state[failed] == 0]] = 2
    return prog
