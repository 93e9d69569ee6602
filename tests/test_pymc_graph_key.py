"""The compiled-model key sees every constant of the graph (issue 17).

Fast tests check the key on built models (no compile). The slow ones run the issue's
study - priors scaled to the data, data rows 1000-fold apart - on the inline, local and
mock executors and check every task against ``bayesim-hpc replay``, which re-runs it alone
in a fresh fitter; and a data-derived scalar that changes between replicates of one cell,
with and without ``data=``.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

pm = pytest.importorskip("pymc")
pytest.importorskip("nutpie")

from click.testing import CliRunner  # noqa: E402

from bayesim_hpc import run_simulation  # noqa: E402
from bayesim_hpc.cli import main  # noqa: E402
from bayesim_hpc.data import TaskContext  # noqa: E402
from bayesim_hpc.fitters.pymc import PyMCFitter, graph_signature  # noqa: E402
from bayesim_hpc.fitters.pymc.graph_key import structure as _structure  # noqa: E402

from .studies import scaled_prior  # noqa: E402

LOGGER = "bayesim_hpc.fitters.pymc"


def _model(scale=2.5, y=None, likelihood="normal", initval=None, extra=None):
    import pytensor

    y = np.arange(5.0) if y is None else y
    with pm.Model() as model:
        x = pm.Data("x", np.linspace(0, 1, len(y)))
        y_obs = pm.Data("y_obs", y)
        a = pm.Normal("intercept", 0, 10)
        b = pm.Normal("slope", 0, scale, initval=initval)
        sigma = pm.HalfNormal("sigma", 5)
        mu = a + b * x
        if extra is not None:
            mu = mu + pytensor.shared(np.asarray(extra), name="offset")
        if likelihood == "normal":
            pm.Normal("y", mu, sigma, observed=y_obs, shape=x.shape)
        else:
            pm.StudentT("y", nu=4, mu=mu, sigma=sigma, observed=y_obs, shape=x.shape)
    return model


def _key(model):
    return _structure(model, {"model": "m"}, ["intercept", "slope", "sigma"])


def test_rebuilding_the_same_model_gives_the_same_key():
    k1, _ = _key(_model())
    k2, _ = _key(_model())
    assert k1 == k2  # else every task would recompile


def test_pm_data_values_are_not_in_the_key():
    assert _key(_model(y=np.arange(5.0)))[0] == _key(_model(y=np.arange(5.0) * 1000))[0]


def test_a_scalar_constant_is_in_the_key_and_named():
    (k1, d1), (k2, d2) = _key(_model(scale=2.5)), _key(_model(scale=2500.0))
    assert k1 != k2
    assert d1["skeleton"] == d2["skeleton"]  # only a constant differs
    changed = d2["signature"].differing(d1["signature"])
    assert changed == ["2.5 -> 2500 in the graph of 'slope'"]


def test_a_prior_changed_by_a_scalar_between_fit_rows_changes_the_key():
    """Even where the fit_spec part of the key cannot see it (a sampler-only entry here)."""
    rows = [{"model": "m", "tune": 100}, {"model": "m", "tune": 1000}]
    keys = [_structure(_model(scale=row["tune"] / 100), row, ["intercept", "slope", "sigma"]) for row in rows]
    assert keys[0][0][0] == keys[1][0][0]  # same fit_spec part: "tune" is a sampler setting
    assert keys[0][0] != keys[1][0]
    assert keys[1][1]["signature"].differing(keys[0][1]["signature"]) == ["1 -> 10 in the graph of 'slope'"]


def test_other_likelihood_initval_and_shared_values_change_the_key():
    base = _key(_model())[0]
    assert _key(_model(likelihood="student"))[0] != base
    assert _key(_model(likelihood="student"))[1]["skeleton"] != _key(_model())[1]["skeleton"]
    assert _key(_model(initval=1.0))[0] != _key(_model(initval=2.0))[0]
    assert _key(_model(extra=[1.0] * 5))[0] != _key(_model(extra=[2.0] * 5))[0]


def test_signature_of_nested_named_variables_covers_deterministics():
    def build(c):
        with pm.Model() as model:
            s2 = pm.InverseGamma("s2", 2, 1)
            s = pm.Deterministic("s", pm.math.sqrt(s2) * c)  # used by a free RV declared after it
            pm.Normal("b", 0, 10 * s)
        return model

    assert graph_signature(build(1.0)).digest != graph_signature(build(2.0)).digest
    assert graph_signature(build(1.0)).digest == graph_signature(build(1.0)).digest


# --------------------------------------------------------------------------- slow: real fits

COLS = ["task_id", "status", "bias__slope", "bias__intercept"]


def _replay(result_dir, task_id):
    r = CliRunner().invoke(main, ["replay", str(result_dir), task_id], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def inline_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaled") / "res"
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger(LOGGER).addHandler(handler)
    try:
        summary = run_simulation(scaled_prior.make_config(out), "inline", progress=False,
                                 emit=lambda s: None).summary
    finally:
        logging.getLogger(LOGGER).removeHandler(handler)
    return out, summary[COLS].reset_index(drop=True), [r.getMessage() for r in records]


@pytest.mark.slow
def test_scaled_prior_inline_every_task_matches_replay(inline_run):
    out, summary, messages = inline_run
    assert (summary["status"] == "success").all()
    # the second data row was fitted with its own scale: slope near 3000, not near 30
    assert summary["bias__slope"].abs().max() < 300
    for task_id in summary["task_id"]:
        assert "matches the stored result: yes" in _replay(out, task_id), task_id
    said = [m for m in messages if "only in the value of" in m]
    assert len(said) == 1 and "cell d002_f001" in said[0] and "'slope'" in said[0] and "pm.Data" in said[0]


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "mock"])
def test_scaled_prior_other_executors_match_inline(executor, inline_run, tmp_path):
    lines = []
    out = tmp_path / "res"
    s = run_simulation(scaled_prior.make_config(out), executor, workers=1, progress=False,
                       emit=lines.append).summary
    pd.testing.assert_frame_equal(s[COLS].reset_index(drop=True), inline_run[1], check_exact=True)
    assert "matches the stored result: yes" in _replay(out, "d002_f001_r00001")
    # the worker's notice reaches the driver's output, naming the constant
    said = [line for line in lines if "only in the value of" in line]
    assert len(said) == 1 and "cell d002_f001" in said[0] and "'slope'" in said[0]


def _ctx(rep):
    return TaskContext(task_id=f"d001_f001_r{rep + 1:05d}", task_index=rep, data_idx=0, fit_idx=0, rep_idx=rep,
                       data_seed=rep, fit_seed=rep)


@pytest.mark.slow
def test_data_derived_scalar_between_replicates_of_one_cell(caplog, tmp_path):
    """Replicates differ in std(y): each task samples with its own scale, with and without data=."""
    ds = [scaled_prior.generate({"unit": 1.0}, np.random.default_rng(s), None) for s in (1, 2)]
    kw = dict(draws=100, tune=100, chains=2)
    alone = PyMCFitter(scaled_prior.build_model, **kw).fit(ds[1], {}, 7, _ctx(1))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        plain = PyMCFitter(scaled_prior.build_model, model_cache=tmp_path / "models", **kw)
        with_data = PyMCFitter(scaled_prior.build_model, model_data=scaled_prior.model_data, **kw)
        for f in (plain, with_data):
            first = f.fit(ds[0], {}, 7, _ctx(0))
            second = f.fit(ds[1], {}, 7, _ctx(1))
            assert f.n_compiles == 2
            assert all(np.array_equal(second.draws[v], alone.draws[v]) for v in alone.draws)
            assert not np.array_equal(first.draws["slope"], second.draws["slope"])
    said = [r.getMessage() for r in caplog.records if "only in the value of" in r.getMessage()]
    assert len(said) == 2 and all("cell d001_f001" in m and "'sigma'" in m for m in said)
    # a model that differs from an earlier one only in constants is not written to disk:
    # with a scale computed from every dataset that would be one file per task
    assert len(list((tmp_path / "models").glob("model-*.pkl"))) == 1
