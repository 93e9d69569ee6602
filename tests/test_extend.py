"""Growing a study in place: only new tasks run; old tasks keep ids, seeds and rows bit for bit."""

import json

import numpy as np
import pandas as pd
import pytest

from bayesim_hpc import (MockFitter, StudyChangedError, bias_metric, coverage_metric, load_results, rmse_metric,
                         run_simulation, simulation_config)
from bayesim_hpc.grid import TaskSpace
from bayesim_hpc.status import study_status

from .studies import callcount
from .studies.linear import generate

QUIET = dict(progress=False, emit=lambda s: None)


def counting_generate(spec, rng, ctx):
    # the count lives in a module: a global list here would be part of the generator's fingerprint
    callcount.CALLS.append((ctx.data_idx, ctx.fit_idx, ctx.rep_idx))
    return generate(spec, rng, ctx)


def config(rdir, **kw):
    base = dict(data_grid={"n": [30, 60], "sigma": [1.0]}, fit_grid={"model": ["linear"]},
                data_generator=counting_generate, fitter=MockFitter(), metrics=[rmse_metric(), bias_metric()],
                n_replicates=4, seed=7, retain=["draws"], result_path=rdir)
    base.update(kw)
    return simulation_config(**base)


GROWN = dict(data_grid={"n": [30, 60, 90], "sigma": [1.0]}, fit_grid={"model": ["linear", "quadratic"]},
             metrics=[rmse_metric(), bias_metric(), coverage_metric()], n_replicates=6)


def _metric_frame(s: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in s.columns if ("__" in c and not c.startswith("timing")) or c in ("task_id", "status")]
    return s[sorted(cols)].set_index("task_id").sort_index()


def test_extend_runs_only_new_tasks_and_keeps_old_rows_bit_for_bit(tmp_path):
    rdir = tmp_path / "r"
    callcount.CALLS.clear()
    first = run_simulation(config(rdir), **QUIET)
    s0 = _metric_frame(first.summary)
    assert len(s0) == 8 and len(callcount.CALLS) == 8
    shards0 = json.loads((rdir / "study.json").read_text())["shards"]
    callcount.CALLS.clear()
    grown = run_simulation(config(rdir, **GROWN), **QUIET)
    # 3 data x 2 fit x 6 replicates = 36 tasks; 8 ran before: the generator ran 28 times, once per new task
    assert len(callcount.CALLS) == 28 and len(set(callcount.CALLS)) == 28
    old = {(d, 0, r) for d in range(2) for r in range(4)}
    assert not old & set(callcount.CALLS)
    s1 = _metric_frame(grown.summary)
    assert len(s1) == 36 and (s1["status"] == "success").all()
    # old tasks: same ids, every stored column bit-identical; the new metric is missing until remetric
    pd.testing.assert_frame_equal(s1.loc[s0.index, s0.columns], s0, check_exact=True)
    assert s1.loc[s0.index, "cover90__slope"].isna().all()
    # the shard plan grew; the old shards are unchanged
    raw = json.loads((rdir / "study.json").read_text())
    assert raw["shards"][:len(shards0)] == shards0 and len(raw["shards"]) > len(shards0)
    # identity seeds: a fresh run of the grown study gives the same rows for every task
    fresh = _metric_frame(run_simulation(config(tmp_path / "fresh", **GROWN), **QUIET).summary)
    assert sorted(fresh.index) == sorted(s1.index)
    new_ids = fresh.index.difference(s0.index)
    pd.testing.assert_frame_equal(s1.loc[new_ids], fresh.loc[new_ids], check_exact=True)
    pd.testing.assert_frame_equal(s1.loc[s0.index, s0.columns], fresh.loc[s0.index, s0.columns], check_exact=True)
    # cells: one row per (data, fit) cell with 6 replicates each
    cells = grown.cells
    assert len(cells) == 6 and (cells["n_success"] == 6).all()
    # history in status
    st = study_status(rdir)
    text = st.render()
    assert "created: 8 tasks" in text and "n_replicates 4 -> 6" in text and "new metric(s) ['cover90']" in text
    assert st.complete and st.n_tasks == 36
    # running the grown study again changes nothing and runs nothing
    callcount.CALLS.clear()
    run_simulation(config(rdir, **GROWN), **QUIET)
    assert callcount.CALLS == [] and len(json.loads((rdir / "study.json").read_text())["history"]) == 2


