"""Real-cluster checks of issue 19 items 1, 2 and 4: transient sbatch failures, bad nodes, --clusters.

* A wrapper ``sbatch`` first on PATH submits for real and then exits 1 with "Socket timed
  out" (the answer lost on the way back), or fails twice before it lets sbatch run: every
  submission makes exactly one array, the study finishes exactly once.
* A permanent error (a QOS that does not exist) fails at once, naming the option and value.
* The node-loss drill twice: the node is excluded and later submissions carry --exclude.
* ``clusters: localtest``: every call carries --clusters (squeue then prints cluster headers).

Run as root: ``eval "$(scripts/local-slurm.sh env)" && pytest tests/slurm/test_cluster_resilience.py -q``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bayesim_hpc import MockFitter, run_simulation
from bayesim_hpc.executors import slurm_query as sq
from bayesim_hpc.executors.slurm import job_name
from bayesim_hpc.resultdir import ResultDir

from .node_drill import kill_node as _kill_node
from .test_slurm_executor import FAST, _cfg, assert_same, inline, manifest, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]

WRAPPER = """#!/bin/bash
# test wrapper around sbatch: mode submit-then-fail = submit for real, then claim a socket timeout;
# mode fail-first = the first {n} calls fail (controller unreachable) without submitting
n=$(cat "{dir}/calls" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "{dir}/calls"
echo "$*" >> "{dir}/argv"
if [ "{mode}" = submit-then-fail ]; then
  {real} "$@" > "{dir}/real-$n.out" 2>&1 || {{ cat "{dir}/real-$n.out" >&2; exit 1; }}
  echo "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation" >&2
  exit 1
fi
if [ $n -le {n} ]; then
  echo "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)" >&2
  exit 1
fi
exec {real} "$@"
"""


def _two_classes(data_spec, fit_spec):
    """Two resource classes, so a run makes two sbatch calls."""
    return {"mem_gb": 1 if data_spec["n"] == 50 else 1.5}


def _arrays_named(name: str) -> set[str]:
    out = subprocess.run(["squeue", "--name", name, "-h", "-t", "all", "-o", "%F"], capture_output=True, text=True,
                         check=True).stdout.split()
    return set(out)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode, n_fail", [("submit-then-fail", 0), ("fail-first", 2)])
def test_sbatch_failures_are_retried_without_duplicates(tmp_path, studies, monkeypatch, mode, n_fail):
    real = shutil.which("sbatch")
    assert real
    wrap = tmp_path / "bin"
    wrap.mkdir()
    (wrap / "sbatch").write_text(WRAPPER.format(dir=wrap, mode=mode, n=n_fail, real=real))
    (wrap / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrap}{os.pathsep}{os.environ['PATH']}")
    cfg_fn = lambda p, **k: _cfg(p, **k)  # noqa: E731
    ref = inline(cfg_fn, tmp_path)
    path = tmp_path / "slurm"
    studies.append(path)
    lines: list[str] = []
    res = run_simulation(cfg_fn(path), "slurm", emit=lines.append, resources=_two_classes,
                         retry={"initial_s": 0.5, "max_delay_s": 2}, **FAST)
    print("\n".join(lines))
    assert_same(res.summary, ref)  # every task exactly once
    assert len(res.summary) == 40 and res.summary["task_id"].is_unique
    subs = [s for s in manifest(path)["submissions"] if s.get("executor") == "slurm"]
    # two classes -> two submissions (more only if an element was resubmitted: the shared test cluster
    # may lose a node to another session's drill)
    assert len(subs) >= 2 and all(s.get("job_id") for s in subs)
    calls = int((wrap / "calls").read_text())
    arrays = _arrays_named(job_name(ResultDir(path)))
    assert arrays == {str(s["job_id"]) for s in subs}  # one array per submission, nothing else
    argv = (wrap / "argv").read_text().splitlines()
    assert all(a.startswith("--hold --comment=bayesim:") for a in argv)
    assert len({a.split()[1] for a in argv}) == len(subs)  # one token per submission record
    if mode == "submit-then-fail":
        assert calls == len(subs)  # each lost answer was found by its token, never submitted again
        assert sum("Socket timed out" in line for line in lines) == len(subs)
    else:
        assert calls == len(subs) + n_fail  # the first submission was retried twice, then worked
        assert sum("Unable to contact slurm controller" in line and "trying again" in line for line in lines) == 2


@pytest.mark.timeout(120)
def test_unknown_qos_fails_at_once_naming_it(tmp_path, studies):
    path = tmp_path / "slurm"
    studies.append(path)
    n0 = sq.call_counts().submit
    with pytest.raises(sq.SlurmRejectedError) as info:
        run_simulation(_cfg(path), "slurm", qos="no_such_qos", **FAST)
    assert sq.call_counts().submit == n0 + 1  # not retried
    e = info.value
    assert e.option == "--qos" and e.value == "no_such_qos" and "Invalid qos specification" in str(e)
    assert "Fix:" in str(e)


@pytest.mark.timeout(200)
def test_clusters_option_on_every_call(tmp_path, studies, monkeypatch):
    conf = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    cluster = conf.split("ClusterName", 1)[1].split("=", 1)[1].split()[0]
    # every Slurm command of the driver goes through a logging wrapper (not those inside the jobs)
    wrap = tmp_path / "bin"
    wrap.mkdir()
    for prog in ("sbatch", "squeue", "sacct", "scancel", "scontrol", "sinfo"):
        real = shutil.which(prog)
        assert real
        (wrap / prog).write_text(f'#!/bin/bash\n[ -z "$SLURM_JOB_ID" ] && echo "{prog} $*" >> "{wrap}/log"\n'
                                 f'exec {real} "$@"\n')
        (wrap / prog).chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrap}{os.pathsep}{os.environ['PATH']}")
    cfg_fn = lambda p, **k: _cfg(p, **k)  # noqa: E731
    ref = inline(cfg_fn, tmp_path)
    path = tmp_path / "slurm"
    studies.append(path)
    lines: list[str] = []
    res = run_simulation(cfg_fn(path), "slurm", emit=lines.append, clusters=cluster, **FAST)
    assert_same(res.summary, ref)
    subs = [s for s in manifest(path)["submissions"] if s.get("executor") == "slurm"]
    assert subs and all(s.get("clusters") == cluster for s in subs)
    # status and cancel ask the recorded clusters (squeue -M prints "CLUSTER: name" lines, which are dropped)
    from bayesim_hpc.executors.slurm import SlurmExecutor

    elements = {e for s in subs for e in s["elements"]}
    # (sacct lags the scheduler by a few seconds: poll)
    wait_for(lambda: {v["job_id"] for v in SlurmExecutor().live_states(path).values()} == elements, 60,
             "status to find the elements through --clusters")
    log = (wrap / "log").read_text().splitlines()
    progs = {line.split()[0] for line in log}
    assert {"sbatch", "squeue", "scontrol"} <= progs
    missing = [line for line in log if f"--clusters={cluster}" not in line]
    assert not missing, missing


def _nodes() -> list[str]:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, check=True).stdout
    return sorted(set(out.split()))


def _node_state(node: str) -> str:
    return subprocess.run(["sinfo", "-h", "-N", "-n", node, "-o", "%T"], capture_output=True,
                          text=True).stdout.split("\n")[0].strip()


@pytest.mark.timeout(600)
def test_node_killed_twice_is_excluded_from_later_submissions(tmp_path, studies):
    from .test_slurm_executor import Fault

    nodes = _nodes()
    if len(nodes) < 2:
        pytest.skip("needs the two-node test cluster (LOCAL_SLURM_NODES=2)")
    # 16 elements of ~18 s on 8 slots: after the first kill there is a second wave to be on the node again
    cfg_fn = lambda p, **k: _cfg(p, data_grid={"n": [50, 100, 150, 200], "sigma": [1.0, 2.0]},  # noqa: E731
                                 n_replicates=24, shard_size=12, **k)
    ref = inline(cfg_fn, tmp_path)
    path = tmp_path / "slurm"
    studies.append(path)
    victim: dict = {"kills": 0}

    def running_on(node: str | None):
        try:
            subs = manifest(path).get("submissions", [])
        except Exception:
            return None
        ids = [str(s["job_id"]) for s in subs if s.get("job_id")]
        if not ids:
            return None
        out = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-t", "RUNNING", "-o", "%N|%M"],
                             capture_output=True, text=True).stdout.split()
        for row in out:
            n, _, elapsed = row.partition("|")
            secs = sum(int(x) * 60 ** i for i, x in enumerate(reversed(elapsed.split(":")))) if ":" in elapsed else 0
            if n in nodes and (node is None or n == node) and secs >= 3:
                return n
        return None

    def node_fails(node: str) -> int:
        ids = [str(s["job_id"]) for s in manifest(path).get("submissions", []) if s.get("job_id")]
        out = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-j", ",".join(ids), "--format", "State,NodeList"],
                             capture_output=True, text=True).stdout.split()
        return sum(1 for row in out if row == f"NODE_FAIL|{node}")

    def kill_twice():
        node = wait_for(lambda: running_on(None), 120, "an element running for 3 s")
        victim["node"] = node
        for k in range(2):
            if k:
                wait_for(lambda: running_on(node), 180, f"an element running on {node} again")
            before = node_fails(node)
            _kill_node(node)
            victim["kills"] += 1
            # its elements end NODE_FAIL: when the node is declared down (SlurmdTimeout), or when its slurmd
            # is back without them (another test session's `start` may revive it first)
            wait_for(lambda b=before: node_fails(node) > b, 90, f"{node}'s elements to end NODE_FAIL")
            subprocess.run(["bash", str(REPO / "scripts" / "local-slurm.sh"), "start"], capture_output=True,
                           timeout=300, check=True)  # the node comes back (it is the cluster's, not ours)
        return node

    fault = Fault(kill_twice)
    lines: list[str] = []
    try:
        res = run_simulation(cfg_fn(path, fitter=MockFitter(delay=1.5)), "slurm", emit=lines.append,
                             additional={"requeue": False},  # NODE_FAIL ends the element: the driver resubmits
                             **{**FAST, "settle_s": 3.0, "max_attempts": 4})
        node = fault.check()
    finally:
        subprocess.run(["bash", str(REPO / "scripts" / "local-slurm.sh"), "start"], capture_output=True, timeout=300)
    print("\n".join(lines))
    assert victim["kills"] == 2
    assert_same(res.summary, ref)  # every task exactly once
    assert len(res.summary) == 192 and res.summary["task_id"].is_unique
    m = manifest(path)
    assert list(m["excluded_nodes"]) == [node], m.get("excluded_nodes")
    assert "NODE_FAIL 2 times" in m["excluded_nodes"][node]["why"]
    assert any(f"excluding node {node}" in line for line in lines)
    since = m["excluded_nodes"][node]["since"]
    later = [s for s in m["submissions"] if s.get("job_id") and s["time"] >= since]
    earlier = [s for s in m["submissions"] if s.get("job_id") and s["time"] < since]
    assert later and earlier  # something was resubmitted after the exclusion
    for sub in m["submissions"]:
        script = (path / "logs" / "slurm" / sub["job_id"] / f"{sub['job_id']}_submission.sh")
        if not script.exists():  # a one-element submission: no _0 suffix in the folder name
            script = next((path / "logs" / "slurm").glob(f"{sub['job_id']}*/*_submission.sh"))
        text = script.read_text()
        assert (f"#SBATCH --exclude={node}" in text) == (sub in later), (sub["job_id"], text)
    # and none of them ran there
    out = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-j", ",".join(s["job_id"] for s in later), "--format",
                          "JobID,NodeList"], capture_output=True, text=True, check=True).stdout
    assert all(row.split("|")[1] != node for row in out.split())
    # status names it; the CLI clears it
    from click.testing import CliRunner

    from bayesim_hpc.cli import main
    from bayesim_hpc.status import study_status

    assert f"{node}: NODE_FAIL 2 times" in study_status(path, live=False).render()
    assert f"cleared 1 node(s): {node}" in CliRunner().invoke(main, ["nodes", str(path), "--clear"]).output
    assert "excluded_nodes" not in manifest(path) or not manifest(path)["excluded_nodes"]


SECOND = {"LOCAL_SLURM_DIR": "/tmp/slurm-test2", "LOCAL_SLURM_CLUSTER_NAME": "localtest2",
          "LOCAL_SLURM_NODE_PREFIX": "m", "LOCAL_SLURM_NODES": "1", "LOCAL_SLURM_CTLD_PORT": "6827",
          "LOCAL_SLURM_SLURMD_PORT": "6828", "LOCAL_SLURM_FIRST_JOB_ID": "500000", "LOCAL_SLURM_MEMLIMIT": "none"}


@pytest.fixture
def second_cluster(slurm_cluster):
    """A second cluster (localtest2, node m1) sharing the first one's munged and slurmdbd; stopped afterwards."""
    if os.environ.get("LOCAL_SLURM_DIR", "/tmp/slurm-test").rstrip("/") != "/tmp/slurm-test":
        pytest.skip("the second test cluster is defined next to the default one (/tmp/slurm-test)")
    env = {**os.environ, **SECOND, "LOCAL_SLURM_SHARE_DBD": "/tmp/slurm-test"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "local-slurm.sh"), "start"], env=env, capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"could not start the second cluster: {proc.stderr[-2000:]}")
    try:
        yield SECOND["LOCAL_SLURM_CLUSTER_NAME"]
    finally:
        subprocess.run(["bash", str(REPO / "scripts" / "local-slurm.sh"), "stop"], env=env, capture_output=True,
                       timeout=300)


