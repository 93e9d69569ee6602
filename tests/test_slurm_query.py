"""Unit tests of bayesim_hpc.executors.slurm_query with canned Slurm output (no cluster needed).

The canned outputs were recorded on the local Slurm 22.05 test cluster (scripts/local-slurm.sh).
"""

from __future__ import annotations

import itertools
import subprocess

import pytest

from bayesim_hpc.executors import slurm_query as sq
from bayesim_hpc.executors import slurm_retry

# sacct --name qa -X -P -n -S now-30days -j 5,8,6,7 --format JobID,State,ExitCode,Reason,JobName
# array 5 = --array=0-9%2 (elements 2-9 still pending/throttled), array 8 = held, 6 = exit 3, 7 = scancel
SACCT_MIXED = """\
6|FAILED|3:0|None|qa
7|CANCELLED by 0|0:0|None|qa
5_0|RUNNING|0:0|None|qa
5_1|RUNNING|0:0|None|qa
5_[2-9%2]|PENDING|0:0|JobArrayTaskLimit|qa
8_[0,2]|PENDING|0:0|JobHeldUser|qa
"""

# squeue --name qa -h -r -t all -o '%i|%T|%r|%j'
SQUEUE_MIXED = """\
7|CANCELLED|None|qa
5_2|PENDING|JobArrayTaskLimit|qa
5_3|PENDING|JobArrayTaskLimit|qa
6|FAILED|NonZeroExitCode|qa
8_0|PENDING|JobHeldUser|qa
5_0|RUNNING|None|qa
5_1|COMPLETING|None|qa
"""

SCONTROL_CONFIG = """\
Configuration data as of 2026-11-22T03:40:01
AccountingStorageBackupHost = (null)
MaxArraySize            = 11
MaxJobCount             = 100000
MinJobAge               = 300 sec
"""

DISABLED = "Slurm accounting storage is disabled\n"


class FakeRun:
    """A `run` with subprocess.run semantics that answers from a table: argv[0] -> (rc, out, err)."""

    def __init__(self, **answers: tuple[int, str, str]):
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, cmd, **kwargs):
        assert kwargs.get("capture_output") and kwargs.get("text")
        self.calls.append(list(cmd))
        if cmd[0] not in self.answers:
            raise FileNotFoundError(cmd[0])
        rc, out, err = self.answers[cmd[0]]
        return subprocess.CompletedProcess(cmd, rc, out, err)

    def tools(self) -> list[str]:
        return [c[0] for c in self.calls]


