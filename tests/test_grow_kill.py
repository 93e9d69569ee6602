"""Kill -9 while a study grows: the driver or a worker dies during an extension or an adaptive
round; running the same command again finishes with every task exactly once and every
task's metrics equal to an uninterrupted run (a few trials: the full drill is test_kill_drill)."""

import random
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bayesim_hpc import run_adaptive, run_simulation

from .studies.drive_grow import TARGET, base_config, grown_config
from .test_kill_drill import _workers_of, metric_frame

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
QUIET = dict(progress=False, emit=lambda s: None)


def _drive(what: str, rdir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.studies.drive_grow", what, str(rdir), "--workers", "2"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_one(rng: random.Random, driver: subprocess.Popen, rdir: Path, window: tuple[float, float]) -> None:
    time.sleep(rng.uniform(*window))
    if rng.random() < 0.5:
        driver.kill()
    else:
        workers = _workers_of(rdir)
        if workers:
            rng.choice(workers).kill()
    driver.wait(timeout=180)
    deadline = time.time() + 15
    while _workers_of(rdir) and time.time() < deadline:
        time.sleep(0.2)


@pytest.fixture(scope="module")
def grown_reference(tmp_path_factory):
    return metric_frame(run_simulation(grown_config(tmp_path_factory.mktemp("ref") / "r"), "inline", **QUIET).summary)


@pytest.mark.parametrize("trial", range(2))
def test_kill_during_extension(trial, tmp_path, grown_reference):
    rng = random.Random(500 + trial)
    rdir = tmp_path / "r"
    assert _drive("base", rdir).wait(timeout=180) == 0
    _kill_one(rng, _drive("extend", rdir), rdir, (0.5, 4.0))
    summary = run_simulation(grown_config(rdir), "local", workers=2, **QUIET).summary  # the same command again
    assert len(summary) == 960 and summary["task_id"].is_unique
    pd.testing.assert_frame_equal(metric_frame(summary), grown_reference, check_exact=True)


@pytest.fixture(scope="module")
def adaptive_reference(tmp_path_factory):
    res = run_adaptive(base_config(tmp_path_factory.mktemp("ref") / "a", n_replicates=10), "inline",
                       target_mcse=TARGET, max_replicates=120, **QUIET)
    assert len(res.summary) > 80  # it took rounds
    return metric_frame(res.summary)


@pytest.mark.parametrize("trial", range(2))
def test_kill_during_adaptive_rounds(trial, tmp_path, adaptive_reference):
    rng = random.Random(700 + trial)
    rdir = tmp_path / "a"
    _kill_one(rng, _drive("adaptive", rdir), rdir, (1.5, 6.0))
    res = run_adaptive(base_config(rdir, n_replicates=10), "local", workers=2, target_mcse=TARGET,
                       max_replicates=120, **QUIET)
    assert res.summary["task_id"].is_unique
    pd.testing.assert_frame_equal(metric_frame(res.summary), adaptive_reference, check_exact=True)
