"""SlurmExecutor against the real local Slurm cluster: results equal inline, faults recovered.

    eval "$(scripts/local-slurm.sh env)" && .venv/bin/python -m pytest tests/slurm -q

Faults are injected from a thread while ``run_simulation`` watches the jobs: ``scontrol
requeue``, ``scancel --signal=USR2``, ``scancel``, kill -9 of a worker, a 1-minute time limit,
and a driver that dies right after ``sbatch``. Every test cancels its study's jobs at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from bayesim_hpc import MockFitter, resume_simulation, run_simulation
from bayesim_hpc.executors import slurm_query as sq
from bayesim_hpc.executors.slurm import SlurmExecutor, job_name
from bayesim_hpc.executors.slurm_submit import Submitter
from bayesim_hpc.resultdir import ResultDir

from ..studies.linear import make_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# fast polling for tests (the default is one scheduler query per 10 s); small allocations
# plan="shards": one shard per element, so a test can point at "the element of shard 1"
FAST = dict(poll_min_interval=1.0, settle_s=3.0, tick=0.25, time_min=5, mem=1, max_running=8, progress=False, plan="shards")


def _cfg(path, **kw):
    base = dict(result_path=path, data_grid={"n": [50, 100], "sigma": [1.0]}, fit_grid={"model": ["a"]},
                n_replicates=20, retain="minimal", shard_size=20, tasks_per_segment=1000)
    base.update(kw)
    return make_config(**base)


def _metrics(summary: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in summary.columns if not c.startswith("timing") and c not in ("attempt", "segment")]
    return summary.sort_values("task_id")[cols].reset_index(drop=True)


def assert_same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert a["task_id"].is_unique and b["task_id"].is_unique
    pd.testing.assert_frame_equal(_metrics(a), _metrics(b), check_exact=True)


def inline(cfg_fn, tmp_path, **kw) -> pd.DataFrame:
    return run_simulation(cfg_fn(tmp_path / "inline", **kw), "inline", progress=False, emit=lambda s: None).summary


def manifest(path) -> dict:
    return json.loads(ResultDir(path).manifest.read_text())


def wait_for(pred, timeout: float, what: str, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def running_element(path, shard: int, min_run: int = 2, timeout: float = 90.0) -> tuple[str, int]:
    """Wait until a shard's element has run ``min_run`` tasks; return (its job id, its worker pid)."""
    prog = Path(path) / "shards" / f"s{shard:05d}" / "progress.json"

    def ready():
        try:
            pr = json.loads(prog.read_text())
            entry = manifest(path)["shards"][str(shard)]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return None
        return (entry["job_ids"][-1], int(pr["pid"])) if pr.get("n_run", 0) >= min_run and entry.get("job_ids") else None

    return wait_for(ready, timeout, f"shard {shard} to run {min_run} tasks")


