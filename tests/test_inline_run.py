"""The inline executor end to end: the seed's example, determinism, failures, error budget."""

import numpy as np
import pandas as pd
import pytest

from bayesim_hpc import (ErrorBudgetExceeded, MockFitter, estimate_size, load_results, run_simulation)

from .studies.linear import generate, make_config

QUIET = dict(progress=False, emit=lambda s: None)


def test_seed_example_summary_columns():
    res = run_simulation(make_config(), **QUIET)
    s = res.summary
    assert len(s) == 20
    assert (s["status"] == "success").all()
    for col in ["task_id", "status", "rmse__slope", "bias__intercept", "bias__slope", "bias__sigma",
                "cover90__intercept", "cover90__slope", "cover90__sigma", "cover90__slope__lo", "cover90__slope__hi",
                "estimate__slope", "se__slope", "truth__slope",
                "rhat_max", "ess_bulk_min", "ess_tail_min", "n_divergent", "n_max_treedepth", "timing_total", "rep_idx",
                "data_n", "data_sigma", "fit_model"]:
        assert col in s.columns, col
    assert s["task_id"].iloc[0] == "d001_f001_r00001"
    assert s["rep_idx"].tolist() == list(range(1, 21))
    assert (s["fit_model"] == "linear").all() and (s["data_n"] == 100).all()
    assert np.all(np.isfinite(s["rmse__slope"])) and (s["rmse__slope"] > 0).all()
    assert set(s["cover90__slope"]) <= {0, 1}
    # no column averages different parameters (issue 18): every metric column names one parameter
    for c in s.columns:
        if c.split("__")[0] in ("rmse", "bias", "cover90"):
            assert c.split("__")[1] in ("intercept", "slope", "sigma"), c
    assert s["rmse__slope"].to_numpy() == pytest.approx(np.abs(s["estimate__slope"] - s["truth__slope"]).to_numpy())
    assert (s["rhat_max"] < 1.1).all()


def test_minimal_retention_has_no_diagnostics_columns():
    s = run_simulation(make_config(retain="minimal"), **QUIET).summary
    assert "rhat_max" not in s.columns and "rmse__slope" in s.columns


def _metric_cols(s: pd.DataFrame) -> pd.DataFrame:
    keep = [c for c in s.columns if "__" in c and not c.startswith("timing")] + ["task_id", "status"]
    return s[sorted(keep)]


def test_same_config_twice_is_bit_identical():
    a = run_simulation(make_config(), **QUIET).summary
    b = run_simulation(make_config(), **QUIET).summary
    pd.testing.assert_frame_equal(_metric_cols(a), _metric_cols(b), check_exact=True)


def test_retained_artifacts_per_profile():
    res = run_simulation(make_config(retain="debug", n_replicates=2), **QUIET)
    art = res.task_results["d001_f001_r00002"]
    assert art["draws"]["slope"].shape == (2, 200)
    assert set(art["data"]["train"]) == {"x", "y"}
    assert art["metrics"]["status"] == "success"
    assert "rhat_max" in art["diagnostics"]
    ds = res.draws("d001_f001_r00002")
    assert ds["slope"].dims == ("chain", "draw")
    minimal = run_simulation(make_config(retain="minimal", n_replicates=2), **QUIET)
    assert set(minimal.task_results["d001_f001_r00001"]) == {"metrics"}
    assert estimate_size(art) > art["draws"]["slope"].nbytes


def bad_generator(spec, rng, ctx):
    if ctx.rep_idx == 1:
        raise ValueError("generator exploded")
    return generate(spec, rng, ctx)


