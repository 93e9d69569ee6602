"""No code runs from a result directory on read-only commands; code-loading commands refuse a
directory of another user unless it is trusted (like git's safe.directory)."""

from __future__ import annotations

import os
import pickle

import pytest
from click.testing import CliRunner

from bayesim_hpc import resume_simulation, run_simulation
from bayesim_hpc.cli import main

from ..studies.linear import make_config
from .helpers import QUIET


class Hostile:
    """Unpickling this runs a shell command (what an attacker puts into study.pkl)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def done(rdir):
    run_simulation(make_config(result_path=rdir, n_replicates=20, shard_size=10, tasks_per_segment=5), **QUIET)
    return rdir


def test_read_only_commands_never_unpickle_study_pkl(done, tmp_path):
    marker = tmp_path / "pwned"
    (done / "study.pkl").write_bytes(pickle.dumps(Hostile(marker)))
    (done / "summary.h5").unlink()  # make reduce/report work for it
    for args in (("status", done), ("status", done, "--json"), ("reduce", done), ("report", done)):
        r = invoke(*args)
        assert r.exit_code == 0, (args, r.output)
        assert not marker.exists(), f"`bayesim-hpc {' '.join(map(str, args))}` ran code from study.pkl"
    assert (done / "report.html").exists()


def _hand_over(done, uid=12345):
    for p in (done, done / "study.pkl", done / "study.json"):
        os.chown(p, uid, uid)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to another user")
def test_code_loading_commands_refuse_another_users_directory(done, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("BAYESIM_SAFE_DIRECTORIES", raising=False)
    marker = tmp_path / "pwned"
    (done / "study.pkl").write_bytes(pickle.dumps(Hostile(marker)))
    _hand_over(done)
    from bayesim_hpc.resultdir import UntrustedResultDir

    with pytest.raises(UntrustedResultDir, match="owned by uid 12345.*bayesim-hpc trust"):
        resume_simulation(done, "inline", **QUIET)
    for args in (("resume", done), ("replay", done, "d001_f001_r00001")):
        r = invoke(*args)
        assert r.exit_code == 7 and "not by you" in r.output, (args, r.output)
    # `run` into it would let its workers unpickle study.pkl: refused too
    with pytest.raises(UntrustedResultDir):
        run_simulation(make_config(result_path=done, n_replicates=20, shard_size=10, tasks_per_segment=5), **QUIET)
    assert not marker.exists()
    assert invoke("status", done).exit_code == 0  # reading is fine


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to another user")
def test_trusted_directory_of_another_user_loads(done, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("BAYESIM_SAFE_DIRECTORIES", raising=False)
    _hand_over(done)
    r = invoke("trust", done)
    assert r.exit_code == 0 and str(done.resolve()) in (tmp_path / "config" / "bayesim-hpc" / "safe-directories").read_text()
    assert invoke("replay", done, "d001_f001_r00002").exit_code == 0
    invoke("trust", done, "--remove")
    assert invoke("replay", done, "d001_f001_r00002").exit_code == 7
    monkeypatch.setenv("BAYESIM_SAFE_DIRECTORIES", str(done))
    assert invoke("replay", done, "d001_f001_r00002").exit_code == 0
