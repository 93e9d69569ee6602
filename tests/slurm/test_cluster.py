"""slurm_query against the real local Slurm cluster (scripts/local-slurm.sh). Run as root.

    PYTHONPATH=. .venv/bin/python -m pytest tests/slurm -q -m slurm
"""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from bayesim_hpc.executors import slurm_query as sq

pytestmark = pytest.mark.slurm


def unique_name(tag: str) -> str:
    return f"bsq-{tag}-{uuid.uuid4().hex[:8]}"


def sbatch(name: str, array: str, *extra: str, cwd) -> str:
    proc = subprocess.run(["sbatch", "--parsable", "-J", name, f"--array={array}", "-o", "/dev/null", *extra,
                           "--wrap", "echo $SLURM_ARRAY_TASK_ID"],
                          capture_output=True, text=True, cwd=cwd, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def wait_until_completed(name: str, n: int, timeout: float = 60.0, **query) -> list[sq.JobState]:
    """Poll query_jobs (it lags behind the scheduler) until n elements have COMPLETED."""
    poller = sq.Poller(initial_delay=0.5, max_delay=2.0, min_interval=0)
    deadline = time.monotonic() + timeout
    while True:
        states = sq.query_jobs(name, **query)
        if len(states) == n and all(s.state == "COMPLETED" for s in states):
            return states
        assert not any(s.lost for s in states), states
        assert time.monotonic() < deadline, f"not all {n} completed after {timeout}s: {states}"
        time.sleep(poller.observe(states))


def test_query_jobs_finds_array_by_name_via_sacct(slurm_cluster, tmp_path):
    sq.reset_call_counts()
    name = unique_name("sacct")
    t0 = time.monotonic()
    job = sbatch(name, sq.array_spec(4, 2), cwd=tmp_path)
    states = wait_until_completed(name, 4, job_ids=[job], use_sacct=True)
    elapsed = time.monotonic() - t0
    assert [s.job_id for s in states] == [f"{job}_{i}" for i in range(4)]
    assert [s.array_task_id for s in states] == [0, 1, 2, 3]
    assert all(s.array_job_id == job and s.name == name and s.exit_code == 0 for s in states)
    # without job ids, sacct --name alone finds the finished elements too
    assert [s.job_id for s in sq.query_jobs(name, use_sacct=True)] == [s.job_id for s in states]
    counts = sq.call_counts()
    print(f"\n4-element array submitted -> all COMPLETED in sacct: {elapsed:.1f}s, {counts.query} sacct calls")
    assert counts.query >= 2 and counts.total == counts.query


def test_pending_throttled_and_held_elements_need_job_ids(slurm_cluster, tmp_path):
    name = unique_name("held")
    job = sbatch(name, "0-2", "--hold", cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:  # sacct -j reports the held array as one range row, expanded here
            states = sq.query_jobs(name, job_ids=[job], use_sacct=True)
            if len(states) == 3:
                break
            assert time.monotonic() < deadline, states
            time.sleep(0.5)
        assert all(s.state == "PENDING" and s.reason == "JobHeldUser" for s in states)
        assert [s.array_task_id for s in states] == [0, 1, 2]
        assert sq.query_jobs(name, use_sacct=True) == []  # never eligible: invisible to sacct -S
        assert len(sq.query_jobs(name, use_sacct=False)) == 3  # squeue sees them
    finally:
        assert sq.cancel_jobs([job]) == 1


def test_max_array_size_after_restart(reconfigured_cluster, tmp_path):
    assert sq.max_array_size() == 10001
    with reconfigured_cluster(max_array_size=11):
        assert sq.max_array_size() == 11
        batches = sq.split_array(list(range(30)), sq.max_array_size())
        assert [len(b) for b in batches] == [11, 11, 8]
        name = unique_name("split")
        jobs = [sbatch(name, sq.array_spec(len(b), 4), "--hold", cwd=tmp_path) for b in batches]
        too_big = subprocess.run(["sbatch", "--array=0-11", "--hold", "-o", "/dev/null", "--wrap", "true"],
                                 capture_output=True, text=True, cwd=tmp_path, check=False)
        assert too_big.returncode != 0 and "Invalid job array specification" in too_big.stderr
        states = sq.query_jobs(name, use_sacct=False)
        assert len(states) == 30 and {s.array_job_id for s in states} == set(jobs)
        sq.cancel_jobs(jobs)
    assert sq.max_array_size() == 10001


def test_query_jobs_falls_back_to_squeue_without_accounting(reconfigured_cluster, tmp_path):
    tools: list[str] = []

    def recording_run(cmd, **kwargs):
        tools.append(cmd[0])
        return subprocess.run(cmd, **kwargs)  # noqa: PLW1510 (kwargs carry check=False)

    with reconfigured_cluster(accounting=False):
        sacct = subprocess.run(["sacct", "-n"], capture_output=True, text=True, check=False)
        assert sacct.returncode != 0 and "accounting storage is disabled" in sacct.stderr + sacct.stdout
        assert subprocess.run(["squeue"], capture_output=True, check=False).returncode == 0
        with pytest.raises(sq.AccountingDisabledError):
            sq.query_jobs("anything", use_sacct=True)
        name = unique_name("squeue")
        job = sbatch(name, "0-2", cwd=tmp_path)
        states = wait_until_completed(name, 3, job_ids=[job], run=recording_run)
        assert [s.job_id for s in states] == [f"{job}_{i}" for i in range(3)]
        # sacct was tried once (it said accounting is disabled); after that only squeue
        assert tools[:2] == ["sacct", "squeue"] and set(tools[2:]) == {"squeue"}
    # accounting is back: the cluster config changed, so sacct is tried (and works) again
    tools.clear()
    sq.query_jobs(name, job_ids=[job], run=recording_run)
    assert tools == ["sacct"]
