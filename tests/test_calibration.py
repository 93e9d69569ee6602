"""The exact conjugate posterior is calibrated: coverage and SBC ranks behave as theory says.

Truths are drawn from the prior (simulation-based calibration), so coverage of 90 %
credible intervals is exactly 90 % and ranks are exactly uniform; any deviation beyond
Monte Carlo error is a bug in seeding, fitting, metrics or aggregation.
"""

import numpy as np
import pytest
from scipy import stats

from bayesim_hpc import (ConjugateLinearFitter, SimData, coverage_metric, run_simulation, sbc_rank_metric,
                         simulation_config)

A0, B0, SCALE = 3.0, 2.0, 1.0


def prior_generator(spec, rng, ctx):
    n = int(spec["n"])
    sigma2 = B0 / rng.gamma(A0, 1.0)
    beta = rng.normal(0.0, np.sqrt(sigma2) * SCALE, size=2)
    x = rng.normal(size=n)
    y = beta[0] + beta[1] * x + rng.normal(scale=np.sqrt(sigma2), size=n)
    return SimData(train={"x": x, "y": y}, response="y",
                   true_params={"intercept": beta[0], "slope": beta[1], "sigma": np.sqrt(sigma2)})


@pytest.fixture(scope="module")
def sbc_result():
    cfg = simulation_config(
        data_grid={"n": [20]}, fit_grid={"model": ["conjugate"]}, data_generator=prior_generator,
        fitter=ConjugateLinearFitter(predictors=("x",), names={"x": "slope"}, prior_scale=SCALE, a0=A0, b0=B0,
                                     chains=1, draws=999),
        metrics=[coverage_metric(0.9), sbc_rank_metric(99)], n_replicates=500, seed=2024, retain="minimal",
    )
    return run_simulation(cfg, progress=False, emit=lambda s: None)


@pytest.mark.parametrize("param", ["intercept", "slope", "sigma"])
def test_coverage_within_three_mcse(sbc_result, param):
    cell = sbc_result.cells.iloc[0]
    cov, mcse = cell[f"cover90__{param}"], cell[f"cover90__{param}__mcse"]
    assert mcse == pytest.approx(np.sqrt(0.9 * 0.1 / 500), rel=0.2)
    assert abs(cov - 0.9) < 3 * mcse, (cov, mcse)


@pytest.mark.parametrize("param", ["intercept", "slope", "sigma"])
def test_sbc_ranks_are_uniform(sbc_result, param):
    ranks = sbc_result.summary[f"sbc_rank__{param}"].to_numpy()
    assert ranks.min() >= 0 and ranks.max() <= 99
    counts = np.bincount((ranks // 10).astype(int), minlength=10)  # 10 bins of 10 ranks each
    p = stats.chisquare(counts).pvalue
    assert p > 0.001, counts


def test_a_miscalibrated_fitter_is_caught():
    """The same check fails for a posterior that is too narrow (the test can fail)."""
    class Overconfident(ConjugateLinearFitter):
        def fit(self, data, fit_spec, seed, ctx):
            res = super().fit(data, fit_spec, seed, ctx)
            res.draws = {k: v.mean() + 0.3 * (v - v.mean()) for k, v in res.draws.items()}
            return res

    cfg = simulation_config(
        data_grid={"n": [20]}, fit_grid={"model": ["narrow"]}, data_generator=prior_generator,
        fitter=Overconfident(predictors=("x",), names={"x": "slope"}, prior_scale=SCALE, a0=A0, b0=B0, chains=1,
                             draws=999),
        metrics=[coverage_metric(0.9), sbc_rank_metric(99)], n_replicates=200, seed=7, retain="minimal")
    res = run_simulation(cfg, progress=False, emit=lambda s: None)
    cell = res.cells.iloc[0]
    assert abs(cell["cover90__slope"] - 0.9) > 3 * cell["cover90__slope__mcse"]
    ranks = res.summary["sbc_rank__slope"].to_numpy()
    assert stats.chisquare(np.bincount((ranks // 10).astype(int), minlength=10)).pvalue < 0.001
