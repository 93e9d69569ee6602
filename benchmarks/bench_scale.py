"""Throughput and bounded memory of the pipeline with MockFitter.

Prints a table:
* inline tasks/s for the seed's 25,000-task study (50 data x 5 fit x 100 replicates,
  retention ``minimal``) and the driver's peak RSS;
* peak RSS of driver, workers and reducer for a 25,000- and a 250,000-task study on the
  local pool (``minimal``, tasks_per_segment 100), and the reducer's rows/s. Each role runs in
  its own process, which reports its own ``ru_maxrss``.

    python benchmarks/bench_scale.py                 # all (about 5 minutes on 2 cores)
    python benchmarks/bench_scale.py --quick         # 2,500 / 25,000 tasks
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bayesim_hpc import MockFitter, SimData, bias_metric, coverage_metric, rmse_metric, simulation_config  # noqa: E402


def generate(spec, rng, ctx):
    n = int(spec["n"])
    x = rng.normal(size=n)
    y = spec["b0"] + spec["b1"] * x + rng.normal(scale=spec["sigma"], size=n)
    return SimData(train={"x": x, "y": y}, response="y",
                   true_params={"intercept": spec["b0"], "slope": spec["b1"], "sigma": spec["sigma"]})


def study(n_data: int, n_reps: int, result_path, fitter=None):
    return simulation_config(
        data_grid={"n": list(range(100, 100 + n_data)), "sigma": [1.0], "b0": [1.0], "b1": [2.0]},
        fit_grid={"model": [f"m{i}" for i in range(5)]}, data_generator=generate,
        fitter=fitter or MockFitter(), metrics=[rmse_metric(), bias_metric(), coverage_metric()],
        n_replicates=n_reps, seed=42, retain="minimal", tasks_per_segment=100, result_path=result_path)


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def role(argv: list[str]) -> None:
    """Run one role in this process and print a JSON line with its figures."""
    what, path, n_data, n_reps = argv[0], argv[1], int(argv[2]), int(argv[3])
    from bayesim_hpc import reduce_results, run_simulation

    fast = MockFitter(draws=50, compute_diagnostics=False) if argv[4] == "fast" else MockFitter()
    cfg = study(n_data, n_reps, path, fast)
    t0 = time.perf_counter()
    if what == "inline":
        run_simulation(cfg, "inline", progress=False, emit=lambda s: None, reduce=False)
    elif what == "local":
        run_simulation(cfg, "local", workers=2, progress=False, emit=lambda s: None, reduce=False)
    else:
        out = reduce_results(path)
        assert out.n_missing == 0
    print(json.dumps({"seconds": time.perf_counter() - t0, "maxrss_mb": maxrss_mb()}))


def run_role(*args: str) -> dict:
    p = subprocess.run([sys.executable, __file__, "--role", *args], capture_output=True, text=True, cwd=ROOT)
    if p.returncode:
        raise SystemExit(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def worker_peak(path: str) -> float:
    peaks = [json.loads(f.read_text()).get("maxrss_mb", 0) for f in Path(path, "shards").glob("*/progress.json")]
    return max(peaks)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", nargs=5)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.role:
        role(args.role)
        return
    # the seed's grid (50 data x 5 fit); the larger study has 10x the replicates
    small, large = ((5, 100), (5, 1000)) if args.quick else ((50, 100), (50, 1000))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        n = small[0] * 5 * small[1]
        r = run_role("inline", f"{tmp}/inline", str(small[0]), str(small[1]), "standard")
        rows.append(("inline, MockFitter() default", n, f"{n / r['seconds']:.0f} tasks/s", f"driver {r['maxrss_mb']:.0f} MB"))
        for nd, nr in (small, large):
            n = nd * 5 * nr
            path = f"{tmp}/local{n}"
            d = run_role("local", path, str(nd), str(nr), "fast")
            w = worker_peak(path)
            red = run_role("reduce", path, str(nd), str(nr), "fast")
            rows.append(("local pool (2 workers), fast mock", n, f"{n / d['seconds']:.0f} tasks/s",
                         f"driver {d['maxrss_mb']:.0f} MB, worker {w:.0f} MB, reducer {red['maxrss_mb']:.0f} MB, "
                         f"reducer {n / red['seconds']:.0f} rows/s"))
    print(f"{'run':<38} {'tasks':>8} {'speed':>16}  peak RSS")
    for name, n, speed, mem in rows:
        print(f"{name:<38} {n:>8} {speed:>16}  {mem}")


if __name__ == "__main__":
    main()
