"""Real-cluster drills: a node lost mid-run, OOM and TIMEOUT escalation, a QOS submit limit, an
unprivileged submitter. Run as root: ``eval "$(scripts/local-slurm.sh env)" && pytest tests/slurm -q``.

The test cluster has two nodes (n1, n2) on this host, each its own slurmd, and enforces --mem
with cgroups (``LOCAL_SLURM_MEMLIMIT=cgroup``): an element over its memory is killed by the
kernel and ends OUT_OF_MEMORY.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayesim_hpc import MockFitter, run_simulation
from bayesim_hpc.executors import slurm_query as sq
from bayesim_hpc.status import study_status

from .node_drill import kill_node
from .test_slurm_executor import FAST, Fault, _cfg, assert_same, inline, manifest, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


@dataclass
class HungryFitter(MockFitter):
    """MockFitter that first holds ``fit_spec["hungry_mb"]`` MB of touched memory, and sleeps
    ``fit_spec["stubborn_s"]`` seconds deaf to stop signals (so only the time limit's SIGKILL ends it)."""

    def fit(self, data, fit_spec, seed, task_ctx):
        mb = int(fit_spec.get("hungry_mb", 0) or 0)
        hold = np.ones(mb * 131072) if mb else None  # 8 bytes each, touched
        stubborn = float(fit_spec.get("stubborn_s", 0) or 0)
        if stubborn:
            old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGUSR2, signal.SIGTERM)}
            try:
                time.sleep(stubborn)
            finally:
                for s, h in old.items():
                    signal.signal(s, h)
        out = super().fit(data, fit_spec, seed, task_ctx)
        del hold
        return out


def _memlimit() -> str:
    settings = Path(os.environ.get("LOCAL_SLURM_DIR", "/tmp/slurm-test")) / "etc" / "settings.env"
    for line in settings.read_text().splitlines():
        if line.startswith("ACTIVE_MEMLIMIT="):
            return line.split("=", 1)[1]
    return "none"


def _nodes() -> list[str]:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, check=True).stdout
    return sorted(set(out.split()))


@pytest.mark.timeout(400)
def test_oom_is_escalated_with_more_memory_and_fails_at_the_cap_with_its_cause(tmp_path, studies):
    if _memlimit() != "cgroup":
        pytest.skip("the test cluster does not enforce --mem (LOCAL_SLURM_MEMLIMIT=none)")
    fits = pd.DataFrame({"model": ["small", "big", "huge"], "hungry_mb": [0, 1400, 3000]})
    cfg_fn = lambda p, **k: _cfg(p, data_grid={"n": [50], "sigma": [1.0]}, fit_grid=fits, n_replicates=3,  # noqa: E731
                                 shard_size=3, fitter=HungryFitter(), **k)
    path = tmp_path / "slurm"
    studies.append(path)
    lines: list[str] = []
    res = run_simulation(cfg_fn(path), "slurm", emit=lines.append,
                         escalate={"mem_factor": 2, "mem_max_gb": 2}, **FAST)  # 1 GB, then 2 GB (the cap)
    print("\n".join(lines))
    s = res.summary.set_index("task_id")
    assert (s.loc[s.index.str.contains("_f001_"), "status"] == "success").all()
    assert (s.loc[s.index.str.contains("_f002_"), "status"] == "success").all()  # after escalation to 2 GB
    huge = s.loc[s.index.str.contains("_f003_")]
    assert (huge["status"] == "failed").all() and set(huge["error_type"]) == {"OUT_OF_MEMORY"}
    m = manifest(path)["shards"]
    assert m["1"]["escalated"]["cause"] == "OUT_OF_MEMORY" and "2GB" in m["1"]["escalated"]["to"]
    assert "at the cap" in m["2"]["escalated"]["to"]
    text = study_status(path, live=False).render()
    assert "OUT_OF_MEMORY" in text
    subs = [x for x in manifest(path)["submissions"] if x.get("executor") == "slurm"]
    assert any(x["resources"] and "2GB" in x["resources"] for x in subs)


