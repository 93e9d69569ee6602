"""Drive a drill study from a separate process: run | resume | reduce.

    python -m tests.studies.drive run RESULT_DIR [--executor local] [--workers 2] [--delay S]
        [--n-tasks 2000] [--retain minimal] [--stale-after 120]
"""

from __future__ import annotations

import argparse
import sys

from bayesim_hpc import reduce_results, resume_simulation, run_simulation

from .linear import drill_config


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
    args = ap.parse_args()
    if args.what == "run":
        run_simulation(drill_config(args.result_dir, n_tasks=args.n_tasks, delay=args.delay, retain=args.retain),
                       args.executor, workers=args.workers, progress=False, lock_stale_after=args.stale_after)
    elif args.what == "resume":
        resume_simulation(args.result_dir, args.executor, workers=args.workers, progress=False,
                          lock_stale_after=args.stale_after)
    else:
        reduce_results(args.result_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
