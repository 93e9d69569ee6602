"""A PyMC study runs for real and agrees with the exact conjugate posterior.

Both studies use the same seed and data grid, so they fit the very same datasets (common
random numbers); the PyMC model uses the conjugate fitter's Normal-Inverse-Gamma prior, so
the two posteriors are the same distribution and must agree within Monte Carlo error.
"""

import numpy as np
import pytest

pm = pytest.importorskip("pymc")

from bayesim_hpc import (ConjugateLinearFitter, PyMCFitter, coverage_metric, posterior_mean_metric,  # noqa: E402
                         posterior_sd_metric, rmse_metric, run_simulation, simulation_config)

from .studies.linear import generate  # noqa: E402

pytestmark = pytest.mark.slow
A0, B0, SCALE = 2.0, 1.0, 10.0


def build_model(data, fit_spec):
    with pm.Model() as model:
        x = pm.Data("x", data.column("x"))
        y = pm.Data("y_obs", data.column("y"))
        sigma2 = pm.InverseGamma("sigma2", A0, B0)
        sigma = pm.Deterministic("sigma", pm.math.sqrt(sigma2))
        intercept = pm.Normal("intercept", 0, SCALE * sigma)
        slope = pm.Normal("slope", 0, SCALE * sigma)
        pm.Normal("y", intercept + slope * x, sigma, observed=y, shape=x.shape)
    return model


def _config(fitter, n_rep):
    return simulation_config(
        data_grid={"n": [40], "sigma": [1.0]}, fit_grid={"model": ["linear"]}, data_generator=generate, fitter=fitter,
        metrics=[rmse_metric("params"), coverage_metric(0.9), posterior_mean_metric(), posterior_sd_metric()],
        n_replicates=n_rep, seed=11, retain="standard")


def test_small_pymc_study_runs_and_matches_exact_posterior():
    quiet = dict(progress=False, emit=lambda s: None)
    n_rep = 12
    mc = run_simulation(_config(PyMCFitter(build_model, draws=200, tune=300, chains=2), n_rep), **quiet).summary
    exact = run_simulation(_config(ConjugateLinearFitter(predictors=("x",), names={"x": "slope"}, prior_scale=SCALE,
                                                         a0=A0, b0=B0, chains=4, draws=4000), n_rep), **quiet).summary
    assert (mc["status"] == "success").all(), mc["error_message"].tolist()
    for col in ("rhat_max", "ess_bulk_min", "n_divergent", "timing_total"):
        assert mc[col].notna().all()
    for p in ("intercept", "slope", "sigma"):
        m_mc, m_ex = mc[f"estimate__{p}"], exact[f"estimate__{p}"]
        sd = exact[f"se__{p}"]
        ess = mc["ess_bulk_min"].clip(lower=50)
        z = (m_mc - m_ex) / (sd / np.sqrt(ess))  # Monte Carlo error of the PyMC mean
        assert np.abs(z).max() < 5, (p, z.round(2).tolist())
        assert np.allclose(mc[f"se__{p}"], sd, rtol=0.35)
    # coverage indicators agree on the same datasets except where the truth sits at an interval edge
    agree = (mc["cover90__slope"] == exact["cover90__slope"]).mean()
    assert agree >= 0.75
