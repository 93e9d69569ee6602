"""LocalExecutor: shards as worker processes on this machine, N at a time.

Each slot is a long-lived ``python -m bayesim_hpc.worker --serve`` process that runs the
shards it is handed one after the other, so imports and compiled models are paid once per
slot, not once per shard. Worker output is written to ``logs/sNNNNN.aNNN.log`` and relayed to the driver's
stderr, tagged. A worker that dies (killed, crashed) is started again for its missing
tasks, up to ``max_attempts`` times per run. On Ctrl-C or any error in the driver every
worker is sent SIGTERM (they flush and exit), then SIGKILL after ``kill_wait`` seconds;
workers also get SIGTERM if the driver dies (``PR_SET_PDEATHSIG``), so none is leaked.

Example:
    >>> run_simulation(config, executor="local", workers=4)    # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import IO

from ..worker import EXIT_BUDGET, EXIT_DONE, EXIT_STOPPED, EXIT_STORAGE
from .base import RunContext, RunOutcome

__all__ = ["LocalExecutor", "worker_env"]


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a worker process gets: ours, plus our import path, unbuffered output."""
    env = dict(os.environ)
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
    env.update(extra or {})
    return env


@dataclass
class _Slot:
    """One running shard attempt, on a worker process."""

    shard_id: int
    attempt: int
    proc: "_Proc"
    started: float
    job_id: str
    signalled: str | None = None  # the state a deliberate signal stands for (TIMEOUT, PREEMPTED, ...)
    kill_at: float | None = None
    requeue: bool = True
    faults: dict = field(default_factory=dict)


@dataclass
class _Proc:
    """A worker process; ``log`` is the log file of the shard it is running."""

    popen: subprocess.Popen
    reader: threading.Thread | None = None
    log: IO[str] | None = None
    slot: _Slot | None = None


