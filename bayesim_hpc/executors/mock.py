"""MockSlurmExecutor: a simulated Slurm array on local processes, for dry runs and drills.

Shards are grouped into arrays of at most ``max_array_size`` elements, as the Slurm
executor would submit them; each element runs as a local worker process with Slurm's
environment (``SLURM_JOB_ID``, ``SLURM_ARRAY_JOB_ID``, ``SLURM_ARRAY_TASK_ID``,
``SLURM_RESTART_COUNT``), at most ``workers`` at a time (the ``%N`` throttle). Job states
use Slurm's names, and faults can be injected per shard on its first attempt:

* ``time_limit_s`` (seconds; a real Slurm element's ``time_min`` is minutes): SIGUSR2
  ``signal_delay_s`` seconds before the limit (like ``--signal=B:USR2@N``), SIGTERM at the
  limit, SIGKILL ``kill_wait`` later -> TIMEOUT (``time_limit`` and ``signal_delay`` are
  their old names and warn);
* ``preempt={shard: seconds}``: SIGTERM after that long -> PREEMPTED;
* ``node_fail={shard: seconds}``: SIGKILL -> NODE_FAIL;
* ``cancel={shard: seconds}``: SIGTERM then SIGKILL -> CANCELLED, never requeued.

TIMEOUT, PREEMPTED and NODE_FAIL elements are requeued (``requeue=True``) up to
``max_attempts``; the requeued worker skips the tasks already flushed.

Example:
    >>> run_simulation(config, executor="mock", workers=4, preempt={2: 1.5})   # doctest: +SKIP
"""

from __future__ import annotations

import signal
import time

from ..deprecation import renamed_kwargs
from .base import RunContext
from .local import LocalExecutor, _Slot
from .slurm_query import split_array

__all__ = ["MockSlurmExecutor"]


class MockSlurmExecutor(LocalExecutor):
    name = "mock"
    persistent = False  # each array element is its own process

    def __init__(self, workers: int | None = None, max_attempts: int = 3, *, max_array_size: int = 1001,
                 time_limit_s: float | None = None, signal_delay_s: float = 2.0, kill_wait: float = 5.0,
                 preempt: dict[int, float] | None = None, node_fail: dict[int, float] | None = None,
                 cancel: dict[int, float] | None = None, requeue: bool = True, poll: float = 0.05, **old: float):
        super().__init__(workers=workers, max_attempts=max_attempts, kill_wait=kill_wait, poll=poll)
        old = renamed_kwargs(old, {"time_limit": "time_limit_s", "signal_delay": "signal_delay_s"},
                             where="MockSlurmExecutor (seconds)")
        if set(old) - {"time_limit_s", "signal_delay_s"}:
            raise TypeError(f"MockSlurmExecutor got unexpected keyword argument(s) {sorted(old)}")
        time_limit_s = old.get("time_limit_s", time_limit_s)
        signal_delay_s = old.get("signal_delay_s", signal_delay_s)
        self.max_array_size = int(max_array_size)
        self.time_limit_s = time_limit_s
        self.signal_delay_s = signal_delay_s
        self.faults = {"preempt": dict(preempt or {}), "node_fail": dict(node_fail or {}), "cancel": dict(cancel or {})}
        self.requeue = requeue
        self._array_of: dict[int, tuple[str, int]] = {}
        self._restarts: dict[int, int] = {}
        self.arrays: list[list[int]] = []

    def run(self, ctx: RunContext):
        self.arrays = split_array(list(ctx.shard_ids), self.max_array_size)
        for k, batch in enumerate(self.arrays):
            array_job = f"{int(time.time()) % 100000}{k:03d}"
            for i, sid in enumerate(batch):
                self._array_of[sid] = (array_job, i)
        ctx.manifest.update(lambda d: d.setdefault("submissions", []).extend(
            {"run_id": ctx.run_id, "job_id": self._array_of[b[0]][0], "shards": b, "time": time.time(), "mock": True}
            for b in self.arrays))
        ctx.emit(f"mock slurm: {len(ctx.shard_ids)} element(s) in {len(self.arrays)} array(s) "
                 f"(MaxArraySize {self.max_array_size}, %{self.parallelism})")
        return super().run(ctx)

    def _job_id(self, ctx: RunContext, shard_id: int, attempt: int) -> str:
        array_job, i = self._array_of[shard_id]
        return f"{array_job}_{i}"

    def _extra_env(self, ctx: RunContext, shard_id: int, attempt: int, job_id: str) -> dict[str, str]:
        array_job, i = self._array_of[shard_id]
        restarts = self._restarts.get(shard_id, -1) + 1
        self._restarts[shard_id] = restarts
        return {"SLURM_JOB_ID": job_id, "SLURM_ARRAY_JOB_ID": array_job, "SLURM_ARRAY_TASK_ID": str(i),
                "SLURM_RESTART_COUNT": str(restarts), "SLURM_JOB_NAME": f"bayesim-{ctx.run_id}"}

    def _on_tick(self, ctx: RunContext, slot: _Slot, now: float) -> None:
        age = now - slot.started
        first = self._restarts.get(slot.shard_id, 0) == 0
        if first:
            for kind, sig, state in (("preempt", signal.SIGTERM, "PREEMPTED"),
                                     ("node_fail", signal.SIGKILL, "NODE_FAIL"),
                                     ("cancel", signal.SIGTERM, "CANCELLED")):
                at = self.faults[kind].get(slot.shard_id)
                if at is not None and age >= at and slot.signalled is None:
                    self._signal(slot, sig, state)
                    ctx.emit(f"[shard {slot.shard_id}] mock slurm: {state} after {age:.1f}s")
                    if kind == "cancel":
                        slot.requeue = False
                        slot.kill_at = now + self.kill_wait
        if self.time_limit_s is not None:
            if age >= self.time_limit_s - self.signal_delay_s and not slot.faults.get("usr2"):
                slot.faults["usr2"] = True  # like --signal=B:USR2@N: flush and stop before the limit
                self._signal(slot, signal.SIGUSR2, "TIMEOUT")
            if age >= self.time_limit_s and not slot.faults.get("term"):
                slot.faults["term"] = True
                self._signal(slot, signal.SIGTERM, "TIMEOUT")
                slot.kill_at = now + self.kill_wait

    def _should_requeue(self, slot: _Slot, state: str) -> bool:
        return self.requeue and state in ("TIMEOUT", "PREEMPTED", "NODE_FAIL", "FAILED") and slot.attempt < self.max_attempts