@pytest.mark.timeout(300)
def test_study_runs_on_another_cluster_of_the_same_slurmdbd(tmp_path, studies, second_cluster):
    cfg_fn = lambda p, **k: _cfg(p, **k)  # noqa: E731
    ref = inline(cfg_fn, tmp_path)
    path = tmp_path / "slurm"
    studies.append(path)
    lines: list[str] = []
    # SLURM_CONF still names the first cluster: only --clusters sends the study to the second
    res = run_simulation(cfg_fn(path), "slurm", emit=lines.append, clusters=second_cluster, **FAST)
    assert_same(res.summary, ref)
    subs = [s for s in manifest(path)["submissions"] if s.get("executor") == "slurm"]
    assert subs and all(s["clusters"] == second_cluster and int(s["job_id"]) >= 500000 for s in subs)
    out = subprocess.run(["sacct", f"--clusters={second_cluster}", "-X", "-n", "-P", "-j",
                          ",".join(s["job_id"] for s in subs), "--format", "JobID,Cluster,NodeList,State"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out and all(row.split("|")[1:3] == [second_cluster, "m1"] for row in out), out
    # the first cluster never saw them; status asks the recorded cluster
    assert not _arrays_named(job_name(ResultDir(path)))
    from bayesim_hpc.executors.slurm import SlurmExecutor

    elements = {e for s in subs for e in s["elements"]}
    wait_for(lambda: {v["job_id"] for v in SlurmExecutor().live_states(path).values()} == elements, 60,
             "status to find the elements on the second cluster")


@pytest.mark.timeout(200)
def test_jobs_left_held_by_a_killed_driver_are_released_by_resume(tmp_path, studies, monkeypatch):
    from bayesim_hpc import resume_simulation
    from bayesim_hpc.executors import slurm_sbatch

    cfg_fn = lambda p, **k: _cfg(p, **k)  # noqa: E731
    ref = inline(cfg_fn, tmp_path)
    path = tmp_path / "slurm"
    studies.append(path)
    with monkeypatch.context() as mp:  # a driver that dies between sbatch --hold and scontrol release
        mp.setattr(slurm_sbatch, "release", lambda job_id, **kw: None)
        run_simulation(cfg_fn(path), "slurm", detach=True, **FAST)
    (sub,) = [s for s in manifest(path)["submissions"] if s.get("executor") == "slurm"]
    reasons = subprocess.run(["squeue", "-h", "-r", "-j", sub["job_id"], "-o", "%r"], capture_output=True, text=True,
                             check=True).stdout.split()
    assert reasons and set(reasons) == {"JobHeldUser"}
    lines: list[str] = []
    res = resume_simulation(path, emit=lines.append, **{k: v for k, v in FAST.items() if k != "plan"})
    assert any(f"releasing job(s) {sub['job_id']}" in line for line in lines)
    assert_same(res.summary, ref)
    assert len([s for s in manifest(path)["submissions"] if s.get("executor") == "slurm"]) == 1  # adopted, not resubmitted
