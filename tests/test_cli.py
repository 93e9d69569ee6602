"""The command line as a user drives it: click's runner and real subprocesses."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bayesim_hpc.cli import EXIT_CHANGED, EXIT_INCOMPLETE, EXIT_LOCKED, main

ROOT = Path(__file__).resolve().parents[1]
STUDY = """
from bayesim_hpc import MockFitter, coverage_metric, bias_metric, rmse_metric, sbc_rank_metric, simulation_config
from tests.studies.linear import generate

config = simulation_config(
    data_grid={{"n": [50, 100], "sigma": [1.0]}}, fit_grid={{"model": ["a", "b"]}}, data_generator=generate,
    fitter=MockFitter(fail_tasks=("d001_f002_r00003",), warn_rate={warn}),
    metrics=[rmse_metric(), bias_metric(), coverage_metric(), sbc_rank_metric(49)],
    n_replicates=15, seed={seed}, retain="standard")
"""


@pytest.fixture
def study_file(tmp_path):
    p = tmp_path / "study.py"
    p.write_text(STUDY.format(seed=1, warn=0.0))
    return p


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_run_status_report_replay_clean(study_file, tmp_path):
    out = tmp_path / "res"
    r = invoke("run", study_file, "-o", out, "-e", "inline", "--no-progress")
    assert r.exit_code == EXIT_INCOMPLETE, r.output  # one task fails by design
    assert "1 failed" in r.output and f"bayesim-hpc resume {out}" in r.output
    r = invoke("status", out)
    assert r.exit_code == EXIT_INCOMPLETE
    assert "succeeded: 59 (98.3 %)  failed: 1 (1.7 %)  pending: 0" in r.output
    assert "d001_f002" in r.output and "RuntimeError in fit" in r.output
    st = json.loads(invoke("status", out, "--json").output)
    assert st["n_success"] == 59 and len(st["cells"]) == 4 and len(st["shards"]) >= 1
    r = invoke("report", out)
    assert r.exit_code == 0
    html = (out / "report.html").read_text()
    assert "Which method is biased?" in html and "data:image/png;base64," in html
    plots = json.loads((out / "report.json").read_text())["plots"]
    assert {p["title"] for p in plots} >= {"Coverage (cover90)", "Bias", "Diagnostics", "SBC ranks (sbc_rank)"}
    import base64
    import io
    import re

    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(images) == len(plots)
    for p, b64 in zip(plots, images):
        assert p["points"] > 0
        img = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("L"), dtype=float)
        assert img.std() > 5  # not a blank canvas
    r = invoke("replay", out, "d001_f002_r00003")
    assert r.exit_code == 1 and "injected failure" in r.output and "matches the stored result: yes" in r.output
    r = invoke("replay", out, "d002_f001_r00004")
    assert r.exit_code == 0 and "matches the stored result: yes" in r.output
    r = invoke("clean", out, "--keep", "1")
    assert r.exit_code == 0 and "0 item(s)" in r.output


def test_changed_study_and_bad_input_exit_codes(study_file, tmp_path):
    out = tmp_path / "res"
    assert invoke("run", study_file, "-o", out, "-e", "inline", "--no-progress").exit_code == EXIT_INCOMPLETE
    study_file.write_text(STUDY.format(seed=2, warn=0.0))
    r = invoke("run", study_file, "-o", out, "-e", "inline", "--no-progress")
    assert r.exit_code == EXIT_CHANGED and "seed changed" in r.output
    assert "Traceback" not in r.output
    bad = tmp_path / "bad.py"
    bad.write_text("from bayesim_hpc import simulation_config\nconfig = simulation_config(data_grid={'n': [1]}, "
                   "fit_grid={'m': [1]}, data_generator=lambda a, b, c: None, fitter=None, metrics=[], seed=1)\n")
    r = invoke("run", bad, "-o", tmp_path / "x")
    assert r.exit_code == 1 and r.output.startswith("error: fitter=None: is required")
    r = invoke("run", study_file, "-o", tmp_path / "y", "-e", "local", "--detach")
    assert r.exit_code == 2 and "--detach" in r.output


def test_dry_run_prints_plan_and_runs_nothing(study_file, tmp_path):
    r = invoke("run", study_file, "-o", tmp_path / "d", "--dry-run", "-j", "2", "--shard-size", "10")
    assert r.exit_code == 0
    assert "60 tasks" in r.output and "shard     5" in r.output and "nothing was run" in r.output
    assert not (tmp_path / "d").exists()


def test_locked_directory_exit_code(study_file, tmp_path):
    from bayesim_hpc.locking import DirLock

    out = tmp_path / "res"
    out.mkdir()
    lock = DirLock(out / "driver.lock").acquire()
    try:
        r = invoke("run", study_file, "-o", out, "-e", "inline", "--no-progress")
        assert r.exit_code == EXIT_LOCKED and "in use by driver" in r.output
    finally:
        lock.release()


def test_subprocess_run_relays_worker_warnings_and_resume(study_file, tmp_path):
    study_file.write_text(STUDY.format(seed=1, warn=1.0))
    out = tmp_path / "res"
    cmd = [sys.executable, "-m", "bayesim_hpc.cli", "run", str(study_file), "-o", str(out), "-e", "local", "-j", "2"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == EXIT_INCOMPLETE, p.stderr
    assert "WARNING MockFitter: injected warning" in p.stderr
    assert "[d001_f002_r00003] FAILED in fit" in p.stderr
    p = subprocess.run([sys.executable, "-m", "bayesim_hpc.cli", "resume", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == EXIT_INCOMPLETE  # the failure is deterministic: it fails again
    assert "1 to run" in p.stderr
    p = subprocess.run([sys.executable, "-m", "bayesim_hpc.cli", "status", str(out), "--json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert json.loads(p.stdout)["n_warnings"] == 59  # the failing task raises before it warns


def test_status_tells_the_truth_about_failures_and_shows_grid_values(tmp_path):
    """An all-failed study is not '100 % finished'; cells show their grid values; the advice fits."""
    from bayesim_hpc import run_simulation
    from bayesim_hpc.status import study_status

    from .studies.linear import make_config

    def broken(spec, rng, ctx):
        raise ValueError("no data today")

    cfg = make_config(data_generator=broken, data_grid={"n": [10, 20], "sigma": [1.0]}, n_replicates=3,
                      result_path=tmp_path / "r", stop_on_systematic_failure=None)
    run_simulation(cfg, progress=False, emit=lambda s: None)
    text = study_status(tmp_path / "r").render()
    assert "succeeded: 0 (0.0 %)  failed: 6 (100.0 %)  pending: 0" in text
    assert "finished" not in text and "to finish" not in text
    assert "d002_f001         0 /     3 /      0   n=20, sigma=1.0 | model=linear" in text
    assert f"bayesim-hpc replay {tmp_path / 'r'} d001_f001_r00001" in text
