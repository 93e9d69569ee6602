"""SBC: simultaneous ECDF bands are calibrated, the uniformity test has power, ESS thinning works."""

import numpy as np
import pytest

from bayesim_hpc.data import SimData
from bayesim_hpc.fitters.base import FitResult
from bayesim_hpc.metrics import sbc_rank_metric
from bayesim_hpc.sbc import ecdf_band, ecdf_difference, inside_band, uniformity_pvalue


@pytest.mark.parametrize("n,max_rank", [(100, 99), (400, 49), (50, 999)])
def test_band_holds_uniform_ranks_about_95_percent_of_the_time(n, max_rank):
    band = ecdf_band(n, max_rank, 0.95)
    ranks = np.random.default_rng(11).integers(0, max_rank + 1, size=(2000, n))  # fresh draws, not the band's
    share = inside_band(ranks, max_rank, band).mean()
    assert 0.925 <= share <= 0.97, share
    assert np.all((band.lower >= 0) & (band.upper <= 1) & (band.lower <= band.z) & (band.z <= band.upper))


def test_uniformity_pvalue_is_uniform_under_null_and_small_under_shift():
    rng = np.random.default_rng(5)
    p = np.array([uniformity_pvalue(rng.integers(0, 100, 150), 99) for _ in range(300)])
    assert 0.02 <= (p < 0.05).mean() <= 0.09
    too_narrow = np.clip(np.round(rng.beta(0.7, 0.7, 150) * 99), 0, 99)  # U-shaped: overconfident posterior
    assert uniformity_pvalue(too_narrow, 99) < 0.001
    diff = ecdf_difference(too_narrow, 99)
    assert np.any((diff["diff"] < diff["lower"]) | (diff["diff"] > diff["upper"]))


def _ar1_fit(rho, truth_rank_q, n=4000, seed=0):
    rng = np.random.default_rng(seed)
    x = np.empty(n)
    x[0] = rng.normal()
    eps = rng.normal(size=n) * np.sqrt(1 - rho**2)
    for i in range(1, n):
        x[i] = rho * x[i - 1] + eps[i]
    return FitResult(draws={"mu": x.reshape(1, n)}), SimData(train={}, true_params={"mu": truth_rank_q})


def test_ess_thinning_keeps_ranks_on_the_fixed_scale_and_uniform():
    m = sbc_rank_metric(99)
    ranks, kept = [], []
    rng = np.random.default_rng(2)
    for i in range(300):
        fit, data = _ar1_fit(0.98, 0.0, seed=i)
        data.true_params["mu"] = float(rng.normal())  # truth and draws from the same N(0, 1)
        out = m.compute(fit, data)
        ranks.append(out["mu"])
        kept.append(out["mu__kept"])
        assert out["mu__max"] == 99 and 0 <= out["mu"] <= 99
    assert max(kept) < 99  # ESS of an AR(1) chain with rho 0.98 is ~40 of 4000 draws: thinned
    assert uniformity_pvalue(np.array(ranks), 99) > 0.001
    unthinned = sbc_rank_metric(99, thin_by_ess=False)
    assert unthinned.compute(*_ar1_fit(0.98, 0.0))["mu__kept"] == 99
