"""What safe submission costs on the local Slurm test cluster: plain sbatch vs bayesim's route.

bayesim submits with ``sbatch --hold --comment=bayesim:<token>``, makes the log folders and
releases the job (``scontrol release``); after a transient failure it looks the token up with
``squeue`` before trying again. This prints, per scenario, the seconds until the job is
submitted and released, and the scheduler calls made:

* plain: ``sbatch --wrap true`` (what submitit does, without retries);
* bayesim: the route above, no failure;
* lost answer: a wrapper sbatch that submits and then fails with "Socket timed out";
* 2 refusals: a wrapper that fails twice ("Unable to contact slurm controller") first.

    eval "$(scripts/local-slurm.sh env)"
    PYTHONPATH=. .venv/bin/python benchmarks/bench_sbatch_retry.py [--reps 5]

The retry waits are set to 0.5-1 s here (the default policy starts at 1-2 s).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from bayesim_hpc.executors import slurm_query as sq
from bayesim_hpc.executors import slurm_retry, slurm_sbatch

WRAPPER = """#!/bin/bash
n=$(cat "{dir}/calls" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "{dir}/calls"
if [ "{mode}" = lost ]; then
  {real} "$@" > /dev/null 2>&1 || exit 1
  echo "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation" >&2; exit 1
fi
if [ $n -le 2 ]; then echo "sbatch: error: Unable to contact slurm controller (connect failure)" >&2; exit 1; fi
exec {real} "$@"
"""


def one(mode: str, tmp: Path, name: str) -> tuple[float, int, str]:
    script = tmp / "job.sh"
    script.write_text(f"#!/bin/bash\n#SBATCH --job-name={name}\n#SBATCH --time=1\n#SBATCH --output={tmp}/%j.out\ntrue\n")
    sq.reset_call_counts()
    t0 = time.perf_counter()
    if mode == "plain":
        out = subprocess.run(["sbatch", str(script)], capture_output=True, text=True, check=True).stdout
        calls = 1
    else:
        env_path = os.environ["PATH"]
        if mode in ("lost", "refused"):
            wrap = tmp / f"bin-{uuid.uuid4().hex[:6]}"
            wrap.mkdir()
            (wrap / "sbatch").write_text(WRAPPER.format(dir=wrap, mode=mode, real=shutil.which("sbatch")))
            (wrap / "sbatch").chmod(0o755)
            os.environ["PATH"] = f"{wrap}{os.pathsep}{env_path}"
        try:
            out = slurm_sbatch.submit_script(script, name=name, token=uuid.uuid4().hex[:12])
            slurm_sbatch.release(out.split()[3])
        finally:
            os.environ["PATH"] = env_path
        calls = sq.call_counts().total
    took = time.perf_counter() - t0
    return took, calls, out.split()[3]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    policy = slurm_retry.RetryPolicy(initial_s=1.0, max_delay_s=2.0, rng=random.Random(0))
    rows = []
    jobs: list[str] = []
    with tempfile.TemporaryDirectory() as d, slurm_retry.retry_policy(policy):
        tmp = Path(d)
        for mode in ("plain", "bayesim", "lost", "refused"):
            times, calls = [], []
            for _ in range(args.reps):
                name = f"bench-sbatch-{uuid.uuid4().hex[:8]}"
                t, c, jid = one(mode, tmp, name)
                times.append(t)
                calls.append(c)
                jobs.append(jid)
            rows.append((mode, statistics.median(times), max(times), statistics.median(calls)))
        subprocess.run(["scancel", *jobs], capture_output=True)
    print(f"{'scenario':<10} {'median s':>9} {'max s':>7} {'calls':>6}   ({args.reps} submissions each)")
    for mode, med, mx, c in rows:
        print(f"{mode:<10} {med:>9.3f} {mx:>7.3f} {c:>6.0f}")


if __name__ == "__main__":
    main()
