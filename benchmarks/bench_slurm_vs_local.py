"""A 1,000-task MockFitter study on the local Slurm test cluster vs the local process pool.

Same machine, same study (4 data rows x 2 fits x 125 replicates, retain "minimal", 10 shards
of 100 tasks). Reports wall time from ``run_simulation`` call to reduced summary, and for the
Slurm runs the scheduler calls counted by ``slurm_query`` (sbatch, sacct/squeue queries,
scontrol show config). The Slurm run is timed twice: with the default polling (at most one
scheduler query per 10 s in steady state) and with 1 s polling.

    eval "$(scripts/local-slurm.sh start)"
    PYTHONPATH=. .venv/bin/python benchmarks/bench_slurm_vs_local.py [--delay 0.0] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bayesim_hpc import MockFitter, run_simulation  # noqa: E402
from bayesim_hpc.executors import slurm_query as sq  # noqa: E402
from tests.studies.linear import make_config  # noqa: E402


def study(path: Path, delay: float):
    return make_config(result_path=path, data_grid={"n": [50, 100], "sigma": [0.5, 1.0]},
                       fit_grid={"model": ["a", "b"]}, n_replicates=125, retain="minimal", shard_size=100,
                       tasks_per_segment=25, fitter=MockFitter(delay=delay))


def timed(path: Path, delay: float, executor: str, **opts) -> tuple[float, object]:
    sq.reset_call_counts()
    t0 = time.perf_counter()
    res = run_simulation(study(path, delay), executor, progress=False, emit=lambda s: None, **opts)
    wall = time.perf_counter() - t0
    assert res.complete and len(res.summary) == 1000, "the study did not complete"
    return wall, sq.call_counts()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delay", type=float, default=0.0, help="MockFitter seconds per fit (default 0)")
    ap.add_argument("--workers", type=int, default=2, help="local pool size (default 2)")
    ap.add_argument("--throttle", type=int, default=8, help="Slurm array throttle %%N (default 8)")
    args = ap.parse_args()
    if not os.environ.get("SLURM_CONF"):
        sys.exit('SLURM_CONF is not set: eval "$(scripts/local-slurm.sh start)" first')
    tmp = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    rows = []
    try:
        wall, _ = timed(tmp / "local", args.delay, "local", workers=args.workers)
        rows.append((f"local pool ({args.workers} workers)", wall, None))
        for poll in (10.0, 1.0):
            wall, counts = timed(tmp / f"slurm-{poll:g}", args.delay, "slurm", max_running=args.throttle, time_min=10, mem=1,
                                 poll_min_interval=poll)
            rows.append((f"slurm (%{args.throttle}, poll {poll:g} s)", wall, counts))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n1,000 MockFitter tasks (delay {args.delay} s/fit), 10 shards of 100; "
          f"{os.cpu_count()} CPU cores, Python {platform.python_version()}")
    print(f"{'executor':<28} {'wall s':>8} {'sbatch':>7} {'queries':>8} {'config':>7}")
    for label, wall, c in rows:
        if c is None:
            print(f"{label:<28} {wall:>8.1f} {'-':>7} {'-':>8} {'-':>7}")
        else:
            print(f"{label:<28} {wall:>8.1f} {c.submit:>7} {c.query:>8} {c.config:>7}")
    print("queries = sacct/squeue calls (start-up adoption check + watching); config = scontrol show config")


if __name__ == "__main__":
    main()
