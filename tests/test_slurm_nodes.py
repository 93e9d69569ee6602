"""Bad-node decisions (pure functions over element runs), the cap, the manifest list, and
``--clusters`` on Slurm calls with the cluster headers of ``-M`` output (no cluster needed).

Canned outputs were recorded on the local Slurm 22.05 test cluster (``sacct -D -X``,
``sinfo -N``, ``squeue -M localtest``).
"""

from __future__ import annotations

import subprocess

import pytest
from click.testing import CliRunner

from bayesim_hpc.executors import slurm_clusters, slurm_nodes
from bayesim_hpc.executors import slurm_query as sq
from bayesim_hpc.executors.slurm_nodes import BadNodeRules, Run, cap, decide


def test_two_node_fails_exclude_a_node_one_does_not():
    one = [Run("5_0", "NODE_FAIL", "n1"), Run("5_0", "COMPLETED", "n2")]
    assert decide(one) == {}
    two = one + [Run("5_1", "NODE_FAIL", "n1"), Run("5_1", "COMPLETED", "n2")]
    got = decide(two)
    assert list(got) == ["n1"] and "NODE_FAIL 2 times" in got["n1"] and "5_0" in got["n1"]
    assert decide(two, BadNodeRules(node_fail=3)) == {}
    assert decide(one, BadNodeRules(node_fail=1)).keys() == {"n1"}
    assert decide(two, BadNodeRules(enabled=False)) == {}


def test_elements_lost_in_one_crash_are_one_incident():
    crash = [Run(f"5_{i}", "NODE_FAIL", "n1", end=1000.0 + i) for i in range(4)]  # one crash, 4 elements
    assert decide(crash) == {}
    again = crash + [Run("5_9", "NODE_FAIL", "n1", end=1100.0)]
    assert "NODE_FAIL 2 times (5 element run(s) lost" in decide(again)["n1"]


def test_same_error_on_one_node_while_others_succeed():
    runs = [Run("7_0", "FAILED", "n3", 1), Run("7_1", "FAILED", "n3", 1), Run("7_2", "COMPLETED", "n1", 0)]
    got = decide(runs)
    assert list(got) == ["n3"] and "exit code 1" in got["n3"] and "completed on n1" in got["n3"]


@pytest.mark.parametrize("runs", [
    # fails everywhere: the study's own bug, not the node
    [Run("7_0", "FAILED", "n3", 1), Run("7_1", "FAILED", "n3", 1), Run("7_2", "FAILED", "n1", 1)],
    # different errors on the node
    [Run("7_0", "FAILED", "n3", 1), Run("7_1", "FAILED", "n3", 2), Run("7_2", "COMPLETED", "n1", 0)],
    # it also completed elements on that node
    [Run("7_0", "FAILED", "n3", 1), Run("7_1", "FAILED", "n3", 1), Run("7_2", "COMPLETED", "n3", 0),
     Run("7_3", "COMPLETED", "n1", 0)],
    # timeouts/out-of-memory are the element's size, not the node
    [Run("7_0", "OUT_OF_MEMORY", "n3"), Run("7_1", "OUT_OF_MEMORY", "n3"), Run("7_2", "COMPLETED", "n1", 0)],
    # never ran on a node
    [Run("7_0", "NODE_FAIL", "None assigned"), Run("7_1", "NODE_FAIL", "None assigned")],
])
def test_no_exclusion_without_evidence_against_the_node(runs):
    assert decide(runs) == {}


def test_cap_keeps_a_node_in_every_partition():
    parts = {"debug": {"n1", "n2"}, "big": {"n2"}}
    ok, held = cap({"n1": "bad", "n2": "bad"}, [], parts)
    assert ok == {"n1": "bad"} and "n2" in held and "partition big" in held["n2"]
    ok, held = cap({"n2": "bad"}, ["n1"], {"debug": {"n1", "n2"}})
    assert ok == {} and "would have no node left" in held["n2"]
    ok, held = cap({"n9": "bad"}, [], {"debug": {"n1", "n2"}})  # a node of another partition: no cap
    assert ok == {"n9": "bad"} and not held


SINFO = "n1|other\nn1|debug*\nn1|short\nn2|other\nn2|debug*\nn2|short\n"
SACCT_D = """\
30_0|NODE_FAIL|n1|0:0|2026-11-30T09:01:36
30_0|COMPLETED|n2|0:0|2026-11-30T09:02:40
30_1|NODE_FAIL|n1|0:0|2026-11-30T09:02:01
30_1|COMPLETED|n2|0:0|2026-11-30T09:03:00
30_2|COMPLETED|n2|0:0|2026-11-30T09:03:01
30_3|RUNNING|n2|0:0|Unknown
"""


class Run_:
    def __init__(self, **answers):
        self.answers, self.calls = answers, []

    def __call__(self, cmd, **kw):
        self.calls.append(list(cmd))
        rc, out, err = self.answers[cmd[0]]
        return subprocess.CompletedProcess(cmd, rc, out, err)


class FakeManifest:
    def __init__(self):
        self.d: dict = {}

    def read(self):
        import copy
        return copy.deepcopy(self.d)

    def update(self, fn):
        fn(self.d)


def test_partition_nodes_reads_sinfo_and_the_default_partition():
    run = Run_(sinfo=(0, SINFO, ""))
    assert slurm_nodes.partition_nodes([None], run=run) == {"debug": {"n1", "n2"}}
    assert slurm_nodes.partition_nodes(["short,other"], run=run) == {"short": {"n1", "n2"}, "other": {"n1", "n2"}}