@pytest.mark.timeout(480)
def test_timeout_is_escalated_with_more_time(tmp_path, studies):
    # one task deaf to stop signals for 95 s: a 1-minute element is killed (TIMEOUT); the
    # resubmission gets 2 minutes and finishes it. The other task of the shard was flushed first.
    fits = pd.DataFrame({"model": ["slow"], "stubborn_s": [95.0]})
    cfg_fn = lambda p, **k: _cfg(p, data_grid={"n": [50], "sigma": [1.0]}, fit_grid=fits, n_replicates=1,  # noqa: E731
                                 shard_size=1, fitter=HungryFitter(), **k)
    path = tmp_path / "slurm"
    studies.append(path)
    lines: list[str] = []
    res = run_simulation(cfg_fn(path), "slurm", emit=lines.append, escalate={"time_factor": 2, "time_max_min": 10},
                         **{**FAST, "time_min": 1})
    print("\n".join(lines))
    assert (res.summary["status"] == "success").all() and len(res.summary) == 1
    entry = manifest(path)["shards"]["0"]
    assert entry["escalated"]["cause"] == "TIMEOUT" and entry["escalated"]["to"].startswith("2min")
    assert entry["state"] == "COMPLETED"
    assert "TIMEOUT" in study_status(path, live=False).render()


@pytest.mark.timeout(400)
def test_node_lost_mid_run_study_finishes_every_task_once_and_status_names_it(tmp_path, studies):
    nodes = _nodes()
    if len(nodes) < 2:
        pytest.skip("needs the two-node test cluster (LOCAL_SLURM_NODES=2)")
    cfg_fn = lambda p, **k: _cfg(p, data_grid={"n": [50, 100, 150, 200], "sigma": [1.0]}, n_replicates=12,  # noqa: E731
                                 shard_size=12, **k)
    ref = inline(cfg_fn, tmp_path)
    path = tmp_path / "slurm"
    studies.append(path)
    victim: dict = {}

    def kill_a_node():
        def busy():
            try:
                subs = manifest(path).get("submissions", [])
            except (FileNotFoundError, json.JSONDecodeError):
                return None
            for sub in subs:
                for job in sub.get("elements") or []:
                    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %N"], capture_output=True,
                                         text=True).stdout.split()
                    if len(out) == 2 and out[0] == "RUNNING" and out[1] in nodes:
                        pr = [json.loads(p.read_text()) for p in (path / "shards").glob("s*/progress.json")]
                        if sum(x.get("n_run", 0) for x in pr) >= 3:
                            return out[1]
            return None

        node = wait_for(busy, 120, "an element running on a node")
        victim["node"] = node
        victim["killed"] = kill_node(node)
        return node

    fault = Fault(kill_a_node)
    lines: list[str] = []
    try:
        res = run_simulation(cfg_fn(path, fitter=MockFitter(delay=1.5)), "slurm", emit=lines.append,
                             **{**FAST, "max_running": 8, "settle_s": 5.0})
        node = fault.check()
        print("\n".join(lines))
        assert_same(res.summary, ref)  # every task exactly once, bit-identical to inline
        assert len(res.summary) == 48 and res.summary["task_id"].is_unique
        failures = [sh.get("last_failure") or {} for sh in manifest(path)["shards"].values()]
        states = {f.get("state") for f in failures}
        assert "NODE_FAIL" in states, f"{node}: {failures}"  # requeued by Slurm or resubmitted: the cause is kept
        assert any(node in (f.get("reason") or "") for f in failures if f.get("state") == "NODE_FAIL")
        assert "NODE_FAIL" in study_status(path, live=False).render()
    finally:
        subprocess.run(["bash", str(REPO / "scripts" / "local-slurm.sh"), "start"], capture_output=True, timeout=300)


