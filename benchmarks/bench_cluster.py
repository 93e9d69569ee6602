"""Time-aware planning on the local Slurm test cluster vs the local process pool, and how the plan scales.

Part 1 (needs the cluster): a PyMC robust-regression study with two cells of different cost
(n=40 and n=1000, 2 chains x 500 draws), run

* with the local process pool (``--workers`` = the real cores),
* on Slurm with the default time-aware plan (``plan="time"``: a pilot, then elements sized to
  ``min(target, work / slots)``),
* on Slurm with one shard per element (``plan="shards"``, the old default: 10-task shards).

Restart the cluster with the real cores first, so Slurm runs as many elements at once as the pool:

    LOCAL_SLURM_NODES=1 LOCAL_SLURM_CPUS=2 scripts/local-slurm.sh restart
    eval "$(scripts/local-slurm.sh env)"
    PYTHONPATH=. .venv/bin/python benchmarks/bench_cluster.py [--reps 150]

It reports wall time, and for Slurm runs the elements' CPU-seconds from sacct (``TotalCPU``)
and elapsed seconds against the useful fit time (the sum of the tasks' ``timing_total``):
start-up share = 1 - fit time / element elapsed time.

Part 2 (no cluster): planning time and driver RSS for 1,000,000 tasks (``--scale-only``).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def generate(data_spec, rng, task_ctx):
    from bayesim_hpc import SimData

    n = int(data_spec["n"])
    x = rng.normal(size=n)
    y = 1.0 + 2.0 * x + rng.standard_t(4, size=n)
    return SimData(train={"y": y, "x": x}, response="y", true_params={"intercept": 1.0, "slope": 2.0})


def build_model(data, fit_spec):
    import pymc as pm

    with pm.Model() as model:
        x = pm.Data("x", data.column("x"))
        y = pm.Data("y_obs", data.column("y"))
        a = pm.Normal("intercept", 0, 10)
        b = pm.Normal("slope", 0, 10)
        s = pm.HalfNormal("sigma", 5)
        nu = pm.Gamma("nu", 2, 0.1)
        pm.StudentT("y", nu=nu, mu=a + b * x, sigma=s, observed=y, shape=x.shape)
    return model


def model_data(data, fit_spec):
    return {"x": data.column("x"), "y_obs": data.column("y")}


def study(path: Path, reps: int):
    from bayesim_hpc import PyMCFitter, bias_metric, coverage_metric, simulation_config

    return simulation_config(
        data_grid={"n": [40, 1000]}, fit_grid={"model": ["robust"]}, data_generator=generate,
        fitter=PyMCFitter(build_model, model_data=model_data, draws=500, tune=500, chains=2),
        metrics=[bias_metric(), coverage_metric(0.9)], n_replicates=reps, seed=7, retain="minimal",
        result_path=path, shard_size=10)


def sacct_seconds(name: str) -> tuple[float, float, int]:
    """(CPU seconds, elapsed seconds, elements) of a study's jobs from sacct (polled: it lags)."""
    for _ in range(20):
        out = subprocess.run(["sacct", "--name", name, "-P", "-n", "-S", "now-1days", "--format",
                              "JobID,State,ElapsedRaw,TotalCPU"], capture_output=True, text=True).stdout
        every = [r.split("|") for r in out.splitlines() if r.strip()]
        rows = [r for r in every if "." not in r[0]]  # the elements
        steps = [r for r in every if "." in r[0]]  # their steps hold the CPU time
        if rows and all(r[1] in ("COMPLETED",) for r in rows):
            cpu = 0.0
            for r in steps:
                t = r[3]
                parts = t.split(":")
                try:
                    secs = float(parts[-1]) + 60 * float(parts[-2]) + (3600 * float(parts[-3]) if len(parts) > 2 else 0)
                except ValueError:
                    secs = 0.0
                cpu += secs
            return cpu, float(sum(int(r[2]) for r in rows)), len(rows)
        time.sleep(2)
    return float("nan"), float("nan"), 0