def test_update_writes_the_manifest_and_the_exclude_option():
    run = Run_(sacct=(0, SACCT_D, ""), sinfo=(0, SINFO, ""))
    m = FakeManifest()
    new, held = slurm_nodes.update(m, ["30"], [None], BadNodeRules(), run=run)
    assert list(new) == ["n1"] and not held
    assert slurm_nodes.exclude_option(m.read()) == "n1" and "NODE_FAIL 2" in m.d["excluded_nodes"]["n1"]["why"]
    assert run.calls[0][:3] == ["sacct", "-D", "-X"]
    # again: nothing new, the list is kept
    assert slurm_nodes.update(m, ["30"], [None], BadNodeRules(), run=run) == ({}, {})
    assert slurm_nodes.clear(m, ["n9"]) == [] and slurm_nodes.clear(m) == ["n1"]
    assert slurm_nodes.exclude_option(m.read()) is None


def test_without_accounting_nothing_is_excluded():
    run = Run_(sacct=(1, "", "Slurm accounting storage is disabled\n"), sinfo=(0, SINFO, ""))
    assert slurm_nodes.update(FakeManifest(), ["30"], [None], BadNodeRules(), run=run) == ({}, {})


def test_bad_nodes_profile_value():
    assert BadNodeRules.from_profile(None) == BadNodeRules()
    assert BadNodeRules.from_profile(False).enabled is False
    assert BadNodeRules.from_profile({"node_fail": 1}).node_fail == 1
    with pytest.raises(ValueError, match="bad_nodes"):
        BadNodeRules.from_profile({"node_fails": 1})


def test_nodes_command_lists_and_clears(tmp_path):
    from bayesim_hpc import run_simulation
    from bayesim_hpc.cli import main
    from bayesim_hpc.manifest import Manifest
    from bayesim_hpc.resultdir import ResultDir

    from .studies.linear import make_config

    path = tmp_path / "r"
    run_simulation(make_config(result_path=path, data_grid={"n": [20]}, fit_grid={"model": ["a"]}, n_replicates=2),
                   "inline", progress=False, emit=lambda s: None)
    runner = CliRunner()
    assert "no node is excluded" in runner.invoke(main, ["nodes", str(path)]).output
    Manifest(ResultDir(path)).update(lambda d: d.setdefault("excluded_nodes", {}).update(
        n7={"why": "2 NODE_FAIL run(s) (job(s) 3_0, 3_1)", "since": 0}))
    out = runner.invoke(main, ["nodes", str(path)]).output
    assert "n7: 2 NODE_FAIL" in out
    from bayesim_hpc.status import study_status

    assert "excluded nodes" in study_status(path, live=False).render() and "n7: 2 NODE_FAIL" in \
        study_status(path, live=False).render()
    res = runner.invoke(main, ["nodes", str(path), "--node", "n7"])
    assert res.exit_code == 2  # --node without --clear
    res = runner.invoke(main, ["nodes", str(path), "--clear"])
    assert res.exit_code == 0 and "cleared 1 node(s): n7" in res.output
    assert "no node is excluded" in runner.invoke(main, ["nodes", str(path)]).output


# --------------------------------------------------------------------------------------------- clusters

# squeue -M localtest --name zz -t all -o '%F|%k|%i' (a header line per cluster; two clusters shown)
SQUEUE_M = """\
CLUSTER: localtest
916|bayesim:abc123|916_[0-1]

CLUSTER: other
12|bayesim:zz|12
"""


def test_clusters_setting_and_headers():
    assert slurm_clusters.normalise(" a , b ") == "a,b" and slurm_clusters.normalise([]) is None
    with pytest.raises(ValueError, match="clusters"):
        slurm_clusters.normalise("a b")
    with slurm_clusters.using(["c1", "c2"]):
        assert slurm_clusters.with_clusters(["sacct", "-j", "5"]) == ["sacct", "--clusters=c1,c2", "-j", "5"]
        assert slurm_clusters.with_clusters(["sacctmgr", "show", "qos"]) == ["sacctmgr", "show", "qos"]
        assert slurm_clusters.with_clusters(["squeue", "-M", "x"]) == ["squeue", "-M", "x"]
    assert slurm_clusters.current() is None
    assert slurm_clusters.strip_headers(SQUEUE_M).split() == ["916|bayesim:abc123|916_[0-1]", "12|bayesim:zz|12"]


def test_query_jobs_and_cancel_carry_clusters_and_drop_headers(monkeypatch, tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text("#\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    sq.reset_backend_cache()
    out = "CLUSTER: localtest\n5_0|RUNNING|None|qa\n5_1|PENDING|Priority|qa\n"
    run = Run_(squeue=(0, out, ""), scancel=(0, "", ""))
    with slurm_clusters.using("localtest"):
        states = sq.query_jobs("qa", use_sacct=False, run=run)
        sq.cancel_jobs(["5"], run=run)
    assert [s.job_id for s in states] == ["5_0", "5_1"]
    assert all(c[1] == "--clusters=localtest" for c in run.calls)
    from bayesim_hpc.executors.slurm_sbatch import find_submitted

    run = Run_(squeue=(0, SQUEUE_M, ""))
    with slurm_clusters.using("localtest,other"):
        assert find_submitted("zz", "abc123", run=run) == "916"
