"""Names renamed in 0.3 (issue 20): each old name warns once, naming the new one, and still works;
result directories written before the renames still read."""

from __future__ import annotations

import pickle
import warnings

import pytest

from bayesim_hpc.config import Study
from bayesim_hpc.deprecation import forget
from bayesim_hpc.resultdir import runtime_tasks_per_segment

from .studies.linear import make_config


def _future_warnings(fn):
    """(result of fn(), messages of the FutureWarnings it emitted)"""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = fn()
    return out, [str(w.message) for w in seen if issubclass(w.category, FutureWarning)]


@pytest.fixture(autouse=True)
def _fresh_warnings():
    forget()
    yield
    forget()


@pytest.mark.parametrize("old", ["chunk_size", "checkpoint_every", "max_in_memory"])
def test_old_tasks_per_segment_names_warn_once_and_work(old):
    cfg, msgs = _future_warnings(lambda: make_config(**{old: 7}))
    assert cfg.tasks_per_segment == 7
    assert len(msgs) == 1 and old in msgs[0] and "tasks_per_segment" in msgs[0]
    cfg, msgs = _future_warnings(lambda: make_config(**{old: 9}))
    assert cfg.tasks_per_segment == 9 and msgs == []  # once per process


def test_old_study_attributes_warn_and_read_tasks_per_segment():
    cfg = make_config(tasks_per_segment=6)
    for attr in ("chunk_size", "checkpoint_every", "flush_every"):
        value, msgs = _future_warnings(lambda attr=attr: getattr(cfg, attr))
        assert value == 6 and len(msgs) == 1 and "tasks_per_segment" in msgs[0]


def test_study_pickled_before_the_rename_loads():
    cfg = make_config(tasks_per_segment=6)
    state = {k: v for k, v in cfg.__dict__.items() if k != "tasks_per_segment"}
    state.update(chunk_size=10, checkpoint_every=4)  # how a 0.2 study.pkl holds it
    old = Study.__new__(Study)
    old.__setstate__(state)
    back = pickle.loads(pickle.dumps(old))
    assert back.tasks_per_segment == 4 and "chunk_size" not in back.__dict__


def test_runtime_settings_of_an_old_directory():
    assert runtime_tasks_per_segment({"chunk_size": 10, "checkpoint_every": 4}, 100) == 4
    assert runtime_tasks_per_segment({"chunk_size": 10}, 100) == 10
    assert runtime_tasks_per_segment({"tasks_per_segment": 3, "chunk_size": 10}, 100) == 3
    assert runtime_tasks_per_segment({}, 100) == 100


def test_slurm_workers_is_max_running():
    from bayesim_hpc.executors.slurm import SlurmExecutor

    ex, msgs = _future_warnings(lambda: SlurmExecutor(workers=5))
    assert ex.parallelism == 5 and len(msgs) == 1 and "max_running" in msgs[0]
    ex, msgs = _future_warnings(lambda: SlurmExecutor(max_running=7))
    assert ex.parallelism == 7 and msgs == []
    with pytest.raises(ValueError, match="max_running"):
        SlurmExecutor(workers=5, max_running=6)


def test_cli_max_running_is_for_slurm_and_workers_maps_to_it():
    import click

    from bayesim_hpc.cli import _throttle

    opts: dict = {}
    workers, msgs = _future_warnings(lambda: _throttle("slurm", 4, None, opts))
    assert workers is None and opts == {"max_running": 4}
    assert len(msgs) == 1 and "--max-running" in msgs[0]
    opts = {}
    assert _throttle("slurm", None, 9, opts) is None and opts == {"max_running": 9}
    assert _throttle("local", 3, None, opts) == 3
    with pytest.raises(click.UsageError, match="--workers"):
        _throttle("local", None, 3, {})


