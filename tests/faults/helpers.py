"""Shared helpers of the fault-injection suite (docs/reliability.md has the table)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import psutil

ROOT = Path(__file__).resolve().parents[2]
QUIET = dict(progress=False, emit=lambda s: None)


def metric_frame(s: pd.DataFrame) -> pd.DataFrame:
    """The columns that must be bit-identical between runs, sorted by task."""
    cols = sorted(c for c in s.columns if "__" in c and not c.startswith("timing")) + ["task_id", "status"]
    return s[cols].sort_values("task_id").reset_index(drop=True)


def drive(what: str, rdir: Path, *args: str, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    """``python -m tests.studies.drive WHAT RDIR ...`` in its own process."""
    return subprocess.Popen([sys.executable, "-m", "tests.studies.drive", what, str(rdir), *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=stderr, text=True)


def workers_of(rdir: Path) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "bayesim_hpc.worker" in cmd and str(rdir) in cmd:
            out.append(p)
    return out


def wait_for(cond: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def n_segments(rdir: Path) -> int:
    return len(list((rdir / "shards").glob("s*/*.h5"))) if (rdir / "shards").exists() else 0
