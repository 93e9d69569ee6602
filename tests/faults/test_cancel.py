"""``cancel`` signals only the driver that holds the lock (pid and start time), and the
driver stops gracefully on SIGTERM: workers flushed, end recorded, lock released."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pandas as pd
import psutil
import pytest
from click.testing import CliRunner

from bayesim_hpc import resume_simulation, run_simulation
from bayesim_hpc.cli import main

from ..studies.linear import drill_config, make_config
from .helpers import QUIET, drive, metric_frame, n_segments, wait_for, workers_of


def test_cancel_leaves_an_unrelated_process_with_the_stale_pid_alone(rdir):
    run_simulation(make_config(result_path=rdir), **QUIET)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = psutil.Process(bystander.pid).create_time()
        (rdir / "driver.lock").write_text(json.dumps({  # a driver that died long ago had this pid
            "host": socket.gethostname(), "pid": bystander.pid, "pid_started": started - 3600,
            "started": started - 3600, "token": "old", "purpose": "driver"}))
        r = CliRunner().invoke(main, ["cancel", str(rdir)])
        assert r.exit_code == 0 and "nothing was signalled" in r.output
        assert bystander.poll() is None, "cancel killed an unrelated process"
        from bayesim_hpc.status import study_status

        st = study_status(rdir)
        assert st.driver is None and "process is gone" in st.driver_note
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.slow
def test_sigterm_stops_the_driver_cleanly(tmp_path):
    rdir = tmp_path / "r"
    driver = drive("run", rdir, "--workers", "2", "--delay", "0.005", stderr=subprocess.PIPE)
    try:
        wait_for(lambda: n_segments(rdir) >= 3 and len(workers_of(rdir)) == 2, what="a running study")
        workers = workers_of(rdir)
        r = CliRunner().invoke(main, ["cancel", str(rdir)])
        assert r.exit_code == 0 and "sent SIGTERM to the driver" in r.output
        _, err = driver.communicate(timeout=60)
    finally:
        driver.kill()
    assert "DriverStopped" in err and "stopped by SIGTERM" in err, err[-2000:]
    assert not (rdir / "driver.lock").exists(), "the lock was not released"
    run = json.loads((rdir / "manifest.json").read_text())["runs"][-1]
    assert run["interrupted"] == "SIGTERM" and run["ended"] >= run["started"]
    assert all(not w.is_running() or w.status() == psutil.STATUS_ZOMBIE for w in workers)
    assert not list(rdir.rglob("*.tmp"))
    ref = run_simulation(drill_config(tmp_path / "ref"), "inline", **QUIET).summary
    got = resume_simulation(rdir, "local", workers=2, **QUIET).summary
    assert len(got) == 2000 and got["task_id"].is_unique
    pd.testing.assert_frame_equal(metric_frame(got), metric_frame(ref), check_exact=True)
