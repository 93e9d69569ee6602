"""Local pool and mock Slurm: same results as inline, and the Slurm fault scenarios without Slurm."""

import json
import time

import pandas as pd
import psutil
import pytest

from bayesim_hpc import MockFitter, resume_simulation, run_simulation
from bayesim_hpc.resultdir import ResultDir

from .studies.linear import make_config

COLS = ["task_id", "status", "rmse__slope", "bias__intercept", "cover90__intercept", "cover90__slope"]


def _cfg(rdir, **kw):
    base = dict(result_path=rdir, n_replicates=40, data_grid={"n": [50, 100], "sigma": [1.0]},
                fit_grid={"model": ["a", "b"]}, shard_size=20, tasks_per_segment=5, retain="minimal")
    base.update(kw)
    return make_config(**base)


@pytest.fixture(scope="module")
def inline_summary(tmp_path_factory):
    return run_simulation(_cfg(tmp_path_factory.mktemp("inl") / "r"), "inline", progress=False,
                          emit=lambda s: None).summary[COLS]


def _manifest(rdir):
    return json.loads(ResultDir(rdir).manifest.read_text())


def test_local_pool_matches_inline_and_relays_output(rdir, inline_summary):
    lines = []
    cfg = _cfg(rdir, fitter=MockFitter(warn_rate=1.0))
    s = run_simulation(cfg, "local", workers=2, progress=False, emit=lines.append).summary
    pd.testing.assert_frame_equal(s[COLS], inline_summary, check_exact=True)
    assert any("WARNING MockFitter: injected warning" in line and line.startswith("[d0") for line in lines)
    # repeats are folded: 160 tasks warned, far fewer lines
    assert sum("injected warning" in line for line in lines) < 40
    assert all(v["state"] == "COMPLETED" for v in _manifest(rdir)["shards"].values())
    assert list((rdir / "logs").glob("s00000.a001.log"))


def test_mock_matches_inline_and_splits_arrays(rdir, inline_summary):
    lines = []
    res = run_simulation(_cfg(rdir), "mock", workers=3, max_array_size=3, progress=False, emit=lines.append)
    pd.testing.assert_frame_equal(res.summary[COLS], inline_summary, check_exact=True)
    subs = _manifest(rdir)["submissions"]
    assert [len(s["shards"]) for s in subs] == [3, 3, 2]
    assert any("in 3 array(s)" in line for line in lines)


@pytest.mark.parametrize("fault,state", [("preempt", "PREEMPTED"), ("node_fail", "NODE_FAIL")])
def test_mock_preemption_and_node_failure_requeue(rdir, inline_summary, fault, state):
    cfg = _cfg(rdir, fitter=MockFitter(delay=0.02))
    lines = []
    res = run_simulation(cfg, "mock", workers=4, progress=False, emit=lines.append, **{fault: {1: 0.9}})
    pd.testing.assert_frame_equal(res.summary[COLS], inline_summary, check_exact=True)
    assert res.summary["task_id"].is_unique
    entry = _manifest(rdir)["shards"]["1"]
    assert entry["attempts"] == 2 and entry["state"] == "COMPLETED"
    assert any(f"{state}" in line or state.lower().replace("_", " ") in line for line in lines)
    assert (res.summary.loc[res.summary["attempt"] == 2, "task_id"].size) > 0  # requeue ran the rest


def test_mock_time_limit_flushes_on_signal_then_requeues(tmp_path):
    # 2 shards of 36 tasks x 0.35 s = 12.6 s of work: more than one 12-second allocation (warning signal
    # at 10 s) each, with room for a slow worker start-up on a loaded machine
    kw = dict(n_replicates=36, data_grid={"n": [50, 100], "sigma": [1.0]}, fit_grid={"model": ["a"]}, shard_size=36,
              tasks_per_segment=1000)
    ref = run_simulation(_cfg(tmp_path / "ref", **kw), "inline", progress=False, emit=lambda s: None).summary
    cfg = _cfg(tmp_path / "r", fitter=MockFitter(delay=0.35), **kw)
    lines = []
    res = run_simulation(cfg, "mock", workers=2, time_limit_s=12.0, signal_delay_s=2.0, max_attempts=8,
                         progress=False, emit=lines.append)
    pd.testing.assert_frame_equal(res.summary[COLS], ref[COLS], check_exact=True)
    # the first attempt got the warning signal, flushed what it had finished, and was requeued
    assert any("received SIGUSR2: flushing" in line and "finished task(s)" in line for line in lines)
    assert any("timeout" in line and "requeued" in line for line in lines)
    first = res.summary[res.summary["attempt"] == 1]
    assert 0 < len(first) < 72  # work of the first allocation survived, the rest ran on requeue


def test_mock_cancel_leaves_missing_tasks_for_resume(rdir, inline_summary):
    cfg = _cfg(rdir, fitter=MockFitter(delay=0.02))
    lines = []
    res = run_simulation(cfg, "mock", workers=4, cancel={0: 0.8}, progress=False, emit=lines.append)
    assert not res.complete
    entry = _manifest(rdir)["shards"]["0"]
    assert entry["state"] == "CANCELLED" and "cancelled" in entry["reason"]
    assert any("bayesim-hpc resume" in line for line in lines)
    before = set(res.summary["task_id"])
    done = resume_simulation(rdir, progress=False, emit=lambda s: None)
    pd.testing.assert_frame_equal(done.summary[COLS], inline_summary, check_exact=True)
    rerun = set(done.summary.loc[done.summary["attempt"] == 2, "task_id"])
    assert rerun and not (rerun & before)  # resume ran only what was missing


def test_local_worker_crash_is_retried_then_given_up(rdir):
    class Crasher(MockFitter):
        def fit(self, data, spec, seed, ctx):
            if ctx.task_id == "d001_f001_r00003":
                import os

                os._exit(7)  # the whole worker process dies, not just the task
            return super().fit(data, spec, seed, ctx)

    lines = []
    res = run_simulation(_cfg(rdir, fitter=Crasher()), "local", workers=2, max_attempts=2, progress=False,
                         emit=lines.append)
    assert res.n_missing > 0
    entry = _manifest(rdir)["shards"]["0"]
    assert entry["attempts"] == 2 and "exited with code 7" in entry["reason"]
    assert len(res.summary) == 160 - res.n_missing


def test_local_pool_leaves_no_worker_behind(rdir):
    run_simulation(_cfg(rdir), "local", workers=2, progress=False, emit=lambda s: None)
    time.sleep(0.2)
    leftovers = [p for p in psutil.Process().children(recursive=True) if "bayesim_hpc.worker" in " ".join(p.cmdline())]
    assert leftovers == []


def test_warning_relay_folds_messages_that_differ_only_in_numbers():
    from bayesim_hpc.relay import FoldingEmit

    out = []
    relay = FoldingEmit(out.append)
    for i in range(100):
        relay(f"[d001_f001_r{i + 1:05d}] WARNING {i + 1} divergent transitions")
    relay("a line that is not a warning")
    assert out[:3] == [f"[d001_f001_r0000{i}] WARNING {i} divergent transitions" for i in (1, 2, 3)]
    assert len(out) == 6 and "(100 so far of this kind)" in out[-2] and out[-1] == "a line that is not a warning"
    relay.close()
    assert out[-1] == "  100 x WARNING # divergent transitions  (cells: d001_f001 100)"
