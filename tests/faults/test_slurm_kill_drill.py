"""Kill -9 of the driver at random instants during a real Slurm run, then ``resume``: every
task exactly once, metrics bit-identical to an inline run.

The instants (0.3 .. 15 s after start, drawn from fixed seeds) fall before the study is
frozen, between ``sbatch`` and recording the job id, while jobs run and while the driver
reduces. The killed driver's array elements keep running (they belong to Slurm); ``resume``
adopts or waits for them and submits only what is missing.

Needs the local cluster of ``scripts/local-slurm.sh`` *already running* (this test never
starts or restarts it; it is skipped otherwise). Run::

    eval "$(scripts/local-slurm.sh env)"
    .venv/bin/python -m pytest -q -m slurm tests/faults/test_slurm_kill_drill.py
"""

from __future__ import annotations

import fcntl
import os
import random
import subprocess
import time

import pandas as pd
import pytest

from bayesim_hpc import resume_simulation, run_simulation
from bayesim_hpc.resultdir import ResultDir

from ..studies.drive import SLURM_FAST
from ..studies.linear import drill_config
from .helpers import QUIET, ROOT, drive, metric_frame

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
N_TRIALS = 10
N_TASKS, SHARD, DELAY = 200, 20, 0.03
SCRIPT = ROOT / "scripts" / "local-slurm.sh"


@pytest.fixture(scope="module")
def running_cluster():
    """The local Slurm cluster if it is up (never started here), held shared against restarts."""
    if os.geteuid() != 0 or subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True).returncode != 0:
        pytest.skip("the local Slurm cluster is not up (scripts/local-slurm.sh status); this drill never starts it")
    env = subprocess.run(["bash", str(SCRIPT), "env"], capture_output=True, text=True, check=True).stdout
    for line in env.splitlines():
        if line.startswith("export ") and "=" in line:
            k, _, v = line[len("export "):].partition("=")
            os.environ[k] = v
    from ..slurm.conftest import _lock_path

    with open(_lock_path(), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)  # the cluster's owner will not restart it under us
        yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cfg = drill_config(tmp_path_factory.mktemp("ref") / "r", n_tasks=N_TASKS, shard_size=SHARD)
    return metric_frame(run_simulation(cfg, "inline", **QUIET).summary)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("trial", range(N_TRIALS))
def test_slurm_driver_kill_drill(trial, tmp_path, running_cluster, reference):
    rng = random.Random(5000 + trial)
    rdir = tmp_path / "r"
    driver = drive("run", rdir, "--executor", "slurm", "--workers", "4", "--n-tasks", str(N_TASKS),
                   "--shard-size", str(SHARD), "--delay", str(DELAY), "--slurm-fast")
    try:
        time.sleep(rng.uniform(0.3, 15.0))
        driver.kill()
        driver.wait()
        if ResultDir(rdir).exists():
            res = resume_simulation(rdir, "slurm", max_running=4, **SLURM_FAST, **QUIET)
        else:  # killed before the study was frozen: the user runs the same command again
            res = run_simulation(drill_config(rdir, n_tasks=N_TASKS, shard_size=SHARD, delay=DELAY), "slurm",
                                 max_running=4, **SLURM_FAST, **QUIET)
        summary = res.summary
        assert len(summary) == N_TASKS and summary["task_id"].is_unique
        pd.testing.assert_frame_equal(metric_frame(summary), reference, check_exact=True)
        assert (summary["status"] == "failed").sum() == 1  # the drill study's one injected failure
    finally:
        driver.kill()
        if ResultDir(rdir).exists():
            try:
                from bayesim_hpc.executors.slurm import SlurmExecutor

                SlurmExecutor().cancel(ResultDir(rdir))
            except Exception as exc:  # never mask the test's own error
                print(f"cleanup of {rdir}: {exc}")
