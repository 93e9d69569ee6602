"""Segments survive and detect damage; one driver at a time; stale locks are recovered."""

import json
import os
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from bayesim_hpc import DriverLockedError, run_simulation
from bayesim_hpc.locking import DirLock
from bayesim_hpc.manifest import scan_progress
from bayesim_hpc.resultdir import ResultDir
from bayesim_hpc.storage import CorruptSegment, iter_segment_paths, read_rows, write_segment
from bayesim_hpc.task import TaskRecord

from .studies.linear import make_config

QUIET = dict(progress=False, emit=lambda s: None)


def _records(n, start=0):
    return [TaskRecord(index=start + i, task_id=f"t{start + i}", status="success", attempt=1,
                       columns={"m__value": float(i), "timing_total": 0.1},
                       artifacts={"draws": {"mu": np.full((2, 10), float(i))}, "warnings": ["w"]})
            for i in range(n)]


def test_segment_roundtrip_and_temp_files_ignored(tmp_path):
    p = write_segment(tmp_path, 3, 1, 0, _records(5), compression="gzip", draws_dtype="float32")
    assert p.parent.name == "s00003" and p.suffix == ".h5"
    (p.parent / ".a001-00001-deadbeef.h5.tmp").write_bytes(b"half a file")
    assert list(iter_segment_paths(tmp_path)) == [p]
    rows = read_rows(p)
    assert rows.index.tolist() == [0, 1, 2, 3, 4]
    assert rows.numbers["m__value"].tolist() == [0, 1, 2, 3, 4]
    with h5py.File(p, "r") as f:
        assert f["tasks/t2/draws/mu"].dtype == np.float32
        assert f["tasks/t2/draws/mu"].compression == "gzip"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip_row_bytes"])
def test_damaged_segment_is_detected(tmp_path, damage):
    p = write_segment(tmp_path, 0, 1, 0, _records(20))
    raw = bytearray(p.read_bytes())
    if damage == "truncate":
        p.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        p.write_bytes(os.urandom(len(raw)))
    else:  # change one metric value in place: only the checksum can tell
        with h5py.File(p, "r+") as f:
            f["rows/numbers"][3, 0] = 99.0  # column 0 is m__value
    with pytest.raises(CorruptSegment):
        read_rows(p)


def test_damaged_shard_is_reported_and_rerun(rdir):
    cfg = make_config(result_path=rdir, n_replicates=40, shard_size=10, tasks_per_segment=5)
    first = run_simulation(cfg, **QUIET).summary
    seg = sorted(iter_segment_paths(rdir))[3]
    seg.write_bytes(seg.read_bytes()[:300])
    prog = scan_progress(ResultDir(rdir), cfg.n_tasks)
    assert len(prog.corrupt) == 1 and prog.n_missing == 5
    from bayesim_hpc.status import study_status

    shown = study_status(rdir).render()
    assert f"DAMAGED segment {seg.relative_to(rdir)}" in shown and "pending: 5" in shown
    lines = []
    again = run_simulation(cfg, progress=False, emit=lines.append).summary
    assert any("damaged segment" in line for line in lines)
    cols = ["task_id", "rmse__slope", "bias__intercept", "cover90__sigma"]
    assert again[cols].equals(first[cols])


def test_second_driver_is_refused_with_holder(tmp_path):
    lock = DirLock(tmp_path / "driver.lock").acquire()
    try:
        with pytest.raises(DriverLockedError) as info:
            DirLock(tmp_path / "driver.lock").acquire()
        msg = str(info.value)
        assert f"pid {os.getpid()}" in msg and "host" in msg and "started" in msg
    finally:
        lock.release()
    DirLock(tmp_path / "driver.lock").acquire().release()


def test_second_driver_on_a_running_study_is_refused(rdir):
    cfg = make_config(result_path=rdir)
    rdir.mkdir(parents=True)
    holder = DirLock(ResultDir(rdir).driver_lock).acquire()
    try:
        with pytest.raises(DriverLockedError, match="in use by driver pid"):
            run_simulation(cfg, **QUIET)
    finally:
        holder.release()


def test_stale_lock_of_dead_process_is_broken(tmp_path):
    code = ("import sys, os; from bayesim_hpc.locking import DirLock; "
            f"DirLock({str(tmp_path / 'driver.lock')!r}).acquire(); os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True)
    info = DirLock(tmp_path / "driver.lock").holder()
    assert info is not None and info.pid != os.getpid()  # left behind by the dead process
    lock = DirLock(tmp_path / "driver.lock").acquire()
    assert lock.holder().pid == os.getpid()
    lock.release()


def test_lock_of_other_host_is_stale_only_without_heartbeat(tmp_path):
    path = tmp_path / "driver.lock"
    path.write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "pid_started": 0.0, "started": time.time(),
                                "token": "x", "purpose": "driver"}))
    with pytest.raises(DriverLockedError, match="node-elsewhere"):
        DirLock(path, stale_after=60).acquire()
    old = time.time() - 120  # an old mtime alone proves nothing (clock skew): the heartbeat must stand still
    os.utime(path, (old, old))
    with pytest.raises(DriverLockedError, match="node-elsewhere"):
        DirLock(path, stale_after=60).acquire()
    t0 = time.monotonic()
    DirLock(path, stale_after=1.0).acquire(timeout=3.0).release()  # broken after 1 s without a beat
    assert 1.0 <= time.monotonic() - t0 < 3.0


def test_heartbeat_refreshes_lock(tmp_path):
    lock = DirLock(tmp_path / "l", stale_after=2.0).acquire()
    try:
        old = time.time() - 100
        os.utime(lock.path, (old, old))
        time.sleep(0.8)
        assert time.time() - lock.path.stat().st_mtime < 5
    finally:
        lock.release()
    assert not lock.path.exists()
