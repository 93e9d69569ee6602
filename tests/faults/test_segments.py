"""Segments that cannot be used: only proven damage leaves (to quarantine/), nothing is deleted
for an I/O error or a newer format, and one bad segment never breaks the whole directory."""

from __future__ import annotations

import errno

import h5py
import numpy as np
import pytest

from bayesim_hpc import BayesimError, clean_old_checkpoints, reduce_results, run_simulation
from bayesim_hpc.status import study_status
from bayesim_hpc.storage import iter_segment_paths, write_segment
from bayesim_hpc.task import TaskRecord

from ..studies.linear import make_config
from .helpers import QUIET


@pytest.fixture
def done(rdir):
    run_simulation(make_config(result_path=rdir, n_replicates=20, shard_size=10, tasks_per_segment=5), **QUIET)
    return rdir


def test_truncated_segment_goes_to_quarantine_not_away(done):
    seg = sorted(iter_segment_paths(done))[1]
    rel = seg.relative_to(done)
    data = seg.read_bytes()
    seg.write_bytes(data[: len(data) // 2])
    rep = clean_old_checkpoints(done)
    assert [p for p, _ in rep.quarantined] == [str(rel)] and str(rel) not in rep.removed
    moved = done / "quarantine" / rel
    assert moved.read_bytes() == data[: len(data) // 2]  # the very bytes, for a post-mortem
    assert (moved.parent / (moved.name + ".why.txt")).read_text().strip()
    assert study_status(done).n_missing == 5


def test_newer_format_segment_is_a_clear_error_and_kept(done):
    seg = sorted(iter_segment_paths(done))[0]
    with h5py.File(seg, "r+") as f:
        f.attrs["format"] = 99
    with pytest.raises(Exception, match="written by a newer bayesim-hpc"):
        clean_old_checkpoints(done)
    assert seg.exists()
    from bayesim_hpc.storage import NewerFormatError

    with pytest.raises(NewerFormatError, match="Upgrade bayesim-hpc"):
        reduce_results(done)
    with pytest.raises(NewerFormatError):
        study_status(done)


def test_eio_on_read_is_reported_and_the_file_kept(done, monkeypatch):
    seg = sorted(iter_segment_paths(done))[2]
    real = h5py.File

    def flaky(name, *a, **k):
        if str(name) == str(seg):
            raise OSError(errno.EIO, "Input/output error")
        return real(name, *a, **k)

    monkeypatch.setattr("bayesim_hpc.storage.h5py.File", flaky)
    rep = clean_old_checkpoints(done)
    assert seg.exists() and not rep.quarantined and str(seg.relative_to(done)) not in rep.removed
    assert [p for p, _ in rep.kept] == [str(seg.relative_to(done))]
    st = study_status(done)
    assert st.unreadable and "UNREADABLE segment" in st.render() and st.n_missing == 5
    with pytest.raises(BayesimError, match="could not read 1 segment"):
        reduce_results(done)
    monkeypatch.setattr("bayesim_hpc.storage.h5py.File", real)  # the storage answers again
    assert reduce_results(done).n_missing == 0


def test_segment_with_an_out_of_range_task_is_skipped_and_named(done):
    rec = TaskRecord(index=10**6, task_id="d999_f001_r00001", status="success", attempt=1,
                     columns={"rmse__value": 1.0}, artifacts={})
    bad = write_segment(done, 0, 5, 0, [rec])
    out = reduce_results(done)
    assert out.n_success == 20
    assert [p for p, _ in out.foreign] == [str(bad.relative_to(done))] and "outside" in out.foreign[0][1]
    assert study_status(done).complete


def test_transient_read_error_is_retried(done, monkeypatch):
    seg = sorted(iter_segment_paths(done))[0]
    real = h5py.File
    fails = {"n": 1}

    def once(name, *a, **k):
        if str(name) == str(seg) and fails["n"]:
            fails["n"] -= 1
            raise OSError(errno.EIO, "Input/output error")
        return real(name, *a, **k)

    monkeypatch.setattr("bayesim_hpc.storage.h5py.File", once)
    out = reduce_results(done)
    assert out.n_missing == 0 and fails["n"] == 0
    assert np.isfinite(out.n_segments)
