"""``bayesim-hpc efficiency`` on growing studies: time and peak memory of the figures.

One Slurm element per shard is recorded in the manifest and a sacct answer (an allocation row
and a batch-step row per element) is faked, so no cluster is needed; the study itself is run
inline with ``MockFitter``. The segments are read one at a time, so the peak memory grows with
the number of cells and elements, not with the tasks. ``status --no-live`` on the same
directory is timed for comparison (it reads every segment too).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_efficiency.py [--reps 250 2500]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
import tracemalloc
from pathlib import Path

from bayesim_hpc import run_simulation
from bayesim_hpc.efficiency_study import study_efficiency
from bayesim_hpc.manifest import Manifest
from bayesim_hpc.resultdir import ResultDir
from bayesim_hpc.status import study_status
from tests.studies.linear import make_config


def _fake_sacct(n: int) -> str:
    rows = []
    for i in range(n):
        rows.append(f"7000_{i}|COMPLETED|2026-11-30T09:03:08|2026-11-30T09:03:18|2026-11-30T09:13:11|{600 + i % 60}|"
                    f"05:01.079|{600 + i % 60}|1|2G||n1")
        rows.append(f"7000_{i}.batch|COMPLETED|2026-11-30T09:03:18|2026-11-30T09:03:18|2026-11-30T09:13:11|600|"
                    f"05:00.012|600|1||{900000 + i}K|n1")
    return "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, nargs="+", default=[250, 2500], help="replicates per cell (4 cells)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-eff-"))
    print("| tasks | segments = elements | efficiency s | peak MB (tracemalloc) | status --no-live s |")
    print("|---|---|---|---|---|")
    try:
        for reps in args.reps:
            path = base / f"r{reps}"
            run_simulation(make_config(result_path=path, data_grid={"n": [50, 100], "sigma": [1.0, 2.0]},
                                       n_replicates=reps, shard_size=10, retain="minimal"), "inline", progress=False,
                           emit=lambda s: None)
            n = len(ResultDir(path).read_frozen().shards)
            sub = {"executor": "slurm", "job_id": "7000", "shards": list(range(n)),
                   "elements_shards": [[s] for s in range(n)], "attempts": [1] * n, "resources": "60min/2GB/1cpu",
                   "elements": [f"7000_{i}" for i in range(n)], "time": 1.0,
                   "resources_raw": {"time_min": 60, "mem_mb": 2048, "cpus_per_task": 1}}
            Manifest(ResultDir(path)).update(lambda d: d["submissions"].append(sub))
            text = _fake_sacct(n)
            tracemalloc.start()
            t0 = time.perf_counter()
            eff = study_efficiency(path, run=lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, text, ""))
            dt = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1] / 1e6
            tracemalloc.stop()
            t0 = time.perf_counter()
            study_status(path, live=False)
            ds = time.perf_counter() - t0
            assert eff.elements == n and sum(c.rows for c in eff.cells) == 4 * reps
            print(f"| {4 * reps:,} | {n:,} | {dt:.2f} | {peak:.1f} | {ds:.2f} |")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