class LocalExecutor:
    """A process pool of ``workers`` slots; see the module docstring."""

    name = "local"
    persistent = True  # one worker process serves many shards

    def __init__(self, workers: int | None = None, max_attempts: int = 3, kill_wait: float = 10.0,
                 poll: float = 0.1):
        self.parallelism = int(workers or os.cpu_count() or 1)
        if self.parallelism < 1:
            raise ValueError("workers must be >= 1")
        self.max_attempts = max_attempts
        self.kill_wait = kill_wait
        self.poll = poll
        self._events: queue.Queue[tuple[str, _Proc, str]] = queue.Queue()

    # --- hooks for the mock Slurm executor ------------------------------------------------
    def _job_id(self, ctx: RunContext, shard_id: int, attempt: int) -> str:
        return f"local-{ctx.run_id}-s{shard_id}-a{attempt}"

    def _extra_env(self, ctx: RunContext, shard_id: int, attempt: int, job_id: str) -> dict[str, str]:
        return {}

    def _on_tick(self, ctx: RunContext, slot: _Slot, now: float) -> None:
        """Called every poll for a running slot (time limits, injected faults)."""

    def _should_requeue(self, slot: _Slot, state: str) -> bool:
        return slot.attempt < self.max_attempts

    # --- processes -----------------------------------------------------------------------
    def _spawn(self, ctx: RunContext, env_extra: dict[str, str]) -> _Proc:
        cmd = [sys.executable, "-m", "bayesim_hpc.worker", str(ctx.rd.path), "--serve"]
        env = worker_env({"BAYESIM_PARENT_PID": str(os.getpid()), **env_extra})
        popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.PIPE,
                                 text=True, bufsize=1, env=env)
        proc = _Proc(popen)
        proc.reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
        proc.reader.start()
        return proc

    def _read(self, proc: _Proc) -> None:
        assert proc.popen.stdout is not None
        for line in proc.popen.stdout:
            log = proc.log
            if log is not None:
                try:
                    log.write(line)
                    log.flush()
                except ValueError:  # closed by the main thread between shards; keep draining the pipe
                    pass
                except OSError:  # disk full: the line still reaches the driver; keep draining the pipe
                    pass
            line = line.rstrip("\n")
            kind = "done" if line.startswith('{"shard_done"') else "line"
            self._events.put((kind, proc, line))

    def _assign(self, ctx: RunContext, procs: list[_Proc], shard_id: int) -> _Slot:
        attempt = ctx.next_attempt(shard_id)
        job_id = self._job_id(ctx, shard_id, attempt)
        extra = self._extra_env(ctx, shard_id, attempt, job_id)
        proc = next((p for p in procs if p.slot is None and p.popen.poll() is None), None) if self.persistent else None
        if proc is None:
            proc = self._spawn(ctx, extra)
            procs.append(proc)
        ctx.rd.logs.mkdir(exist_ok=True)
        proc.log = open(ctx.rd.logs / f"s{shard_id:05d}.a{attempt:03d}.log", "a")
        slot = _Slot(shard_id, attempt, proc, time.monotonic(), job_id)
        proc.slot = slot
        ctx.mark(shard_id, state="RUNNING", attempts=attempt, job_id=job_id, started=time.time(), reason="",
                 pid=proc.popen.pid)
        assert proc.popen.stdin is not None
        proc.popen.stdin.write(json.dumps({"shard": shard_id, "attempt": attempt, "retry_failed": ctx.retry_failed}) + "\n")
        proc.popen.stdin.flush()
        if not self.persistent:
            proc.popen.stdin.close()  # one shard per process, like an array element
        return slot

    def _signal(self, slot: _Slot, sig: int, state: str | None = None) -> None:
        if slot.proc.popen.poll() is None:
            try:
                slot.proc.popen.send_signal(sig)
            except ProcessLookupError:
                pass
        if state and slot.signalled is None:
            slot.signalled = state

    def _finish(self, ctx: RunContext, slot: _Slot, rc: int, out: RunOutcome, pending: deque) -> dict:
        proc = slot.proc
        proc.slot = None
        if proc.log is not None:
            proc.log.close()
            proc.log = None
        if rc == EXIT_DONE and slot.signalled is None:
            out.completed.append(slot.shard_id)
            return {"state": "COMPLETED", "reason": "", "exit_code": rc}
        if rc == EXIT_STORAGE:  # disk full: another attempt would fail the same way
            out.storage_error = out.storage_error or (
                f"a worker could not write its results to {ctx.rd.path} (no space left?); see "
                f"logs/s{slot.shard_id:05d}.a{slot.attempt:03d}.log")
            out.unfinished[slot.shard_id] = "could not write results (no space left?)"
            return {"state": "FAILED", "reason": "could not write results (no space left?)", "exit_code": rc}
        if rc == EXIT_BUDGET:
            out.budget_exceeded = True
            out.unfinished[slot.shard_id] = "error budget exceeded"
            return {"state": "FAILED", "reason": "error budget exceeded", "exit_code": rc}
        if slot.signalled:
            state = slot.signalled
            what = state.lower().replace("_", " ")
            reason = f"{what}: worker stopped after flushing" if rc == EXIT_STOPPED else f"{what} (exit code {rc})"
        elif rc < 0:
            state, reason = "FAILED", f"worker killed by {signal.Signals(-rc).name}"
        elif rc == EXIT_STOPPED:
            state, reason = "PREEMPTED", "worker stopped by a signal after flushing"
        else:
            state, reason = "FAILED", f"worker exited with code {rc}; see logs/s{slot.shard_id:05d}.a{slot.attempt:03d}.log"
        if slot.requeue and self._should_requeue(slot, state) and not out.budget_exceeded:
            pending.append(slot.shard_id)
            ctx.emit(f"[shard {slot.shard_id}] {reason}; requeued (attempt {slot.attempt + 1})")
            return {"state": "REQUEUED", "reason": reason, "exit_code": rc}
        out.unfinished[slot.shard_id] = reason
        ctx.emit(f"[shard {slot.shard_id}] {reason}; not requeued (resume will run its missing tasks)")
        return {"state": state, "reason": reason, "exit_code": rc}

    # --- the loop --------------------------------------------------------------------------
    def run(self, ctx: RunContext) -> RunOutcome:
        out = RunOutcome()
        pending: deque[int] = deque(ctx.shard_ids)
        procs: list[_Proc] = []
        failed = ctx.failed_before
        ran_before = 0  # tasks run by finished shard attempts
        done_base = ctx.progress.done

        def running() -> list[_Slot]:
            return [p.slot for p in procs if p.slot is not None]

        try:
            while pending or running():
                while pending and len(running()) < self.parallelism and not (out.budget_exceeded or out.storage_error):
                    self._assign(ctx, procs, pending.popleft())
                changes: dict[int, dict] = {}
                while True:  # worker output and shard completions
                    try:
                        kind, proc, line = self._events.get_nowait()
                    except queue.Empty:
                        break
                    if kind == "done" and proc.slot is not None:
                        info = json.loads(line)
                        ran_before += int(info.get("run", 0))
                        slot = proc.slot
                        changes[slot.shard_id] = self._finish(ctx, slot, int(info["exit"]), out, pending)
                    elif kind == "line":
                        if "] FAILED in " in line:
                            failed += 1
                        sid = proc.slot.shard_id if proc.slot else "?"
                        ctx.emit(line if line.startswith("[") else f"[shard {sid}] {line}")
                now = time.monotonic()
                for proc in list(procs):
                    slot = proc.slot
                    if slot is not None:
                        self._on_tick(ctx, slot, now)
                        if slot.kill_at is not None and now >= slot.kill_at:
                            self._signal(slot, signal.SIGKILL)
                    rc = proc.popen.poll()
                    if rc is None:
                        continue
                    proc.reader.join(timeout=5)
                    self._drain_lines(ctx, proc)
                    if proc.slot is not None:  # died while running a shard
                        slot = proc.slot
                        ran_before += int(ctx.shard_progress(slot.shard_id).get("n_run", 0))
                        changes[slot.shard_id] = self._finish(ctx, slot, rc, out, pending)
                    procs.remove(proc)
                ctx.mark_many(changes)
                if ctx.study.max_errors is not None and failed > ctx.study.max_errors:
                    out.budget_exceeded = True
                if (out.budget_exceeded or out.storage_error) and (running() or pending):
                    for slot in running():
                        if slot.signalled is None:
                            self._signal(slot, signal.SIGTERM, "CANCELLED")
                            slot.requeue = False
                            slot.kill_at = now + self.kill_wait
                    for sid in pending:
                        out.unfinished[sid] = ("not started: error budget exceeded" if out.budget_exceeded
                                               else "not started: results cannot be written")
                    pending.clear()
                live = 0
                for slot in running():
                    pr = ctx.shard_progress(slot.shard_id)
                    if pr.get("attempt") == slot.attempt and pr.get("pid") == slot.proc.popen.pid:
                        live += int(pr.get("n_run", 0))
                ctx.progress.update(done_base + ran_before + live, failed)
                time.sleep(self.poll)
        finally:
            self._stop_all(ctx, procs)
        return out

    def _drain_lines(self, ctx: RunContext, proc: _Proc) -> None:
        """Relay what a dead process printed last (its completion line counts too)."""
        keep = []
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                break
            keep.append(ev)
        for kind, p, line in keep:
            if p is proc and kind == "line":
                ctx.emit(line if line.startswith("[") else f"[shard {p.slot.shard_id if p.slot else '?'}] {line}")
            else:
                self._events.put((kind, p, line))

    def _stop_all(self, ctx: RunContext, procs: list[_Proc]) -> None:
        """Close every worker: idle ones by closing stdin, busy ones by SIGTERM, then SIGKILL."""
        busy = {p.slot.shard_id for p in procs if p.slot is not None}
        for p in procs:
            try:
                if p.slot is not None:
                    p.popen.send_signal(signal.SIGTERM)
                elif p.popen.stdin and not p.popen.stdin.closed:
                    p.popen.stdin.close()
            except (ProcessLookupError, BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + self.kill_wait
        for p in procs:
            try:
                p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()
            if p.reader is not None:
                p.reader.join(timeout=5)
            if p.log is not None:
                p.log.close()
        if busy:
            try:
                ctx.mark_many({sid: {"state": "CANCELLED", "reason": "driver stopped"} for sid in busy})
            except Exception:  # the manifest is a cache; never mask the original error
                pass