def run_cluster(args) -> None:
    from bayesim_hpc import run_simulation
    from bayesim_hpc.executors.slurm import job_name
    from bayesim_hpc.resultdir import ResultDir

    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    rows = []
    try:
        t0 = time.perf_counter()
        res = run_simulation(study(tmp / "local", args.reps), "local", workers=args.cores, progress=False,
                             emit=lambda s: None)
        local_wall = time.perf_counter() - t0
        fit_s = float(res.summary["timing_total"].sum())
        rows.append(("local pool", local_wall, None, None, None, fit_s))
        print(f"local pool: {local_wall:.1f} s, fit time {fit_s:.0f} s", flush=True)
        for plan in ("time", "shards") if args.with_shards else ("time",):
            path = tmp / f"slurm-{plan}"
            lines: list[str] = []
            t0 = time.perf_counter()
            res = run_simulation(study(path, args.reps), "slurm", plan=plan, max_running=32, time_min=60, mem=2,
                                 poll_min_interval=2.0, tick=0.5, progress=False, emit=lines.append)
            wall = time.perf_counter() - t0
            assert res.complete, "the study did not complete"
            cpu, elapsed, n_el = sacct_seconds(job_name(ResultDir(path)))
            fit_s = float(res.summary["timing_total"].sum())
            rows.append((f"slurm plan={plan}", wall, n_el, cpu, elapsed, fit_s))
            print(f"slurm plan={plan}: {wall:.1f} s", flush=True)
            for line in lines:
                if line.startswith("slurm: "):
                    print("   ", line, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nPyMC robust regression, 2 cells (n=40, n=1000) x {args.reps} replicates, 2 chains x 500 draws; "
          f"{args.cores} cores")
    print("| run | wall s | x local | elements | element CPU s (sacct) | element elapsed s | fit s | start-up share |")
    print("|---|---|---|---|---|---|---|---|")
    base = rows[0][1]
    for name, wall, n_el, cpu, elapsed, fit_s in rows:
        share = f"{100 * (1 - fit_s / elapsed):.0f} %" if elapsed else "-"
        print(f"| {name} | {wall:.1f} | {wall / base:.2f} | {n_el if n_el is not None else '-'} | "
              f"{'-' if cpu is None else f'{cpu:.0f}'} | {'-' if elapsed is None else f'{elapsed:.0f}'} | "
              f"{fit_s:.0f} | {share} |")


def run_scale(n_tasks: int = 1_000_000) -> None:
    import pandas as pd

    from bayesim_hpc import planning
    from bayesim_hpc.executors.base import default_shard_size
    from bayesim_hpc.grid import TaskSpace, plan_shards

    n_rep = 1000
    n_cells = n_tasks // n_rep
    space = TaskSpace.from_grids(pd.DataFrame({"n": np.arange(n_cells // 10)}), pd.DataFrame({"m": np.arange(10)}),
                                 n_rep)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rng = np.random.default_rng(0)
    cells = {k: planning.CellCost(float(rng.uniform(0.5, 20)), 8.0, "segments", 20) for k in range(len(space.cells))}
    model = planning.CostModel(cells, 5.0, "given")
    t0 = time.perf_counter()
    by_count = plan_shards(space, default_shard_size(space.n_tasks, 256))
    shards = planning.plan_shards_by_cost(space, model.task_seconds(len(space.cells)), 750.0,
                                          default_shard_size(space.n_tasks, 256))
    t1 = time.perf_counter()
    plan = planning.plan_elements(space, shards, model, slots=256, target_s=1500)
    t2 = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pred = [e.predicted_s for e in plan]
    print(f"\nplan scale: {space.n_tasks:,} tasks, {len(space.cells):,} cells (0.5-20 s per task), "
          f"{len(shards):,} cost-sized shards (count-sized: {len(by_count):,})")
    print("| step | seconds |\n|---|---|")
    print(f"| shards (plan_shards + plan_shards_by_cost) | {t1 - t0:.2f} |\n| elements (plan_elements, 256 slots, 25 min) | {t2 - t1:.2f} |")
    print(f"elements: {len(plan):,}, predicted {min(pred):.0f}-{max(pred):.0f} s each; "
          f"driver max RSS {rss:.0f} MB ({rss - rss0:+.0f} MB while planning)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=150, help="replicates per cell (default 150)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2, help="local pool size = real cores")
    ap.add_argument("--scale-only", action="store_true", help="only the 1,000,000-task planning figures")
    ap.add_argument("--with-shards", action="store_true", help="also the old plan, one 10-task shard per element "
                    "(slow: ~30 elements)")
    args = ap.parse_args()
    if not args.scale_only:
        if not os.environ.get("SLURM_CONF"):
            sys.exit('SLURM_CONF is not set: eval "$(scripts/local-slurm.sh start)" first')
        run_cluster(args)
    run_scale()


if __name__ == "__main__":
    main()