@pytest.mark.parametrize("change,named", [
    (dict(data_grid={"n": [30, 61], "sigma": [1.0]}), "data_grid changed: a value in an existing row"),
    (dict(data_grid={"n": [30, 60], "sigma": [1.0], "k": [1]}), "data_grid changed: columns"),
    (dict(data_grid={"n": [30.0, 60.0], "sigma": [1.0]}), "data_grid changed"),
    (dict(n_replicates=3), "n_replicates changed"),
    (dict(metrics=[rmse_metric(), bias_metric(name="bias"), coverage_metric()]), None),  # same bias: fine
    (dict(fitter=MockFitter(scale=2.0)), "fitter changed"),
    (dict(draws_dtype="float32"), "draws_dtype changed"),
])
def test_changes_are_refused_extensions_are_not(tmp_path, change, named):
    rdir = tmp_path / "r"
    run_simulation(config(rdir), **QUIET)
    if named is None:
        run_simulation(config(rdir, **change), **QUIET)
        return
    with pytest.raises(StudyChangedError, match=named) as err:
        run_simulation(config(rdir, **change), **QUIET)
    assert "bayesim-hpc resume" in str(err.value)
    assert len(load_results(rdir).summary) == 8  # nothing was touched


def test_dropped_rows_are_hidden_not_deleted_and_come_back(tmp_path):
    rdir = tmp_path / "r"
    run_simulation(config(rdir), **QUIET)
    n_seg = len(list((rdir / "shards").rglob("*.h5")))
    callcount.CALLS.clear()
    res = run_simulation(config(rdir, data_grid={"n": [30], "sigma": [1.0]}), **QUIET)
    assert callcount.CALLS == []
    assert set(res.summary["data_n"]) == {30} and len(res.summary) == 4 and len(res.cells) == 1
    assert len(list((rdir / "shards").rglob("*.h5"))) == n_seg
    st = study_status(rdir)
    assert st.n_hidden == 4 and st.n_tasks == 4 and "hidden" in st.render()
    # the dropped row may come back (its tasks are still there), and a new row may be added now
    res = run_simulation(config(rdir, data_grid={"n": [30, 60, 90], "sigma": [1.0]}), **QUIET)
    assert len(callcount.CALLS) == 4 and {c[0] for c in callcount.CALLS} == {2}
    assert len(res.summary) == 12 and "shown again" in study_status(rdir).render()


def test_retention_change_applies_to_new_tasks(tmp_path):
    rdir = tmp_path / "r"
    run_simulation(config(rdir, retain="minimal"), **QUIET)
    res = run_simulation(config(rdir, retain=["draws"], n_replicates=5), **QUIET)
    tr = res.task_results
    assert "draws" not in tr["d001_f001_r00001"] and "draws" in tr["d001_f001_r00005"]
    assert "applies to tasks run from now on" in study_status(rdir).render()


def test_task_ids_stay_stable_when_the_grid_outgrows_the_id_width():
    sp = TaskSpace(np.array([(d, 0) for d in range(5)]), 5, 1, 3)
    before = [sp.task_id(i) for i in range(sp.n_tasks)]
    grown = sp.extend({(d, 0): 3 for d in range(1200)}, 1200, 1)
    assert [grown.task_id(i) for i in range(sp.n_tasks)] == before
    assert grown.task_id(grown.n_tasks - 1) == "d1200_f001_r00003"
    ref = grown.parse_id("d1200_f001_r00003")
    assert ref.index == grown.n_tasks - 1 and grown.parse_id(before[4]).index == 4
    back = TaskSpace.from_layout(grown.to_layout())
    assert [back.task_id(i) for i in range(0, grown.n_tasks, 97)] == [grown.task_id(i) for i in range(0, grown.n_tasks, 97)]


