"""PyMCFitter: real nutpie/PyMC fits of a tiny linear regression (2 chains x 200 draws).

Most tests share one fitter (one nutpie compile, several seconds), so they are marked slow.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from bayesim_hpc.data import SimData
from bayesim_hpc.fitters.base import DIAGNOSTIC_COLUMNS, FitResult, Fitter

pm = pytest.importorskip("pymc")
pytest.importorskip("nutpie")
cloudpickle = pytest.importorskip("cloudpickle")

from bayesim_hpc.fitters.pymc import SAMPLER_KEYS, PyMCFitter  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRIOR_SD = 10.0
KNOWN_SIGMA = 1.0
VARS = ["intercept", "slope", "sigma"]


def build_model(data, fit_spec):
    import pymc as pm

    with pm.Model() as model:
        x = pm.Data("x", data.column("x"))
        y = pm.Data("y_obs", data.column("y"))
        a = pm.Normal("intercept", 0, PRIOR_SD)
        b = pm.Normal("slope", 0, PRIOR_SD)
        if fit_spec.get("model") == "known_sigma":
            sigma = KNOWN_SIGMA
        else:
            sigma = pm.HalfNormal("sigma", 5)
        if fit_spec.get("noisy"):
            warnings.warn("build_model says hello", UserWarning, stacklevel=2)
            logging.getLogger("pymc").warning("a pymc log line")
            logging.getLogger("pymc").info("an info line (dropped)")
        pm.Normal("y", a + b * x, sigma, observed=y, shape=x.shape)
    return model


def make_data(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = 1.0 + 2.0 * x + rng.normal(scale=KNOWN_SIGMA, size=n)
    return SimData(
        train={"x": x, "y": y}, response="y",
        true_params={"intercept": 1.0, "slope": 2.0, "sigma": KNOWN_SIGMA},
    )


def model_data(data, fit_spec):
    """The pm.Data values of build_model, for PyMCFitter(model_data=...)."""
    return {"x": data.column("x"), "y_obs": data.column("y")}


def build_fixed_n(data, fit_spec):
    """A likelihood whose length is a number taken from the data: with_data cannot resize it."""
    import pymc as pm

    with pm.Model() as model:
        x = pm.Data("x", data.column("x"))
        y = pm.Data("y_obs", data.column("y"))
        a = pm.Normal("intercept", 0, PRIOR_SD)
        b = pm.Normal("slope", 0, PRIOR_SD)
        pm.Normal("y", a + b * x, KNOWN_SIGMA, observed=y, shape=len(data.column("x")))
    return model


def predict_mean(draws, data, fit_spec):
    """Posterior-mean line at the training x (refers to the pymc module on purpose)."""
    assert pm.__name__ == "pymc"
    x = data.column("x")
    return {"mu_mean": draws["intercept"].mean() + draws["slope"].mean() * x}


SPEC = {"model": "linear"}


@pytest.fixture(scope="module")
def fitter():
    return PyMCFitter(build_model, draws=200, tune=200, chains=2)


@pytest.fixture(scope="module")
def data_a():
    return make_data(50, 1)


@pytest.fixture(scope="module")
def data_b():
    return make_data(70, 2)  # another n: the compiled model must take it


def _same(r1: FitResult, r2: FitResult) -> bool:
    return r1.draws.keys() == r2.draws.keys() and all(
        np.array_equal(r1.draws[k], r2.draws[k]) for k in r1.draws
    )


# --------------------------------------------------------------------------- fast


def test_settings_override_from_fit_spec():
    f = PyMCFitter(build_model, draws=100, tune=50, chains=3, target_accept=0.8)
    assert isinstance(f, Fitter)
    st = f.settings({"model": "linear", "sampler": "pymc", "target_accept": 0.95})
    assert st["sampler"] == "pymc" and st["target_accept"] == 0.95
    assert (st["draws"], st["tune"], st["chains"]) == (100, 50, 3)
    assert f.settings({})["sampler"] == "nutpie"
    assert {"sampler", "target_accept"} <= SAMPLER_KEYS
    with pytest.raises(ValueError):
        f.settings({"sampler": "stan"})
    with pytest.raises(ValueError):
        PyMCFitter(build_model, sampler="emcee")


def test_diagnostic_warnings_text():
    f = PyMCFitter(build_model, chains=4)
    st = f.settings({})
    diag = {"n_divergent": 12.0, "n_max_treedepth": 3.0, "rhat_max": 1.05, "ess_bulk_min": 80.0, "ess_tail_min": 500.0}
    w = f._warnings(diag, st)
    assert "12 divergent transitions" in w
    assert "R-hat 1.0500 > 1.01" in w
    assert "ESS bulk 80 < 400" in w
    assert any("maximum tree depth" in m for m in w)
    assert not any(m.startswith("ESS tail") for m in w)
    ok = {"n_divergent": 0.0, "n_max_treedepth": 0.0, "rhat_max": 1.001, "ess_bulk_min": 900.0, "ess_tail_min": 900.0}
    assert f._warnings(ok, st) == []


def test_pickle_drops_caches():
    f = PyMCFitter(build_model, draws=10)
    f.n_compiles = 3
    f._models.models["k"] = object()
    g = cloudpickle.loads(cloudpickle.dumps(f))
    assert g.n_compiles == 0 and len(g._models) == 0 and g.draws == 10
    assert g.build_model is build_model
    h = pickle.loads(pickle.dumps(f))
    assert h.n_compiles == 0 and h.draws == 10
    fd = PyMCFitter(build_model, draws=10, model_data=model_data)
    fd._data_index["k"] = object()
    fd.n_builds = 2
    gd = cloudpickle.loads(cloudpickle.dumps(fd))
    assert gd.model_data is model_data and len(gd._data_index) == 0 and gd.n_builds == 0


def test_model_data_must_be_callable():
    with pytest.raises(TypeError, match="model_data"):
        PyMCFitter(build_model, model_data={"x": [1.0]})


# --------------------------------------------------------------------------- nutpie


@pytest.mark.slow
def test_draws_shapes_diagnostics_timing(fitter, data_a):
    r = fitter.fit(data_a, SPEC, seed=11, task_ctx=None)
    assert set(r.draws) == set(VARS)
    for v in VARS:
        assert r.draws[v].shape == (2, 200) and r.draws[v].dtype == np.float64
    assert (r.draws["sigma"] > 0).all()
    for col in DIAGNOSTIC_COLUMNS:
        assert col in r.diagnostics
    assert r.diagnostics["n_divergent"] >= 0 and r.diagnostics["n_max_treedepth"] >= 0
    assert 1.0 - 0.05 < r.diagnostics["rhat_max"] < 1.1
    assert r.diagnostics["ess_bulk_min"] > 50
    assert {"rhat.slope", "ess_bulk.slope", "ess_tail.slope"} <= set(r.diagnostics)
    assert {"build", "compile", "sampling", "diagnostics", "total"} <= set(r.timing)
    assert r.fit is not None and "posterior" in r.fit.groups()
    assert fitter.n_compiles == 1


@pytest.mark.slow
def test_compile_once_across_datasets_and_sizes(fitter, data_a, data_b):
    before = fitter.n_compiles
    r1 = fitter.fit(data_a, SPEC, seed=1, task_ctx=None)
    r2 = fitter.fit(data_b, SPEC, seed=1, task_ctx=None)
    r3 = fitter.fit(data_a, {**SPEC, "target_accept": 0.9}, seed=1, task_ctx=None)
    assert fitter.n_compiles == max(before, 1)
    assert r2.timing["compile"] == 0.0 and r3.timing["compile"] == 0.0
    # the data really changed: different datasets, different posteriors
    assert not np.allclose(r1.draws["slope"].mean(), r2.draws["slope"].mean(), atol=1e-6)


@pytest.mark.slow
def test_same_seed_identical_in_any_order(fitter, data_a, data_b):
    big_seed = 2**63 + 12345
    a1 = fitter.fit(data_a, SPEC, seed=big_seed, task_ctx=None)
    b1 = fitter.fit(data_b, SPEC, seed=7, task_ctx=None)
    b2 = fitter.fit(data_b, SPEC, seed=7, task_ctx=None)
    a2 = fitter.fit(data_a, SPEC, seed=big_seed, task_ctx=None)
    assert _same(a1, a2) and _same(b1, b2)
    a3 = fitter.fit(data_a, SPEC, seed=big_seed + 1, task_ctx=None)
    assert not np.array_equal(a1.draws["slope"], a3.draws["slope"])


@pytest.mark.slow
def test_same_seed_identical_in_another_process(fitter, data_a, data_b, tmp_path):
    ref_a = fitter.fit(data_a, SPEC, seed=3, task_ctx=None)
    ref_b = fitter.fit(data_b, SPEC, seed=4, task_ctx=None)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        blob = cloudpickle.dumps((fitter, data_a, data_b, SPEC))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    (tmp_path / "in.pkl").write_bytes(blob)
    script = textwrap.dedent(
        f"""
        import pickle, numpy as np
        fitter, a, b, spec = pickle.load(open({str(tmp_path / 'in.pkl')!r}, "rb"))
        rb = fitter.fit(b, spec, seed=4, task_ctx=None)   # other order than the parent
        ra = fitter.fit(a, spec, seed=3, task_ctx=None)
        np.savez({str(tmp_path / 'out.npz')!r},
                 **{{"a_" + k: v for k, v in ra.draws.items()}},
                 **{{"b_" + k: v for k, v in rb.draws.items()}})
        print("compiles", fitter.n_compiles)
        """
    )
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "compiles 1" in out.stdout
    got = np.load(tmp_path / "out.npz")
    for k in VARS:
        assert np.array_equal(got["a_" + k], ref_a.draws[k])
        assert np.array_equal(got["b_" + k], ref_b.draws[k])


@pytest.mark.slow
def test_warnings_captured_not_printed(fitter, data_a, capfd):
    r = fitter.fit(data_a, {**SPEC, "noisy": True}, seed=5, task_ctx=None)
    joined = "\n".join(r.warnings)
    assert "UserWarning: build_model says hello" in joined
    assert "pymc: a pymc log line" in joined
    assert "info line" not in joined
    err = capfd.readouterr().err
    assert "build_model says hello" not in err and "a pymc log line" not in err
    # loggers are restored after the fit
    assert logging.getLogger("pymc").propagate in (True, False)
    assert not any(type(h).__name__ == "_ListHandler" for h in logging.getLogger("pymc").handlers)
    # "noisy" is a model-defining entry: another structure, one more compile
    assert fitter.compile_log[-1]["fit_spec"].get("noisy") == "True"


@pytest.mark.slow
def test_diagnostic_warnings_from_a_real_fit(fitter, data_a):
    old = fitter.ess_per_chain
    fitter.ess_per_chain = 10_000  # impossible with 200 draws per chain
    try:
        r = fitter.fit(data_a, SPEC, seed=6, task_ctx=None)
    finally:
        fitter.ess_per_chain = old
    assert any(w.startswith("ESS bulk") and w.endswith("< 20000") for w in r.warnings)


@pytest.mark.slow
def test_keep_fit_only_if_warned(data_a):
    f = PyMCFitter(
        build_model, draws=200, tune=200, chains=2, keep_fit_only_if_warned=True,
        predict=predict_mean,
    )
    r = f.fit(data_a, SPEC, seed=11, task_ctx=None)
    assert (r.fit is None) == (not r.warnings)
    assert r.predictions["mu_mean"].shape == (50,) and "predict" in r.timing
    f.ess_per_chain = 10_000
    r = f.fit(data_a, SPEC, seed=11, task_ctx=None)
    assert r.warnings and r.fit is not None
    assert f.n_compiles == 1


@pytest.mark.slow
def test_posterior_matches_exact_conjugate_posterior(fitter):
    data = make_data(50, 21)
    spec = {"model": "known_sigma"}
    n_before = fitter.n_compiles
    r = fitter.fit(data, spec, seed=8, task_ctx=None)
    assert fitter.n_compiles == n_before + 1  # a new structure compiles once ...
    fitter.fit(make_data(60, 22), spec, seed=9, task_ctx=None)
    fitter.fit(make_data(50, 1), SPEC, seed=9, task_ctx=None)
    assert fitter.n_compiles == n_before + 1  # ... and both structures stay cached
    assert set(r.draws) == {"intercept", "slope"}
    # exact Gaussian posterior of (intercept, slope) with known sigma and N(0, 10^2) priors
    X = np.column_stack([np.ones(50), data.column("x")])
    prec = X.T @ X / KNOWN_SIGMA**2 + np.eye(2) / PRIOR_SD**2
    cov = np.linalg.inv(prec)
    mean = cov @ X.T @ data.column("y") / KNOWN_SIGMA**2
    sd = np.sqrt(np.diag(cov))
    for i, v in enumerate(["intercept", "slope"]):
        d = r.draws[v].reshape(-1)
        ess = r.diagnostics[f"ess_bulk.{v}"]
        assert abs(d.mean() - mean[i]) < 4 * sd[i] / np.sqrt(ess), v
        assert abs(d.std() / sd[i] - 1) < 0.2, v


@pytest.mark.slow
def test_pymc_sampler_fallback_deterministic(fitter, data_a):
    n_before = fitter.n_compiles
    spec = {**SPEC, "sampler": "pymc", "target_accept": 0.9}
    r1 = fitter.fit(data_a, spec, seed=10, task_ctx=None)
    r2 = fitter.fit(data_a, spec, seed=10, task_ctx=None)
    assert fitter.n_compiles == n_before  # the pymc path compiles nothing of ours
    assert set(r1.draws) == set(VARS) and r1.draws["slope"].shape == (2, 200)
    assert _same(r1, r2)
    assert "diverging" in r1.fit.sample_stats
    for col in DIAGNOSTIC_COLUMNS:
        assert np.isfinite(r1.diagnostics[col])
    nut = fitter.fit(data_a, SPEC, seed=10, task_ctx=None)
    assert abs(nut.draws["slope"].mean() - r1.draws["slope"].mean()) < 0.1


@pytest.mark.slow
def test_compile_dir_applied_before_pymc_import_on_unpickle(tmp_path):
    cdir = tmp_path / "ptcache"
    # predict_mean refers to the pymc module: unpickling it imports pymc (and pytensor),
    # which must happen after the compile dir is configured
    f = PyMCFitter(build_model, compile_dir=cdir, predict=predict_mean)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        blob = cloudpickle.dumps(f)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    (tmp_path / "f.pkl").write_bytes(blob)
    script = textwrap.dedent(
        f"""
        import os, pickle, sys
        os.environ.pop("PYTENSOR_FLAGS", None)
        assert "pytensor" not in sys.modules
        f = pickle.load(open({str(tmp_path / 'f.pkl')!r}, "rb"))
        print("imported by unpickling", "pytensor" in sys.modules)
        import pytensor
        print("dir", pytensor.config.base_compiledir)
        from bayesim_hpc.fitters.pymc import configure_compile_dir
        try:
            configure_compile_dir({str(tmp_path / 'other')!r})
        except RuntimeError as e:
            print("late", "too late" in str(e))
        """
    )
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("PYTENSOR_FLAGS", None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "imported by unpickling True" in out.stdout
    assert f"dir {cdir}" in out.stdout
    assert "late True" in out.stdout


# --------------------------------------------------------------------------- data=


@pytest.fixture(scope="module")
def data_fitter():
    return PyMCFitter(build_model, draws=200, tune=200, chains=2, model_data=model_data)


@pytest.mark.slow
def test_data_callable_same_draws_without_rebuilding(fitter, data_fitter, data_a, data_b):
    f = data_fitter
    calls = [(data_a, SPEC, 21), (data_b, SPEC, 22), (data_a, SPEC, 23), (data_b, {**SPEC, "target_accept": 0.9}, 24)]
    builds, compiles = f.n_builds, f.n_compiles
    for data, spec, seed in calls:
        with_data = f.fit(data, spec, seed=seed, task_ctx=None)
        rebuilt = fitter.fit(data, spec, seed=seed, task_ctx=None)
        assert _same(with_data, rebuilt), (spec, seed)
        assert with_data.diagnostics == rebuilt.diagnostics
        assert {"build", "compile", "sampling", "diagnostics", "total"} <= set(with_data.timing)
    # build_model ran for the first two tasks of each data key (another n is another key;
    # the second checks the first), nutpie compiled once; sampler-only fit_spec entries are
    # not part of the key
    assert f.n_builds - builds == (4 if builds == 0 else 0)
    assert f.n_compiles - compiles == (1 if compiles == 0 else 0)
    n = f.n_builds
    r = f.fit(make_data(50, 3), SPEC, seed=25, task_ctx=None)
    assert f.n_builds == n and r.timing["compile"] == 0.0


@pytest.mark.slow
def test_data_callable_contract_is_checked_when_building(data_a):
    def missing(data, fit_spec):
        return {"x": data.column("x")}

    def wrong(data, fit_spec):
        return {"x": data.column("x"), "y_obs": data.column("y") + 1.0}

    def not_a_dict(data, fit_spec):
        return [data.column("x")]

    for fn, err, text in ((missing, ValueError, "missing ['y_obs']"), (wrong, ValueError, "differs"),
                          (not_a_dict, TypeError, "must return a dict")):
        f = PyMCFitter(build_model, draws=20, tune=20, chains=1, model_data=fn)
        with pytest.raises(err, match=re.escape(text)):
            f.fit(data_a, SPEC, seed=1, task_ctx=None)
        assert f.n_compiles == 0


@pytest.mark.slow
def test_data_callable_sampler_failure_is_raised_not_recompiled(data_fitter, data_a, monkeypatch):
    import nutpie

    f = data_fitter
    f.fit(data_a, SPEC, seed=31, task_ctx=None)  # this data key has sampled
    compiles = f.n_compiles

    def boom(*args, **kwargs):
        raise RuntimeError("All initialization points failed")

    monkeypatch.setattr(nutpie, "sample", boom)
    with pytest.raises(RuntimeError, match="initialization"):
        f.fit(data_a, SPEC, seed=32, task_ctx=None)
    assert f.n_compiles == compiles


@pytest.mark.slow
def test_data_callable_literal_shape_compiles_per_shape(data_a, data_b, caplog):
    f = PyMCFitter(build_fixed_n, draws=200, tune=200, chains=2, model_data=model_data)
    ra = f.fit(data_a, SPEC, seed=41, task_ctx=None)
    assert f.n_compiles == 1 and ra.draws["slope"].shape == (2, 200)
    # n=70: the literal shape is a constant of the graph, so the structure key sees it and
    # the fitter compiles a model for n=70 rather than running the n=50 one on it
    with caplog.at_level(logging.WARNING, logger="bayesim_hpc.fitters.pymc"):
        rb = f.fit(data_b, SPEC, seed=42, task_ctx=None)
    assert f.n_compiles == 2 and rb.timing["compile"] > 0 and "failed_sampling" not in rb.timing
    assert not any("rebuilding and compiling" in r.getMessage() for r in caplog.records)
    assert abs(rb.draws["slope"].mean() - 2.0) < 0.5
    # both shapes now have their own compiled model: no more compiles
    rb2 = f.fit(make_data(70, 5), SPEC, seed=43, task_ctx=None)
    ra2 = f.fit(make_data(50, 6), SPEC, seed=44, task_ctx=None)
    assert f.n_compiles == 2
    assert "failed_sampling" not in rb2.timing and "failed_sampling" not in ra2.timing
    # the same seed and data give the same draws
    assert _same(f.fit(data_b, SPEC, seed=42, task_ctx=None), rb)


# --------------------------------------------------------------------------- lazy_idata


@pytest.mark.slow
def test_lazy_idata_same_numbers_and_builds_on_use(fitter, data_a):
    import arviz as az
    import xarray as xr

    from bayesim_hpc.fitters.pymc import LazyInferenceData

    fitter.lazy_idata = False  # read per fit: the compiled model is shared
    try:
        eager = fitter.fit(data_a, SPEC, seed=51, task_ctx=None)
    finally:
        fitter.lazy_idata = True  # the default
    lazy = fitter.fit(data_a, SPEC, seed=51, task_ctx=None)
    assert _same(eager, lazy) and lazy.diagnostics == eager.diagnostics
    assert "extract" in lazy.timing and lazy.timing["sampling"] > 0
    held = lazy.__dict__["fit"]
    assert isinstance(held, LazyInferenceData) and not held.is_materialized
    assert isinstance(eager.__dict__["fit"], az.InferenceData)
    # pickled (retain="fit") it is the InferenceData nutpie.sample returns
    idata = cloudpickle.loads(cloudpickle.dumps(held))
    assert isinstance(idata, az.InferenceData) and held.is_materialized
    assert set(idata.groups()) == set(eager.fit.groups())
    for group in eager.fit.groups():
        xr.testing.assert_equal(idata[group], eager.fit[group])
    assert "diverging" in held.sample_stats and held.materialize() is held.materialize()
    # reading FitResult.fit (a metric, the fit retention) gives what ArviZ functions take
    again = fitter.fit(data_a, SPEC, seed=51, task_ctx=None)
    assert not again.__dict__["fit"].is_materialized
    assert isinstance(again.fit, az.InferenceData)
    assert float(az.rhat(again.fit)["slope"]) == float(az.rhat(eager.fit)["slope"])


@pytest.mark.slow
def test_lazy_idata_unexpected_trace_falls_back_to_inference_data(fitter, data_a, monkeypatch):
    import arviz as az

    import bayesim_hpc.fitters.pymc.raw_trace as fp

    fitter.lazy_idata = False
    try:
        eager = fitter.fit(data_a, SPEC, seed=52, task_ctx=None)
    finally:
        fitter.lazy_idata = True
    monkeypatch.setattr(fp, "_arrow_values", lambda column, n_rows: None)  # e.g. missing values
    r = fitter.fit(data_a, SPEC, seed=52, task_ctx=None)
    assert isinstance(r.fit, az.InferenceData)
    assert _same(eager, r) and r.diagnostics == eager.diagnostics


# --------------------------------------------------------------------------- notices


def test_data_line_names_the_columns_of_the_pm_data():
    from bayesim_hpc.fitters.pymc import data_line

    d = make_data(20, 9)
    line = data_line(build_model(d, SPEC), d)
    assert line == "lambda data, fit_spec: {'x': data.column('x'), 'y_obs': data.column('y')}"
    other = make_data(20, 10)  # pm.Data values that are no column of this dataset are left to the user
    assert data_line(build_model(d, SPEC), other) == "lambda data, fit_spec: {'x': ..., 'y_obs': ...}"


@pytest.mark.slow
def test_rebuild_share_said_once_per_cell_with_the_data_line(fitter, data_a, caplog, monkeypatch):
    import bayesim_hpc.fitters.pymc.fitter as fp
    from bayesim_hpc.data import TaskContext

    fitter.fit(data_a, SPEC, seed=60, task_ctx=None)  # compiled: later fits only rebuild

    def ctx(cell, rep):
        return TaskContext(task_id=f"d00{cell}_f001_r0000{rep}", task_index=rep, data_idx=cell, fit_idx=0,
                           rep_idx=rep, data_seed=rep, fit_seed=rep)

    monkeypatch.setattr(fp, "_REBUILD_SHARE", 0.0)  # any share is noticeable: said after 3 tasks
    with caplog.at_level(logging.WARNING, logger="bayesim_hpc.fitters.pymc"):
        for rep in range(1, 6):
            fitter.fit(data_a, SPEC, seed=60 + rep, task_ctx=ctx(7, rep))
    said = [r.getMessage() for r in caplog.records if "building the model for every task" in r.getMessage()]
    assert len(said) == 1 and "cell d007_f001" in said[0]
    assert "data=lambda data, fit_spec: {'x': data.column('x'), 'y_obs': data.column('y')}" in said[0]
    caplog.clear()
    monkeypatch.setattr(fp, "_REBUILD_SHARE", 1.01)  # never noticeable: never said
    with caplog.at_level(logging.WARNING, logger="bayesim_hpc.fitters.pymc"):
        for rep in range(1, 5):
            fitter.fit(data_a, SPEC, seed=70 + rep, task_ctx=ctx(8, rep))
    assert not [r for r in caplog.records if "building the model" in r.getMessage()]


def test_names_in_pickles_of_the_single_module_era_stay_importable():
    """study.pkl and retained fit artifacts written before fitters/pymc became a package name these."""
    import bayesim_hpc.fitters.pymc as old

    for name in ("PyMCFitter", "_restore_fitter", "_apply_compile_dir", "_materialized", "LazyInferenceData",
                 "configure_compile_dir", "SAMPLER_KEYS"):
        assert hasattr(old, name), name
