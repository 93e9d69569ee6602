"""Kill -9 drills: a worker, the driver or the reducer dies at a random instant; resume
finishes the study with every task exactly once and metrics equal to an uninterrupted run.

Each trial runs the 2,000-task drill study (tests/studies/linear.py) in a separate driver
process on the local process pool, SIGKILLs one process at an instant drawn from a fixed
seed, then finishes with ``resume`` (or re-runs the same command if the driver died before
the study was even frozen) and compares.
"""

import random
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bayesim_hpc import resume_simulation, run_simulation
from bayesim_hpc.resultdir import ResultDir

from .faults.helpers import metric_frame
from .faults.helpers import workers_of as _workers_of
from .studies.linear import drill_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
N_TRIALS = 21
QUIET = dict(progress=False, emit=lambda s: None)




@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    res = run_simulation(drill_config(tmp_path_factory.mktemp("ref") / "r"), "inline", **QUIET)
    return metric_frame(res.summary)


def _drive(what: str, rdir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.studies.drive", what, str(rdir), "--workers", "2"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)




def _finish(rdir: Path) -> pd.DataFrame:
    if ResultDir(rdir).exists():
        res = resume_simulation(rdir, "local", workers=2, **QUIET)
    else:  # died before the study was frozen: the user runs the same command again
        res = run_simulation(drill_config(rdir), "local", workers=2, **QUIET)
    return res.summary


@pytest.mark.parametrize("trial", range(N_TRIALS))
def test_kill_drill(trial, tmp_path, reference):
    rng = random.Random(1000 + trial)
    victim = ("worker", "driver", "reducer")[trial % 3]
    rdir = tmp_path / "r"
    driver = _drive("run", rdir)
    if victim == "reducer":
        assert driver.wait(timeout=120) == 0
        reducer = _drive("reduce", rdir)
        time.sleep(rng.uniform(0.3, 1.5))  # the reducer's imports take about 1 s, its work about 0.5 s
        reducer.kill()
        reducer.wait()
    else:
        time.sleep(rng.uniform(0.5, 5.0))
        if victim == "driver":
            driver.kill()
        else:
            workers = _workers_of(rdir)
            if workers:
                rng.choice(workers).kill()
        driver.wait(timeout=120)
    if victim == "driver":  # workers must not outlive their driver
        deadline = time.time() + 15
        while _workers_of(rdir) and time.time() < deadline:
            time.sleep(0.2)
        assert not _workers_of(rdir), "worker processes leaked after the driver died"
    summary = _finish(rdir)
    assert len(summary) == 2000
    assert summary["task_id"].is_unique
    got = metric_frame(summary)
    pd.testing.assert_frame_equal(got, reference, check_exact=True)
    assert (summary["status"] == "failed").sum() == 1  # the injected failure, recorded once
