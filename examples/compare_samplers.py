"""lme4's allFit() idea for Bayesian fits: the same datasets, several samplers and settings.

Each row of the fit grid is a sampler configuration; common random numbers mean every row
fits exactly the same datasets, so differences in coverage, ESS or divergences are the
samplers', not the data's. Run in parallel with any executor:

    bayesim-hpc run examples/compare_samplers.py --executor local --workers 2 --result-dir example-results/samplers
"""

import numpy as np
import pymc as pm

from bayesim_hpc import PyMCFitter, SimData, bias_metric, coverage_metric, simulation_config


def generate(data_spec, rng, task_ctx) -> SimData:
    """Eight schools-like hierarchical data: a classic source of divergences."""
    J = int(data_spec["groups"])
    tau = float(data_spec["tau"])
    theta = rng.normal(0.0, tau, size=J)
    sigma = np.full(J, 10.0)
    y = rng.normal(theta, sigma)
    return SimData(train={"y": y, "sigma": sigma}, response="y", true_params={"mu": 0.0, "tau": tau})


def build_model(data: SimData, fit_spec: dict) -> pm.Model:
    with pm.Model() as model:
        y = pm.Data("y_obs", data.column("y"))
        s = pm.Data("sigma", data.column("sigma"))
        mu = pm.Normal("mu", 0, 5)
        tau = pm.HalfCauchy("tau", 5)
        if fit_spec["param"] == "centered":
            theta = pm.Normal("theta", mu, tau, shape=y.shape)
        else:
            z = pm.Normal("z", 0, 1, shape=y.shape)
            theta = pm.Deterministic("theta", mu + tau * z)
        pm.Normal("y", theta, s, observed=y, shape=y.shape)
    return model


config = simulation_config(
    data_grid={"groups": [8], "tau": [1.0, 5.0]},
    fit_grid={"param": ["centered", "noncentered"], "sampler": ["nutpie", "pymc"], "target_accept": [0.8, 0.95]},
    data_generator=generate,
    fitter=PyMCFitter(build_model, draws=500, tune=500, chains=2, var_names=["mu", "tau"]),
    metrics=[bias_metric(), coverage_metric(0.9)],
    n_replicates=5,
    seed=7,
    retain="standard",
    result_path="example-results/compare_samplers",
)
