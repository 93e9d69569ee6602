"""The seed's linear regression, fitted for real with PyMC (nutpie, compiled once per worker).

    bayesim-hpc run examples/linear_pymc.py --executor local --workers 2 --result-dir example-results/linear_pymc
    bayesim-hpc status example-results/linear_pymc
    bayesim-hpc report example-results/linear_pymc
"""

import numpy as np
import pymc as pm

from bayesim_hpc import (PyMCFitter, SimData, bias_metric, coverage_metric, interval_width_metric, rmse_metric,
                         simulation_config)


def generate(data_spec, rng: np.random.Generator, task_ctx) -> SimData:
    n = int(data_spec["n"])
    x = rng.normal(size=n)
    y = 1.0 + 2.0 * x + rng.normal(scale=data_spec["sigma"], size=n)
    x_test = rng.normal(size=50)
    y_test = 1.0 + 2.0 * x_test + rng.normal(scale=data_spec["sigma"], size=50)
    return SimData(train={"y": y, "x": x}, test={"y": y_test, "x": x_test}, response="y",
                   true_params={"intercept": 1.0, "slope": 2.0, "sigma": float(data_spec["sigma"])})


def build_model(data: SimData, fit_spec: dict) -> pm.Model:
    """Everything that changes between datasets is a pm.Data; the structure stays fixed."""
    with pm.Model() as model:
        x = pm.Data("x", data.column("x"))
        y = pm.Data("y_obs", data.column("y"))
        intercept = pm.Normal("intercept", 0, 10)
        slope = pm.Normal("slope", 0, 10)
        sigma = pm.HalfNormal("sigma", 5)
        pm.Normal("y", intercept + slope * x, sigma, observed=y, shape=x.shape)
    return model


def model_data(data: SimData, fit_spec: dict) -> dict:
    """The pm.Data values of a dataset: with this, a worker never rebuilds the model per task."""
    return {"x": data.column("x"), "y_obs": data.column("y")}


def predict(draws: dict, data: SimData, fit_spec: dict) -> dict:
    """Posterior mean prediction on the test data (for rmse_metric)."""
    x = data.column("x", "test")
    return {"mean": draws["intercept"].mean() + draws["slope"].mean() * x}


config = simulation_config(
    data_grid={"n": [50, 200], "sigma": [1.0]},
    fit_grid={"model": ["linear"]},
    data_generator=generate,
    fitter=PyMCFitter(build_model, model_data=model_data, draws=500, tune=500, chains=2, predict=predict),
    metrics=[rmse_metric(), bias_metric(), coverage_metric(0.9), interval_width_metric(0.9)],
    n_replicates=10,
    seed=42,
    retain="standard",
    result_path="example-results/linear_pymc",
)
