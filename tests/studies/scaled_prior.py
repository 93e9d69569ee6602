"""A PyMC study whose priors are scaled to the data, as rstanarm does by default.

``build_model`` computes ``scale = 2.5 * np.std(y)`` and bakes it into the graph as a
number; the data grid multiplies y by ``unit``, so the two data rows differ 1000-fold in
scale. A compiled model reused with another dataset's scale gives a slope near 30 for a
true 3000 (issue 17): every task must match ``bayesim-hpc replay``, whatever ran before it.
"""

from __future__ import annotations

import numpy as np

from bayesim_hpc import PyMCFitter, SimData, bias_metric, simulation_config

N = 40


def generate(spec, rng: np.random.Generator, task_ctx) -> SimData:
    x = rng.normal(size=N)
    y = spec["unit"] * (1.0 + 3.0 * x + rng.normal(size=N))
    return SimData(train={"x": x, "y": y}, response="y",
                   true_params={"intercept": spec["unit"], "slope": 3.0 * spec["unit"]})


def build_model(data, fit_spec):
    import pymc as pm

    y = data.column("y")
    scale = 2.5 * np.std(y)  # a data-derived scalar: a constant of the graph
    with pm.Model() as model:
        x = pm.Data("x", data.column("x"))
        y_obs = pm.Data("y_obs", y)
        a = pm.Normal("intercept", 0, scale)
        b = pm.Normal("slope", 0, scale)
        sigma = pm.HalfNormal("sigma", scale)
        pm.Normal("y", a + b * x, sigma, observed=y_obs, shape=x.shape)
    return model


def model_data(data, fit_spec):
    return {"x": data.column("x"), "y_obs": data.column("y")}


def make_config(result_path, n_replicates: int = 1, **fitter_kw):
    """Both tasks of one replicate land in one shard: the second reuses the worker's fitter."""
    return simulation_config(
        data_grid={"unit": [1.0, 1000.0]}, fit_grid={"model": ["linear"]}, data_generator=generate,
        fitter=PyMCFitter(build_model, draws=150, tune=150, chains=2, **fitter_kw), metrics=[bias_metric()],
        n_replicates=n_replicates, seed=5, result_path=result_path, shard_size=2 * n_replicates, retain="standard")
