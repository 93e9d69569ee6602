"""Performance measures against hand-computed values (rsimsum's formulas), Wilson intervals,
and the names: per parameter, level in the name, old result directories still readable."""

import math

import numpy as np
import pandas as pd
import pytest

from bayesim_hpc import MockFitter, bias_metric, coverage_metric, load_results, power_metric, run_simulation
from bayesim_hpc.aggregate import cell_measures, point_measures, wilson_interval
from bayesim_hpc.names import current_name, nominal_level

from .studies.linear import make_config

QUIET = dict(progress=False, emit=lambda s: None)


def test_point_measures_match_hand_computed_values():
    # est = [1, 2, 4], truth 2, se = [1, 1, 2]  ->  e = [-1, 0, 2]
    m = point_measures(np.array([1.0, 2.0, 4.0]), np.full(3, 2.0), np.array([1.0, 1.0, 2.0]), "mu")
    sd_e = math.sqrt(7 / 3)  # sum of squared deviations of e from 1/3 is 42/9, over n - 1 = 2
    assert m["bias__mu"] == pytest.approx(1 / 3)
    assert m["bias__mu__mcse"] == pytest.approx(sd_e / math.sqrt(3))
    assert m["rbias__mu"] == pytest.approx(1 / 6)
    assert m["empse__mu"] == pytest.approx(sd_e)
    assert m["empse__mu__mcse"] == pytest.approx(sd_e / 2)  # empse / sqrt(2 (n - 1))
    assert m["mse__mu"] == pytest.approx(5 / 3)
    assert m["mse__mu__mcse"] == pytest.approx(math.sqrt((4 / 9 + 25 / 9 + 49 / 9) / 6))
    assert m["rmse__mu"] == pytest.approx(math.sqrt(5 / 3))
    assert m["modelse__mu"] == pytest.approx(math.sqrt(2))  # sqrt(mean(se^2)) = sqrt(6 / 3)
    assert m["modelse__mu__mcse"] == pytest.approx(math.sqrt(3 / (4 * 3 * 2)))  # var(se^2) = 3
    ratio = math.sqrt(2) / sd_e
    assert m["relerror__mu"] == pytest.approx(100 * (ratio - 1))
    assert m["relerror__mu__mcse"] == pytest.approx(100 * ratio * math.sqrt(3 / (4 * 3 * 4) + 1 / 4))


def test_rbias_is_undefined_for_a_zero_truth():
    m = point_measures(np.array([0.1, -0.1, 0.2]), np.zeros(3), None, "b")
    assert math.isnan(m["rbias__b"]) and m["bias__b"] == pytest.approx(0.2 / 3)
    assert "modelse__b" not in m


def test_cell_coverage_becover_power_and_wilson():
    df = pd.DataFrame({
        "status": ["success"] * 4 + ["failed"],
        "estimate__mu": [0.0, 1.0, 2.0, 3.0, np.nan], "truth__mu": [1.0] * 5,
        "cover90__mu": [1.0, 1.0, 0.0, 0.0, np.nan],
        "cover90__mu__lo": [-0.5, 0.5, 1.1, 2.5, np.nan], "cover90__mu__hi": [1.2, 1.6, 2.9, 3.5, np.nan],
        "power95__mu": [0.0, 1.0, 1.0, 1.0, np.nan],
        "width90__mu": [1.7, 1.1, 1.8, 1.0, np.nan],
    })
    out = cell_measures(df, {"cover90": "coverage", "power95": "power", "width90": "mean"})
    assert out["n_tasks"] == 5 and out["n_success"] == 4 and out["n_failed"] == 1
    assert out["cover90__mu"] == 0.5 and out["cover90__mu__mcse"] == pytest.approx(math.sqrt(0.25 / 4))
    assert (out["cover90__mu__wilson_low"], out["cover90__mu__wilson_high"]) == pytest.approx(wilson_interval(2, 4))
    # mean(est) = 1.5 lies in the 2nd and 3rd intervals only
    assert out["becover90__mu"] == 0.5
    assert out["power95__mu"] == 0.75
    assert out["width90__mu"] == pytest.approx(1.4) and out["width90__mu__mcse"] == pytest.approx(
        np.std([1.7, 1.1, 1.8, 1.0], ddof=1) / 2)
    assert "cover90__mu__lo" not in out  # a task's interval bound is not a cell measure


def test_wilson_interval_known_values_and_bounds():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    lo, hi = wilson_interval(20, 20)
    assert lo == pytest.approx(0.8389, abs=1e-4) and hi == 1.0  # not +-0 at 100 % coverage
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(0, 20)[1] > 0.1
    for n in (1, 2, 5, 20, 200):
        for k in range(n + 1):
            lo, hi = wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_names_carry_level_and_old_names_map():
    assert coverage_metric(0.9).name == "cover90" and coverage_metric(0.5).name == "cover50"
    assert coverage_metric(0.975).name == "cover97_5" and nominal_level("cover97_5") == 0.975
    assert power_metric(0.8).name == "power80"
    with pytest.raises(ValueError, match="must end with the nominal level '90'"):
        coverage_metric(0.9, name="coverage")
    assert current_name("coverage__by_param__slope__mcse") == "cover90__slope__mcse"
    assert current_name("width_50__by_param__a") == "width50__a"
    assert current_name("post_sd__by_param__a") == "se__a"
    assert current_name("coverage__mean") is None and current_name("bias__slope") is None