def test_slurm_time_is_time_min(tmp_path):
    from bayesim_hpc.executors.slurm import SlurmExecutor
    from bayesim_hpc.executors.slurm_profile import Escalation, load_profile

    ex, msgs = _future_warnings(lambda: SlurmExecutor(time=30))
    assert ex.time_min == 30 and len(msgs) == 1 and "time_min" in msgs[0]
    assert SlurmExecutor(time_min="1:30:00").time_min == 90
    old = tmp_path / "old.yaml"
    old.write_text("time: 45\nrules:\n  - match: {model: big}\n    time: 90\nescalate: {time_max: 100}\n")
    prof, msgs = _future_warnings(lambda: load_profile(old))
    assert prof["time_min"] == 45 and prof["rules"][0]["time_min"] == 90
    assert prof["escalate"] == {"time_max_min": 100}
    assert any("time_max_min" in m for m in msgs) and any("time is renamed time_min" in m for m in msgs)
    ex = SlurmExecutor(profile=str(old))
    assert ex.time_min == 45 and ex.escalation == Escalation(time_max_min=100)
    assert ex.rules.for_cell({}, {"model": "big"}).time_min == 90
    fn = SlurmExecutor(resources=lambda d, f: {"time": 20}).rules  # a resources function's old key
    assert _future_warnings(lambda: fn.for_cell({}, {}).time_min)[0] == 20


def test_mock_time_limit_is_time_limit_s():
    from bayesim_hpc.executors.mock import MockSlurmExecutor

    ex, msgs = _future_warnings(lambda: MockSlurmExecutor(workers=1, time_limit=12.0, signal_delay=3.0))
    assert (ex.time_limit_s, ex.signal_delay_s) == (12.0, 3.0)
    assert len(msgs) == 2 and all("_s" in m for m in msgs)
    assert MockSlurmExecutor(workers=1, time_limit_s=5.0).time_limit_s == 5.0


OLD_DIAG = {"n_divergent": "divergent", "n_max_treedepth": "max_treedepth", "ess_bulk_min": "ess_bulk",
            "ess_tail_min": "ess_tail"}


def _make_0_2_directory(rdir):
    """Run a study, then give its summary and cells the diagnostics names of 0.2."""
    import json

    import h5py
    import pandas as pd

    from bayesim_hpc import run_simulation

    from bayesim_hpc import MockFitter

    run_simulation(make_config(result_path=rdir, n_replicates=6, fitter=MockFitter(diverge_rate=0.5)), "inline",
                   progress=False)
    with h5py.File(rdir / "summary.h5", "r+") as f:
        for where, key in ((f.attrs, "column_order"), (f["numbers"].attrs, "columns")):
            where[key] = json.dumps([OLD_DIAG.get(c, c) for c in json.loads(where[key])])
    cells = pd.read_csv(rdir / "cells.csv")
    cells.rename(columns={"n_divergent__sum": "divergent__sum", "ess_bulk_min__min": "ess_bulk__min"}).to_csv(
        rdir / "cells.csv", index=False)


def test_old_diagnostics_columns_read_under_current_names(tmp_path):
    from bayesim_hpc import load_results
    from bayesim_hpc.names import current_name

    rdir = tmp_path / "r"
    _make_0_2_directory(rdir)
    res = load_results(rdir)
    s = res.summary
    for new, old in OLD_DIAG.items():
        assert current_name(old) == new
        assert old in s.columns and new in s.columns
        assert s[new].equals(s[old])
    assert s["n_divergent"].sum() > 0
    assert {"n_divergent__sum", "divergent__sum", "ess_bulk_min__min"} <= set(res.cells.columns)
    assert (res.cells["n_divergent__sum"] == res.cells["divergent__sum"]).all()


def test_fitter_returning_old_diagnostic_keys_warns_and_fills_new_columns(tmp_path):
    from bayesim_hpc import FitResult, run_simulation
    from bayesim_hpc.fitters.mock import MockFitter

    class OldFitter(MockFitter):
        def fit(self, data, fit_spec, seed, task_ctx):
            r = super().fit(data, fit_spec, seed, task_ctx)
            return FitResult(draws=r.draws, diagnostics={"divergent": 3.0, "ess_bulk": 10.0})

    res, msgs = _future_warnings(lambda: run_simulation(make_config(result_path=tmp_path / "r", n_replicates=3,
                                                                    fitter=OldFitter()), "inline", progress=False))
    s = res.summary
    assert (s["n_divergent"] == 3.0).all() and (s["ess_bulk_min"] == 10.0).all()
    assert "divergent" not in s.columns
    assert sum("n_divergent" in m for m in msgs) == 1


