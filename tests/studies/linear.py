"""Test studies shared by the suite and by the subprocess drills.

``make_config(**overrides)`` builds the seed's linear-regression study; the drills run
``python -m tests.studies.drive`` on it in separate processes.
"""

from __future__ import annotations

import numpy as np

from bayesim_hpc import MockFitter, SimData, bias_metric, coverage_metric, rmse_metric, simulation_config


def generate(data_spec, rng: np.random.Generator, task_ctx) -> SimData:
    n = int(data_spec["n"])
    x = rng.normal(size=n)
    y = 1.0 + 2.0 * x + rng.normal(scale=float(data_spec["sigma"]), size=n)
    return SimData(train={"y": y, "x": x}, response="y",
                   true_params={"intercept": 1.0, "slope": 2.0, "sigma": float(data_spec["sigma"])})


def make_config(**overrides):
    kw = dict(
        data_grid={"n": [100], "sigma": [1.0]},
        fit_grid={"model": ["linear"]},
        data_generator=generate,
        fitter=MockFitter(),
        metrics=[rmse_metric(), bias_metric(), coverage_metric()],
        n_replicates=20,
        seed=42,
    )
    kw.update(overrides)
    return simulation_config(**kw)


def drill_config(result_path, n_tasks: int = 2000, delay: float = 0.0, **overrides):
    """2,000 MockFitter tasks: 4 data rows x 2 fits x 250 replicates."""
    kw = dict(
        data_grid={"n": [50, 100], "sigma": [0.5, 1.0]},
        fit_grid={"model": ["a", "b"]},
        n_replicates=n_tasks // 8,
        retain="minimal",
        tasks_per_segment=25,
        result_path=result_path,
        fitter=MockFitter(draws=100, delay=delay, fail_tasks=("d002_f001_r00007",)),
        shard_size=125,
    )
    kw.update(overrides)
    return make_config(**kw)
