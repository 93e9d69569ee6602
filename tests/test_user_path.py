"""The user's path, in fresh processes through the CLI, with study files on disk.

``bayesim-hpc run my_study.py`` freezes a study whose functions cloudpickle stores *by value*;
``bayesim-hpc resume DIR`` in another process must accept it (issue 16: it refused every
such study with "data_generator changed"). A kill -9 of the driver and its workers mid-run,
then ``resume``, must finish with every task once and metrics equal to an uninterrupted run.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from bayesim_hpc import load_results

from .user_path import cli, copy_example, kill_group, metric_frame, n_segments, start_cli, wait_for, write_study

EXIT_OK, EXIT_INCOMPLETE, EXIT_CHANGED, EXIT_INTERRUPTED = 0, 3, 6, 130


def test_run_then_resume_in_fresh_processes(tmp_path):
    study = write_study(tmp_path / "work")
    rdir = tmp_path / "results"
    run = cli("run", str(study), "--result-dir", str(rdir), "--executor", "local", "--workers", "2",
              check_rc=EXIT_INCOMPLETE)   # one task fails by design
    assert "79 succeeded, 1 failed, 0 missing" in run.stderr
    resume = cli("resume", str(rdir), check_rc=EXIT_INCOMPLETE)
    assert "changed" not in resume.stderr
    assert "79 succeeded, 1 failed, 0 missing" in resume.stderr
    # and `run` of the unchanged file on the same directory finishes too
    cli("run", str(study), "--result-dir", str(rdir), check_rc=EXIT_INCOMPLETE)


def test_comment_and_docstring_edits_are_not_changes_but_code_is(tmp_path):
    study = write_study(tmp_path / "work", n_replicates=2)
    rdir = tmp_path / "results"
    cli("run", str(study), "--result-dir", str(rdir), check_rc=EXIT_INCOMPLETE)
    text = study.read_text()
    edited = text.replace("def make_x(n, rng):\n", "def make_x(n, rng):  # draw the covariate\n"
                          "    '''Covariates, standard normal.'''\n")
    edited = edited.replace("x = make_x(data_spec[\"n\"], rng)", "x = make_x( data_spec['n'],\n        rng )")
    assert edited != text
    study.write_text(edited)
    cli("run", str(study), "--result-dir", str(rdir), check_rc=EXIT_INCOMPLETE)

    study.write_text(edited.replace("TRUE_SLOPE = 2.0", "TRUE_SLOPE = 2.5"))
    refused = cli("run", str(study), "--result-dir", str(rdir), check_rc=EXIT_CHANGED)
    assert "data_generator changed" in refused.stderr
    assert "-# uses global TRUE_SLOPE = 2.0" in refused.stderr and "+# uses global TRUE_SLOPE = 2.5" in refused.stderr
    assert f"bayesim-hpc resume {rdir}" in refused.stderr

    study.write_text(edited.replace("return rng.normal(size=n)", "return rng.uniform(size=n)"))
    refused = cli("run", str(study), "--result-dir", str(rdir), check_rc=EXIT_CHANGED)
    assert "+      return rng.uniform(size=n)" in refused.stderr  # the helper the generator calls


def test_a_changed_study_pkl_is_refused(tmp_path):
    study = write_study(tmp_path / "work", n_replicates=2)
    rdir = tmp_path / "results"
    cli("run", str(study), "--result-dir", str(rdir), check_rc=EXIT_INCOMPLETE)
    pkl = rdir / "study.pkl"
    pkl.write_bytes(pkl.read_bytes() + b"\0")
    out = cli("resume", str(rdir))
    assert out.returncode != 0 and "does not match the checksum" in out.stderr


@pytest.mark.parametrize("example", ["linear_mock.py", pytest.param("linear_pymc.py", marks=pytest.mark.slow),
                                     pytest.param("compare_samplers.py", marks=pytest.mark.slow)])
def test_examples_run_then_resume(example, tmp_path):
    study = copy_example(example, tmp_path / "work")
    rdir = tmp_path / "results"
    run = cli("run", str(study), "--result-dir", str(rdir), "--executor", "local", "--workers", "2", timeout=900)
    assert run.returncode in (EXIT_OK, EXIT_INCOMPLETE), run.stderr[-3000:]
    resume = cli("resume", str(rdir), timeout=900)
    assert resume.returncode in (EXIT_OK, EXIT_INCOMPLETE), resume.stderr[-3000:]
    assert "0 missing" in resume.stderr


def _uninterrupted(tmp_path_factory, executor: str) -> pd.DataFrame:
    folder = tmp_path_factory.mktemp(f"ref-{executor}")
    study = write_study(folder / "work", n_replicates=25, delay=0.0)
    rdir = folder / "results"
    cli("run", str(study), "--result-dir", str(rdir), "--executor", executor, "--workers", "2",
        check_rc=EXIT_INCOMPLETE)
    return metric_frame(load_results(rdir).summary)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return _uninterrupted(tmp_path_factory, "inline")


@pytest.mark.slow
@pytest.mark.parametrize("executor,trial", [("local", 0), ("local", 1), ("mock", 0), ("mock", 1)])
def test_kill9_driver_and_workers_then_resume(executor, trial, tmp_path, reference):
    """kill -9 of the driver and all its workers at a random instant, then `bayesim-hpc resume`."""
    rng = random.Random(f"{executor}-{trial}")
    study = write_study(tmp_path / "work", n_replicates=25, delay=0.02)   # 200 tasks, ~4 s on 2 workers
    rdir = tmp_path / "results"
    proc = start_cli("run", str(study), "--result-dir", str(rdir), "--executor", executor, "--workers", "2",
                     log=tmp_path / "run.log")
    wait_for(lambda: n_segments(rdir) >= 1 or proc.poll() is not None, 120, "the first segment")
    time.sleep(rng.uniform(0.1, 1.5))
    assert proc.poll() is None, f"the run ended before the kill:\n{(tmp_path / 'run.log').read_text()[-2000:]}"
    kill_group(proc)
    before = n_segments(rdir)
    resume = cli("resume", str(rdir), timeout=300)
    assert resume.returncode == EXIT_INCOMPLETE, resume.stderr[-3000:]  # the one injected failure
    assert "199 succeeded, 1 failed, 0 missing" in resume.stderr
    summary = load_results(rdir).summary
    assert len(summary) == 200 and summary["task_id"].is_unique
    assert n_segments(rdir) > before  # resume did run what the kill left missing
    pd.testing.assert_frame_equal(metric_frame(summary), reference, check_exact=True)


def test_new_user_folder_layout(tmp_path):
    """A study file that imports a helper module from its own folder runs and resumes."""
    work = tmp_path / "work"
    study = write_study(work, n_replicates=2)
    (work / "mystudy_helpers.py").write_text("def offset():\n    return 1.0\n")
    study.write_text(study.read_text().replace(
        "import numpy as np\n", "import numpy as np\nfrom mystudy_helpers import offset\n").replace(
        "y = 1.0 +", "y = offset() +"))
    rdir = tmp_path / "results"
    cli("run", str(study), "--result-dir", str(rdir), "--executor", "local", "--workers", "2", cwd=tmp_path,
        check_rc=EXIT_INCOMPLETE)
    out = cli("resume", str(rdir), cwd=Path("/"), check_rc=EXIT_INCOMPLETE)
    assert "15 succeeded, 1 failed, 0 missing" in out.stderr


def test_ctrl_c_exits_130_with_one_line_and_a_second_one_is_harmless(tmp_path):
    """Ctrl-C reaches the whole foreground process group (driver and workers), twice."""
    study = write_study(tmp_path / "work", n_replicates=10, delay=0.3)
    rdir = tmp_path / "results"
    proc = start_cli("run", str(study), "--result-dir", str(rdir), "--executor", "local", "--workers", "2",
                     log=tmp_path / "run.log")
    wait_for(lambda: (rdir / "manifest.json").exists() or proc.poll() is not None, 60, "the run to start")
    time.sleep(2.0)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.2)
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        pass
    assert proc.wait(timeout=60) == EXIT_INTERRUPTED
    log = (tmp_path / "run.log").read_text()
    assert "Traceback" not in log and "Aborted!" not in log, log
    assert f"finish with: bayesim-hpc resume {rdir}" in log.splitlines()[-1], log
    out = cli("resume", str(rdir), check_rc=EXIT_INCOMPLETE)
    assert "79 succeeded, 1 failed, 0 missing" in out.stderr
