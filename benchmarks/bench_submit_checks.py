"""What the checks before a Slurm submission cost: reading the partitions and the environment check.

Times (median of ``--repeat`` runs, wall clock):

* ``read_partitions``: ``scontrol -a show partition -o`` + ``sinfo -N`` (the two calls made once per
  run) and the choice for one request;
* ``check_environment``: the workers' interpreter started once (here: this interpreter through
  ``env``, as a profile's ``python`` would be) and the versions compared.

    eval "$(scripts/local-slurm.sh start)"
    .venv/bin/python benchmarks/bench_submit_checks.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bayesim_hpc.executors import slurm_query as sq  # noqa: E402
from bayesim_hpc.executors.slurm_container import check_environment  # noqa: E402
from bayesim_hpc.executors.slurm_partitions import choose_partition, read_partitions  # noqa: E402
from bayesim_hpc.executors.slurm_profile import Resources  # noqa: E402


def timed(fn, repeat: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    sq.reset_call_counts()

    def partitions():
        parts = read_partitions()
        return parts, choose_partition(parts, Resources(time_min=20, mem_mb=2048)) if parts else None

    t_part, (parts, choice) = timed(partitions, args.repeat)
    calls = sq.call_counts().config / args.repeat
    cmd = f"env BAYESIM_BENCH=1 {shlex.quote(sys.executable)}"
    t_env, parity = timed(lambda: check_environment(cmd), args.repeat)
    print(f"{'check':<22} {'median s':>9}  result")
    print(f"{'read_partitions+choice':<22} {t_part:>9.3f}  {len(parts or [])} partitions, {calls:.0f} scheduler calls, "
          f"20 min/2GB -> {choice.partition if choice else '-'}")
    print(f"{'check_environment':<22} {t_env:>9.3f}  {'match' if parity.ok else 'differs'}")


if __name__ == "__main__":
    main()
