"""Drive a drill study from a separate process: run | resume | reduce.

    python -m tests.studies.drive run RESULT_DIR [--executor local] [--workers 2] [--delay S]
        [--n-tasks 2000] [--retain minimal] [--stale-after 120] [--shard-size 125] [--slurm-fast]

``--slurm-fast``: the Slurm options of the real-cluster tests (fast polling, small allocations).
"""

from __future__ import annotations

import argparse
import sys

from bayesim_hpc import reduce_results, resume_simulation, run_simulation

from .linear import drill_config

#: Slurm options of the real-cluster tests: fast polling (the default is a query per 10 s), small allocations
SLURM_FAST = dict(poll_min_interval=1.0, settle_s=3.0, tick=0.25, time_min=5, mem=1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["run", "resume", "reduce"])
    ap.add_argument("result_dir")
    ap.add_argument("--executor", default="local")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--n-tasks", type=int, default=2000)
    ap.add_argument("--retain", default="minimal")
    ap.add_argument("--stale-after", type=float, default=120.0)
    ap.add_argument("--shard-size", type=int, default=125)
    ap.add_argument("--slurm-fast", action="store_true")
    args = ap.parse_args()
    opts = dict(SLURM_FAST) if args.slurm_fast else {}
    # a local pool's size, or the Slurm array throttle
    opts.update({"max_running" if args.executor == "slurm" else "workers": args.workers})
    if args.what == "run":
        run_simulation(drill_config(args.result_dir, n_tasks=args.n_tasks, delay=args.delay, retain=args.retain,
                                    shard_size=args.shard_size),
                       args.executor, progress=False, lock_stale_after=args.stale_after, **opts)
    elif args.what == "resume":
        resume_simulation(args.result_dir, args.executor, progress=False,
                          lock_stale_after=args.stale_after, **opts)
    else:
        reduce_results(args.result_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
