"""The Slurm monitor's decisions, stepped without a cluster: every side effect is injected."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bayesim_hpc.executors import slurm_query as sq
from bayesim_hpc.executors.slurm_profile import Escalation, Resources
from bayesim_hpc.executors.slurm_submit import Elem, Pack
from bayesim_hpc.executors.slurm_watch import Monitor, MonitorSettings


class _Progress:
    done = 0

    def update(self, done, failed):
        self.done = done


@dataclass
class FakeCtx:
    emitted: list[str] = field(default_factory=list)
    marks: dict[int, dict] = field(default_factory=dict)
    progress: _Progress = field(default_factory=_Progress)
    failed_before: int = 0
    rd: object = None

    def emit(self, line):
        self.emitted.append(line)

    def mark_many(self, changes):
        for k, v in changes.items():
            self.marks.setdefault(k, {}).update(v)

    def shard_progress(self, sid):
        return {}


class FakeCluster:
    """Job states the test sets; submissions it records; a clock it advances."""

    def __init__(self, room=None):
        self.states: dict[str, sq.JobState] = {}
        self.submitted: list[Pack] = []
        self.cancelled: list[str] = []
        self.next_id = 100
        self.now = 0.0
        self.room_left = room
        self.missing = {}
        self.failed_recorded: list[tuple[int, str]] = []

    def set(self, job_id, state, exit_code=None):
        base, _, idx = job_id.partition("_")
        self.states[job_id] = sq.JobState(job_id, base if idx else None, int(idx) if idx else None, "n", state,
                                          exit_code=exit_code, raw_state=state)

    def query(self, name, job_ids=None, use_sacct=None):
        return [s for s in self.states.values() if use_sacct is not False or s.state in ("PENDING", "RUNNING")]

    def submit(self, packs):
        out = []
        base = str(self.next_id)
        self.next_id += 1
        for i, p in enumerate(packs):
            jid = f"{base}_{i}"
            self.set(jid, "PENDING")
            out.append(Elem(list(p.shards), jid, base, {s: 1 for s in p.shards}, self.now, resources=p.resources))
            self.submitted.append(p)
        if self.room_left is not None:
            self.room_left -= len(packs)
        return out

    def plan(self, shards, overrides):
        return [Pack([s], overrides.get(s) or Resources(time_min=10, mem_mb=1024)) for s in shards]

    def sleep(self, s):
        self.now += s

    def record_failed(self, sid, cause, why):
        self.failed_recorded.append((sid, cause))
        self.missing[sid] -= 1
        return True


def monitor(cluster, elems, waiting=(), **settings):
    ctx = FakeCtx()
    s = MonitorSettings(**{"max_attempts": 3, "poll_min_interval": 0.0, "settle_s": 30.0, "tick": 1.0,
                           "escalation": Escalation(mem_factor=2, mem_max_gb=4, time_factor=2, time_max_min=40),
                           **settings})
    mon = Monitor(ctx, "n", elems, s, folder=Path("/nonexistent/%j"), waiting=list(waiting), query=cluster.query,
                  cancel=cluster.cancelled.extend, submit=cluster.submit, plan=cluster.plan,
                  room=lambda: cluster.room_left, sleep=cluster.sleep, clock=lambda: cluster.now,
                  missing=lambda sid: cluster.missing.get(sid, 0), record_failed=cluster.record_failed)
    return mon, ctx


def run_steps(mon, cluster, n=5):
    for _ in range(n):
        mon.step()
        cluster.now += 5.0


def test_oom_escalates_memory_then_records_the_task_failed_at_the_cap():
    c = FakeCluster()
    c.missing = {0: 3}
    mon, ctx = monitor(c, [], waiting=[0])
    mon.submit_waiting({})
    assert c.submitted[-1].resources.mem_mb == 1024
    for expected_mb in (2048, 4096):
        (jid,) = mon.active
        c.set(jid, "OUT_OF_MEMORY", exit_code=0)
        run_steps(mon, c, 2)
        assert c.submitted[-1].resources.mem_mb == expected_mb  # only the missing shard, with more memory
        assert ctx.marks[0]["escalated"]["cause"] == "OUT_OF_MEMORY"  # kept while it pends again
    (jid,) = mon.active
    c.set(jid, "OUT_OF_MEMORY", exit_code=0)
    run_steps(mon, c, 2)
    assert c.failed_recorded == [(0, "OUT_OF_MEMORY")]  # at the cap: the running task failed, with its cause
    assert "at the cap" in ctx.marks[0]["escalated"]["to"]
    assert c.submitted[-1].resources.mem_mb == 4096 and len(c.submitted) == 4  # the rest goes on at the cap
    (jid,) = mon.active
    c.missing[0] = 0
    c.set(jid, "COMPLETED", exit_code=0)
    run_steps(mon, c, 2)
    assert not mon.active and not mon.waiting and mon.out.completed == [0]


def test_timeout_escalates_time_and_a_second_shard_of_the_element_is_resubmitted_as_it_was():
    c = FakeCluster()
    c.missing = {0: 2, 1: 5}
    res = Resources(time_min=10, mem_mb=1024)
    e = Elem([0, 1], "7_0", "7", {0: 1, 1: 1}, 0.0, resources=res)
    c.set("7_0", "TIMEOUT", exit_code=0)
    mon, ctx = monitor(c, [e])
    run_steps(mon, c, 2)
    by_shard = {p.shards[0]: p.resources for p in c.submitted}
    assert by_shard[0].time_min == 20 and by_shard[1].time_min == 10  # shard 1 never ran: not escalated
    assert "TIMEOUT" in mon.causes[0]


def test_node_fail_waits_to_settle_then_resubmits_and_cancelled_is_never_resubmitted():
    c = FakeCluster()
    c.missing = {0: 4, 1: 4}
    r = Resources()
    mon, ctx = monitor(c, [Elem([0], "5_0", "5", {0: 1}, 0.0, resources=r),
                           Elem([1], "5_1", "5", {1: 1}, 0.0, resources=r)])
    c.set("5_0", "NODE_FAIL", exit_code=0)
    c.set("5_1", "CANCELLED", exit_code=0)
    run_steps(mon, c, 2)
    assert c.submitted == []  # NODE_FAIL not yet settled
    assert 1 in mon.out.unfinished and "5_1" not in mon.active
    run_steps(mon, c, 8)  # 40 s later
    assert [p.shards for p in c.submitted] == [[0]]
    assert ctx.marks[0]["last_failure"]["state"] == "NODE_FAIL"  # kept while it pends again


def test_failures_are_resubmitted_until_max_attempts():
    c = FakeCluster()
    c.missing = {0: 1}
    mon, ctx = monitor(c, [], waiting=[0], max_attempts=2)
    for _ in range(3):
        mon.submit_waiting({})
        for jid in list(mon.active):
            c.set(jid, "FAILED", exit_code=1)
        run_steps(mon, c, 2)
    assert len(c.submitted) == 2 and mon.out.unfinished[0].startswith("failed")


def test_waves_never_queue_more_than_the_submit_limit_allows():
    c = FakeCluster(room=2)
    c.missing = {s: 1 for s in range(5)}
    mon, ctx = monitor(c, [], waiting=list(range(5)))
    mon.submit_waiting({})
    assert len(c.submitted) == 2 and len(mon.waiting) == 3
    run_steps(mon, c, 2)
    assert len(c.submitted) == 2  # no room yet
    for jid in list(mon.active):
        c.missing[mon.active[jid].shards[0]] = 0
        c.set(jid, "COMPLETED", exit_code=0)
    c.room_left = 2  # two elements left the queue
    run_steps(mon, c, 2)
    assert len(c.submitted) == 4 and len(mon.waiting) == 1


def test_without_accounting_a_vanished_element_has_an_unknown_cause():
    c = FakeCluster()
    c.missing = {0: 3}
    mon, ctx = monitor(c, [Elem([0], "9_0", "9", {0: 1}, 0.0, resources=Resources())])
    c.set("9_1", "COMPLETED")  # squeue: no exit codes; 9_0 is gone
    run_steps(mon, c, 10)
    last = ctx.marks[0]["last_failure"]
    assert "cause unknown" in last["reason"] and last["state"] == "UNKNOWN"
    assert [p.shards for p in c.submitted] == [[0]]


def test_error_budget_exit_cancels_the_rest():
    c = FakeCluster()
    c.missing = {0: 3, 1: 3}
    mon, ctx = monitor(c, [Elem([0], "3_0", "3", {0: 1}, 0.0), Elem([1], "3_1", "3", {1: 1}, 0.0)])
    c.set("3_0", "FAILED", exit_code=4)
    c.set("3_1", "RUNNING")
    run_steps(mon, c, 1)
    assert mon.out.budget_exceeded and c.cancelled == ["3_1"] and not c.submitted


def test_bad_nodes_are_looked_for_before_a_failed_element_is_resubmitted():
    c = FakeCluster()
    c.missing = {0: 4, 1: 4}
    r = Resources()
    order: list[str] = []
    submit = c.submit
    c.submit = lambda packs: (order.append("submit"), submit(packs))[1]
    ctx = FakeCtx()
    mon = Monitor(ctx, "n", [Elem([0], "5_0", "5", {0: 1}, 0.0, resources=r),
                             Elem([1], "5_1", "5", {1: 1}, 0.0, resources=r)],
                  MonitorSettings(poll_min_interval=0.0, settle_s=3.0), folder=Path("/nonexistent/%j"),
                  query=c.query, submit=c.submit, plan=c.plan, sleep=c.sleep, clock=lambda: c.now,
                  missing=lambda sid: c.missing.get(sid, 0), check_nodes=lambda: order.append("check"))
    c.set("5_0", "RUNNING")
    c.set("5_1", "RUNNING")
    run_steps(mon, c, 2)
    assert order == []  # nothing failed: no sacct call for node histories
    c.set("5_0", "FAILED", exit_code=1)
    run_steps(mon, c, 2)
    assert order == ["check", "submit"]  # the resubmission already carries the new --exclude
    c.set("5_1", "NODE_FAIL", exit_code=0)
    run_steps(mon, c, 4)
    assert order == ["check", "submit", "check", "submit"]
