"""Disk full: a clear error naming the directory, no temp files left, workers stopped cleanly,
and ``resume`` after freeing space finishes the study, every task exactly once."""

from __future__ import annotations

import errno
import os
import subprocess
import types
from pathlib import Path

import pandas as pd
import pytest

from bayesim_hpc import resume_simulation, run_simulation

from ..studies.linear import drill_config
from .helpers import QUIET, drive, metric_frame, workers_of


def _temp_files(rdir: Path) -> list[Path]:
    return [p for p in rdir.rglob("*.tmp")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return metric_frame(run_simulation(drill_config(tmp_path_factory.mktemp("ref") / "r", n_tasks=400), "inline",
                                       **QUIET).summary)


def test_enospc_mid_segment_inline(tmp_path, reference, monkeypatch):
    """An injected ENOSPC in the middle of writing a segment (after a few succeeded)."""
    import bayesim_hpc.storage as storage

    budget = {"writes": 3}

    def write(fd, data):
        if budget["writes"] == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        budget["writes"] -= 1
        return os.write(fd, data)

    monkeypatch.setattr(storage, "os", types.SimpleNamespace(**{**vars(os), "write": write}))
    rdir = tmp_path / "r"
    from bayesim_hpc.storage import StorageFullError

    with pytest.raises(StorageFullError, match=f"no space left .* writing to {rdir}/shards/s0000"):
        run_simulation(drill_config(rdir, n_tasks=400), "inline", **QUIET)
    assert not _temp_files(rdir)
    monkeypatch.undo()  # space was freed
    got = resume_simulation(rdir, "inline", **QUIET).summary
    assert len(got) == 400 and got["task_id"].is_unique
    pd.testing.assert_frame_equal(metric_frame(got), reference, check_exact=True)


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
def test_disk_full_on_a_real_small_filesystem(small_fs, reference):
    """Local executor, 2 workers, on a 1.2 MB tmpfs: the driver stops with a clear error."""
    rdir = small_fs / "r"
    driver = drive("run", rdir, "--workers", "2", "--n-tasks", "400", "--retain", "draws",
                   stderr=subprocess.PIPE)
    try:
        _, err = driver.communicate(timeout=300)
    finally:
        driver.kill()
    assert driver.returncode != 0
    assert "StorageFullError" in err and "no space left" in err and str(rdir) in err, err[-3000:]
    assert not workers_of(rdir), "workers left running"
    assert not _temp_files(rdir), _temp_files(rdir)
    assert not (rdir / "driver.lock").exists()
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)  # space freed
    got = resume_simulation(rdir, "local", workers=2, **QUIET).summary
    assert len(got) == 400 and got["task_id"].is_unique
    pd.testing.assert_frame_equal(metric_frame(got), reference, check_exact=True)


def test_log_reader_survives_a_full_disk():
    """The local driver's log-reader thread keeps draining a worker's output when the log
    cannot be written (else the worker blocks on a full pipe and the driver waits forever)."""
    from bayesim_hpc.executors.local import LocalExecutor

    class FullLog:
        def write(self, line):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    lines = [f"line {i}\n" for i in range(1000)] + ['{"shard_done": 0, "exit": 0}\n']
    proc = types.SimpleNamespace(popen=types.SimpleNamespace(stdout=iter(lines)), log=FullLog())
    ex = LocalExecutor(workers=1)
    ex._read(proc)
    events = []
    while not ex._events.empty():
        events.append(ex._events.get_nowait())
    assert len(events) == 1001 and events[-1][0] == "done"


def test_reducer_on_a_full_disk_keeps_the_old_summary(small_fs):
    """The reducer runs out of space: a clear error, no temp file, the previous summary intact."""
    from bayesim_hpc import reduce_results
    from bayesim_hpc.storage import StorageFullError

    rdir = small_fs / "r"
    run_simulation(drill_config(rdir, n_tasks=200, shard_size=50), "inline", **QUIET)
    before = (rdir / "summary.h5").read_bytes()
    filler = small_fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # take every byte that is left
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    with pytest.raises(StorageFullError, match=f"no space left .* writing to {rdir}"):
        reduce_results(rdir)
    assert not _temp_files(rdir)
    assert (rdir / "summary.h5").read_bytes() == before
    filler.unlink()
    assert reduce_results(rdir).n_missing == 0
