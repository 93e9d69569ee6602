"""The user's path on the real test cluster (issue 16): `bayesim-hpc run STUDY.py --executor slurm
--detach` from one shell, `bayesim-hpc resume DIR` from another (fresh processes, a study file on
disk, functions pickled by value); every task once, metrics equal to an inline run."""

from __future__ import annotations

import pandas as pd
import pytest

from bayesim_hpc import load_results

from ..user_path import cli, metric_frame, write_study

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_run_detach_then_resume_from_another_shell(slurm_cluster, studies, tmp_path):
    study = write_study(tmp_path / "work", n_replicates=5)  # 40 tasks in 4 shards; d002_f001_r00001 fails
    ref = tmp_path / "inline"
    cli("run", str(study), "--result-dir", str(ref), "--executor", "inline", check_rc=3)
    rdir = tmp_path / "results"
    studies.append(rdir)
    run = cli("run", str(study), "--result-dir", str(rdir), "--executor", "slurm", "--detach", "--mem", "1G",
              "--time", "5", "--plan", "shards", check_rc=0)
    assert "the driver is leaving" in run.stderr, run.stderr[-2000:]
    out = cli("resume", str(rdir), timeout=900)  # another process: adopts the elements, waits, reduces
    assert out.returncode == 3, out.stderr[-3000:]  # 3: the one failure by design
    assert "changed" not in out.stderr and "39 succeeded, 1 failed, 0 missing" in out.stderr, out.stderr[-3000:]
    got = load_results(rdir).summary
    assert len(got) == 40 and got["task_id"].is_unique
    pd.testing.assert_frame_equal(metric_frame(got), metric_frame(load_results(ref).summary), check_exact=True)