def test_failures_are_recorded_and_do_not_stop_the_study():
    cfg = make_config(data_generator=bad_generator, fitter=MockFitter(fail_tasks=("d001_f001_r00003",), nan_rate=0.0),
                      n_replicates=6)
    s = run_simulation(cfg, **QUIET).summary.set_index("task_id")
    assert s.loc["d001_f001_r00002", "status"] == "failed"
    assert s.loc["d001_f001_r00002", "error_type"] == "ValueError"
    assert s.loc["d001_f001_r00002", "error_stage"] == "generate"
    assert "generator exploded" in s.loc["d001_f001_r00002", "error_traceback"]
    assert s.loc["d001_f001_r00003", "error_stage"] == "fit"
    assert s.loc["d001_f001_r00003", "error_type"] == "RuntimeError"
    assert (s["status"] == "success").sum() == 4
    assert np.isnan(s.loc["d001_f001_r00002", "rmse__slope"])


def test_nan_draws_fail_the_task_with_a_clear_error():
    s = run_simulation(make_config(fitter=MockFitter(nan_rate=1.0), n_replicates=2), **QUIET).summary
    assert (s["status"] == "failed").all()
    assert (s["error_type"] == "FloatingPointError").all()
    assert s["error_message"].str.contains("non-finite draws").all()


def test_metric_error_is_recorded():
    class Broken:
        name = "broken"

        def compute(self, fit, data):
            raise KeyError("no such thing")

    s = run_simulation(make_config(metrics=[Broken()], n_replicates=2), **QUIET).summary
    assert (s["error_stage"] == "metrics").all()


def test_error_budget_stops_with_clear_message(tmp_path):
    cfg = make_config(fitter=MockFitter(fail_rate=1.0), n_replicates=50, max_errors=3, shard_size=5,
                      result_path=tmp_path / "r")
    with pytest.raises(ErrorBudgetExceeded, match="max_errors=3"):
        run_simulation(cfg, **QUIET)
    s = load_results(tmp_path / "r").summary
    assert 3 < len(s) < 50  # it stopped early, and what ran is on disk


def test_warnings_are_captured_per_task():
    s = run_simulation(make_config(fitter=MockFitter(warn_rate=1.0), n_replicates=3), **QUIET)
    assert (s.summary["n_warnings"] == 1).all()
    assert "injected warning" in s.task_results["d001_f001_r00001"]["warnings"][0]


def test_dict_returned_by_generator_is_accepted():
    def gen(spec, rng, ctx):
        d = generate(spec, rng, ctx)
        return {"train": d.train, "response": "y", "true_params": d.true_params}

    s = run_simulation(make_config(data_generator=gen, n_replicates=2), **QUIET).summary
    assert (s["status"] == "success").all()


def test_cells_have_mcse(tmp_path):
    res = run_simulation(make_config(n_replicates=40, data_grid={"n": [50, 200], "sigma": [1.0]}), **QUIET)
    cells = res.cells
    assert len(cells) == 2
    assert {"bias__slope", "bias__slope__mcse", "cover90__slope", "cover90__slope__mcse", "empse__slope",
            "mse__slope__mcse", "modelse__slope", "relerror__slope", "becover90__slope"} <= set(cells.columns)
    assert not [c for c in cells.columns if "by_param" in c or c in ("bias__value", "rmse__value", "coverage__mean")]
    s = res.summary
    sub = s[s["data_n"] == 50]
    e = sub["estimate__slope"] - sub["truth__slope"]
    assert cells.loc[cells["data_n"] == 50, "bias__slope"].item() == pytest.approx(e.mean())
    assert cells.loc[cells["data_n"] == 50, "bias__slope__mcse"].item() == pytest.approx(e.std(ddof=1) / np.sqrt(40))


def test_draws_kept_only_for_tasks_that_warned():
    cfg = make_config(fitter=MockFitter(warn_rate=0.5), n_replicates=12, retain=["warnings", "draws_if_warned"])
    res = run_simulation(cfg, **QUIET)
    tr = res.task_results
    warned = set(res.summary.loc[res.summary["n_warnings"] > 0, "task_id"])
    assert 0 < len(warned) < 12
    for tid in res.summary["task_id"]:
        assert ("draws" in tr[tid]) == (tid in warned)
