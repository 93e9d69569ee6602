"""Should-fix items of the hardening audit: a damaged manifest, control characters, a second
stop signal, a dead driver and long ETAs in status, fsync order, errors that name their source."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

from bayesim_hpc import ConfigError, resume_simulation, run_simulation
from bayesim_hpc.cli import main
from bayesim_hpc.status import study_status

from ..studies.linear import make_config
from .helpers import QUIET


def test_truncated_manifest_is_moved_aside_and_rebuilt(rdir):
    cfg = make_config(result_path=rdir, n_replicates=20, shard_size=10, tasks_per_segment=5)
    run_simulation(cfg, **QUIET)
    text = (rdir / "manifest.json").read_text()
    (rdir / "manifest.json").write_text(text[: len(text) // 2])
    assert study_status(rdir).complete
    assert not list(rdir.glob("manifest.json.damaged-*"))  # status only reads
    r = CliRunner().invoke(main, ["resume", str(rdir), "-e", "inline", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert len(list(rdir.glob("manifest.json.damaged-*"))) == 1
    (rdir / "manifest.json").write_text("{\"shards\": {")
    assert run_simulation(cfg, **QUIET).reduce_outcome.n_missing == 0


@pytest.mark.parametrize("field", ["result_path", "partition", "profile"])
def test_control_characters_never_reach_a_job_script(tmp_path, field):
    cfg = make_config(result_path=tmp_path / "ok")
    opts = {}
    if field == "result_path":
        cfg = make_config(result_path=tmp_path / "a\n#SBATCH --uid=0")
    else:
        opts[field] = "debug\n#SBATCH --uid=0"
    with pytest.raises(ConfigError, match=f"{field}=.*control character"):
        run_simulation(cfg, "slurm", **opts, **QUIET)


def test_a_second_stop_signal_during_the_first_is_ignored(rdir):
    """SIGTERM arrives while the worker handles the first one (flushing): no traceback."""
    from bayesim_hpc.resultdir import ResultDir
    from bayesim_hpc.runner import prepare_result_dir
    from bayesim_hpc.worker import run_shard

    cfg = make_config(result_path=rdir, n_replicates=40, shard_size=40, tasks_per_segment=40)
    prepare_result_dir(cfg, ResultDir(rdir), "auto", False, 40)
    lines: list[str] = []

    def emit(line: str) -> None:
        lines.append(line)
        if "received SIGTERM" in line:  # the handling of the first signal has begun
            os.kill(os.getpid(), signal.SIGTERM)

    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    slow = cfg.replace(fitter=type(cfg.fitter)(delay=0.02))
    timer.start()
    out = run_shard(rdir, 0, study=slow, emit=emit, handle_signals=True)
    timer.cancel()
    assert out.stopped and out.stop_signal == "SIGTERM" and out.n_run > 0
    assert out.segments == 1  # what finished was flushed
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_status_eta_does_not_wrap_at_24_hours():
    from bayesim_hpc.executors.base import format_duration
    from bayesim_hpc.status import StudyStatus

    st = StudyStatus(path="p", n_tasks=10**8, n_success=0, n_failed=0, n_missing=10**8, n_warnings=0, cells=[],
                     shards=[], corrupt=[], driver="driver pid 1", last_run=None, eta_seconds=86400 + 53904.0,
                     rate_per_s=712.7)
    assert "ETA 1 day 14:58:24" in st.render()
    assert format_duration(3 * 86400 + 5) == "3 days 0:00:05"


def test_study_pkl_is_durable_before_study_json(rdir, monkeypatch):
    import bayesim_hpc.resultdir as resultdir
    import bayesim_hpc.storage as storage

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync " + os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    def replace(a, b):
        events.append(f"replace {b}")
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    assert resultdir.os is os and storage.os is os
    run_simulation(make_config(result_path=rdir, n_replicates=5, shard_size=5), **QUIET)
    monkeypatch.undo()
    pkl = next(i for i, e in enumerate(events) if e.startswith("fsync") and ".study.pkl." in e)
    js = next(i for i, e in enumerate(events) if e == f"replace {rdir / 'study.json'}")
    assert pkl < js
    shards_dir_synced = [i for i, e in enumerate(events) if e == f"fsync {rdir / 'shards'}"]
    assert shards_dir_synced, "a new shard folder's parent was not fsynced"


STUDY_FAILS = """\
from bayesim_hpc import simulation_config
import math

def helper():
    return math.sqrt(-1)   # line 5

x = helper()
"""


def test_errors_name_their_source(tmp_path):
    f = tmp_path / "mystudy.py"
    f.write_text(STUDY_FAILS)
    r = CliRunner().invoke(main, ["run", str(f), "-o", str(tmp_path / "o")])
    assert r.exit_code == 1 and f"{f}:5" in r.output and "ValueError: math domain error" in r.output, r.output

    class Unpicklable(type(make_config().fitter)):
        def __init__(self):
            super().__init__()
            object.__setattr__(self, "lock", threading.Lock())

    cfg = make_config(result_path=tmp_path / "u", fitter=Unpicklable())
    with pytest.raises(ConfigError, match=r"^fitter=.*cannot be pickled"):
        run_simulation(cfg, **QUIET)

    class BadShape:
        name, kind = "wobble", "mean"

        def compute(self, fit, data):
            return {"value": np.ones(3)}

    res = run_simulation(make_config(result_path=tmp_path / "m", metrics=[BadShape()], n_replicates=2), **QUIET)
    msg = res.summary["error_message"].iloc[0]
    assert "metric 'wobble' (BadShape) returned non-scalar values {'value': (3,)}" in msg


def test_dead_driver_is_not_shown_as_running(rdir):
    run_simulation(make_config(result_path=rdir), **QUIET)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import json
    import socket

    (rdir / "driver.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                                  "pid_started": time.time() - 5, "started": time.time() - 5,
                                                  "token": "t", "purpose": "driver"}))
    st = study_status(rdir)
    assert st.driver is None and "stale lock" in st.render()
    assert resume_simulation(rdir, "inline", **QUIET).reduce_outcome.n_missing == 0  # and the lock is broken


def test_huge_grid_dry_run_is_lazy_and_warns(tmp_path):
    """400 x 400 data rows (160,000 cells): specs come from column lists (no per-row Series), with a warning."""
    from bayesim_hpc.runner import size_warnings

    cfg = make_config(data_grid={"n": list(range(10, 410)), "sigma": [0.5 + i for i in range(400)]}, n_replicates=1)
    assert cfg.data_spec(123) == {"n": 10, "sigma": 123.5}
    assert type(cfg.data_spec(159_999)["n"]) is int  # each column keeps its type
    (w,) = size_warnings(cfg)
    assert "160,000 cells" in w and "DataFrame" in w
