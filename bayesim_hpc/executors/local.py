"""LocalExecutor: shards as worker processes on this machine, N at a time.

Each shard runs in its own ``python -m bayesim_hpc.worker`` process, like an array
element. Worker output is written to ``logs/sNNNNN.aNNN.log`` and relayed to the driver's
stderr, tagged. A worker that dies (killed, crashed) is started again for its missing
tasks, up to ``max_attempts`` times per run. On Ctrl-C or any error in the driver every
worker is sent SIGTERM (they flush and exit), then SIGKILL after ``kill_wait`` seconds;
workers also get SIGTERM if the driver dies (``PR_SET_PDEATHSIG``), so none is leaked.

Example:
    >>> run_simulation(config, executor="local", workers=4)    # doctest: +SKIP
"""

from __future__ import annotations

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

from ..worker import EXIT_BUDGET, EXIT_DONE, EXIT_STOPPED
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
    shard_id: int
    attempt: int
    proc: subprocess.Popen
    started: float
    log: IO[str]
    reader: threading.Thread
    job_id: str
    signalled: str | None = None  # the state a deliberate signal stands for (TIMEOUT, PREEMPTED, ...)
    kill_at: float | None = None
    requeue: bool = True
    faults: dict = field(default_factory=dict)


class LocalExecutor:
    """A process pool of ``workers`` slots; see the module docstring."""

    name = "local"

    def __init__(self, workers: int | None = None, max_attempts: int = 3, kill_wait: float = 10.0,
                 poll: float = 0.1):
        self.parallelism = int(workers or os.cpu_count() or 1)
        if self.parallelism < 1:
            raise ValueError("workers must be >= 1")
        self.max_attempts = max_attempts
        self.kill_wait = kill_wait
        self.poll = poll
        self._lines: queue.Queue[tuple[int, str]] = queue.Queue()

    # --- hooks for the mock Slurm executor ------------------------------------------------
    def _job_id(self, ctx: RunContext, shard_id: int, attempt: int) -> str:
        return f"local-{ctx.run_id}-s{shard_id}-a{attempt}"

    def _extra_env(self, ctx: RunContext, shard_id: int, attempt: int, job_id: str) -> dict[str, str]:
        return {}

    def _on_tick(self, ctx: RunContext, slot: _Slot, now: float) -> None:
        """Called every poll for a running slot (time limits, injected faults)."""

    def _should_requeue(self, slot: _Slot, state: str) -> bool:
        return slot.attempt < self.max_attempts

    # --- running -------------------------------------------------------------------------
    def _launch(self, ctx: RunContext, shard_id: int) -> _Slot:
        attempt = ctx.next_attempt(shard_id)
        job_id = self._job_id(ctx, shard_id, attempt)
        cmd = [sys.executable, "-m", "bayesim_hpc.worker", str(ctx.rd.path), str(shard_id), "--attempt", str(attempt)]
        if ctx.retry_failed:
            cmd.append("--retry-failed")
        env = worker_env({"BAYESIM_PARENT_PID": str(os.getpid()),
                          **self._extra_env(ctx, shard_id, attempt, job_id)})
        ctx.rd.logs.mkdir(exist_ok=True)
        log = open(ctx.rd.logs / f"s{shard_id:05d}.a{attempt:03d}.log", "a")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, bufsize=1, env=env)
        reader = threading.Thread(target=self._read, args=(shard_id, proc, log), daemon=True)
        reader.start()
        ctx.mark(shard_id, state="RUNNING", attempts=attempt, job_id=job_id, started=time.time(), reason="", pid=proc.pid)
        return _Slot(shard_id, attempt, proc, time.monotonic(), log, reader, job_id)

    def _read(self, shard_id: int, proc: subprocess.Popen, log: IO[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            self._lines.put((shard_id, line.rstrip("\n")))

    def _drain(self, ctx: RunContext) -> int:
        failed = 0
        while True:
            try:
                sid, line = self._lines.get_nowait()
            except queue.Empty:
                return failed
            if line.startswith("{") and line.endswith("}"):
                continue  # the worker's machine-readable closing line
            if "] FAILED in " in line:
                failed += 1
            ctx.emit(line if line.startswith("[") else f"[shard {sid}] {line}")

    def _signal(self, slot: _Slot, sig: int, state: str | None = None) -> None:
        if slot.proc.poll() is None:
            try:
                slot.proc.send_signal(sig)
            except ProcessLookupError:
                pass
        if state and slot.signalled is None:
            slot.signalled = state

    def _finish(self, ctx: RunContext, slot: _Slot, rc: int, out: RunOutcome, pending: deque) -> dict:
        slot.reader.join(timeout=5)
        slot.log.close()
        if rc == EXIT_DONE and slot.signalled is None:
            out.completed.append(slot.shard_id)
            return {"state": "COMPLETED", "reason": "", "exit_code": rc}
        if rc == EXIT_BUDGET:
            out.budget_exceeded = True
            out.unfinished[slot.shard_id] = "error budget exceeded"
            return {"state": "FAILED", "reason": "error budget exceeded", "exit_code": rc}
        if slot.signalled:
            state = slot.signalled
            reason = f"{state.lower().replace('_', ' ')}: worker stopped after flushing" if rc == EXIT_STOPPED else f"{state.lower().replace('_', ' ')} (exit code {rc})"
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

    def run(self, ctx: RunContext) -> RunOutcome:
        out = RunOutcome()
        pending: deque[int] = deque(ctx.shard_ids)
        running: dict[int, _Slot] = {}
        failed = ctx.failed_before
        ran_before: dict[int, int] = {}  # tasks run by finished attempts, per shard
        done_base = ctx.progress.done
        try:
            while pending or running:
                while pending and len(running) < self.parallelism and not out.budget_exceeded:
                    sid = pending.popleft()
                    running[sid] = self._launch(ctx, sid)
                failed += self._drain(ctx)
                now = time.monotonic()
                changes = {}
                for sid, slot in list(running.items()):
                    self._on_tick(ctx, slot, now)
                    if slot.kill_at is not None and now >= slot.kill_at:
                        self._signal(slot, signal.SIGKILL)
                    rc = slot.proc.poll()
                    if rc is None:
                        continue
                    ran_before[sid] = ran_before.get(sid, 0) + int(ctx.shard_progress(sid).get("n_run", 0))
                    changes[sid] = self._finish(ctx, slot, rc, out, pending)
                    del running[sid]
                ctx.mark_many(changes)
                if ctx.study.max_errors is not None and failed > ctx.study.max_errors and not out.budget_exceeded:
                    out.budget_exceeded = True
                if out.budget_exceeded and (running or pending):
                    for slot in running.values():
                        self._signal(slot, signal.SIGTERM, "CANCELLED")
                        slot.requeue = False
                        slot.kill_at = slot.kill_at or now + self.kill_wait
                    for sid in pending:
                        out.unfinished[sid] = "not started: error budget exceeded"
                    pending.clear()
                live = sum(int(ctx.shard_progress(s).get("n_run", 0)) for s in running
                           if ctx.shard_progress(s).get("attempt") == running[s].attempt)
                ctx.progress.update(done_base + sum(ran_before.values()) + live, failed)
                time.sleep(self.poll)
            failed += self._drain(ctx)
        finally:
            self._stop_all(ctx, running)
        out.n_failed_tasks = failed - ctx.failed_before
        return out

    def _stop_all(self, ctx: RunContext, running: dict[int, _Slot]) -> None:
        if not running:
            return
        for slot in running.values():
            self._signal(slot, signal.SIGTERM)
        deadline = time.monotonic() + self.kill_wait
        for slot in running.values():
            try:
                slot.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                slot.proc.kill()
                slot.proc.wait()
            slot.reader.join(timeout=5)
            slot.log.close()
        self._drain(ctx)
        try:
            ctx.mark_many({sid: {"state": "CANCELLED", "reason": "driver stopped"} for sid in running})
        except Exception:  # the manifest is a cache; never mask the original error
            pass