class Fault(threading.Thread):
    """Runs ``fn`` beside the driver; re-raises its error in ``check``."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn, self.error, self.result = fn, None, None
        self.start()

    def run(self):
        try:
            self.result = self.fn()
        except BaseException as e:  # noqa: BLE001
            self.error = e

    def check(self):
        self.join(timeout=30)
        if self.error:
            raise self.error
        return self.result


def sbatch_count() -> int:
    return sq.call_counts().submit


# --------------------------------------------------------------------------------------------- tests


@pytest.mark.timeout(300)
def test_thousand_tasks_match_inline_and_dry_run_shows_the_submitted_script(tmp_path, studies):
    kw = dict(data_grid={"n": [50, 100], "sigma": [0.5, 1.0]}, fit_grid={"model": ["a", "b"]}, n_replicates=125,
              shard_size=100, tasks_per_segment=25, fitter=MockFitter(fail_tasks=("d002_f001_r00007",)))
    cfg_fn = lambda p, **k: _cfg(p, **{**kw, **k})  # noqa: E731
    ref = inline(cfg_fn, tmp_path)
    path = tmp_path / "slurm"
    studies.append(path)
    dry: list[str] = []
    n0 = sbatch_count()
    res = run_simulation(cfg_fn(path), "slurm", dry_run=True, emit=dry.append, **FAST)
    assert res.reduce_outcome is None and sbatch_count() == n0
    assert not (path / "study.json").exists() and "dry run: nothing was submitted" in dry  # nothing frozen
    assert any("1 array(s)" in line for line in dry) and any("--array=0-9%8" in line for line in dry)
    script = "\n".join(dry[dry.index("--- sbatch script of array 1 (submitit) ---") + 1:dry.index("--- end ---")])

    lines: list[str] = []
    t0 = time.monotonic()
    res = run_simulation(cfg_fn(path), "slurm", emit=lines.append, **FAST)
    wall = time.monotonic() - t0
    assert_same(res.summary, ref)
    assert len(res.summary) == 1000 and (res.summary["status"] != "success").sum() == 1
    m = manifest(path)
    assert all(v["state"] == "COMPLETED" for v in m["shards"].values()) and len(m["shards"]) == 10
    (sub,) = [s for s in m["submissions"] if s.get("executor") == "slurm"]
    assert sub["shards"] == list(range(10)) and sub["job_id"] and sbatch_count() == n0 + 1
    submitted = (path / "logs" / "slurm" / sub["job_id"] / f"{sub['job_id']}_submission.sh").read_text()
    assert script.strip() == submitted.strip()  # the dry run printed exactly what submitit submitted
    assert f"--job-name={job_name(ResultDir(path))}" in submitted
    # worker output is relayed, tagged with the task id
    assert any(line.startswith("[d002_f001_r00007] FAILED in fit") for line in lines)
    print(f"\n1,000 MockFitter tasks on Slurm: {wall:.1f}s")


def build_linear_model(data, fit_spec):
    import pymc as pm

    with pm.Model() as model:
        x = pm.Data("x", data.column("x"))
        y = pm.Data("y_obs", data.column("y"))
        a = pm.Normal("intercept", 0, 10)
        b = pm.Normal("slope", 0, 10)
        sigma = pm.HalfNormal("sigma", 5)
        pm.Normal("y", a + b * x, sigma, observed=y, shape=x.shape)
    return model


@pytest.mark.timeout(400)
def test_pymc_study_matches_inline(tmp_path, studies):
    pytest.importorskip("pymc")
    pytest.importorskip("nutpie")
    from bayesim_hpc.fitters.pymc import PyMCFitter

    fitter = PyMCFitter(build_linear_model, draws=100, tune=100, chains=2)
    cfg_fn = lambda p, **k: _cfg(p, data_grid={"n": [30], "sigma": [1.0]}, n_replicates=6, shard_size=3,  # noqa: E731
                                 fitter=fitter, **k)
    ref = inline(cfg_fn, tmp_path)
    path = tmp_path / "slurm"
    studies.append(path)
    res = run_simulation(cfg_fn(path), "slurm", emit=lambda s: None,
                         compile_dir=str(tmp_path / "pytensor"), **FAST)
    assert len(res.summary) == 6 and (res.summary["status"] == "success").all()
    assert_same(res.summary, ref)
    assert (tmp_path / "pytensor").is_dir()  # compile_dir reached the jobs (one cache per job id)


@pytest.mark.timeout(300)
def test_max_array_size_splits_submission(tmp_path, studies, reconfigured_cluster):
    cfg_fn = lambda p, **k: _cfg(p, data_grid={"n": [50], "sigma": [1.0]}, n_replicates=60, shard_size=2, **k)  # noqa: E731
    ref = inline(cfg_fn, tmp_path)
    path = tmp_path / "slurm"
    studies.append(path)
    with reconfigured_cluster(max_array_size=11):
        n0 = sbatch_count()
        lines: list[str] = []
        res = run_simulation(cfg_fn(path), "slurm", emit=lines.append, **FAST)
        n_sbatch = sbatch_count() - n0
    assert_same(res.summary, ref)
    subs = [s for s in manifest(path)["submissions"] if s.get("executor") == "slurm"]
    assert [len(s["shards"]) for s in subs] == [11, 11, 8]
    assert n_sbatch >= 3 and len({s["job_id"] for s in subs}) == 3
    assert any("in 3 array(s) (MaxArraySize 11" in line for line in lines)


@pytest.mark.timeout(300)
def test_requeue_and_usr2_preemption_complete_every_task_once(tmp_path, studies):
    cfg_fn = lambda p, **k: _cfg(p, fitter=MockFitter(delay=0.4), **k)  # noqa: E731
    ref = inline(lambda p, **k: _cfg(p, **k), tmp_path)
    path = tmp_path / "slurm"
    studies.append(path)

    def preempt():
        j0, _ = running_element(path, 0, min_run=3)
        j1, _ = running_element(path, 1, min_run=3)
        subprocess.run(["scontrol", "requeue", j0], check=True, timeout=30)
        subprocess.run(["scancel", "--signal=USR2", j1], check=True, timeout=30)
        return j0, j1

    fault = Fault(preempt)
    lines: list[str] = []
    res = run_simulation(cfg_fn(path), "slurm", emit=lines.append, **FAST)
    j0, j1 = fault.check()
    print("\n".join(["", *lines]))
    assert_same(res.summary, ref)
    assert len(res.summary) == 40
    for sid in (0, 1):
        entry = manifest(path)["shards"][str(sid)]
        assert entry["state"] == "COMPLETED" and entry["attempts"] == 2
        assert len(entry["job_ids"]) == 1  # requeued in place, not resubmitted
        by_attempt = res.summary.loc[res.summary["task_id"].str.startswith(f"d00{sid + 1}"), "attempt"]
        assert set(by_attempt) == {1, 2}  # the first allocation's tasks were flushed and kept
    assert any("[shard 0] received SIGTERM: flushing" in line for line in lines)
    assert any("[shard 1] received SIGUSR2: flushing" in line for line in lines)
    assert any(f"requeued job {j1} after flushing" in line for line in lines)
    assert sq.call_counts().submit >= 1


@pytest.mark.timeout(420)
def test_time_limit_flushes_on_signal_and_finishes_after_requeue(tmp_path, studies):
    # one shard of 32 tasks x 2.5 s = 80 s of work, in 1-minute allocations. The default
    # --signal=USR2@6 for a 1-minute job arrives 6..36 s before the limit (Slurm checks limits
    # every 30 s); the worker flushes, requeues itself, and the next allocation skips what is done.
    cfg_fn = lambda p, **k: _cfg(p, data_grid={"n": [50], "sigma": [1.0]}, n_replicates=32, shard_size=32, **k)  # noqa: E731
    ref = inline(cfg_fn, tmp_path)
    path = tmp_path / "slurm"
    studies.append(path)
    lines: list[str] = []
    opts = {**FAST, "time_min": 1}
    res = run_simulation(cfg_fn(path, fitter=MockFitter(delay=2.5)), "slurm", emit=lines.append, **opts)
    if not res.complete:  # the allocation may have ended at the limit instead: resume finishes it
        res = resume_simulation(path, "slurm", emit=lines.append, **opts)
    print("\n".join(["", *lines]))
    assert_same(res.summary, ref)
    assert any("received SIGUSR2: flushing" in line or "received SIGTERM: flushing" in line for line in lines)
    attempts = res.summary["attempt"].value_counts()
    assert len(attempts) >= 2 and attempts.min() > 0  # every allocation's work was kept
    assert manifest(path)["shards"]["0"]["state"] == "COMPLETED"


@pytest.mark.timeout(300)
def test_cancelled_element_is_reported_and_resume_runs_only_its_tasks(tmp_path, studies):
    cfg_fn = lambda p, **k: _cfg(p, data_grid={"n": [50, 100, 150], "sigma": [1.0]}, tasks_per_segment=2, **k)  # noqa: E731
    ref = inline(cfg_fn, tmp_path)
    path = tmp_path / "slurm"
    studies.append(path)

    def cancel():
        job, _ = running_element(path, 1, min_run=4)
        subprocess.run(["scancel", job], check=True, timeout=30)
        return job

    fault = Fault(cancel)
    lines: list[str] = []
    res = run_simulation(cfg_fn(path, fitter=MockFitter(delay=0.3)), "slurm", emit=lines.append, **FAST)
    job = fault.check()
    print("\n".join(["", *lines]))
    assert not res.complete and 0 < res.n_missing < 20
    entry = manifest(path)["shards"]["1"]
    assert entry["state"] == "CANCELLED" and "cancelled" in entry["reason"] and job in entry["reason"]
    assert len(entry["job_ids"]) == 1  # a user's scancel is not resubmitted
    assert any("not resubmitted" in line for line in lines)

    from bayesim_hpc.status import study_status

    st = study_status(path)
    (shard1,) = [s for s in st.shards if s["shard"] == 1]
    assert shard1["state"] == "CANCELLED" and shard1["reason"] and shard1["missing"] == res.n_missing
    live = SlurmExecutor().live_states(path)
    assert live[1]["state"] == "CANCELLED" and live[1]["job_id"] == job
    assert live[0]["state"] == "COMPLETED"

    before = set(res.summary["task_id"])
    n0 = sbatch_count()
    done = resume_simulation(path, "slurm", emit=lambda s: None, **FAST)
    assert sbatch_count() == n0 + 1
    assert_same(done.summary, ref)
    rerun = set(done.summary.loc[done.summary["attempt"] == 2, "task_id"])
    assert rerun and not (rerun & before) and all(t.startswith("d002") for t in rerun)
    assert rerun | before == set(done.summary["task_id"])


@pytest.mark.timeout(300)
def test_killed_worker_is_reported_and_resubmitted(tmp_path, studies):
    cfg_fn = lambda p, **k: _cfg(p, tasks_per_segment=2, **k)  # noqa: E731
    ref = inline(cfg_fn, tmp_path)
    path = tmp_path / "slurm"
    studies.append(path)

    def kill():
        job, pid = running_element(path, 0, min_run=4)
        proc = psutil.Process(pid)
        cmd = " ".join(proc.cmdline())
        assert "submitit.core._submit" in cmd and str(path) in cmd  # the element's python, found by cmdline
        os.kill(pid, signal.SIGKILL)
        return job

    fault = Fault(kill)
    lines: list[str] = []
    res = run_simulation(cfg_fn(path, fitter=MockFitter(delay=0.3)), "slurm", emit=lines.append, **FAST)
    job = fault.check()
    print("\n".join(["", *lines]))
    assert_same(res.summary, ref)
    entry = manifest(path)["shards"]["0"]
    assert entry["state"] == "COMPLETED" and entry["attempts"] == 2 and entry["job_ids"][0] == job
    assert len(entry["job_ids"]) == 2  # resubmitted as a new array
    assert any(f"job {job}" in line and "resubmitting" in line and "failed" in line for line in lines)
    assert set(res.summary.loc[res.summary["task_id"].str.startswith("d001"), "attempt"]) == {1, 2}


@pytest.mark.timeout(300)
def test_without_accounting_states_come_from_squeue(tmp_path, studies, reconfigured_cluster):
    cfg_fn = lambda p, **k: _cfg(p, **k)  # noqa: E731
    ref = inline(cfg_fn, tmp_path)
    path = tmp_path / "slurm"
    studies.append(path)
    with reconfigured_cluster(accounting=False):
        probe = subprocess.run(["sacct", "-n"], capture_output=True, text=True, timeout=30)
        assert probe.returncode != 0 and "accounting storage is disabled" in (probe.stderr + probe.stdout).lower()
        res = run_simulation(cfg_fn(path, fitter=MockFitter(delay=0.1)), "slurm", emit=lambda s: None, **FAST)
        assert_same(res.summary, ref)
        live = wait_for(lambda: (lambda s: s if len(s) == 2 and all(v["state"] == "COMPLETED" for v in s.values())
                                 else None)(SlurmExecutor().live_states(path)), 30, "squeue to show both COMPLETED")
        assert set(live) == {0, 1}
        assert sq._backend_cache.get(sq._config_key()) is False  # sacct was found disabled; squeue answered


@pytest.mark.timeout(300)
def test_driver_killed_after_sbatch_is_adopted_not_resubmitted(tmp_path, studies, monkeypatch):
    cfg_fn = lambda p, **k: _cfg(p, data_grid={"n": [50, 100, 150, 200], "sigma": [1.0]}, n_replicates=10,  # noqa: E731
                                 shard_size=10, **k)
    ref = inline(cfg_fn, tmp_path)
    path = tmp_path / "slurm"
    studies.append(path)

    def die(self, ctx, token, array_id, element_ids):
        raise RuntimeError("driver killed right after sbatch")

    n0 = sbatch_count()
    with monkeypatch.context() as mp:
        mp.setattr(Submitter, "record_submitted", die)
        with pytest.raises(RuntimeError, match="right after sbatch"):
            run_simulation(cfg_fn(path, fitter=MockFitter(delay=0.4)), "slurm", emit=lambda s: None,
                           **{**FAST, "max_running": 2})  # %2: two elements wait, pending, in the array
    assert sbatch_count() == n0 + 1
    (sub,) = manifest(path)["submissions"]
    assert sub["job_id"] is None and sub["shards"] == [0, 1, 2, 3]

    lines: list[str] = []
    res = resume_simulation(path, "slurm", emit=lines.append, **{**FAST, "max_running": 2})
    assert sbatch_count() == n0 + 1  # adopted: no second array
    assert_same(res.summary, ref)
    assert set(res.summary["attempt"]) == {1}
    (sub,) = manifest(path)["submissions"]
    assert sub["job_id"] and sub.get("adopted")
    assert any("adopting 4 live element(s)" in line for line in lines)


@pytest.mark.timeout(300)
def test_detach_then_cancel_then_resume(tmp_path, studies):
    cfg_fn = lambda p, **k: _cfg(p, **k)  # noqa: E731
    ref = inline(cfg_fn, tmp_path)
    path = tmp_path / "slurm"
    studies.append(path)
    n0 = sbatch_count()
    t0 = time.monotonic()
    res = run_simulation(cfg_fn(path, fitter=MockFitter(delay=0.5)), "slurm", detach=True, emit=lambda s: None,
                         **FAST)
    assert res.reduce_outcome is None and time.monotonic() - t0 < 15 and sbatch_count() == n0 + 1
    (sub,) = manifest(path)["submissions"]
    assert sub["job_id"] and sub["shards"] == [0, 1]
    live = wait_for(lambda: (lambda s: s if len(s) == 2 else None)(SlurmExecutor().live_states(path)), 30,
                    "sacct to know the detached elements")
    assert all(v["state"] in ("PENDING", "RUNNING") and v["job_id"].startswith(sub["job_id"]) for v in live.values())
    assert SlurmExecutor().cancel(path) == [sub["job_id"]]
    wait_for(lambda: all(v["state"] == "CANCELLED" for v in SlurmExecutor().live_states(path).values()), 30,
             "the cancelled elements")
    assert all(v["state"] == "CANCELLED" for v in manifest(path)["shards"].values())
    rl: list[str] = []
    done = resume_simulation(path, "slurm", emit=rl.append, **FAST)  # nothing live: submits again
    print("\n".join(["", *rl]))
    assert sbatch_count() == n0 + 2
    assert_same(done.summary, ref)


@pytest.mark.timeout(300)
def test_error_budget_stops_the_study(tmp_path, studies):
    from bayesim_hpc import ErrorBudgetExceeded

    path = tmp_path / "slurm"
    studies.append(path)
    cfg = _cfg(path, data_grid={"n": [50, 100, 150], "sigma": [1.0]}, max_errors=2, tasks_per_segment=1,
               fitter=MockFitter(fail_rate=0.5, delay=0.2))
    lines: list[str] = []
    with pytest.raises(ErrorBudgetExceeded):
        run_simulation(cfg, "slurm", emit=lines.append, **FAST)
    assert any("error budget" in line or "max_errors" in line for line in lines)
    states = SlurmExecutor().live_states(path)
    assert not any(v["state"] in ("PENDING", "RUNNING") for v in states.values())
    assert sq.call_counts().submit >= 1