def test_interrupted_extension_finishes_on_next_load(tmp_path, monkeypatch):
    """Killed after study.json was written but before the new pickle was renamed into place."""
    from bayesim_hpc.resultdir import ResultDir

    rdir = tmp_path / "r"
    run_simulation(config(rdir), **QUIET)
    real = type(rdir).replace

    def no_rename(self, target):
        if self.name == ".study.pkl.next":
            raise KeyboardInterrupt("killed")
        return real(self, target)

    monkeypatch.setattr(type(rdir), "replace", no_rename)
    with pytest.raises(KeyboardInterrupt):
        run_simulation(config(rdir, n_replicates=6), **QUIET)
    monkeypatch.setattr(type(rdir), "replace", real)
    assert ResultDir(rdir).load_study().n_tasks == 12
    callcount.CALLS.clear()
    res = run_simulation(config(rdir, n_replicates=6), **QUIET)
    assert len(res.summary) == 12 and len(callcount.CALLS) == 4


# --- remetric --------------------------------------------------------------------------------
def test_remetric_equals_a_fresh_run_with_the_new_metric(tmp_path):
    from bayesim_hpc.recompute import remetric

    rdir = tmp_path / "r"
    run_simulation(config(rdir), **QUIET)
    run_simulation(config(rdir, metrics=[rmse_metric(), bias_metric(), coverage_metric()], n_replicates=5), **QUIET)
    callcount.CALLS.clear()
    out = remetric(rdir, emit=lambda s: None)
    # data regenerated once per task (plus one check before anything is written), nothing refitted
    assert out.n_success == 10 and len(callcount.CALLS) == 11
    # and a changed definition (probability level) from a study file's metrics
    changed = config(rdir, metrics=[rmse_metric(), bias_metric(), coverage_metric(0.5)],
                     n_replicates=5)
    remetric(rdir, changed, emit=lambda s: None)
    res = load_results(rdir)
    fresh = run_simulation(config(tmp_path / "fresh", metrics=[rmse_metric(), bias_metric(),
                                                                 coverage_metric(0.5)],
                                  n_replicates=5), **QUIET)
    a, b = _metric_frame(res.summary), _metric_frame(fresh.summary)
    assert a.drop(columns=b.columns).isna().all().all()  # the dropped metric's columns: empty (old segments)
    pd.testing.assert_frame_equal(a[b.columns], b, check_exact=True)
    cells_a = res.cells.drop(columns=[c for c in res.cells.columns if c.startswith("timing")])
    cells_b = fresh.cells.drop(columns=[c for c in fresh.cells.columns if c.startswith("timing")])
    pd.testing.assert_frame_equal(cells_a[cells_b.columns], cells_b, check_exact=True)
    # the refit-free definition is now the frozen one: running the study file again is no change
    callcount.CALLS.clear()
    run_simulation(changed, **QUIET)
    assert callcount.CALLS == []


def test_remetric_without_draws_is_refused_naming_the_retention(tmp_path):
    from bayesim_hpc.recompute import RemetricRefused, remetric

    rdir = tmp_path / "r"
    run_simulation(config(rdir, retain="standard"), **QUIET)
    with pytest.raises(RemetricRefused, match=r"retain=\['draws'\]"):
        remetric(rdir, emit=lambda s: None)


# --- adaptive replicates -----------------------------------------------------------------------
def test_n_replicates_for_plans_coverage_and_bias():
    from bayesim_hpc import n_replicates_for

    assert n_replicates_for(0.01, "coverage", expected=0.95) == 475  # 0.95 * 0.05 / 0.01^2
    assert n_replicates_for(0.05, "coverage") == 100
    assert n_replicates_for(0.02, "bias__slope", pilot_sd=0.3) == 225
    with pytest.raises(Exception, match="pilot_sd"):
        n_replicates_for(0.02, "bias")