@pytest.mark.timeout(300)
def test_qos_submit_limit_submits_in_waves(tmp_path, studies):
    qos = "bayesim_small"
    user = pwd.getpwuid(os.getuid()).pw_name
    sh = lambda *a: subprocess.run(["sacctmgr", "-i", *a], capture_output=True, text=True, timeout=60)  # noqa: E731
    if sh("show", "qos").returncode != 0:
        pytest.skip("no accounting (sacctmgr) on the test cluster")
    sh("add", "qos", qos, "MaxSubmitJobsPerUser=3")
    sh("modify", "user", user, "set", f"qos+={qos}")
    try:
        cfg_fn = lambda p, **k: _cfg(p, data_grid={"n": [50, 100, 150, 200], "sigma": [1.0]}, n_replicates=10,  # noqa: E731
                                     shard_size=5, **k)
        ref = inline(cfg_fn, tmp_path)
        path = tmp_path / "slurm"
        studies.append(path)
        lines: list[str] = []
        res = run_simulation(cfg_fn(path, fitter=MockFitter(delay=0.3)), "slurm", emit=lines.append,
                             qos=qos, **FAST)
        print("\n".join(lines))
        assert_same(res.summary, ref)
        subs = [s for s in manifest(path)["submissions"] if s.get("executor") == "slurm"]
        assert all(len(s["elements_shards"]) <= 3 for s in subs) and len(subs) >= 3
        assert not any(s.get("error") for s in subs)  # never refused: waves stayed inside the limit
        assert any("wait for room" in line for line in lines)
    finally:
        sh("modify", "user", user, "set", f"qos-={qos}")
        sh("delete", "qos", qos)


def _python_for(as_user: list[str], env: dict[str, str]) -> str:
    """An interpreter the user can run with this environment's packages (the test's own, or the
    system's Python of the same version with the venv's site-packages on PYTHONPATH, when the
    test's interpreter lives where the user cannot read, e.g. /root/.pyenv). Sets env."""
    check = [*as_user, "{py}", "-c", "import bayesim_hpc, h5py, submitit, numpy"]
    real = Path(os.path.realpath(sys.executable))
    # every folder above the real interpreter must be world-searchable (slurmstepd checks it)
    if all(p.stat().st_mode & 0o001 for p in real.parents) and subprocess.run(
            [c.format(py=sys.executable) for c in check], env=env, capture_output=True).returncode == 0:
        return sys.executable
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    site = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *site])
    if Path(system).exists() and subprocess.run([c.format(py=system) for c in check], env=env,
                                                capture_output=True).returncode == 0:
        return system
    pytest.skip(f"no Python with bayesim-hpc's packages that user {as_user[1]} can run (the test's interpreter "
                f"{sys.executable} is not readable by it, and {system} cannot import them)")


@pytest.mark.timeout(300)
def test_unprivileged_submitter_with_its_own_result_dir(tmp_path_factory):
    user = os.environ.get("LOCAL_SLURM_USER", "bayesim")
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        pytest.skip(f"no user {user} (local-slurm.sh start creates it)")
    base = Path(pw.pw_dir) / "bayesim-test"
    subprocess.run(["rm", "-rf", str(base)], check=True)
    base.mkdir(parents=True)
    os.chown(base, pw.pw_uid, pw.pw_gid)
    script = (
        "import sys; sys.path.insert(0, {repo!r})\n"
        "from tests.studies.linear import make_config\n"
        "from bayesim_hpc import run_simulation\n"
        "cfg = make_config(result_path={path!r}, data_grid={{'n': [50, 100], 'sigma': [1.0]}}, n_replicates=10, shard_size=5)\n"
        "r = run_simulation(cfg, 'slurm', progress=False, poll_min_interval=1.0, tick=0.25, time_min=5, mem=1)\n"
        "print('SUMMARY', len(r.summary), (r.summary['status'] == 'success').sum())\n"
    ).format(repo=str(REPO), path=str(base / "study"))
    env = {k: v for k, v in os.environ.items() if k.startswith(("SLURM_CONF", "LOCAL_SLURM", "PATH", "LANG"))}
    env.update(HOME=pw.pw_dir, USER=user, LOGNAME=user)
    as_user = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups"]
    python = _python_for(as_user, env)
    proc = subprocess.run([*as_user, python, "-c", script], env=env, cwd=str(base), capture_output=True, text=True,
                          timeout=240)
    print(proc.stdout[-3000:], proc.stderr[-3000:])
    assert proc.returncode == 0 and "SUMMARY 20 20" in proc.stdout
    owners = {p.stat().st_uid for p in (base / "study").rglob("*")}
    assert owners == {pw.pw_uid}  # everything written by the user's jobs, nothing by root
    jobs = sq.query_jobs(next(iter(json.loads((base / "study" / "manifest.json").read_text())["submissions"]))["name"])
    assert jobs  # sacct knows the user's jobs
