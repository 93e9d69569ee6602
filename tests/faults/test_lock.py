"""Two drivers never both hold a result directory: staleness is judged by whether the
heartbeat advances over a local monotonic interval (never by comparing clocks of two hosts),
and a driver whose lock was taken over stops with a clear error."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time

import pandas as pd
import pytest

from bayesim_hpc import DriverLockedError, resume_simulation, run_simulation
from bayesim_hpc.locking import DirLock

from ..studies.linear import drill_config
from .helpers import QUIET, drive, metric_frame, n_segments, wait_for, workers_of


def _foreign_lock(path, token="theirs"):
    path.write_text(json.dumps({"host": "node-elsewhere", "pid": 4242, "pid_started": 1.0, "started": time.time(),
                                "token": token, "purpose": "driver"}))


def test_live_holder_with_a_clock_one_hour_behind_is_not_broken(tmp_path):
    path = tmp_path / "driver.lock"
    _foreign_lock(path)
    stop = threading.Event()

    def beat():  # the other host's heartbeat; its clock is an hour behind ours
        while not stop.wait(0.1):
            t = time.time() - 3600
            os.utime(path, (t, t))

    threading.Thread(target=beat, daemon=True).start()
    try:
        with pytest.raises(DriverLockedError, match="heartbeat is advancing"):
            DirLock(path, stale_after=1.0).acquire(timeout=2.5)
    finally:
        stop.set()


def test_dead_holder_with_a_clock_one_hour_ahead_is_broken(tmp_path):
    path = tmp_path / "driver.lock"
    _foreign_lock(path)
    t = time.time() + 3600  # its last heartbeat, stamped by a clock an hour ahead
    os.utime(path, (t, t))
    t0 = time.monotonic()
    lock = DirLock(path, stale_after=1.0, wait_foreign=True).acquire()
    try:
        assert 1.0 <= time.monotonic() - t0 < 5.0
        assert lock.holder().host == socket.gethostname()
    finally:
        lock.release()


def test_heartbeat_notices_a_taken_over_lock(tmp_path):
    lost = threading.Event()
    lock = DirLock(tmp_path / "driver.lock", stale_after=0.8, on_lost=lost.set).acquire()
    try:
        lock.path.unlink()  # what a host that judged us stale does: break, and take it
        _foreign_lock(lock.path, token="new-owner")
        assert lost.wait(3.0) and lock.lost.is_set()
        from bayesim_hpc.errors import LockLostError

        with pytest.raises(LockLostError, match="node-elsewhere"):
            lock.check()
    finally:
        lock.release()
    assert json.loads(lock.path.read_text())["token"] == "new-owner"  # release left theirs alone


@pytest.mark.slow
def test_driver_paused_past_stale_after_stops_with_a_clear_error(tmp_path, monkeypatch):
    """SIGSTOP a driver for longer than stale_after; a driver on 'another host' takes over and
    finishes; the paused one, continued, finds its lock lost and exits without writing."""
    rdir = tmp_path / "r"
    first = drive("run", rdir, "--workers", "2", "--delay", "0.004", "--stale-after", "2",
                  stderr=subprocess.PIPE)
    try:
        wait_for(lambda: n_segments(rdir) >= 3, what="the first driver to make progress")
        first.send_signal(signal.SIGSTOP)
        paused_workers = [w.pid for w in workers_of(rdir)]
        monkeypatch.setattr(socket, "gethostname", lambda: "second-host")
        lines: list[str] = []
        t0 = time.monotonic()
        res = resume_simulation(rdir, "local", workers=2, progress=False, emit=lines.append, lock_stale_after=2)
        assert time.monotonic() - t0 >= 2.0  # it watched the heartbeat stand still first
        assert any("watching its heartbeat" in line for line in lines)
        monkeypatch.undo()
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode != 0
    assert "LockLostError" in err and "lost the lock" in err, err[-2000:]
    wait_for(lambda: not any(p in [w.pid for w in workers_of(rdir)] for p in paused_workers), 30,
             "the paused driver's workers to stop")
    ref = run_simulation(drill_config(tmp_path / "ref"), "inline", **QUIET).summary
    final = resume_simulation(rdir, "local", workers=2, **QUIET).summary  # whatever the paused workers flushed
    assert len(final) == 2000 and final["task_id"].is_unique
    pd.testing.assert_frame_equal(metric_frame(final), metric_frame(ref), check_exact=True)
    pd.testing.assert_frame_equal(metric_frame(res.summary), metric_frame(ref), check_exact=True)
