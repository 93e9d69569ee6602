"""Helpers for tests of the user's path: study files on disk, the CLI in fresh processes.

A study file written into a temporary folder is not importable as a package module, so
cloudpickle freezes its functions *by value*, exactly as for a user's ``my_study.py``. Tests
that import their studies from ``tests.studies`` do not see that path.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from .faults.helpers import metric_frame, n_segments, wait_for  # noqa: F401  (shared with the fault suite)

ROOT = Path(__file__).resolve().parents[1]

STUDY_FILE = '''\
"""A user's study file: {n_tasks} MockFitter tasks."""
import numpy as np
from bayesim_hpc import MockFitter, SimData, bias_metric, coverage_metric, rmse_metric, simulation_config

TRUE_SLOPE = 2.0


def make_x(n, rng):
    return rng.normal(size=n)


def generate(data_spec, rng, task_ctx):
    x = make_x(data_spec["n"], rng)
    y = 1.0 + TRUE_SLOPE * x + rng.normal(scale=data_spec["sigma"], size=data_spec["n"])
    return SimData(train={{"x": x, "y": y}}, response="y",
                   true_params={{"intercept": 1.0, "slope": TRUE_SLOPE, "sigma": data_spec["sigma"]}})


config = simulation_config(
    data_grid={{"n": [40, 80], "sigma": [0.5, 1.0]}},
    fit_grid={{"model": ["a", "b"]}},
    data_generator=generate,
    fitter=MockFitter(draws=100, delay={delay}, fail_tasks=("d002_f001_r00001",)),
    metrics=[rmse_metric(), bias_metric(), coverage_metric(0.9)],
    n_replicates={n_rep}, seed=7, retain="minimal", tasks_per_segment=5, shard_size={shard_size},
)
'''


def write_study(folder: Path, n_replicates: int = 10, delay: float = 0.0, shard_size: int = 10) -> Path:
    """A study file of 8 cells x ``n_replicates`` tasks in ``folder``; one task always fails."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "my_study.py"
    path.write_text(STUDY_FILE.format(n_tasks=8 * n_replicates, n_rep=n_replicates, delay=delay, shard_size=shard_size))
    return path


def cli_command() -> list[str]:
    exe = Path(sys.executable).with_name("bayesim-hpc")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "bayesim_hpc.cli"]


def cli(*args: str, cwd: Path | None = None, timeout: float = 300, check_rc: int | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``bayesim-hpc ARGS`` in a fresh process; with ``check_rc``, assert its exit code."""
    proc = subprocess.run([*cli_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    if check_rc is not None:
        assert proc.returncode == check_rc, (f"bayesim-hpc {' '.join(args)} exited {proc.returncode}, "
                                             f"expected {check_rc}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def start_cli(*args: str, cwd: Path | None = None, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``bayesim-hpc ARGS`` in its own process group (so a test can kill it with its workers)."""
    out = open(log, "wb") if log else subprocess.DEVNULL
    return subprocess.Popen([*cli_command(), *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process started by :func:`start_cli` and everything in its process group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)








def copy_example(name: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(ROOT / "examples" / name, folder / name))