def test_adaptive_stops_at_the_target(tmp_path):
    from bayesim_hpc import run_adaptive

    rdir = tmp_path / "r"
    target = {"bias__slope": 0.03}
    res = run_adaptive(config(rdir, n_replicates=5), target_mcse=target, max_replicates=400, **QUIET)
    cells = res.cells
    assert (cells["bias__slope__mcse"] <= 0.03).all()
    assert (cells["n_tasks"] > 5).all() and (cells["n_tasks"] < 400).all()
    text = study_status(rdir).render()
    assert "adaptive round 1" in text and "2 of 2 cell(s) meet it" in text
    # every task is the task a plain run with as many replicates gives, bit for bit
    n = int(cells["n_tasks"].max())
    fresh = _metric_frame(run_simulation(config(tmp_path / "fresh", n_replicates=n), **QUIET).summary)
    mine = _metric_frame(res.summary)
    pd.testing.assert_frame_equal(mine, fresh.loc[mine.index, mine.columns], check_exact=True)


def test_adaptive_stops_at_the_cap(tmp_path):
    from bayesim_hpc import run_adaptive

    rdir = tmp_path / "r"
    res = run_adaptive(config(rdir, n_replicates=3), target_mcse={"bias": 1e-6, "rmse": 1e-6},
                       max_replicates=14, **QUIET)
    assert (res.cells["n_tasks"] == 14).all()
    text = study_status(rdir).render()
    assert "at cap" in text and "0 of 2 cell(s) meet it" in text


def test_cli_grow_remetric_adaptive_and_report_history(tmp_path):
    from click.testing import CliRunner

    from bayesim_hpc.cli import main

    study = tmp_path / "study.py"
    body = ("from bayesim_hpc import MockFitter, bias_metric, coverage_metric, rmse_metric, simulation_config\n"
            "from tests.studies.linear import generate\n"
            "config = simulation_config(data_grid={{'n': [40], 'sigma': [1.0]}}, fit_grid={{'model': ['a']}}, data_generator=generate,\n"
            "    fitter=MockFitter(), metrics=[rmse_metric(), {metric}], n_replicates={n}, seed=3, retain=['draws'])\n")
    out = tmp_path / "res"

    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    study.write_text(body.format(metric="bias_metric()", n=4))
    assert invoke("run", study, "-o", out, "-e", "inline", "--no-progress").exit_code == 0
    study.write_text(body.format(metric="bias_metric(), coverage_metric()", n=6))
    r = invoke("run", study, "-o", out, "-e", "inline", "--no-progress")
    assert r.exit_code == 0 and "the study grew: n_replicates 4 -> 6" in r.output
    study.write_text(body.format(metric="bias_metric(), coverage_metric()", n=6).replace("rmse_metric()",
                                                                                         "rmse_metric('params')"))
    r = invoke("run", study, "-o", out, "-e", "inline", "--no-progress")
    assert r.exit_code == 6 and "metric 'rmse'" in r.output and "remetric" in r.output
    r = invoke("remetric", out, study)
    assert r.exit_code == 0 and "6 succeeded" in r.output
    r = invoke("run", study, "-o", out, "-e", "inline", "--no-progress", "--target-mcse", "bias=0.05",
               "--max-replicates", "12")
    assert r.exit_code == 0, r.output
    r = invoke("status", out)
    assert "remetric: metrics" in r.output and "adaptive: target MCSE bias <= 0.05" in r.output
    assert invoke("report", out).exit_code == 0
    assert "<h2>History</h2>" in (out / "report.html").read_text()


