"""Partition choice on the real local Slurm cluster: debug/other (MaxTime unlimited) and short (30 min, 4000 MB).

Run as root: ``eval "$(scripts/local-slurm.sh env)" && .venv/bin/python -m pytest tests/slurm/test_partitions.py``.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from bayesim_hpc import run_simulation
from bayesim_hpc.executors.slurm_partitions import PartitionError
from bayesim_hpc.executors.slurm_submit import job_name
from bayesim_hpc.resultdir import ResultDir

from .test_slurm_executor import FAST, _cfg, manifest, wait_for

pytestmark = [pytest.mark.slurm]

SHORT = ["PartitionName=short", "Nodes=n[1-2]", "MaxTime=30", "DefaultTime=10", "MaxMemPerNode=4000", "State=UP"]


@pytest.fixture
def short_partition(slurm_cluster):
    """The ``short`` partition of scripts/local-slurm.sh; a cluster started by an older copy of the
    script lacks it, so it is created for the test (and removed after)."""
    out = subprocess.run(["scontrol", "-a", "show", "partition", "-o"], capture_output=True, text=True).stdout
    created = "PartitionName=short " not in out
    if created:
        subprocess.run(["scontrol", "create", *SHORT], check=True, capture_output=True)
    yield
    if created:
        subprocess.run(["scontrol", "delete", "PartitionName=short"], capture_output=True)


def _long_for_b(data_spec, fit_spec):
    return {"time_min": 60} if fit_spec["model"] == "b" else None


def _partition_of(job_id: str) -> set[str]:
    """The partitions a job's elements ran in (sacct lags behind the end of a job: polled)."""
    def ask() -> set[str]:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "Partition", "-j", job_id], capture_output=True,
                             text=True, check=True).stdout
        return {line.strip() for line in out.splitlines() if line.strip()}

    return wait_for(ask, 60, f"sacct to know job {job_id}", step=0.5)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_each_resource_class_goes_to_the_smallest_partition_that_holds_it(tmp_path, studies, short_partition):
    path = tmp_path / "study"
    studies.append(path)
    cfg = _cfg(path, fit_grid={"model": ["a", "b"]}, n_replicates=10, shard_size=10)
    dry: list[str] = []
    run_simulation(cfg, "slurm", dry_run=True, emit=dry.append, resources=_long_for_b, **FAST)
    text = "\n".join(dry)
    assert "short* " not in text and "short (MaxTime 30 min, 4000 MB and 4 CPUs per node" in text, text
    assert "partition short: the smallest that holds 5 min, 1GB, 1 CPU(s)" in text, text
    assert "partition debug,other: the smallest that holds 60 min, 1GB, 1 CPU(s)" in text, text
    assert "too small: short (time 60 min > MaxTime 30 min)" in text

    res = run_simulation(_cfg(path, fit_grid={"model": ["a", "b"]}, n_replicates=10, shard_size=10), "slurm",
                         resources=_long_for_b, emit=lambda s: None, **FAST)
    assert res.reduce_outcome.n_missing == 0 and len(res.summary) == 40
    subs = [s for s in manifest(path)["submissions"] if s.get("job_id")]
    by_class = {s["resources"]: _partition_of(str(s["job_id"])) for s in subs}
    assert by_class == {"5min/1GB/1cpu": {"short"}, "60min/1GB/1cpu": by_class["60min/1GB/1cpu"]}, by_class
    # submitted as --partition=debug,other: Slurm ran it in one of them
    assert by_class["60min/1GB/1cpu"] and by_class["60min/1GB/1cpu"] <= {"debug", "other", "debug,other"}, by_class


def test_a_request_no_partition_holds_is_refused_before_anything_is_submitted(tmp_path, studies, short_partition):
    path = tmp_path / "study"
    studies.append(path)
    cfg = _cfg(path)
    with pytest.raises(PartitionError) as err:
        run_simulation(cfg, "slurm", **{**FAST, "mem": 20})
    msg = str(err.value)
    assert "the largest, debug (MaxTime unlimited, 16000 MB and 4 CPUs per node)" in msg, msg
    assert "memory 20480 MB > 16000 MB per node" in msg and "mem_gb (option --mem) to at most 15.6 GB" in msg
    assert not manifest(path).get("submissions")
    out = subprocess.run(["squeue", "-h", "--name", job_name(ResultDir(path))], capture_output=True, text=True)
    assert out.stdout.strip() == ""
    # a named partition is checked too, and the message says which partitions would hold the request
    with pytest.raises(PartitionError, match=r"\(short\) cannot hold a request of 60 min.*debug, other"):
        run_simulation(cfg, "slurm", **{**FAST, "time_min": 60, "partition": "short"})


def test_partitions_the_account_may_not_use_are_skipped(tmp_path, short_partition):
    """Two partitions smaller than short: one for another account only, one for the user's account."""
    from bayesim_hpc.executors.slurm_partitions import Placement, default_account
    from bayesim_hpc.executors.slurm_profile import Resources

    import getpass

    mine = default_account(getpass.getuser())
    if mine is None:
        pytest.skip("no default account (accounting off)")
    tag = f"t{os.getpid()}"
    made = {f"{tag}_theirs": ("8", "nosuchaccount"), f"{tag}_mine": ("9", mine)}
    try:
        for name, (max_time, account) in made.items():
            subprocess.run(["scontrol", "create", f"PartitionName={name}", "Nodes=n[1-2]", f"MaxTime={max_time}",
                            f"AllowAccounts={account}", "State=UP"], check=True, capture_output=True)
        choice = Placement().choose(Resources(time_min=5, mem_mb=1024))
        assert choice.partition == f"{tag}_mine", choice
        assert f"{tag}_theirs (AllowAccounts=nosuchaccount (account {mine}))" in " ".join(choice.notes), choice
        dry: list[str] = []
        run_simulation(_cfg(tmp_path / "dry"), "slurm", dry_run=True, emit=dry.append, **FAST)
        assert any(line.startswith(f"  partition {tag}_mine: the smallest") for line in dry), dry
    finally:
        for name in made:
            subprocess.run(["scontrol", "delete", f"PartitionName={name}"], capture_output=True)