def test_pymc_fitter_old_keywords_warn_work_and_keep_the_fingerprint():
    import cloudpickle

    from bayesim_hpc import PyMCFitter
    from bayesim_hpc.fingerprint import describe

    def build(data, fit_spec):
        return None

    def model_data(data, fit_spec):
        return {}

    old, msgs = _future_warnings(lambda: PyMCFitter(build, data=model_data, keep_draws_only_if_warned=True))
    assert old.model_data is model_data and old.keep_fit_only_if_warned is True
    assert len(msgs) == 2 and any("model_data" in m for m in msgs) and any("keep_fit_only_if_warned" in m for m in msgs)
    new = PyMCFitter(build, model_data=model_data, keep_fit_only_if_warned=True)
    assert describe(new) == describe(old)
    text = describe(new)  # described with the names of 0.2: directories frozen then still match
    assert "  data = " in text and "keep_draws_only_if_warned = True" in text
    value, msgs = _future_warnings(lambda: new.data)
    assert value is model_data and len(msgs) == 1
    # a fitter pickled before 0.3 holds its settings under the old names
    state = new.__getstate__()
    state["data"], state["keep_draws_only_if_warned"] = state.pop("model_data"), state.pop("keep_fit_only_if_warned")
    back = PyMCFitter.__new__(PyMCFitter)
    back.__setstate__(state)
    assert back.model_data is model_data and back.keep_fit_only_if_warned is True
    assert describe(back) == text
    again = cloudpickle.loads(cloudpickle.dumps(back))
    assert again.keep_fit_only_if_warned is True and "model_data" in again.__dict__


def test_directory_frozen_before_the_rename_resumes_with_its_tasks_per_segment(tmp_path):
    """A 0.2 directory: study.pkl holds chunk_size/checkpoint_every, study.json runtime the old
    keys. resume reads them (the smaller counts) and runs the missing tasks in segments of 3."""
    import hashlib
    import json
    import shutil

    import cloudpickle

    from bayesim_hpc import resume_simulation, run_simulation
    from bayesim_hpc.storage import iter_segment_paths

    rdir = tmp_path / "r"
    cfg = make_config(result_path=rdir, n_replicates=12, shard_size=12)
    run_simulation(cfg, "inline", progress=False)
    ref = run_simulation(make_config(result_path=tmp_path / "ref", n_replicates=12, shard_size=12), "inline",
                         progress=False).summary
    old = Study.__new__(Study)  # the study as 0.2 pickled it
    old.__dict__.update({k: v for k, v in cfg.__dict__.items() if k not in ("tasks_per_segment", "space")},
                        chunk_size=4, checkpoint_every=3)
    blob = cloudpickle.dumps(old)
    (rdir / "study.pkl").write_bytes(blob)
    raw = json.loads((rdir / "study.json").read_text())
    raw["study_pkl_sha256"] = hashlib.sha256(blob).hexdigest()
    raw["runtime"] = {k: v for k, v in raw["runtime"].items() if k != "tasks_per_segment"}
    raw["runtime"].update(chunk_size=4, checkpoint_every=3)
    raw.update(chunk_size=4, checkpoint_every=3)
    (rdir / "study.json").write_text(json.dumps(raw))
    shutil.rmtree(rdir / "shards")  # every task missing again
    (rdir / "summary.h5").unlink()
    res = resume_simulation(rdir, "inline", progress=False)
    assert len(list(iter_segment_paths(rdir))) == 4  # 12 tasks, 3 per segment
    assert json.loads((rdir / "study.json").read_text())["runtime"]["tasks_per_segment"] == 3
    cols = ["task_id", "status", "bias__slope", "rmse__slope"]
    assert res.summary[cols].equals(ref[cols])
