"""Paired comparisons between fit rows: hand-checked differences, paired MCSE below unpaired."""

import math

import numpy as np
import pandas as pd
import pytest

from bayesim_hpc import ConjugateLinearFitter, coverage_metric, run_simulation
from bayesim_hpc.compare import compare_summary

from .studies.linear import generate, make_config

QUIET = dict(progress=False, emit=lambda s: None)


def _summary(e_ref, e_a, cov_ref, cov_a):
    n = len(e_ref)
    rows = []
    for f, e, c in ((1, e_ref, cov_ref), (2, e_a, cov_a)):
        rows.append(pd.DataFrame({"status": "success", "data_idx": 1, "fit_idx": f, "rep_idx": np.arange(1, n + 1),
                                  "data_n": 10, "fit_model": ["ref", "a"][f - 1], "estimate__mu": 1.0 + np.asarray(e),
                                  "truth__mu": 1.0, "cover90__mu": c}))
    return pd.concat(rows, ignore_index=True)


def test_differences_and_paired_mcse_by_hand():
    e_ref = np.array([0.1, -0.2, 0.3, 0.0])
    e_a = np.array([0.2, -0.1, 0.5, 0.0])
    t = compare_summary(_summary(e_ref, e_a, [1, 1, 0, 1], [1, 0, 0, 1]), {"cover90": "coverage"})
    row = t.iloc[0]
    d = e_a - e_ref  # [0.1, 0.1, 0.2, 0.0]
    assert row["fit_model"] == "a" and row["reference_fit_idx"] == 1 and row["n_pairs"] == 4
    assert row["bias_diff__mu"] == pytest.approx(d.mean())
    assert row["bias_diff__mu__mcse"] == pytest.approx(np.std(d, ddof=1) / 2)
    assert row["mse_diff__mu"] == pytest.approx(np.mean(e_a**2 - e_ref**2))
    assert row["cover90_diff__mu"] == pytest.approx(-0.25)
    ratio2 = (np.std(e_ref, ddof=1) / np.std(e_a, ddof=1)) ** 2
    rho = np.corrcoef(e_a, e_ref)[0, 1]
    assert row["relprec__mu"] == pytest.approx(100 * (ratio2 - 1))
    assert row["relprec__mu__mcse"] == pytest.approx(200 * ratio2 * math.sqrt((1 - rho**2) / 3))


def test_paired_mcse_is_smaller_than_unpaired_under_positive_correlation():
    rng = np.random.default_rng(3)
    e_ref = rng.normal(size=400)
    e_a = e_ref + 0.3 + 0.2 * rng.normal(size=400)  # strongly, positively correlated errors
    row = compare_summary(_summary(e_ref, e_a, np.ones(400), np.ones(400)), {}).iloc[0]
    assert row["bias_diff__mu__mcse"] < 0.3 * row["bias_diff__mu__mcse_unpaired"]
    assert abs(row["bias_diff__mu"] - 0.3) < 3 * row["bias_diff__mu__mcse"]


def test_study_with_two_fit_rows_on_common_random_numbers():
    fitter = ConjugateLinearFitter(predictors=("x",), names={"x": "slope"}, chains=1, draws=300)
    res = run_simulation(make_config(fitter=fitter, fit_grid={"model": ["exact", "exact_again"]},
                                     data_grid={"n": [30, 60], "sigma": [1.0]}, data_generator=generate,
                                     metrics=[coverage_metric(0.9)], n_replicates=40), **QUIET)
    t = res.compare(reference={"model": "exact"})
    assert len(t) == 2 and (t["fit_model"] == "exact_again").all() and (t["n_pairs"] == 40).all()
    # the same posterior up to Monte Carlo noise: paired differences are tiny and precise
    assert (t["bias_diff__slope__mcse"] < 0.2 * t["bias_diff__slope__mcse_unpaired"]).all()
    assert (t["relprec__slope__mcse"] < 5).all()
    assert {"cover90_diff__slope", "mse_diff__sigma__mcse"} <= set(t.columns)
    with pytest.raises(ValueError, match="matches 0 fit rows"):
        res.compare(reference={"model": "nope"})
