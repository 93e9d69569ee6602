"""``clean`` during a run: refused while a driver holds the directory; temp files only go
when their writer is dead."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
from click.testing import CliRunner

from bayesim_hpc import DriverLockedError, clean_old_checkpoints, resume_simulation, run_simulation
from bayesim_hpc.cli import main

from ..studies.linear import drill_config, make_config
from .helpers import QUIET, drive, metric_frame, n_segments, wait_for

pytestmark = pytest.mark.slow


def test_clean_refuses_while_a_driver_runs(tmp_path):
    rdir = tmp_path / "r"
    driver = drive("run", rdir, "--workers", "2", "--delay", "0.01")
    try:
        wait_for(lambda: n_segments(rdir) >= 2, what="segments")
        with pytest.raises(DriverLockedError, match="clean refuses"):
            clean_old_checkpoints(rdir)
        r = CliRunner().invoke(main, ["clean", str(rdir)])
        assert r.exit_code == 5 and "clean refuses" in r.output
        assert driver.wait(timeout=300) == 0  # the run was not disturbed
    finally:
        driver.kill()
    ref = run_simulation(drill_config(tmp_path / "ref"), "inline", **QUIET).summary
    got = resume_simulation(rdir, "inline", **QUIET).summary
    pd.testing.assert_frame_equal(metric_frame(got), metric_frame(ref), check_exact=True)


def test_temp_files_of_live_writers_are_kept(rdir):
    run_simulation(make_config(result_path=rdir, n_replicates=20, shard_size=10, tasks_per_segment=5), **QUIET)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from bayesim_hpc.storage import temp_name

    try:
        def named(final, pid):
            t = temp_name(final)
            return t.with_name(t.name.replace(f".{os.getpid()}@", f".{pid}@"))

        live = named(rdir / "shards" / "s00000" / "a002-00000-00000000.h5", sleeper.pid)
        gone = named(rdir / "shards" / "s00001" / "a002-00000-00000000.h5", dead.pid)
        for p in (live, gone):
            p.write_bytes(b"half a segment")
        rep = clean_old_checkpoints(rdir)
        assert live.exists() and not gone.exists()
        assert str(gone.relative_to(rdir)) in rep.removed
        assert [k for k, _ in rep.kept] == [str(live.relative_to(rdir))]
    finally:
        sleeper.kill()
        sleeper.wait()
