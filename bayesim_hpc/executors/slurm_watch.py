"""Watching a study's Slurm elements: states, progress, logs, resubmission, escalation, waves.

The :class:`Monitor` makes at most one scheduler query per ``poll_min_interval`` seconds in
steady state (``slurm_poller.Poller``); between queries it reads only files: each shard's
``progress.json`` (a shard whose tasks are all in segments is done, whatever the scheduler
says yet), each element's done record and new lines of its logs (relayed, tagged).

What it decides when an element ends with tasks missing:

* exit code 4 (error budget) or too many failures: cancel the study's remaining elements;
* CANCELLED: never resubmitted (a user's ``scancel`` means stop; ``resume`` runs the rest);
* OUT_OF_MEMORY / TIMEOUT: resubmit the missing tasks with more memory / time
  (``Escalation``: factor and cap). At the cap, the task the element was running is recorded
  as failed with that cause, and the rest of the shard is resubmitted (no endless retries);
* PREEMPTED / NODE_FAIL: resubmitted only after they stayed so for ``settle_s`` and squeue
  does not show the element alive again (with ``--requeue`` Slurm may bring it back itself);
* anything else: resubmitted while the shard has had fewer than ``max_attempts`` submissions.

When only squeue answers (no accounting), an element that is gone from the queue has no
known cause: it is reported as "ended (cause unknown: no accounting)" and resubmitted as a
failure, never escalated.

**Waves.** Shards that cannot be submitted yet (a scheduler submit limit) wait in the
monitor; each loop it asks ``room()`` how many more elements may be queued and submits that
many, re-planned with the figures measured so far (``plan``).

Every side effect is injected (``query``, ``cancel``, ``submit``, ``plan``, ``room``,
``sleep``, ``clock``, ``missing``, ``progress``, ``done_record``, ``record_failed``), so the
decisions can be stepped in a unit test without a cluster (``tests/test_slurm_monitor.py``).
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import slurm_query as sq
from .base import RunContext, RunOutcome
from .slurm_job import EXIT_BUDGET
from .slurm_profile import Escalation
from .slurm_submit import LIVE, Elem, Pack

__all__ = ["Monitor", "MonitorSettings", "reason_of", "logs_of"]

_SETTLE_STATES = {"PREEMPTED", "NODE_FAIL"}
_ESCALATE = {"OUT_OF_MEMORY", "TIMEOUT"}


def logs_of(folder: Path, element: str) -> list[Path]:
    """stdout and stderr of an element (``folder`` is submitit's ``.../logs/slurm/%j``)."""
    d = folder.parent / element
    return [d / f"{element}_0_log.out", d / f"{element}_0_log.err"]


def reason_of(st: sq.JobState) -> str:
    """A readable reason for a job state: ``"timeout (exit code 0, signal SIGTERM); job 12_3"``."""
    what = (st.raw_state or st.state).lower().replace("_", " ")
    extra = []
    if st.exit_code:
        extra.append(f"exit code {st.exit_code}")
    if st.signal:
        try:
            extra.append(f"signal {signal.Signals(st.signal).name}")
        except ValueError:
            extra.append(f"signal {st.signal}")
    if st.reason:
        extra.append(st.reason)
    return what + (f" ({', '.join(extra)})" if extra else "") + f"; job {st.job_id}"


@dataclass
class MonitorSettings:
    max_attempts: int = 3
    poll_min_interval: float = 10.0
    settle_s: float = 30.0
    tick: float = 1.0
    escalation: Escalation = Escalation()
    max_errors: int | None = None


class Monitor:
    """The watch loop of one run; see the module docstring."""

    def __init__(self, ctx: RunContext, name: str, elems: list[Elem], settings: MonitorSettings, *,
                 folder: Path, waiting: list[int] | None = None,
                 query: Callable[..., list[sq.JobState]] = sq.query_jobs,
                 cancel: Callable[[list[str]], Any] = sq.cancel_jobs,
                 submit: Callable[[list[Pack]], list[Elem]] | None = None,
                 plan: Callable[[list[int], dict[int, Any]], list[Pack]] | None = None,
                 room: Callable[[], int | None] = lambda: None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 missing: Callable[[int], int] | None = None, progress: Callable[[int], dict] | None = None,
                 done_record: Callable[[str], dict | None] = lambda job_id: None,
                 history: Callable[[list[str]], dict[str, list[tuple[str, str]]]] = sq.job_history,
                 record_failed: Callable[[int, str, str], bool] = lambda sid, cause, why: False,
                 check_nodes: Callable[[], Any] | None = None):
        self.ctx, self.name, self.s, self.folder = ctx, name, settings, folder
        self.query, self.cancel, self.submit_fn, self.plan_fn, self.room = query, cancel, submit, plan, room
        self.sleep, self.clock = sleep, clock
        self.missing = missing or (lambda sid: 0)
        self.progress_of = progress or ctx.shard_progress
        self.done_record, self.record_failed, self.history = done_record, record_failed, history
        self.check_nodes = check_nodes
        self.nodes_due = False  # an element failed or lost its node: look for bad nodes before resubmitting
        self.active: dict[str, Elem] = {e.job_id: e for e in elems}
        self.submits: dict[int, int] = {s: 1 for e in elems for s in e.open}
        self.resources: dict[int, Any] = {s: e.resources for e in elems for s in e.shards}
        self.escalations: dict[int, int] = {}
        self.causes: dict[int, str] = {}  # shard -> why it was last resubmitted with other resources
        self.waiting: list[int] = list(waiting or [])
        self.out = RunOutcome()
        self.ran: dict[int, dict[int, tuple[int, int]]] = {}  # shard -> attempt -> (n_run, n_failed)
        self.done_base = ctx.progress.done
        self.poller = sq.Poller(initial_delay=min(2.0, max(0.5, settings.poll_min_interval)),
                                max_delay=max(10.0, 3 * settings.poll_min_interval),
                                min_interval=settings.poll_min_interval, clock=clock)
        self.query_errors = 0
        self.finished: list[Elem] = []  # ended elements whose logs are drained once more
        self.done_elems: list[Elem] = []
        self.elapsed: dict[str, float] = {}
        self._room_checked: float | None = None

    # ------------------------------------------------------------------ helpers
    def attempt_seen(self, e: Elem, sid: int) -> int:
        pr = self.progress_of(sid)
        return max(e.base_attempts.get(sid, 1), int(pr.get("attempt", 0) or 0))

    def _complete_shard(self, e: Elem, sid: int, changes: dict[int, dict], note: str) -> None:
        if sid in e.open:
            e.open.remove(sid)
        self.out.completed.append(sid)
        changes[sid] = {"state": "COMPLETED", "reason": note, "attempts": self.attempt_seen(e, sid),
                        "ended": time.time(), "job_id": e.job_id}

    def _close(self, e: Elem) -> None:
        self.active.pop(e.job_id, None)
        self.finished.append(e)

    # ------------------------------------------------------------------ files
    def read_progress(self, changes: dict[int, dict]) -> None:
        now = self.clock()
        for e in list(self.active.values()):
            if e.state == "PENDING" and e.reported == "PENDING":
                continue  # the scheduler says it waits (files are read once it says RUNNING)
            check = now - e.done_checked >= 2.0
            for sid in list(e.open):
                pr = self.progress_of(sid)
                att = int(pr.get("attempt", 0) or 0)
                if att < e.base_attempts.get(sid, 1):
                    continue
                self.ran.setdefault(sid, {})[att] = (int(pr.get("n_run", 0)), int(pr.get("n_failed", 0)))
                t = float(pr.get("time", 0) or 0)
                fresh = t > e.progress_time.get(sid, 0.0)
                e.progress_time[sid] = max(e.progress_time.get(sid, 0.0), t)
                if fresh and e.state in ("PENDING", "REQUEUED") and t > 0:
                    e.state = e.reported = "RUNNING"  # running before the scheduler says so
                    for s in e.open:
                        changes.setdefault(s, {}).update(state="RUNNING", reason="", started=pr.get("time"))
                    changes[sid]["attempts"] = att
                n_tasks = int(pr.get("n_tasks", 0) or 0)
                through = int(pr.get("n_run", 0)) + int(pr.get("n_skipped", 0))
                if att > e.base_attempts.get(sid, 1) + e.restarts_noted:  # it started again in place
                    self.note_requeue(e, att - e.base_attempts.get(sid, 1), changes)
                if n_tasks and through >= n_tasks and check:
                    e.done_checked = now
                    if self.missing(sid) == 0:
                        self._complete_shard(e, sid, changes, "")
            if not e.open:
                self._close(e)
                self.done_elems.append(e)

    def relay_logs(self, elems: list[Elem]) -> bool:
        """New complete lines of the elements' logs -> ctx.emit. Returns True if one looks like trouble."""
        trouble = False
        for e in elems:
            for path in logs_of(self.folder, e.job_id):
                key = str(path)
                try:
                    with open(path, "rb") as fh:
                        fh.seek(e.offsets.get(key, 0))
                        data = fh.read(1 << 20)
                except OSError:
                    continue
                if not data:
                    continue
                e.offsets[key] = e.offsets.get(key, 0) + len(data)
                text = e.partial.get(key, "") + data.decode("utf-8", "replace")
                lines = text.split("\n")
                e.partial[key] = lines.pop()
                for line in lines:
                    line = line.rstrip("\r")
                    if not line.strip() or line.startswith(("submitit INFO ", "submitit DEBUG ")):
                        continue
                    if "received SIG" in line or "srun: error" in line or "Traceback" in line or "Killed" in line:
                        trouble = True
                    tag = e.open[0] if e.open else e.shards[-1]
                    self.ctx.emit(line if line.startswith("[") else f"[shard {tag} job {e.job_id}] {line}")
        return trouble

    def closed(self, e: Elem) -> bool:
        rec = self.done_record(e.job_id)
        return rec is not None and not rec.get("requeued")

    # ------------------------------------------------------------------ scheduler states
    def apply(self, states: list[sq.JobState], changes: dict[int, dict], resubmit: list[int],
              accounting: bool) -> None:
        by_id = {s.job_id: s for s in states}
        arrays: dict[str, list[sq.JobState]] = {}
        for s in states:
            arrays.setdefault(s.array_job_id or s.job_id, []).append(s)
        now = self.clock()
        for e in list(self.active.values()):
            st = by_id.get(e.job_id)
            if st is None:
                e.missing_queries += 1
                others = arrays.get(e.array_id, [])
                if e.missing_queries >= 3 and now - e.submitted >= 30 and all(o.terminal for o in others):
                    rec = self.done_record(e.job_id)
                    if rec is not None and not rec.get("requeued"):
                        code = int(rec.get("exit", 0))
                        state = "COMPLETED" if code == 0 else "FAILED"
                        why = f"job {e.job_id} ended (exit code {code}); gone from the scheduler"
                    else:
                        state = "CANCELLED" if accounting else "UNKNOWN"
                        code = None
                        why = (f"job {e.job_id} vanished from the scheduler (cancelled while pending, or ended longer "
                               "ago than squeue remembers)") if accounting else (
                            f"job {e.job_id} ended; cause unknown (no accounting: squeue does not keep finished jobs)")
                    self.ended(e, state, why, changes, resubmit, code)
                continue
            e.missing_queries = 0
            if not st.terminal:
                e.lost_since = None
                if st.state != e.state or e.reported != st.state:
                    e.state = st.state
                    reason = "" if st.state == "RUNNING" else reason_of(st)
                    if e.reported != st.state:
                        for sid in e.open:
                            changes.setdefault(sid, {}).update(state=st.state, reason=reason)
                        e.reported = st.state
                        att = max((self.attempt_seen(e, s) for s in e.open), default=0)
                        if (st.state == "REQUEUED" or (st.state == "PENDING" and st.reason == "BeginTime")) \
                                and e.requeue_noted != att:
                            e.requeue_noted = att
                            self.note_requeue(e, e.restarts_noted + 1, changes)
                            self.ctx.emit(f"[shard {e.open[0] if e.open else '-'}] job {e.job_id} requeued after "
                                          f"attempt {att}; it runs again in place and skips the flushed tasks")
                continue
            e.state = st.state
            if st.state in _SETTLE_STATES:
                if e.lost_since is None:
                    e.lost_since = now
                    self.poller.reset()
                    continue
                if now - e.lost_since < self.s.settle_s:
                    continue
                again = self.still_alive(e)
                if again is not None:  # Slurm requeued it by itself; accounting had not caught up
                    e.state, e.lost_since = again.state, None
                    continue
            code = st.exit_code
            if code is None or (st.state != "COMPLETED" and code == 0):
                rec = self.done_record(e.job_id)
                if rec is not None and not rec.get("requeued"):
                    code = int(rec.get("exit", 0)) or code
            self.ended(e, st.state, reason_of(st), changes, resubmit, code)

    def note_requeue(self, e: Elem, restarts: int, changes: dict[int, dict]) -> None:
        """The element runs again in place: record why its last run ended (sacct's history)."""
        if restarts <= e.restarts_noted:
            return
        e.restarts_noted = restarts
        try:
            runs = self.history([e.job_id]).get(e.job_id, [])
        except sq.SlurmCommandError:
            runs = []
        ended = [(st, node) for st, node in runs if st in sq.TERMINAL_STATES or st == "REQUEUED"]
        if ended:
            state, node = ended[-1]
            if state in ("NODE_FAIL", "FAILED"):
                self.nodes_due = True
            why = f"{state.lower().replace('_', ' ')} on node {node or '?'}; Slurm requeued job {e.job_id} itself"
        else:
            state, why = "REQUEUED", f"job {e.job_id} was requeued (cause unknown: no accounting history)"
        for sid in e.open:
            changes.setdefault(sid, {})["last_failure"] = {"state": state, "reason": why, "job_id": e.job_id}
        self.ctx.emit(f"[shard {e.open[0] if e.open else '-'}] {why}")

    def still_alive(self, e: Elem) -> sq.JobState | None:
        """squeue's view of one element (for PREEMPTED/NODE_FAIL: did Slurm requeue it itself?)."""
        try:
            for st in self.query(self.name, job_ids=[e.array_id], use_sacct=False):
                if st.job_id == e.job_id and st.state in LIVE:
                    return st
        except sq.SlurmCommandError:
            pass
        return None

    def ended(self, e: Elem, state: str, reason: str, changes: dict[int, dict], resubmit: list[int],
              exit_code: int | None) -> None:
        """An element ended: complete its done shards, decide for the others."""
        self._close(e)
        if state in ("NODE_FAIL", "FAILED"):
            self.nodes_due = True
        rec = self.done_record(e.job_id)
        if rec and rec.get("started") and rec.get("ended"):
            self.elapsed[e.job_id] = float(rec["ended"]) - float(rec["started"])
        head = True  # the first shard with missing tasks is the one the element was running
        for sid in list(e.open):
            if self.missing(sid) == 0:
                note = "" if state == "COMPLETED" else f"all tasks flushed before the job ended {state}"
                self._complete_shard(e, sid, changes, note)
                continue
            self.lost(e, sid, state, reason, changes, resubmit, exit_code, head)
            head = False

    def lost(self, e: Elem, sid: int, state: str, reason: str, changes: dict[int, dict], resubmit: list[int],
             exit_code: int | None, head: bool) -> None:
        attempt = self.attempt_seen(e, sid)
        entry: dict[str, Any] = {"state": state, "reason": reason, "attempts": attempt, "ended": time.time()}
        if exit_code is not None:
            entry["exit_code"] = exit_code
        n = self.submits.get(sid, 1)
        if state == "COMPLETED":
            entry.update(state="FAILED", reason=f"job {e.job_id} completed but tasks are missing")
        if exit_code == EXIT_BUDGET:
            self.out.budget_exceeded = True
            entry["reason"] = f"error budget exceeded ({reason})"
            self.out.unfinished[sid] = entry["reason"]
            self.ctx.emit(f"[shard {sid}] {entry['reason']}; stopping")
        elif state == "CANCELLED":
            self.out.unfinished[sid] = reason
            self.ctx.emit(f"[shard {sid}] {reason}: not resubmitted (resume will run its missing tasks)")
        elif self.out.budget_exceeded:
            self.out.unfinished[sid] = reason
        elif state in _ESCALATE and not head:
            # it never ran (the element died in an earlier shard): resubmit as it was
            self.waiting.append(sid)
            resubmit.append(sid)
        elif state in _ESCALATE:
            res = self.resources.get(sid)
            k = self.escalations.get(sid, 0)
            more = res.escalated(state, self.s.escalation) if res is not None else None
            if more is not None and more != res and k < self.s.escalation.max_escalations:
                self.resources[sid] = more
                self.escalations[sid] = k + 1
                what = "memory" if state == "OUT_OF_MEMORY" else "time"
                self.causes[sid] = f"{state} with {res.label()}; resubmitted with more {what}: {more.label()}"
                entry["reason"] = f"{reason}; escalated to {more.label()}"
                entry["escalated"] = {"cause": state, "from": res.label(), "to": more.label()}
                self.ctx.emit(f"[shard {sid}] {reason}; resubmitting its missing tasks with more {what} "
                              f"({res.label()} -> {more.label()})")
                self.waiting.append(sid)
                resubmit.append(sid)
            else:
                cap = res.label() if res is not None else "the profile's resources"
                why = f"{state} at the cap ({cap})"
                recorded = self.record_failed(sid, state, why)
                entry["reason"] = f"{reason}; {why}: the running task is recorded as failed"
                entry["escalated"] = {"cause": state, "from": cap, "to": f"{why}; task recorded as failed"}
                self.causes[sid] = why
                self.ctx.emit(f"[shard {sid}] {why}; its running task is recorded as failed"
                              + ("; the rest of the shard is resubmitted" if recorded else ""))
                if recorded and self.missing(sid) > 0:
                    self.waiting.append(sid)
                    resubmit.append(sid)
                elif not recorded:
                    self.out.unfinished[sid] = why
        elif n < self.s.max_attempts:
            self.waiting.append(sid)
            resubmit.append(sid)
            self.ctx.emit(f"[shard {sid}] {entry['reason']}; resubmitting (submission {n + 1} of {self.s.max_attempts})")
        else:
            self.out.unfinished[sid] = entry["reason"]
            self.ctx.emit(f"[shard {sid}] {entry['reason']}; not resubmitted after {n} submission(s) "
                          "(resume will run its missing tasks)")
        entry["last_failure"] = {"state": entry["state"], "reason": entry["reason"], "job_id": e.job_id}
        changes[sid] = entry

    # ------------------------------------------------------------------ submitting waves
    def submit_waiting(self, changes: dict[int, dict]) -> None:
        if not self.waiting or self.submit_fn is None or self.plan_fn is None or self.out.budget_exceeded:
            return
        now = self.clock()
        if self._room_checked is not None and now - self._room_checked < max(1.0, self.s.poll_min_interval):
            return  # asking for room is a scheduler query too: at most one per poll interval
        self._room_checked = now
        room = self.room()
        if room is not None and room <= 0:
            return
        if changes:
            self.ctx.mark_many(changes)
            changes.clear()
        shards = list(dict.fromkeys(self.waiting))
        packs = self.plan_fn(shards, {s: self.resources.get(s) for s in shards})
        if room is not None and len(packs) > room:
            packs = packs[:room]
        new = self.submit_fn(packs)  # may submit fewer (a limit hit after all): the rest waits
        taken = {s for e in new for s in e.shards}
        self.waiting = [s for s in shards if s not in taken]
        for e in new:
            self.active[e.job_id] = e
            for s in e.shards:
                self.submits[s] = self.submits.get(s, 0) + 1
                self.resources[s] = e.resources
        if self.waiting:
            self.ctx.emit(f"slurm: {len(self.waiting)} shard(s) wait for room under the scheduler's submit limit")
        self.poller.reset()

    def progress(self) -> int:
        done = failed = 0
        for per in self.ran.values():
            for n_run, n_failed in per.values():
                done += n_run
                failed += n_failed
        self.ctx.progress.update(self.done_base + done, self.ctx.failed_before + failed)
        return failed

    def budget_check(self, failed: int) -> None:
        max_errors = self.s.max_errors
        if max_errors is not None and self.ctx.failed_before + failed > max_errors:
            self.out.budget_exceeded = True
        if self.out.budget_exceeded and (self.active or self.waiting):
            ids = sorted({e.array_id for e in self.active.values()}, key=int)
            if ids:
                self.ctx.emit(f"slurm: more than max_errors={max_errors} tasks failed; cancelling the rest of "
                              f"job(s) {', '.join(ids)}")
                self.cancel([e.job_id for e in self.active.values()])
            why = "cancelled: error budget exceeded"
            open_ = [s for e in self.active.values() for s in e.open] + self.waiting
            self.ctx.mark_many({sid: {"state": "CANCELLED", "reason": why} for sid in open_})
            for sid in open_:
                self.out.unfinished[sid] = why
            self.finished += list(self.active.values())
            self.active.clear()
            self.waiting = []

    # ------------------------------------------------------------------ the loop
    def step(self) -> None:
        """One pass: maybe query the scheduler, read files, resubmit, record."""
        changes: dict[int, dict] = {}
        resubmit: list[int] = []
        if self.active and self.poller.remaining() <= 0:
            ids = sorted({e.array_id for e in self.active.values()}, key=int)
            try:
                states = self.query(self.name, job_ids=ids)
                self.query_errors = 0
            except sq.SlurmCommandError as exc:
                self.query_errors += 1
                if self.query_errors >= 10:
                    raise
                self.ctx.emit(f"slurm: scheduler query failed ({exc}); trying again")
                self.poller.record(False)
                states = None
            if states is not None:
                self.poller.observe(states)
                self.apply(states, changes, resubmit, accounting=_has_exit_codes(states))
        self.read_progress(changes)
        running = [e for e in self.active.values() if e.reported != "PENDING"]
        trouble = self.relay_logs(running + self.finished)
        self.finished = []
        if trouble:
            self.poller.reset()
        if self.nodes_due and self.check_nodes is not None:
            self.nodes_due = False
            self.check_nodes()  # before resubmitting: later submissions carry --exclude
        self.submit_waiting(changes)
        if changes:
            self.ctx.mark_many(changes)
        self.budget_check(self.progress())

    def loop(self) -> RunOutcome:
        try:
            self.submit_waiting({})
            while self.active or self.waiting:
                self.step()
                if self.active or self.waiting:
                    self.sleep(min(self.s.tick, max(0.05, self.poller.remaining())))
        except KeyboardInterrupt:
            self.ctx.emit(f"slurm: driver interrupted; the jobs keep running. Re-attach with `bayesim-hpc resume "
                          f"{self.ctx.rd.path}`, stop them with `bayesim-hpc cancel {self.ctx.rd.path}`")
            raise
        # the last lines of elements that completed while we watched are written after the
        # segments: wait a moment for each one's done record
        deadline = self.clock() + 3.0
        while True:
            self.relay_logs(self.finished + self.done_elems)
            self.finished = []
            if all(self.closed(e) for e in self.done_elems) or self.clock() > deadline:
                break
            self.sleep(0.2)
        self.relay_logs(self.done_elems)
        return self.out


def _has_exit_codes(states: list[sq.JobState]) -> bool:
    """sacct reports exit codes; squeue (the no-accounting fallback) does not."""
    return any(s.exit_code is not None for s in states) or not states
