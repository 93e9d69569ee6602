"""Grid values keep each column's type (issue 14): an int column reaches the generator and the
fitter as a Python ``int``, a float as ``float``, a str as ``str``, a bool as ``bool``, on every
executor, after freezing, in ``replay`` and in the summary's ``data_*``/``fit_*`` columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bayesim_hpc import MockFitter, SimData, bias_metric, load_results, run_simulation, simulation_config

from .user_path import ROOT, cli

EXPECTED = {"n": int, "sigma": float, "family": str, "robust": bool}


def typed_generator(data_spec, rng, task_ctx):
    got = {k: type(v) for k, v in data_spec.items()}
    if got != {"n": int, "sigma": float, "family": str, "robust": bool}:
        raise TypeError(f"grid values lost their types: {got}")
    x = rng.normal(size=data_spec["n"])   # fails for a float n, as in the README's pattern
    return SimData(train={"x": x, "y": 2 * x + rng.normal(scale=data_spec["sigma"], size=data_spec["n"])},
                   response="y", true_params={"slope": 2.0})


class TypedFitter(MockFitter):
    def fit(self, data, fit_spec, seed, task_ctx):
        got = {k: type(v) for k, v in fit_spec.items()}
        if got != {"draws_k": int, "label": str, "scale_f": float, "flag": bool}:
            raise TypeError(f"fit grid values lost their types: {got}")
        return super().fit(data, fit_spec, seed, task_ctx)


DICT_GRIDS = dict(data_grid={"n": [50, 100], "sigma": [0.5, 1.0], "family": ["normal"], "robust": [True, False]},
                  fit_grid={"draws_k": [1], "label": ["m"], "scale_f": [1.0], "flag": [False]})
def frame_grids():
    data = pd.DataFrame({"n": [50, 100, 50], "sigma": [0.5, 1.0, 2.0], "family": ["normal", "t", "t"],
                         "robust": [True, False, True]})
    fit = pd.DataFrame({"draws_k": [1, 2], "label": ["m", "n"], "scale_f": [1.0, 0.5], "flag": [False, True]})
    return dict(data_grid=data, fit_grid=fit)


def make(grids, **kw):
    return simulation_config(data_generator=typed_generator, fitter=TypedFitter(draws=50),
                             metrics=[bias_metric()], n_replicates=2, seed=3, retain="minimal", **grids, **kw)


@pytest.mark.parametrize("grids", [DICT_GRIDS, frame_grids()], ids=["dict", "frame"])
def test_specs_keep_python_types(grids):
    study = make(grids)
    for d in range(len(study.data_grid)):
        assert {k: type(v) for k, v in study.data_spec(d).items()} == EXPECTED
    spec = study.data_spec(0)
    spec["n"] = -1  # a generator may change its copy
    assert study.data_spec(0)["n"] != -1


@pytest.mark.parametrize("executor", ["inline", "local", "mock"])
@pytest.mark.parametrize("grids", [DICT_GRIDS, frame_grids()], ids=["dict", "frame"])
def test_types_survive_every_executor_and_the_summary(executor, grids, tmp_path):
    res = run_simulation(make(grids, result_path=tmp_path / "r"), executor, workers=2, progress=False,
                         emit=lambda s: None)
    s = res.summary
    assert (s["status"] == "success").all(), s.get("error_message", pd.Series()).dropna().unique()[:3]
    assert s["data_n"].dtype.kind == "i" and s["data_sigma"].dtype.kind == "f"
    assert s["data_robust"].dtype == bool and s["fit_flag"].dtype == bool
    assert s["data_family"].map(type).eq(str).all() and s["fit_draws_k"].dtype.kind == "i"
    # the summary holds the user's values, row by row
    first = s.sort_values("task_id").iloc[0]
    assert first["data_n"] == 50 and first["data_family"] == "normal" and bool(first["data_robust"]) is True


def test_types_survive_freezing_and_replay(tmp_path):
    study_file = tmp_path / "typed_study.py"
    study_file.write_text(
        "from tests.test_grid_types import make, DICT_GRIDS\n"
        "config = make(DICT_GRIDS)\n")
    rdir = tmp_path / "r"
    env = {"PYTHONPATH": str(ROOT)}   # the study file imports its functions from this test module
    cli("run", str(study_file), "--result-dir", str(rdir), env=env, check_rc=0)
    out = cli("replay", str(rdir), "d002_f001_r00002", env=env, check_rc=0)
    assert "'n': 50" in out.stdout and "'robust': False" in out.stdout, out.stdout
    assert "matches the stored result: yes" in out.stdout.lower(), out.stdout
    assert load_results(rdir).summary["data_n"].dtype.kind == "i"


def test_wide_grids_build_specs_column_wise():
    """A 1000-row grid's specs come from column lists, not 1000 ``iloc`` Series."""
    study = simulation_config(data_grid={"n": list(range(10, 1010)), "sigma": [1.0]}, fit_grid={"m": ["a"]},
                              data_generator=typed_generator, fitter=MockFitter(), metrics=[bias_metric()], seed=1)
    assert study.data_spec(999) == {"n": 1009, "sigma": 1.0}
    assert isinstance(study.data_spec(999)["n"], int) and not isinstance(study.data_spec(0)["n"], np.integer)


def test_select_by_grid_values(tmp_path):
    res = run_simulation(make(frame_grids(), result_path=tmp_path / "r"), "inline", progress=False,
                         emit=lambda s: None)
    rows = res.select(n=50, label="n")
    assert len(rows) == 2 * 2 and set(rows["data_n"]) == {50} and set(rows["fit_label"]) == {"n"}
    assert len(res.select(family=["t"], flag=True)) == 2 * 2
    cells = res.select("cells", n=100)
    assert len(cells) == 2 and set(cells["data_n"]) == {100}
    with pytest.raises(KeyError, match="the grid columns are: data_family"):
        res.select(nn=1)
