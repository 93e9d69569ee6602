"""What every executor gets and returns, and the progress line the driver shows.

An executor runs a list of shards of a prepared result directory and records shard
states in the manifest. It never decides *what* to run (the driver computes the missing
shards from the segments) and never writes results (workers do).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ..config import Study
from ..manifest import Manifest, set_shard
from ..resultdir import ResultDir
from ..storage import shard_dir

__all__ = ["RunContext", "RunOutcome", "Executor", "ProgressLine", "default_shard_size", "format_duration"]


def format_duration(seconds: float) -> str:
    """A duration as ``H:MM:SS``, with days when longer (never wrapping at 24 h).

    >>> format_duration(3725), format_duration(86400 + 53904)
    ('1:02:05', '1 day 14:58:24')
    """
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return "?"
    total = int(round(max(0.0, seconds)))
    days, rest = divmod(total, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    clock = f"{h}:{m:02d}:{s:02d}"
    return f"{days} day{'s' if days != 1 else ''} {clock}" if days else clock


def default_shard_size(n_tasks: int, parallelism: int) -> int:
    """About four shards per parallel slot (load balance), between 10 and 2,000 tasks each."""
    per = -(-n_tasks // max(1, 4 * parallelism))
    return max(1, min(n_tasks, max(10, min(2000, per))))


class ProgressLine:
    """A one-line progress report on stderr: redrawn on a terminal, a line every 30 s otherwise."""

    def __init__(self, total: int, done0: int, failed0: int, enabled: bool = True, stream=None):
        self.total, self.done0, self.failed0 = total, done0, failed0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.monotonic()
        self.last = 0.0
        self.done, self.failed = done0, failed0

    def update(self, done: int, failed: int, force: bool = False) -> None:
        self.done, self.failed = done, failed
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < (0.5 if self.tty else 30.0):
            return
        self.last = now
        new = done - self.done0
        rate = new / max(1e-9, now - self.t0)
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        width = 30
        filled = int(width * done / max(1, self.total))
        bar = "#" * filled + "-" * (width - filled)
        eta_s = format_duration(eta)
        text = f"[{bar}] {done}/{self.total} tasks, {failed} failed, {rate:.1f}/s, ETA {eta_s}"
        if self.tty:
            self.stream.write("\r" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.update(self.done, self.failed, force=True)
            if self.tty:
                self.stream.write("\n")


@dataclass
class RunContext:
    rd: ResultDir
    study: Study
    manifest: Manifest
    shard_ids: list[int]
    retry_failed: bool
    emit: Callable[[str], None]
    progress: ProgressLine
    run_id: str
    max_attempts: int = 3
    failed_before: int = 0

    def next_attempt(self, shard_id: int) -> int:
        entry = self.manifest.read().get("shards", {}).get(str(shard_id), {})
        return int(entry.get("attempts", 0)) + 1

    def mark(self, shard_id: int, **fields) -> None:
        self.manifest.update(lambda d: set_shard(d, shard_id, **fields))

    def mark_many(self, changes: dict[int, dict]) -> None:
        def apply(d):
            for sid, f in changes.items():
                set_shard(d, sid, **f)
        if changes:
            self.manifest.update(apply)

    def shard_progress(self, shard_id: int) -> dict:
        try:
            return json.loads((shard_dir(self.rd.path, shard_id) / "progress.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}


@dataclass
class RunOutcome:
    """How an executor's run ended: shards completed, shards that did not finish and why."""

    completed: list[int] = field(default_factory=list)
    unfinished: dict[int, str] = field(default_factory=dict)
    budget_exceeded: bool = False
    detached: bool = False
    dry_run: bool = False
    storage_error: str | None = None  # a worker could not write its results (disk full): why


class Executor(Protocol):
    name: str
    parallelism: int

    def run(self, ctx: RunContext) -> RunOutcome: ...