def test_study_measures_are_per_parameter_and_match_summary():
    res = run_simulation(make_config(n_replicates=30, metrics=[bias_metric(), coverage_metric(0.8),
                                                               power_metric(0.95, null={"slope": 0.0})]), **QUIET)
    s, c = res.summary, res.cells.iloc[0]
    e = (s["estimate__slope"] - s["truth__slope"]).to_numpy()
    assert s["bias__slope"].to_numpy() == pytest.approx(e)
    assert c["bias__slope"] == pytest.approx(e.mean())
    assert c["cover80__slope"] == pytest.approx(s["cover80__slope"].mean())
    assert c["power95__slope"] == 1.0 and "power95__intercept" not in s.columns
    assert c["modelse__slope"] == pytest.approx(np.sqrt(np.mean(s["se__slope"] ** 2)))


class _OldCoverage:
    """What coverage_metric() wrote before 0.2: a cross-parameter mean and by_param__ keys."""

    name = "coverage"
    kind = "coverage"

    def compute(self, fit, data):
        out = {}
        for p, t in data.true_params.items():
            lo, hi = np.quantile(fit.flat(p), [0.05, 0.95])
            out[f"by_param__{p}"] = float(lo <= t <= hi)
        out["mean"] = float(np.mean(list(out.values())))
        return out


def test_old_result_directory_reads_with_old_and_current_names(tmp_path):
    run_simulation(make_config(metrics=[_OldCoverage()], n_replicates=25, result_path=tmp_path / "old"), **QUIET)
    res = load_results(tmp_path / "old")
    s, c = res.summary, res.cells
    assert sorted(res.legacy_columns) == [f"coverage__by_param__{p}" for p in ("intercept", "sigma", "slope")]
    assert s["coverage__by_param__slope"].equals(pd.Series(s["cover90__slope"].to_numpy(), name="coverage__by_param__slope"))
    assert c["coverage__by_param__slope"].item() == c["cover90__slope"].item() == pytest.approx(s["cover90__slope"].mean())
    assert c["coverage__by_param__slope__mcse"].item() == c["cover90__slope__mcse"].item()
    # the old cross-parameter mean keeps its old name and its old meaning
    assert c["coverage__mean"].item() == pytest.approx(s["coverage__mean"].mean())


def test_mock_fitter_cells_have_no_cross_parameter_columns():
    res = run_simulation(make_config(fitter=MockFitter(), n_replicates=5), **QUIET)
    params = {"intercept", "slope", "sigma"}
    for col in res.cells.columns:
        parts = col.split("__")
        if len(parts) >= 2 and parts[0] in ("bias", "rmse", "cover90", "empse", "mse", "modelse", "becover90"):
            assert parts[1] in params, col


def test_rows_of_both_versions_share_the_current_column():
    """A directory resumed after an upgrade: old rows have by_param columns, new rows current ones."""
    from bayesim_hpc.names import add_current_names

    df = pd.DataFrame({"bias__by_param__slope": [0.1, 0.2, np.nan], "bias__slope": [np.nan, np.nan, 0.3],
                       "bias__value": [0.05, 0.1, np.nan]})
    out = add_current_names(df)
    assert out["bias__slope"].tolist() == [0.1, 0.2, 0.3]
    assert out["bias__value"].isna().tolist() == [False, False, True]  # the old average stays old rows' only


class _FixedFitter:
    """Draws 0, 1, 2, 3, 4 in each of two chains, whatever the data: every number is known."""

    def fit(self, data, fit_spec, seed, ctx):
        from bayesim_hpc import FitResult

        return FitResult(draws={"mu": np.tile(np.arange(5.0), (2, 1))})


def _fixed_data(spec, rng, ctx):
    from bayesim_hpc import SimData

    return SimData(train={"y": np.zeros(3)}, true_params={"mu": spec["truth"]})


def test_per_task_columns_of_a_fixed_study_by_hand():
    from bayesim_hpc import interval_width_metric, rmse_metric, simulation_config

    cfg = simulation_config(data_grid={"truth": [1.5, 4.5]}, fit_grid={"m": ["fixed"]}, data_generator=_fixed_data,
                            fitter=_FixedFitter(), metrics=[rmse_metric(), bias_metric(), coverage_metric(0.9),
                                                            interval_width_metric(0.9), power_metric(0.5, null=0.0)],
                            n_replicates=2, seed=1, retain="minimal")
    res = run_simulation(cfg, **QUIET)
    s = res.summary.set_index("task_id")
    a, b = s.loc["d001_f001_r00001"], s.loc["d002_f001_r00001"]
    # mean 2; quantiles 5 % and 95 % of [0,0,1,1,2,2,3,3,4,4] (type 7) are 0 and 4; 25 %/75 % are 1 and 3
    assert (a["estimate__mu"], a["bias__mu"], a["rmse__mu"]) == (2.0, 0.5, 0.5)
    assert (b["bias__mu"], b["rmse__mu"]) == (-2.5, 2.5)
    assert a["se__mu"] == pytest.approx(np.std(np.tile(np.arange(5.0), 2), ddof=1))
    assert (a["cover90__mu"], a["cover90__mu__lo"], a["cover90__mu__hi"], a["width90__mu"]) == (1.0, 0.0, 4.0, 4.0)
    assert b["cover90__mu"] == 0.0
    assert a["power50__mu"] == 1.0  # [1, 3] excludes 0
    cells = res.cells.set_index("data_truth")
    assert cells.loc[4.5, "rmse__mu"] == 2.5 and cells.loc[4.5, "cover90__mu"] == 0.0
    assert cells.loc[1.5, "becover90__mu"] == 1.0 and cells.loc[1.5, "empse__mu"] == 0.0
