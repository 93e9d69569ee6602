"""PyMCFitter (nutpie compiled once, data swapped) against a naive PyMC loop.

N replicate datasets of a linear regression (n=100; intercept, slope, sigma), each fitted
with 4 chains x 1000 draws after 1000 tuning steps, one core:

(a) fitter loop: ``PyMCFitter(...).fit(data, fit_spec, seed, ctx)`` per dataset - build the
    pm.Model to read the new pm.Data values, ``compiled.with_data``, ``nutpie.sample``,
    vectorised diagnostics. The one-time compile is reported apart.
(c) study worker: the same datasets as a study run through ``run_simulation`` (inline
    executor = the worker code every executor runs: seeds, metrics, diagnostics, segments
    written to HDF5, reducer), with ``PyMCFitter(build_model, model_data=model_data)``: the model
    is built once (first task), later tasks only swap the pm.Data values. Its share of time
    outside ``nutpie.sample`` is 1 - sum(timing_fit_sampling) / (wall - compile).
(c2) as (c), with ``lazy_idata=True``: draws read from nutpie's raw trace, the InferenceData
    (about a third of ``nutpie.sample``'s time for this model) built only if used - never here.
(b) naive loop: build the model and ``pm.sample(...)`` per dataset (PyMC's NUTS), on the
    first ``--naive-n`` datasets only (it is slow); its rate is extrapolated from those.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_pymc.py --n 200 --naive-n 10

``--process`` measures instead what one worker process costs (issue 17), on a robust
regression (Student-t likelihood; intercept, slope, sigma; n = 80 and 200 alternating;
2 chains x 500 draws after 500 tuning steps, one core): fresh processes each fit a
100-task shard with the default ``PyMCFitter(build_model)`` (no options), once with an
empty PyTensor compile directory (cold) and then with the one it left (warm). Per process:
start-up and imports, the first task (compile included), a steady task, teardown (normal
interpreter exit against ``os._exit``, as the worker ends), the fixed cost (process start
to the end of the first task, minus a steady task) and fits/s over the whole process. In
the same process it also times the raw loop the default path should stay close to
(``compiled.with_data`` + ``nutpie.sample``, compiled once) and a naive ``pm.sample``
rebuild per dataset:

    PYTHONPATH=. .venv/bin/python benchmarks/bench_pymc.py --process --shard 100
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import warnings

import numpy as np

from bayesim_hpc.data import SimData, TaskContext
from bayesim_hpc.fitters.pymc import PyMCFitter


def make_dataset(i: int, n: int = 100, seed: int = 2024) -> SimData:
    rng = np.random.default_rng([seed, i])
    x = rng.normal(size=n)
    y = 1.0 + 2.0 * x + rng.normal(scale=1.5, size=n)
    return SimData(
        train={"x": x, "y": y}, response="y",
        true_params={"intercept": 1.0, "slope": 2.0, "sigma": 1.5},
    )


def build_model(data: SimData, fit_spec: dict):
    import pymc as pm

    with pm.Model() as model:
        x = pm.Data("x", data.column("x"))
        y = pm.Data("y_obs", data.column("y"))
        a = pm.Normal("intercept", 0, 10)
        b = pm.Normal("slope", 0, 10)
        sigma = pm.HalfNormal("sigma", 5)
        pm.Normal("y", a + b * x, sigma, observed=y, shape=x.shape)
    return model


def model_data(data: SimData, fit_spec: dict) -> dict:
    """The pm.Data values of build_model: with PyMCFitter(model_data=...) the model is built only once."""
    return {"x": data.column("x"), "y_obs": data.column("y")}


def _ctx(i: int, seed: int) -> TaskContext:
    return TaskContext(
        task_id=f"d001_f001_r{i + 1:05d}", task_index=i, data_idx=0, fit_idx=0, rep_idx=i,
        data_seed=i, fit_seed=seed,
    )


def run_fitter_loop(datasets, seeds, fitter, fit_spec) -> dict:
    """Fit every dataset with ``fitter``; the lead may route this through the study worker."""
    results = []
    t0 = time.perf_counter()
    for i, (data, seed) in enumerate(zip(datasets, seeds)):
        results.append(fitter.fit(data, fit_spec, seed, _ctx(i, seed)))
    wall = time.perf_counter() - t0
    for r in results:  # keep the draws only: 200 live InferenceData slow the later loops' GC
        r.fit = None
    compile_s = sum(r.timing.get("compile", 0.0) for r in results)
    total = np.array([r.timing["total"] for r in results])
    sampling = np.array([r.timing["sampling"] for r in results])
    steady = total - np.array([r.timing.get("compile", 0.0) for r in results])
    return {
        "n": len(results),
        "wall": wall,
        "compile": compile_s,
        "steady_wall": wall - compile_s,
        "outside_sample_share": float((steady - sampling).sum() / steady.sum()),
        "per_fit_median": float(np.median(steady)),
        "parts": {
            k: float(np.median([r.timing.get(k, 0.0) for r in results]))
            for k in ("build", "sampling", "diagnostics")
        },
        "n_divergent": float(sum(r.diagnostics["n_divergent"] for r in results)),
        "rhat_max": float(max(r.diagnostics["rhat_max"] for r in results)),
        "results": results,
    }


def run_worker_study(datasets, draws, tune, chains, data=model_data, lazy_idata=False) -> dict:
    """The datasets as a study through our worker; returns wall, compile and sampling times.

    ``data``: the fitter's ``data=`` callable (None: build the model every task, as (a));
    ``lazy_idata``: the fitter's option of that name.
    """
    import tempfile

    from bayesim_hpc import bias_metric, coverage_metric, rmse_metric, run_simulation, simulation_config

    def generate(spec, rng, ctx):
        return datasets[ctx.rep_idx]

    with tempfile.TemporaryDirectory() as tmp:
        cfg = simulation_config(
            data_grid={"n": [datasets[0].column("x").size]}, fit_grid={"model": ["linear"]}, data_generator=generate,
            fitter=PyMCFitter(build_model, draws=draws, tune=tune, chains=chains, model_data=data, lazy_idata=lazy_idata),
            metrics=[rmse_metric("params"), bias_metric(), coverage_metric()], n_replicates=len(datasets),
            seed=1, retain="standard", result_path=f"{tmp}/r")
        t0 = time.perf_counter()
        res = run_simulation(cfg, "inline", progress=False, emit=lambda s: None)
        wall = time.perf_counter() - t0
        s = res.summary
        compile_col = s["timing_fit_compile"].fillna(0) if "timing_fit_compile" in s else 0.0 * s["timing_total"]
        compile_s = float(compile_col.sum())
        st = s[compile_col == 0]  # steady-state tasks

        def col(name):
            return st[name].fillna(0) if name in st else 0.0 * st["timing_total"]

        fit_parts = {k: col(f"timing_fit_{k}") for k in ("build", "sampling", "extract", "diagnostics")}
        rows = dict(fit_parts)
        rows["fit_other"] = col("timing_fit_total") - sum(fit_parts.values())
        rows["metrics"] = col("timing_metrics")
        rows["task_other"] = col("timing_total") - col("timing_fit") - rows["metrics"]
        parts = {k: float(v.median()) for k, v in rows.items()}
        # setup, segment writes, progress files, reducer: worker time outside run_task
        parts["outside_tasks"] = (wall - float(s["timing_total"].sum())) / len(s)
        return {"n": len(s), "wall": wall, "compile": compile_s,
                "sampling": float(s["timing_fit_sampling"].sum()), "ok": int((s["status"] == "success").sum()),
                "parts": parts}


def run_naive_loop(datasets, seeds, draws, tune, chains) -> dict:
    """Build a fresh model and call pm.sample for every dataset (no diagnostics)."""
    import pymc as pm

    times = []
    means = []
    for data, seed in zip(datasets, seeds):
        t0 = time.perf_counter()
        model = build_model(data, {})
        with model:
            idata = pm.sample(
                draws=draws, tune=tune, chains=chains, cores=1, random_seed=seed,
                progressbar=False, compute_convergence_checks=False,
            )
        times.append(time.perf_counter() - t0)
        means.append(float(idata.posterior["slope"].mean()))
    return {"n": len(times), "wall": float(sum(times)), "per_fit_median": statistics.median(times),
            "slope_means": means}


# --------------------------------------------------------------------------- per process (--process)


def make_robust_dataset(i: int, seed: int = 7) -> SimData:
    """Robust-regression data: n alternates 80 / 200, Student-t noise."""
    rng = np.random.default_rng([seed, i])
    n = 80 if i % 2 == 0 else 200
    x = rng.normal(size=n)
    y = 0.5 + 1.5 * x + rng.standard_t(4, size=n)
    return SimData(train={"x": x, "y": y}, response="y", true_params={"intercept": 0.5, "slope": 1.5})


def build_robust(data: SimData, fit_spec: dict):
    import pymc as pm

    with pm.Model() as model:
        x = pm.Data("x", data.column("x"))
        y = pm.Data("y_obs", data.column("y"))
        a = pm.Normal("intercept", 0, 5)
        b = pm.Normal("slope", 0, 5)
        sigma = pm.HalfNormal("sigma", 2)
        pm.StudentT("y", nu=4, mu=a + b * x, sigma=sigma, observed=y, shape=x.shape)
    return model


ROBUST = dict(draws=500, tune=500, chains=2)


def child(args) -> None:
    """One worker-like process: imports, a shard of default-path fits, then exit."""
    t_main = time.time()
    t0 = time.perf_counter()
    import pymc  # noqa: F401

    t_pymc = time.perf_counter() - t0
    import nutpie  # noqa: F401

    from bayesim_hpc import worker  # noqa: F401  (what a worker process imports besides)

    t_imports = time.perf_counter() - t0
    for name in ("pymc", "pytensor", "arviz"):
        logging.getLogger(name).setLevel(logging.ERROR)
    fitter = PyMCFitter(build_robust, **ROBUST, **({"model_cache": False} if args.no_model_cache else {}))
    times, compile_s, first_end = [], 0.0, None
    parts: dict[str, list[float]] = {}
    for i in range(args.shard):
        data = make_robust_dataset(i)
        t1 = time.perf_counter()
        r = fitter.fit(data, {}, 1000 + i, _ctx(i, 1000 + i))
        times.append(time.perf_counter() - t1)
        if i == 0:
            compile_s = r.timing["compile"]
            first_end = time.time()
        for k in ("build", "sampling", "extract", "diagnostics"):
            parts.setdefault(k, []).append(r.timing.get(k, 0.0))
    out = {"t_main": t_main, "first_end": first_end, "import_pymc": t_pymc, "imports": t_imports,
           "first_task": times[0], "compile": compile_s, "loaded": fitter.n_loaded, "steady": float(np.median(times[1:])),
           "parts": {k: float(np.median(v[1:])) for k, v in parts.items()}, "n_compiles": fitter.n_compiles,
           "done": time.time()}
    if args.raw_loop:
        out["loops"] = raw_and_default_loops(args.raw_loop)
        out["naive"] = naive_robust(args.naive_n) if args.naive_n else None
        out["done"] = time.time()
    print("BENCH " + json.dumps(out), flush=True)
    if args.exit == "fast":
        os._exit(0)


def raw_and_default_loops(n: int) -> dict:
    """Median seconds per fit, interleaved so that both see the same machine load.

    raw: nutpie compiled once, ``compiled.with_data`` + ``nutpie.sample`` per dataset (the
    InferenceData ``nutpie.sample`` returns included). default: ``PyMCFitter(build_model)``
    with no options (model rebuilt and keyed per task, raw trace read, diagnostics).
    """
    import nutpie

    compiled = nutpie.compile_pymc_model(build_robust(make_robust_dataset(0), {}))
    fitter = PyMCFitter(build_robust, **ROBUST)
    fitter.fit(make_robust_dataset(0), {}, 1, _ctx(0, 1))  # compile (or load)
    raw, default = [], []
    for i in range(n):
        d = make_robust_dataset(i)
        t0 = time.perf_counter()
        c = compiled.with_data(x=d.column("x"), y_obs=d.column("y"))
        nutpie.sample(c, cores=1, seed=1000 + i, progress_bar=False, save_warmup=False, **ROBUST)
        t1 = time.perf_counter()
        fitter.fit(d, {}, 1000 + i, _ctx(i, 1000 + i))
        t2 = time.perf_counter()
        raw.append(t1 - t0)
        default.append(t2 - t1)
    return {"raw": float(np.median(raw)), "default": float(np.median(default)),
            "ratio": float(np.median(np.array(default) / np.array(raw)))}


def naive_robust(n: int) -> float:
    """Median seconds per fit: build the model and ``pm.sample`` it (PyMC's NUTS), per dataset."""
    import pymc as pm

    times = []
    for i in range(n + 1):  # the first (warm-up) is not counted
        d = make_robust_dataset(i)
        t0 = time.perf_counter()
        with build_robust(d, {}):
            pm.sample(cores=1, random_seed=i, progressbar=False, compute_convergence_checks=False, **ROBUST)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def run_process(compiledir: str, shard: int, exit_mode: str, extra: list[str] | None = None) -> dict:
    """Start one child process; its timings plus start-up and teardown seen from outside."""
    import subprocess

    env = dict(os.environ, PYTENSOR_FLAGS=f"base_compiledir={compiledir}", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--shard", str(shard), "--exit", exit_mode]
    t_start = time.time()
    p = subprocess.run(cmd + (extra or []), env=env, capture_output=True, text=True)
    t_end = time.time()
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("BENCH ")]
    if p.returncode != 0 or not line:
        raise RuntimeError(f"child failed ({p.returncode}): {p.stderr[-2000:]}")
    r = json.loads(line[0][6:])
    r["startup"] = r["t_main"] - t_start
    r["teardown"] = t_end - r["done"]
    r["wall"] = t_end - t_start
    r["fixed"] = r["first_end"] - t_start - r["steady"]
    r["exit"] = exit_mode
    return r


def process_main(args) -> int:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cold = run_process(tmp, args.shard, "fast")
        warm_compile = run_process(tmp, args.shard, "fast", ["--no-model-cache"])
        warm = run_process(tmp, args.shard, "fast")
        warm_normal = run_process(tmp, args.shard, "normal", ["--raw-loop", str(args.loop_n),
                                                               "--naive-n", str(args.naive_n)])
    print(f"# robust regression (Student-t), n = 80/200, 2 chains x 500 draws (+500 tune), cores=1; "
          f"{args.shard}-task shard per process, default PyMCFitter(build_model)")
    print("| process | start-up | imports (pymc) | first task (compile) | steady task | teardown | "
          "fixed cost | process wall | fits/s over the shard |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, r in (("cold compile dir", cold), ("warm PyTensor cache, model_cache=False", warm_compile),
                     ("warm compile dir (model loaded from disk)", warm),
                     ("warm, normal exit (+ loops below)", warm_normal)):
        wall = r["wall"] if r is not warm_normal else r["first_end"] - r["t_main"] + r["startup"] +             (args.shard - 1) * r["steady"] + r["teardown"]
        how = "loaded" if r["loaded"] else "compile"
        print(f"| {label} | {r['startup']:.2f} s | {r['imports']:.2f} s ({r['import_pymc']:.2f}) | "
              f"{r['first_task']:.2f} s ({how} {r['compile']:.2f}) | {1e3 * r['steady']:.1f} ms | "
              f"{r['teardown']:.2f} s ({r['exit']}) | {r['fixed']:.2f} s | {wall:.1f} s | "
              f"{args.shard / wall:.1f} |")
    p = warm["parts"]
    print(f"\nsteady task parts (warm, median ms): build+key+with_data {1e3 * p['build']:.1f}, "
          f"nutpie.sample {1e3 * p['sampling']:.1f}, read raw trace {1e3 * p['extract']:.2f}, "
          f"diagnostics {1e3 * p['diagnostics']:.2f}")
    loops, naive = warm_normal["loops"], warm_normal["naive"]
    print(f"default path {1e3 * loops['default']:.1f} ms/task vs raw nutpie loop {1e3 * loops['raw']:.1f} ms/fit "
          f"(interleaved, {args.loop_n} each): median ratio {loops['ratio']:.2f}x (goal <= 1.25x)")
    if naive:
        shard_rate = args.shard / warm["wall"]
        print(f"naive build + pm.sample: {1e3 * naive:.0f} ms/fit; warm {args.shard}-task shard process "
              f"{shard_rate:.1f} fits/s = {shard_rate * naive:.1f}x naive (goal >= 15x); steady "
              f"{naive / warm['steady']:.1f}x")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--process", action="store_true", help="per-process costs on the robust model (issue 17)")
    ap.add_argument("--shard", type=int, default=100, help="--process: tasks per process")
    ap.add_argument("--loop-n", type=int, default=40, help="--process: fits timed in the raw/default loops")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--exit", default="fast", help=argparse.SUPPRESS)
    ap.add_argument("--raw-loop", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--no-model-cache", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=200, help="replicate datasets for the fitter loop")
    ap.add_argument("--naive-n", type=int, default=10, help="datasets timed in the naive loop")
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--tune", type=int, default=1000)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--nobs", type=int, default=100, help="rows per dataset")
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    if args.process:
        return process_main(args)

    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    import nutpie  # noqa: F401
    import pymc  # noqa: F401

    import_s = time.perf_counter() - t0
    for name in ("pymc", "pytensor", "arviz"):  # after import: pymc sets its level then
        logging.getLogger(name).setLevel(logging.ERROR)

    datasets = [make_dataset(i, args.nobs) for i in range(args.n)]
    seeds = [10_000 + i for i in range(args.n)]
    fitter = PyMCFitter(build_model, draws=args.draws, tune=args.tune, chains=args.chains)
    spec = {"model": "linear"}
    a = run_fitter_loop(datasets, seeds, fitter, spec)
    c = run_worker_study(datasets, args.draws, args.tune, args.chains)
    c2 = run_worker_study(datasets, args.draws, args.tune, args.chains, lazy_idata=True)

    k = min(args.naive_n, args.n)
    naive = None
    if k > 0:
        # warm-up fit (not timed): PyMC's first pm.sample in a process pays one-off costs
        run_naive_loop(datasets[-1:], seeds[-1:], args.draws, args.tune, args.chains)
        naive = run_naive_loop(datasets[:k], seeds[:k], args.draws, args.tune, args.chains)

    rate_a = a["n"] / a["steady_wall"]
    rate_a_incl = a["n"] / a["wall"]
    print(f"# linear regression n={args.nobs}, {args.chains} chains x {args.draws} draws "
          f"(+{args.tune} tune), cores=1; import pymc+nutpie {import_s:.1f} s")
    print("| loop | fits timed | s/fit (median) | fits/s | note |")
    print("|---|---|---|---|---|")
    print(f"| (a) PyMCFitter: compile once + with_data + nutpie | {a['n']} | "
          f"{a['per_fit_median']:.3f} | {rate_a:.1f} | excl. one-time compile {a['compile']:.1f} s; "
          f"{rate_a_incl:.1f} fits/s incl. it |")
    studies = [("(c) study through our worker, model_data=", c),
               ("(c2) as (c) + lazy_idata=True (no InferenceData built)", c2)]
    for label, st in studies:
        st["rate"] = st["n"] / (st["wall"] - st["compile"])
        st["outside"] = 1 - st["sampling"] / (st["wall"] - st["compile"])
        print(f"| {label} | {st['n']} | {(st['wall'] - st['compile']) / st['n']:.3f} | {st['rate']:.1f} | "
              f"excl. compile {st['compile']:.1f} s; {st['n'] / st['wall']:.1f} fits/s incl. it; "
              f"{100 * st['outside']:.1f} % of time outside nutpie.sample |")
    if naive is not None:
        rate_n = naive["n"] / naive["wall"]
        print(f"| (b) naive: build model + pm.sample | {naive['n']} of {args.n} | "
              f"{naive['per_fit_median']:.3f} | {rate_n:.2f} | rate from the {naive['n']} timed fits; "
              f"{args.n} fits extrapolated: {args.n / rate_n:.0f} s |")
        for tag, st in (("(c)", c), ("(c2)", c2)):
            print(f"| ratio {tag}/(b): worker vs naive | | | {st['rate'] / rate_n:.1f}x | incl. compile: "
                  f"{st['n'] / st['wall'] / rate_n:.1f}x |")
        print(f"| ratio (a)/(b) | | | {rate_a / rate_n:.1f}x | incl. compile: {rate_a_incl / rate_n:.1f}x |")
        diff = np.abs(np.array(naive["slope_means"]) -
                      np.array([r.draws["slope"].mean() for r in a["results"][:k]]))
        print(f"\nslope posterior mean, (a) vs (b) on the same datasets: max abs diff {diff.max():.3f}")
    parts = a["parts"]
    print(f"(a) time outside nutpie.sample: {100 * a['outside_sample_share']:.1f} % of steady-state "
          f"fitter time (median per fit: build+with_data {1e3 * parts['build']:.1f} ms, "
          f"nutpie.sample {1e3 * parts['sampling']:.1f} ms, diagnostics {1e3 * parts['diagnostics']:.1f} ms)")
    print(f"(a) divergences in all fits: {a['n_divergent']:.0f}; largest R-hat: {a['rhat_max']:.3f}")
    for tag, st in (("(c)", c), ("(c2)", c2)):
        pc = st["parts"]
        print(f"{tag} per task, steady state (median ms): data()+with_data {1e3 * pc['build']:.2f}, "
              f"nutpie.sample {1e3 * pc['sampling']:.1f}, read raw trace {1e3 * pc['extract']:.2f}, "
              f"diagnostics {1e3 * pc['diagnostics']:.2f}, rest of fit {1e3 * pc['fit_other']:.2f}, "
              f"metrics {1e3 * pc['metrics']:.2f}, rest of task {1e3 * pc['task_other']:.2f}; worker outside "
              f"tasks (setup, HDF5 segments, reducer) {1e3 * pc['outside_tasks']:.2f} per task; "
              f"{st['ok']} of {st['n']} tasks succeeded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