@pytest.fixture(autouse=True)
def _fresh_state(monkeypatch, tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text("# test\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    sq.reset_backend_cache()
    sq.reset_call_counts()
    with slurm_retry.retry_policy(slurm_retry.RetryPolicy(attempts=3, sleep=lambda s: None)):
        yield
    sq.reset_backend_cache()
    sq.reset_call_counts()


def by_id(states):
    return {s.job_id: s for s in states}


# ------------------------------------------------------------------------------------ arrays

def test_split_30_shards_with_max_array_size_11():
    shards = list(range(100, 130))
    batches = sq.split_array(shards, 11)
    assert [len(b) for b in batches] == [11, 11, 8]
    assert all(len(b) <= 11 for b in batches)
    assert [s for b in batches for s in b] == shards  # order kept, nothing lost or repeated
    # each batch is submitted as --array=0-(len-1): the highest index must stay < MaxArraySize
    assert max(len(b) - 1 for b in batches) <= 11 - 1


@pytest.mark.parametrize("n,m,sizes", [(0, 5, []), (1, 1, [1]), (5, 1, [1] * 5), (10, 10, [10]), (11, 10, [10, 1])])
def test_split_edge_cases(n, m, sizes):
    assert [len(b) for b in sq.split_array(list(range(n)), m)] == sizes


def test_split_keeps_arbitrary_shard_ids():
    assert sq.split_array([7, 3, 99, 4], 3) == [[7, 3, 99], [4]]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_split_rejects_bad_size(bad):
    with pytest.raises(ValueError):
        sq.split_array([1, 2], bad)


def test_split_rejects_duplicate_shards():
    with pytest.raises(ValueError, match="unique"):
        sq.split_array([1, 1], 4)


def test_array_spec():
    assert sq.array_spec(30, 4) == "0-29%4"
    assert sq.array_spec(30) == "0-29"
    assert sq.array_spec(1) == "0"
    assert sq.array_spec(5, 5) == "0-4"  # throttle >= n adds nothing
    for bad in [(0, None), (3, 0), (-1, None)]:
        with pytest.raises(ValueError):
            sq.array_spec(*bad)


def test_max_array_size_from_scontrol():
    run = FakeRun(scontrol=(0, SCONTROL_CONFIG, ""))
    assert sq.max_array_size(run=run) == 11
    assert run.calls == [["scontrol", "show", "config"]]
    assert sq.call_counts().config == 1


def test_max_array_size_errors():
    with pytest.raises(sq.SlurmCommandError, match="Unable to contact"):
        sq.max_array_size(run=FakeRun(scontrol=(1, "", "slurm_load_ctl_conf error: Unable to contact slurm controller")))
    with pytest.raises(sq.SlurmCommandError, match="MaxArraySize"):
        sq.max_array_size(run=FakeRun(scontrol=(0, "MaxJobCount = 5\n", "")))
    with pytest.raises(sq.SlurmCommandError, match="not found"):
        sq.max_array_size(run=FakeRun())


# ------------------------------------------------------------------------------------ states

@pytest.mark.parametrize("raw,norm", [
    ("CANCELLED by 0", "CANCELLED"), ("CANCELLED+", "CANCELLED"), ("CA", "CANCELLED"),
    ("COMPLETED", "COMPLETED"), ("CD", "COMPLETED"), ("PD", "PENDING"), ("R", "RUNNING"),
    ("COMPLETING", "RUNNING"), ("CONFIGURING", "RUNNING"), ("OUT_OF_MEMORY", "OUT_OF_MEMORY"),
    ("OOM", "OUT_OF_MEMORY"), ("NODE_FAIL", "NODE_FAIL"), ("TIMEOUT", "TIMEOUT"),
    ("PREEMPTED", "PREEMPTED"), ("REQUEUED", "REQUEUED"), ("REQUEUE_HOLD", "PENDING"),
    ("BOOT_FAIL", "BOOT_FAIL"), ("DEADLINE", "DEADLINE"), ("SUSPENDED", "SUSPENDED"),
    ("failed", "FAILED"), ("", "UNKNOWN"), ("WEIRD", "UNKNOWN"),
])
def test_normalise_state(raw, norm):
    assert sq.normalise_state(raw) == norm


def test_terminal_and_lost():
    lost = ["CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY", "FAILED", "BOOT_FAIL", "DEADLINE"]
    for s in lost:
        assert sq.is_lost(s) and sq.is_terminal(s)
    assert sq.is_terminal("COMPLETED") and not sq.is_lost("COMPLETED")
    for s in ["PENDING", "RUNNING", "REQUEUED", "SUSPENDED", "UNKNOWN", "COMPLETING"]:
        assert not sq.is_terminal(s) and not sq.is_lost(s)
    assert sq.is_lost("CANCELLED by 1000")
    assert set(sq.TERMINAL_STATES) <= set(sq.STATES)


def test_parse_job_id_and_ranges():
    assert sq.parse_job_id("123_4") == ("123", [4], False)
    assert sq.parse_job_id("123_[4-9%2]") == ("123", [4, 5, 6, 7, 8, 9], True)
    assert sq.parse_job_id("123_[0,2,5-6]") == ("123", [0, 2, 5, 6], True)
    assert sq.parse_job_id("123") == ("123", None, False)
    for step in ["123.batch", "123.extern", "123_4.batch", "123.0", ""]:
        assert sq.parse_job_id(step) is None
    assert sq.expand_array_indices("1-7:2") == [1, 3, 5, 7]
    with pytest.raises(ValueError):
        sq.expand_array_indices("9-1")


def test_parse_exit_code():
    assert sq.parse_exit_code("3:0") == (3, 0)
    assert sq.parse_exit_code("0:125") == (0, 125)
    assert sq.parse_exit_code("") == (None, None)


def test_parse_sacct_mixed():
    states = by_id(sq.parse_sacct(SACCT_MIXED))
    # ranges of pending elements are expanded, one entry per element
    assert sorted(states) == sorted(["6", "7", "5_0", "5_1", *(f"5_{i}" for i in range(2, 10)), "8_0", "8_2"])
    assert states["5_7"] == sq.JobState("5_7", "5", 7, "qa", "PENDING", 0, "JobArrayTaskLimit", 0, "PENDING")
    assert states["7"].state == "CANCELLED" and states["7"].raw_state == "CANCELLED by 0"
    assert states["7"].array_job_id is None and states["7"].array_task_id is None
    assert states["6"].state == "FAILED" and states["6"].exit_code == 3 and states["6"].lost
    assert states["5_0"].state == "RUNNING" and states["5_0"].reason == ""
    assert states["8_2"].reason == "JobHeldUser"


def test_parse_sacct_ordered_by_job_and_index():
    ids = [s.job_id for s in sq.parse_sacct(SACCT_MIXED)]
    assert ids[:3] == ["5_0", "5_1", "5_2"] and ids[-4:] == ["6", "7", "8_0", "8_2"]


def test_parse_sacct_skips_steps_and_keeps_latest_after_requeue():
    # sacct without -X and with --duplicates: step rows and the requeue history
    text = """\
15_0|REQUEUED|0:0|None|rq
15_0.batch|CANCELLED|0:15||batch
15_0.extern|COMPLETED|0:0||extern
15_1|COMPLETED|0:0|None|rq
15_1.batch|COMPLETED|0:0||batch
15_0|RUNNING|0:0|BeginTime|rq
"""
    states = sq.parse_sacct(text)
    assert [(s.job_id, s.state) for s in states] == [("15_0", "RUNNING"), ("15_1", "COMPLETED")]
    # and when the requeued element has not been re-run yet, it is REQUEUED: not terminal
    (only,) = sq.parse_sacct("15_0|REQUEUED|0:0|None|rq\n")
    assert only.state == "REQUEUED" and not only.terminal


def test_explicit_element_row_beats_range_row_in_any_order():
    a = "5_[2-9%2]|PENDING|0:0|JobArrayTaskLimit|qa\n5_2|RUNNING|0:0|None|qa\n"
    b = "5_2|RUNNING|0:0|None|qa\n5_[2-9%2]|PENDING|0:0|JobArrayTaskLimit|qa\n"
    for text in (a, b):
        states = by_id(sq.parse_sacct(text))
        assert states["5_2"].state == "RUNNING" and states["5_3"].state == "PENDING" and len(states) == 8


def test_parse_sacct_ignores_blank_and_short_lines_and_keeps_pipes_in_names():
    states = sq.parse_sacct("\n\ngarbage\n9|COMPLETED|0:0|None|a|b\n")
    assert [(s.job_id, s.name) for s in states] == [("9", "a|b")]


def test_parse_squeue():
    states = by_id(sq.parse_squeue(SQUEUE_MIXED))
    assert states["5_1"].state == "RUNNING"  # COMPLETING is not terminal yet
    assert states["6"].state == "FAILED" and states["6"].reason == "NonZeroExitCode"
    assert states["6"].exit_code is None  # squeue does not report exit codes
    assert states["5_2"].array_job_id == "5" and states["5_2"].array_task_id == 2
    # without -r squeue prints pending ranges; they are expanded too
    assert [s.job_id for s in sq.parse_squeue("5_[2-4%2]|PENDING|JobArrayTaskLimit|qa\n")] == ["5_2", "5_3", "5_4"]


# ------------------------------------------------------------------------------------ query_jobs

def test_query_jobs_uses_one_sacct_call():
    run = FakeRun(sacct=(0, SACCT_MIXED, ""))
    states = sq.query_jobs("qa", job_ids=[5, 8, 6, 7], run=run)
    assert len(states) == 14
    assert len(run.calls) == 1
    cmd = run.calls[0]
    assert cmd[:2] == ["sacct", "--name"] and cmd[2] == "qa"
    for flag in ("-P", "-n"):
        assert flag in cmd
    assert "-X" not in cmd  # step rows are needed: an srun step OUT_OF_MEMORY marks its job
    assert cmd[cmd.index("-S") + 1] == "now-30days"
    assert cmd[cmd.index("-j") + 1] == "5,8,6,7"
    assert sq.call_counts().query == 1


def test_query_jobs_falls_back_to_squeue_and_remembers():
    run = FakeRun(sacct=(1, "", DISABLED), squeue=(0, SQUEUE_MIXED, ""))
    first = sq.query_jobs("qa", run=run)
    assert run.tools() == ["sacct", "squeue"]
    cmd = run.calls[1]
    assert cmd[cmd.index("--name") + 1] == "qa" and "-r" in cmd and cmd[cmd.index("-t") + 1] == "all"
    second = sq.query_jobs("qa", run=run)
    assert run.tools() == ["sacct", "squeue", "squeue"]  # sacct is not asked again
    assert first == second and len(first) == 7
    assert sq.call_counts().query == 3


def test_fallback_is_forgotten_when_the_cluster_config_changes(tmp_path, monkeypatch):
    sq.query_jobs("qa", run=FakeRun(sacct=(1, "", DISABLED), squeue=(0, "", "")))
    other = tmp_path / "other.conf"
    other.write_text("# reconfigured\n")
    monkeypatch.setenv("SLURM_CONF", str(other))
    run = FakeRun(sacct=(0, SACCT_MIXED, ""), squeue=(0, "", ""))
    sq.query_jobs("qa", run=run)
    assert run.tools() == ["sacct"]


def test_transient_sacct_error_uses_squeue_once_but_is_not_remembered():
    err = "sacct: error: slurm_persist_conn_open_without_init: failed to open persistent connection"
    run = FakeRun(sacct=(1, "", err), squeue=(0, SQUEUE_MIXED, ""))
    sq.query_jobs("qa", run=run)
    sq.query_jobs("qa", run=run)
    assert run.tools() == ["sacct", "squeue", "sacct", "squeue"]


def test_query_jobs_forced_backends():
    run = FakeRun(sacct=(1, "", DISABLED), squeue=(0, SQUEUE_MIXED, ""))
    with pytest.raises(sq.AccountingDisabledError):
        sq.query_jobs("qa", use_sacct=True, run=run)
    assert len(sq.query_jobs("qa", use_sacct=False, run=run)) == 7
    assert run.tools() == ["sacct", "squeue"]


def test_squeue_answer_is_filtered_to_job_ids():
    run = FakeRun(squeue=(0, SQUEUE_MIXED, ""))
    states = sq.query_jobs("qa", job_ids=["5", "7"], use_sacct=False, run=run)
    assert sorted(s.job_id for s in states) == ["5_0", "5_1", "5_2", "5_3", "7"]
    assert "-j" not in run.calls[0]


def test_squeue_failure_raises():
    run = FakeRun(sacct=(1, "", DISABLED), squeue=(1, "", "slurm_load_jobs error: Unable to contact slurm controller"))
    with pytest.raises(sq.SlurmCommandError, match="Unable to contact"):
        sq.query_jobs("qa", run=run)


def test_timeout_is_a_slurm_error():
    def run(cmd, **kw):
        raise subprocess.TimeoutExpired(cmd, kw["timeout"])

    with pytest.raises(sq.SlurmCommandError, match="did not answer"):
        sq.query_jobs("qa", use_sacct=False, run=run, timeout=1)


@pytest.mark.parametrize("bad", ["", "a,b", "a|b", " a"])
def test_query_jobs_rejects_names_slurm_would_misread(bad):
    with pytest.raises(ValueError):
        sq.query_jobs(bad, run=FakeRun())


# ------------------------------------------------------------------------------------ cancel + counts

def test_cancel_jobs_one_call_and_counts():
    run = FakeRun(scancel=(0, "", ""))
    assert sq.cancel_jobs([], run=run) == 0 and run.calls == []
    assert sq.cancel_jobs(["5_3", 7], run=run) == 1
    assert run.calls == [["scancel", "5_3", "7"]]
    sq.cancel_jobs(["9"], signal="USR2", run=run)
    assert run.calls[-1] == ["scancel", "--signal=USR2", "9"]
    assert sq.cancel_jobs([str(i) for i in range(1200)], run=run, chunk=500) == 3
    sq.record_submit(2)
    counts = sq.call_counts()
    assert (counts.cancel, counts.submit, counts.total) == (5, 2, 7)
    sq.reset_call_counts()
    assert sq.call_counts().total == 0


def test_cancel_jobs_tolerates_finished_jobs_only():
    finished = "scancel: error: Kill job error on job id 5: Job/step already completing or completed\n"
    sq.cancel_jobs(["5"], run=FakeRun(scancel=(1, "", finished)))
    with pytest.raises(sq.SlurmCommandError):
        sq.cancel_jobs(["5"], run=FakeRun(scancel=(1, "", "scancel: error: Unable to contact slurm controller")))


# ------------------------------------------------------------------------------------ poller

class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def drive(poller, clock, changes):
    """Query at the times the poller asks for; returns the list of delays."""
    delays = []
    for changed in changes:
        d = poller.record(changed)
        delays.append(d)
        clock.t += d
    return delays


def test_poller_backs_off_to_the_cap_when_nothing_changes():
    clock = Clock()
    p = sq.Poller(initial_delay=2, max_delay=60, factor=2, clock=clock)
    assert drive(p, clock, [True] + [False] * 7) == [2, 4, 8, 16, 32, 60, 60, 60]
    assert p.queries == 8


def test_poller_resets_on_change():
    clock = Clock()
    p = sq.Poller(initial_delay=2, max_delay=60, min_interval=0, clock=clock)
    assert drive(p, clock, [True, False, False, False, True, False]) == [2, 4, 8, 16, 2, 4]


def test_poller_never_exceeds_one_query_per_min_interval_in_steady_state():
    clock = Clock()
    p = sq.Poller(initial_delay=2, min_interval=10, burst=3, clock=clock)
    times = []
    for _ in range(50):  # states change at every query: the worst case
        times.append(clock.t)
        clock.t += p.record(True)
    assert times[:3] == [0, 2, 4]  # a short burst first
    gaps = [b - a for a, b in itertools.pairwise(times[3:])]
    assert min(gaps) >= 10 - 1e-9
    # over any long window: at most burst + window / min_interval queries
    assert len(times) <= 3 + times[-1] / 10


def test_poller_min_interval_is_configurable_for_tests():
    clock = Clock()
    p = sq.Poller(initial_delay=0.1, max_delay=0.5, min_interval=0, clock=clock)
    assert drive(p, clock, [True] * 5) == [0.1] * 5


def test_poller_observe_detects_changes_and_wait_sleeps_remaining():
    clock = Clock()
    p = sq.Poller(initial_delay=2, min_interval=0, clock=clock)
    a = sq.parse_sacct("5_0|RUNNING|0:0|None|qa\n")
    b = sq.parse_sacct("5_0|COMPLETED|0:0|None|qa\n")
    assert p.observe(a) == 2
    assert p.observe(a) == 4
    assert p.observe(b) == 2  # changed
    clock.t += 0.5
    slept = []
    p.wait(sleep=slept.append)
    assert slept == [1.5]
    assert p.remaining() == 1.5


def test_poller_validates():
    with pytest.raises(ValueError):
        sq.Poller(initial_delay=5, max_delay=1)
    with pytest.raises(ValueError):
        sq.Poller(factor=0.5)
    with pytest.raises(ValueError):
        sq.Poller(burst=0)


def test_a_job_whose_step_ran_out_of_memory_is_out_of_memory():
    # as seen on the test cluster with cgroup memory limits: srun's step OOM-killed, job FAILED
    text = ("123_0|COMPLETED|0:0|None|n\n123_0.batch|COMPLETED|0:0||batch\n123_0.0|COMPLETED|0:0||python\n"
            "123_1|FAILED|1:0|None|n\n123_1.batch|FAILED|1:0||batch\n123_1.0|OUT_OF_MEMORY|0:125||python\n"
            "124|FAILED|1:0|None|n\n124.0|FAILED|1:0||python\n")
    states = {s.job_id: s.state for s in sq.parse_sacct(text)}
    assert states == {"123_0": "COMPLETED", "123_1": "OUT_OF_MEMORY", "124": "FAILED"}
