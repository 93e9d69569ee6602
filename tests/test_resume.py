"""Resume runs only what is missing or failed, and refuses a changed study."""

import os

import pytest

from bayesim_hpc import (BayesimError, MockFitter, StudyChangedError, clean_old_checkpoints, list_checkpoints,
                         load_results, resume_simulation, run_simulation, rmse_metric, bias_metric, coverage_metric)
from bayesim_hpc.storage import iter_segment_paths

from .studies.linear import make_config

QUIET = dict(progress=False, emit=lambda s: None)
COLS = ["task_id", "status", "rmse__slope", "bias__intercept", "cover90__sigma"]


def _gen_other(spec, rng, ctx):
    from .studies.linear import generate

    d = generate(spec, rng, ctx)
    d.true_params["slope"] = 2.5
    return d


@pytest.mark.parametrize("change,named", [
    (dict(seed=43), "seed"),
    (dict(n_replicates=19), "n_replicates"),
    (dict(data_grid={"n": [200], "sigma": [1.0]}), "data_grid"),
    (dict(fit_grid={"model": ["quadratic"]}), "fit_grid"),
    (dict(fitter=MockFitter(scale=2.0)), "fitter"),
    (dict(metrics=[rmse_metric("params"), bias_metric(), coverage_metric()]), "metrics"),
    (dict(data_generator=_gen_other), "data_generator"),
])
def test_changed_study_is_refused_naming_the_change(rdir, change, named):
    run_simulation(make_config(result_path=rdir), **QUIET)
    with pytest.raises(StudyChangedError, match=f"{named} changed"):
        run_simulation(make_config(result_path=rdir, **change), **QUIET)


def test_runtime_settings_may_change(rdir):
    run_simulation(make_config(result_path=rdir, tasks_per_segment=5), **QUIET)
    run_simulation(make_config(result_path=rdir, tasks_per_segment=7), **QUIET)


def test_force_moves_old_results_aside(rdir):
    run_simulation(make_config(result_path=rdir), **QUIET)
    res = run_simulation(make_config(result_path=rdir, seed=1), force=True, **QUIET)
    assert len(res.summary) == 20
    assert list(rdir.glob("shards.discarded-*"))


def test_resume_modes(rdir):
    with pytest.raises(BayesimError, match="nothing to resume"):
        run_simulation(make_config(result_path=rdir), resume="must", **QUIET)
    run_simulation(make_config(result_path=rdir), **QUIET)
    with pytest.raises(BayesimError, match="already holds results"):
        run_simulation(make_config(result_path=rdir), resume="never", **QUIET)


def test_resume_reruns_only_missing_and_failed(rdir):
    cfg = make_config(result_path=rdir, n_replicates=30, shard_size=10, tasks_per_segment=5,
                      fitter=MockFitter(fail_tasks=("d001_f001_r00004",)))
    full = run_simulation(cfg, **QUIET).summary
    segs = sorted(iter_segment_paths(rdir))
    segs[-1].unlink()  # lose the last 5 tasks
    before = {p.name for p in iter_segment_paths(rdir)}
    lines = []
    res = resume_simulation(rdir, progress=False, emit=lines.append)
    new = [p for p in iter_segment_paths(rdir) if p.name not in before]
    ran = sum(len(__import__("bayesim_hpc.storage", fromlist=["x"]).read_rows(p).index) for p in new)
    assert ran == 5 + 1  # the lost five and the failed one
    assert res.summary[COLS].equals(full[COLS])
    assert (res.summary["attempt"] >= 1).all()


def test_checkpoints_listed_and_superseded_ones_cleaned(rdir):
    cfg = make_config(result_path=rdir, n_replicates=20, shard_size=10, tasks_per_segment=5)
    run_simulation(cfg, **QUIET)
    ids = list_checkpoints(rdir)
    assert len(ids) == 4 and all(i.startswith("shards/") for i in ids)
    # a duplicate run of shard 0 (as after a requeue race): its old segments become superseded
    from bayesim_hpc.worker import run_shard

    run_shard(rdir, 0, attempt=2, retry_failed=False)  # nothing missing: writes nothing
    assert len(list_checkpoints(rdir)) == 4
    import shutil
    src = sorted(iter_segment_paths(rdir))[0]
    shutil.copy(src, src.with_name(src.name.replace("a001", "a002")))
    import subprocess
    import sys

    from bayesim_hpc.storage import temp_name

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = temp_name(rdir / "summary.h5")
    killed = killed.with_name(killed.name.replace(f".{os.getpid()}@", f".{dead.pid}@"))
    killed.write_bytes(b"a reducer was killed here")
    live = temp_name(rdir / "cells.csv")  # named after this (live) process: kept
    live.write_bytes(b"a reducer is writing here")
    rep = clean_old_checkpoints(rdir, keep_n=1)
    assert sorted(rep.removed) == sorted([killed.name, str(src.relative_to(rdir))])
    assert live.exists() and [k for k, _ in rep.kept] == [live.name]
    assert len(load_results(rdir, reduce="always").summary) == 20


def test_lost_manifest_is_rebuilt_from_the_segments(rdir):
    cfg = make_config(result_path=rdir, n_replicates=30, shard_size=10, tasks_per_segment=5)
    full = run_simulation(cfg, **QUIET).summary
    sorted(iter_segment_paths(rdir))[0].unlink()  # five tasks missing
    (rdir / "manifest.json").unlink()             # and the driver's notebook gone
    from bayesim_hpc.status import study_status

    st = study_status(rdir)
    assert (st.n_success, st.n_missing) == (25, 5)
    assert [s["missing"] for s in st.shards] == [5, 0, 0]
    res = resume_simulation(rdir, progress=False, emit=lambda s: None)
    assert res.summary[COLS].equals(full[COLS])
    assert (rdir / "manifest.json").exists()
