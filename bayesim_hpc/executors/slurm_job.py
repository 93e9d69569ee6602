"""What runs inside one Slurm array element: its shards, its stop signals, its requeue, its done record.

submitit calls :func:`run_element` in the element's Python process. The element runs its
shards one after another with :func:`bayesim_hpc.worker.run_shard` (``handle_signals=True``,
attempt = the shard's base attempt + ``SLURM_RESTART_COUNT``), in one process, so imports and
compiled models are paid once per element, not once per shard.

Stop signals (checked on the local test cluster):

* **SIGUSR2** (``--signal=USR2@N`` before the time limit, or ``scancel --signal=USR2`` as a
  preemption notice): nobody else will requeue the element, so after flushing it requeues
  *itself* with ``scontrol requeue <array>_<index>`` (through :func:`slurm_query.requeue_job`,
  counted like every scheduler command). It runs again with ``SLURM_RESTART_COUNT`` + 1 and
  skips the flushed tasks -- while each allocation makes progress (at most
  :data:`MAX_SELF_REQUEUES` times); an allocation that ran nothing requeues only while restarts
  < ``max_attempts``.
* **SIGTERM** (``scontrol requeue``, preemption with requeue, ``scancel``, the time limit
  itself): Slurm has decided the element's fate; it only flushes and exits with code 3.
* A signal during start-up (before ``run_shard`` installs its handlers) is remembered in
  ``worker._EARLY_STOP`` and stops the first shard before it runs anything.

Exit codes: 0 = done, 3 = stopped after flushing, 4 = error budget exceeded.

**The done record.** Before it returns or exits, the element writes ``<element>_done.json``
next to its logs (``logs/slurm/<element>/``; atomically): per shard its outcome, the exit code,
the restart count. The driver reads this file to know that an element has finished writing
(its last log lines are in) and how it ended even when the scheduler cannot say (squeue gives
no exit codes). Nothing is scraped from log lines.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ..records import WorkerExit
from ..storage import atomic_write_text
from . import slurm_clusters, slurm_retry
from . import slurm_query as sq

__all__ = ["MAX_SELF_REQUEUES", "EXIT_DONE", "EXIT_STOPPED", "EXIT_BUDGET", "run_element", "done_record_path",
           "read_done_record", "element_id_from_env"]

EXIT_DONE, EXIT_STOPPED, EXIT_BUDGET = WorkerExit.DONE, WorkerExit.STOPPED, WorkerExit.BUDGET
MAX_SELF_REQUEUES = 20
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)


def done_record_path(result_dir: str | Path, element: str) -> Path:
    """Where element ``element`` ("123_4") writes its done record."""
    return Path(result_dir) / "logs" / "slurm" / element / f"{element}_done.json"


def read_done_record(result_dir: str | Path, element: str) -> dict[str, Any] | None:
    """The element's done record, or None if it has not written one (yet)."""
    try:
        return json.loads(done_record_path(result_dir, element).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def element_id_from_env(env: dict[str, str] | None = None) -> str:
    """``"<array job>_<index>"`` inside an array element, the job id in a plain job, "" outside Slurm."""
    env = os.environ if env is None else env
    array_job, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    return f"{array_job}_{task}" if array_job and task else env.get("SLURM_JOB_ID", "")


def run_element(result_dir: str, shards: list[int] | int, base_attempts: list[int] | int, retry_failed: bool,
                max_attempts: int, extra_paths: list[str] | None = None, *,
                requeue: Callable[[str], None] | None = None) -> dict:
    """Run an element's shards (called by submitit inside the element); see the module docstring.

    ``shards``/``base_attempts`` may be single ints (one shard per element). ``requeue``
    replaces :func:`slurm_query.requeue_job` (tests).
    """
    from .. import worker

    def early(signum: int, frame: object) -> None:  # until run_shard installs its handlers
        worker._EARLY_STOP.append(signum)

    for sig in _STOP_SIGNALS:
        signal.signal(sig, early)
    signal.signal(signal.SIGCONT, signal.SIG_DFL)  # submitit only logs it; Slurm sends it with every TERM
    for p in extra_paths or []:  # the driver's import path: the study's own modules
        if p not in sys.path and os.path.isdir(p):
            sys.path.append(p)
    os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
    shard_list = [int(shards)] if isinstance(shards, int) else [int(s) for s in shards]
    bases = [int(base_attempts)] * len(shard_list) if isinstance(base_attempts, int) else [int(a) for a in base_attempts]
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    me = element_id_from_env()

    def emit(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    record: dict[str, Any] = {"element": me, "restarts": restarts, "started": time.time(), "shards": []}
    exit_code, n_run_total, stop_signal, last_shard = EXIT_DONE, 0, None, shard_list[0]
    for sid, base in zip(shard_list, bases):
        attempt = base + restarts
        out = worker.run_shard(result_dir, sid, attempt, bool(retry_failed), emit=emit, handle_signals=True)
        n_run_total += out.n_run
        last_shard = sid
        record["shards"].append({"shard": sid, "attempt": attempt, "run": out.n_run, "success": out.n_success,
                                 "failed": out.n_failed, "skipped": out.n_skipped, "exit": out.exit_code})
        if out.exit_code != EXIT_DONE:  # stopped, error budget, or any other worker exit code
            exit_code, stop_signal = out.exit_code, out.stop_signal
            break
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)  # from here on nothing may interrupt us
    record.update(exit=exit_code, stop_signal=stop_signal, ended=time.time())
    if exit_code == EXIT_STOPPED and stop_signal == "SIGUSR2" and me:
        may = restarts < MAX_SELF_REQUEUES if n_run_total > 0 else restarts + 1 < max_attempts
        if may:
            try:
                # the cluster this element runs on (it may be another than SLURM_CONF's: --clusters)
                # (and quickly: the time limit is near)
                with slurm_clusters.using(os.environ.get("SLURM_CLUSTER_NAME") or None), \
                        slurm_retry.retry_policy(slurm_retry.QUICK):
                    (requeue or sq.requeue_job)(me)
                record["requeued"] = True
                emit(f"[shard {last_shard}] requeued job {me} after flushing (restart {restarts + 1})")
            except sq.SlurmCommandError as exc:
                emit(f"[shard {last_shard}] scontrol requeue {me} failed: {exc}")
        else:
            emit(f"[shard {last_shard}] not requeued ({restarts} restarts, {n_run_total} task(s) run this time)")
    if me:
        path = done_record_path(result_dir, me)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record))
    if exit_code != EXIT_DONE:
        raise SystemExit(exit_code)
    return {"shards": shard_list, "restarts": restarts, "run": n_run_total}