def test_runtime_settings_of_the_growing_run_apply_to_new_tasks(tmp_path):
    """tasks_per_segment and shard size are not the study: the run that grows it sizes its new segments and shards."""
    from bayesim_hpc.storage import iter_segment_paths, read_rows

    rdir = tmp_path / "r"
    run_simulation(config(rdir, tasks_per_segment=100), **QUIET)
    before = set(iter_segment_paths(rdir))
    run_simulation(config(rdir, tasks_per_segment=2, n_replicates=8), shard_size=3, **QUIET)
    raw = json.loads((rdir / "study.json").read_text())
    assert raw["runtime"]["tasks_per_segment"] == 2
    new_shards = raw["shards"][raw["history"][-1]["shards"][0]:]
    assert new_shards and all(b - a <= 3 for a, b in new_shards)
    new_segments = [p for p in iter_segment_paths(rdir) if p not in before]
    assert new_segments and all(read_rows(p).n_rows <= 2 for p in new_segments)


def test_remetric_killed_midway_is_finished_by_running_it_again(tmp_path, monkeypatch):
    import bayesim_hpc.recompute as rm

    rdir = tmp_path / "r"
    run_simulation(config(rdir, n_replicates=6, data_grid={"n": [30, 60, 90], "sigma": [1.0]}), shard_size=6,
                   **QUIET)
    new = [rmse_metric(), bias_metric(), coverage_metric(0.5)]
    study = config(rdir, n_replicates=6, data_grid={"n": [30, 60, 90], "sigma": [1.0]}, metrics=new)
    real, calls = rm.write_segment, []

    def dies_after_one(*a, **k):
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(rm, "write_segment", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        rm.remetric(rdir, study, emit=lambda s: None, block=6)
    monkeypatch.setattr(rm, "write_segment", real)
    assert json.loads((rdir / "study.json").read_text())["remetric_pending"] is True
    assert "remetric" in study_status(rdir).render()
    rm.remetric(rdir, emit=lambda s: None)  # again: the frozen metrics are now the new ones
    assert "remetric_pending" not in json.loads((rdir / "study.json").read_text())
    fresh = run_simulation(config(tmp_path / "f", n_replicates=6, data_grid={"n": [30, 60, 90], "sigma": [1.0]},
                                  metrics=new), **QUIET)
    a, b = _metric_frame(load_results(rdir).summary), _metric_frame(fresh.summary)
    pd.testing.assert_frame_equal(a, b[a.columns], check_exact=True)


def test_task_grid_study_grows_and_hides_pairs(tmp_path):
    tg = pd.DataFrame({"data_idx": [1, 2], "fit_idx": [1, 2]})
    grid = dict(fit_grid={"model": ["a", "b"]})
    run_simulation(config(tmp_path / "r", task_grid=tg, n_replicates=3, **grid), **QUIET)
    tg2 = pd.DataFrame({"data_idx": [1, 2, 3, 1], "fit_idx": [1, 2, 1, 2]})
    kw = dict(data_grid={"n": [30, 60, 90], "sigma": [1.0]}, task_grid=tg2, n_replicates=4, **grid)
    grown = _metric_frame(run_simulation(config(tmp_path / "r", **kw), **QUIET).summary)
    fresh = _metric_frame(run_simulation(config(tmp_path / "f", **kw), **QUIET).summary)
    pd.testing.assert_frame_equal(grown, fresh[grown.columns], check_exact=True)
    dropped = run_simulation(config(tmp_path / "r", **dict(kw, task_grid=tg2.iloc[:3])), **QUIET)
    assert len(dropped.summary) == 12 and not dropped.summary["task_id"].str.startswith("d001_f002").any()


def test_shard_costs_and_segment_costs_follow_the_blocks_of_a_grown_study():
    from bayesim_hpc.grid import plan_shards
    from bayesim_hpc.planning import shard_costs

    sp = TaskSpace(np.array([[0, 0], [1, 0], [0, 1]]), 2, 2, 5)
    task_s = np.array([1.0, 2.0, 3.0])
    before = shard_costs(sp, plan_shards(sp, 3), task_s)
    grown = sp.extend({(0, 0): 7, (1, 0): 5, (0, 1): 5}, 2, 2)
    after = shard_costs(grown, plan_shards(grown, 3), task_s)
    assert after[:len(before)].tolist() == before.tolist() and after[len(before):].tolist() == [2.0]
    assert sorted(grown.shard_cell_order.tolist()) == [0, 0, 1, 2]
