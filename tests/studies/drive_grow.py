"""Drive a growing study from a separate process (for kill -9 drills): base | extend | adaptive.

    python -m tests.studies.drive_grow extend RESULT_DIR [--workers 2]
"""

from __future__ import annotations

import argparse
import sys

from bayesim_hpc import run_adaptive, run_simulation

from .linear import drill_config

TARGET = {"bias__slope": 0.02}


def base_config(rdir, **kw):
    """400 tasks: 4 data rows x 2 fits x 50 replicates."""
    return drill_config(rdir, n_tasks=400, delay=0.002, shard_size=40, **kw)


def grown_config(rdir):
    """The base study with a new sample size (2 new data rows) and 80 replicates: 6 x 2 x 80 = 960 tasks."""
    return base_config(rdir, data_grid={"n": [50, 100, 200], "sigma": [0.5, 1.0]}, n_replicates=80)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["base", "extend", "adaptive"])
    ap.add_argument("result_dir")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    opts = dict(workers=args.workers, progress=False)
    if args.what == "base":
        run_simulation(base_config(args.result_dir), "local", **opts)
    elif args.what == "extend":
        run_simulation(grown_config(args.result_dir), "local", **opts)
    else:
        run_adaptive(base_config(args.result_dir, n_replicates=10), "local", target_mcse=TARGET, max_replicates=120,
                     **opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
