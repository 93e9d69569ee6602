"""Vectorised diagnostics (bayesim_hpc.diagnostics) against ArviZ: speed and agreement.

Per "fit": rank R-hat + bulk ESS + tail ESS of every parameter of draws shaped
(chains, draws, params). ArviZ is called as a user would: ``az.rhat(ds)``,
``az.ess(ds, method="bulk")``, ``az.ess(ds, method="tail")`` on one dataset.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_diagnostics.py [--reps 200]

``--baseline FILE`` also times another version of the module (e.g. the last commit's:
``git show HEAD:bayesim_hpc/diagnostics.py > /tmp/dg_base.py``), interleaved with ours so
that both see the same machine load (the medians of a busy shared machine drift).
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import time
import warnings

import numpy as np


def _draws(rng, chains, draws, params, phi=0.3):
    """AR(1) chains (mildly autocorrelated, like NUTS output)."""
    x = np.empty((chains, draws, params))
    x[:, 0] = rng.normal(size=(chains, params))
    eps = rng.normal(size=(chains, draws, params)) * np.sqrt(1 - phi**2)
    for t in range(1, draws):
        x[:, t] = phi * x[:, t - 1] + eps[:, t]
    return x


def _load_baseline(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("diagnostics_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _time_pair(fn_a, fn_b, reps):
    """Medians (ms) of two functions timed alternately."""
    fn_a(), fn_b()
    ta, tb = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn_a()
        ta.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fn_b()
        tb.append(time.perf_counter() - t0)
    return statistics.median(ta) * 1e3, statistics.median(tb) * 1e3


def _time(fn, reps):
    fn()  # warm-up (numba JIT in ArviZ, caches)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, min(times) * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200, help="timed repetitions (ours)")
    ap.add_argument("--arviz-reps", type=int, default=20, help="timed repetitions (ArviZ)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--baseline", help="another diagnostics.py to time against ours (interleaved)")
    args = ap.parse_args(argv)

    warnings.simplefilter("ignore")
    logging.getLogger("arviz").setLevel(logging.ERROR)
    import arviz as az

    from bayesim_hpc import diagnostics as dg

    def arviz_all(x):
        ds = az.convert_to_dataset({"x": x})
        return (
            az.rhat(ds, method="rank")["x"].values,
            az.ess(ds, method="bulk")["x"].values,
            az.ess(ds, method="tail")["x"].values,
        )

    rng = np.random.default_rng(args.seed)
    shapes = [(4, 1000, 10), (4, 1000, 3), (4, 1000, 1), (8, 2000, 10)]
    rows = []
    for shape in shapes:
        x = _draws(rng, *shape)
        ours_med, ours_min = _time(lambda x=x: dg.diagnose(x), args.reps)
        az_med, az_min = _time(lambda x=x: arviz_all(x), args.arviz_reps)
        ours = dg.diagnose(x)
        ref = arviz_all(x)
        diff = max(float(np.max(np.abs(o - r) / np.abs(r))) for o, r in zip(ours, ref))
        rows.append((shape, ours_med, ours_min, az_med, az_min, diff))

    if args.baseline:
        base = _load_baseline(args.baseline)
        print(f"# ours vs baseline {args.baseline}: summarize_draws per fit, interleaved, median of {args.reps}")
        print("| chains x draws x params | baseline ms | ours ms | speed-up | max abs rel diff |")
        print("|---|---|---|---|---|")
        rng_b = np.random.default_rng(args.seed + 1)
        for shape in shapes:
            x = _draws(rng_b, *shape)
            draws = {"a": x[..., 0], "b": x[..., 1:]} if shape[2] > 1 else {"a": x[..., 0]}
            b_ms, o_ms = _time_pair(lambda d=draws: base.summarize_draws(d), lambda d=draws: dg.summarize_draws(d),
                                    args.reps)
            diff = max(float(np.nanmax(np.abs(o - r) / np.abs(r))) for o, r in zip(dg.diagnose(x), base.diagnose(x)))
            print(f"| {' x '.join(map(str, shape))} | {b_ms:.2f} | {o_ms:.2f} | {b_ms / o_ms:.2f}x | {diff:.1e} |")
        print()

    print(f"# diagnostics per fit: rank R-hat + bulk ESS + tail ESS, all params "
          f"({platform.processor() or platform.machine()}, median of {args.reps} / {args.arviz_reps} runs)")
    hdr = f"| {'chains x draws x params':<24}| {'ours ms (min)':>14} | {'arviz ms (min)':>15} | {'speed-up':>8} | {'max abs rel diff':>16} |"
    print(hdr)
    print("|" + "-" * 25 + "|" + "-" * 16 + "|" + "-" * 17 + "|" + "-" * 10 + "|" + "-" * 18 + "|")
    for shape, om, omin, am, amin, diff in rows:
        label = " x ".join(map(str, shape))
        print(f"| {label:<24}| {om:7.2f} ({omin:5.2f}) | {am:7.1f} ({amin:6.1f}) | {am / om:7.1f}x | {diff:16.2e} |")


if __name__ == "__main__":
    main()
