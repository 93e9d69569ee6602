"""Nothing mixed: ``--force`` never lets an old study's worker put rows into the new one."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pandas as pd
import pytest

from bayesim_hpc import BayesimError, reduce_results, run_simulation
from bayesim_hpc.resultdir import ResultDir
from bayesim_hpc.runner import prepare_result_dir
from bayesim_hpc.status import study_status
from bayesim_hpc.storage import iter_segment_paths

from ..studies.linear import drill_config, make_config
from .helpers import QUIET, ROOT, metric_frame, wait_for


def test_force_refuses_while_a_worker_of_the_old_study_lives(rdir):
    old = drill_config(rdir, n_tasks=200, delay=0.05)
    prepare_result_dir(old, ResultDir(rdir), "auto", False, 125)
    worker = subprocess.Popen([sys.executable, "-m", "bayesim_hpc.worker", str(rdir), "0"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (rdir / "shards" / "s00000" / "progress.json").exists(), what="the worker to start")
        new = drill_config(rdir, n_tasks=200, seed=7)
        with pytest.raises(BayesimError, match=f"live work of the old study: worker pid {worker.pid}"):
            run_simulation(new, "inline", force=True, **QUIET)
        assert ResultDir(rdir).read_frozen().raw["seed"] == 42  # nothing was discarded
    finally:
        worker.kill()
        worker.wait()


def test_rows_of_a_replaced_study_are_skipped_and_reported(tmp_path):
    rdir = tmp_path / "r"
    run_simulation(make_config(result_path=rdir, data_grid={"n": [100], "sigma": [100.0]}, shard_size=10,
                               tasks_per_segment=5), **QUIET)
    late = sorted(iter_segment_paths(rdir))[0].read_bytes()  # what a worker of the old study still writes
    new_cfg = make_config(result_path=rdir, shard_size=10, tasks_per_segment=5)
    new = run_simulation(new_cfg, force=True, **QUIET).summary
    clean = run_simulation(make_config(result_path=tmp_path / "clean", shard_size=10, tasks_per_segment=5), **QUIET).summary
    # the late writer lands in the new shards/ with a high attempt number: on the old code it won
    intruder = rdir / "shards" / "s00000" / "a009-00000-0badf00d.h5"
    intruder.write_bytes(late)
    out = reduce_results(rdir)
    from bayesim_hpc import load_results

    summary = load_results(rdir, reduce="never").summary
    pd.testing.assert_frame_equal(metric_frame(summary), metric_frame(clean), check_exact=True)
    assert [seg for seg, _ in out.foreign] == ["shards/s00000/a009-00000-0badf00d.h5"]
    assert "another study generation" in out.foreign[0][1]
    pd.testing.assert_frame_equal(metric_frame(new), metric_frame(clean), check_exact=True)
    st = study_status(rdir)
    assert st.complete and "FOREIGN segment shards/s00000/a009-00000-0badf00d.h5" in st.render()
    from bayesim_hpc import clean_old_checkpoints

    rep = clean_old_checkpoints(rdir)
    assert [p for p, _ in rep.quarantined] == ["shards/s00000/a009-00000-0badf00d.h5"]
    assert (rdir / "quarantine" / "shards" / "s00000" / "a009-00000-0badf00d.h5").exists()


def test_worker_stops_when_the_study_is_replaced_under_it(rdir):
    """A worker that outlives --force drops its rows instead of writing them."""
    from bayesim_hpc.worker import run_shard

    cfg = make_config(result_path=rdir, n_replicates=20, shard_size=20, tasks_per_segment=5)
    prepare_result_dir(cfg, ResultDir(rdir), "auto", False, 20)
    lines: list[str] = []

    def emit(line: str) -> None:
        lines.append(line)

    calls = {"n": 0}
    real_fit = cfg.fitter.fit

    class Replacing:  # after 7 fits, another driver re-creates the directory (--force)
        def fit(self, *a):
            calls["n"] += 1
            if calls["n"] == 7:
                rd = ResultDir(rdir)
                rd.discard_results()
                prepare_result_dir(cfg, rd, "auto", False, 20)
            return real_fit(*a)

    study = cfg.replace(fitter=Replacing())
    out = run_shard(rdir, 0, study=study, emit=emit)
    assert out.superseded and out.segments == 1  # the first 5 rows went to the old study's shards/
    assert not list(iter_segment_paths(rdir))  # nothing of the old study in the new shards/
    assert any("reset (--force)" in line for line in lines)


def test_force_on_an_unchanged_study_keeps_its_results(rdir):
    cfg = make_config(result_path=rdir, shard_size=10, tasks_per_segment=5)
    first = run_simulation(cfg, **QUIET).summary
    lines: list[str] = []
    again = run_simulation(cfg, force=True, progress=False, emit=lines.append).summary
    assert not list(rdir.glob("shards.discarded-*"))
    assert any("unchanged" in line for line in lines)
    assert (again["segment"] == first["segment"]).all()  # nothing ran again


def test_two_discards_in_one_second_do_not_collide(rdir):
    rd = ResultDir(rdir)
    moved = []
    for k in range(3):
        (rdir / "shards" / f"s{k:05d}").mkdir(parents=True)
        (rdir / "shards" / f"s{k:05d}" / "marker").write_text(str(k))
        moved.append(rd.discard_results())
    assert len(set(moved)) == 3
    assert sorted((m / f"s{k:05d}" / "marker").read_text() for k, m in enumerate(moved)) == ["0", "1", "2"]
    shutil.rmtree(rdir)
