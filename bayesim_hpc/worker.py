"""The worker: run one shard's missing tasks and write them as durable segments.

A worker reads which of its shard's tasks are already in valid segments, runs the rest,
and writes a segment every ``tasks_per_segment`` tasks, every
``flush_seconds`` and when it is told to stop (SIGTERM, SIGUSR2 or SIGINT: the fit in
progress is abandoned, finished tasks are flushed, and the worker exits with
:data:`EXIT_STOPPED`). Memory is bounded by the buffer of unflushed tasks.

Run as a process: ``python -m bayesim_hpc.worker RESULT_DIR SHARD_ID [--attempt N]``.
"""

from __future__ import annotations

import signal

# A worker process installs its stop handlers before the heavy imports below: a stop
# signal that arrives while it is still starting up is remembered, not fatal.
_EARLY_STOP: list[int] = []
if __name__ == "__main__":
    for _sig in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
        signal.signal(_sig, lambda signum, frame: _EARLY_STOP.append(signum))

import argparse
import json
import os
import resource
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import Study
from .manifest import scan_progress
from .records import TaskState, WorkerExit
from .resultdir import ResultDir, runtime_tasks_per_segment
from .storage import StorageFullError, atomic_write_text, ensure_shard_dir, shard_dir, study_stamp, write_segment
from .task import TaskRecord, run_task

__all__ = ["run_shard", "ShardOutcome", "EXIT_DONE", "EXIT_STOPPED", "EXIT_BUDGET", "EXIT_STORAGE",
           "StopRequested"]

EXIT_DONE, EXIT_STOPPED, EXIT_BUDGET, EXIT_STORAGE = (WorkerExit.DONE, WorkerExit.STOPPED, WorkerExit.BUDGET,
                                                    WorkerExit.STORAGE)
_study_cache: dict[tuple[str, str], Study] = {}


class _EndShard(Exception):
    """Ends a shard's loop early (disk full, study replaced); the outcome says why."""


class StopRequested(BaseException):
    """Raised in the worker's main thread by the stop signal handler.

    A BaseException so that a task's ``except Exception`` never records it as a failure.
    """


@dataclass
class ShardOutcome:
    shard_id: int
    attempt: int
    n_run: int
    n_success: int
    n_failed: int
    n_skipped: int
    stopped: bool = False
    budget_exceeded: bool = False
    segments: int = 0
    stop_signal: str | None = None  # e.g. "SIGUSR2": what stopped the shard, if anything
    systematic: bool = False  # stopped early: every task failed the same way (a bug, not bad luck)
    storage_error: str | None = None  # a segment could not be written (disk full): the message
    superseded: bool = False  # the result directory was reset (--force) under this shard

    @property
    def exit_code(self) -> int:
        if self.storage_error:
            return EXIT_STORAGE
        if self.superseded:
            return EXIT_STOPPED
        if self.budget_exceeded:
            return EXIT_BUDGET
        return EXIT_STOPPED if self.stopped else EXIT_DONE




class _SystematicFailure:
    """Tells a bug from bad luck: the first ``limit`` tasks of a shard (or all of a shard of at
    least 3 tasks) failed with one error type in one stage, and no task of the shard has ever
    succeeded. A resume that retries a few failed tasks of a shard never trips it."""

    def __init__(self, limit: int | None, shard_tasks: int, succeeded_before: bool):
        self.limit, self.shard_tasks = limit, shard_tasks
        self.armed = limit is not None and not succeeded_before
        self.kinds: set[tuple[str, str]] = set()
        self.n = 0

    def seen(self, rec: TaskRecord) -> bool:
        if not self.armed:
            return False
        if rec.status == "success":
            self.armed = False
            return False
        self.n += 1
        self.kinds.add((rec.error_type or "", rec.error_stage or ""))
        if len(self.kinds) > 1:
            self.armed = False
            return False
        assert self.limit is not None
        return self.n >= self.limit or (self.n == self.shard_tasks and self.n >= 3)


def _load(rd: ResultDir, generation: str) -> Study:
    # The driver that started this worker checked that the directory is trusted. Keyed by the
    # pickle's checksum too: a study that grew (same generation) is a new frozen study.
    key = (str(rd.path.resolve()), generation, str(rd.read_frozen().raw.get("study_pkl_sha256")))
    if key not in _study_cache:
        _study_cache[key] = rd.load_study(check_trust=False)
    return _study_cache[key]


class _StudyWatch:
    """Notices when study.json is replaced (``--force``) while a shard runs."""

    def __init__(self, rd: ResultDir, generation: str):
        self.rd, self.generation = rd, generation
        self.sig = self._sig()

    def _sig(self) -> tuple[int, int] | None:
        try:
            st = self.rd.study_json.stat()
            return st.st_ino, st.st_mtime_ns
        except FileNotFoundError:
            return None

    def replaced(self) -> bool:
        sig = self._sig()
        if sig == self.sig:
            return False
        try:
            changed = self.rd.read_frozen().generation != self.generation
        except (FileNotFoundError, json.JSONDecodeError):
            return True
        if not changed:
            self.sig = sig  # rewritten, same study: no need to read it again
        return changed


def run_shard(
    result_dir: str | Path,
    shard_id: int,
    attempt: int = 1,
    retry_failed: bool = False,
    emit: Callable[[str], None] | None = None,
    study: Study | None = None,
    flush_seconds: float = 60.0,
    handle_signals: bool = False,
) -> ShardOutcome:
    """Run the missing tasks of one shard; see the module docstring."""
    rd = ResultDir(result_dir)
    emit = emit or (lambda line: print(line, file=sys.stderr, flush=True))
    frozen = rd.read_frozen()
    stamp = study_stamp(frozen.raw)
    watch = _StudyWatch(rd, frozen.generation)
    study = study or _load(rd, frozen.generation)
    shard = frozen.shards[shard_id]
    space = study.space
    prog = scan_progress(rd, space.n_tasks, shard_id, stamp=stamp)
    for path, why in prog.problems:
        emit(f"[shard {shard_id}] ignoring segment {path.name}: {why}")
    indices = space.shard_indices(shard)
    active = space.active_mask()  # tasks of hidden cells (grid rows the study dropped) never run
    todo = [int(i) for i in indices if active[i] and (prog.state[i] == TaskState.MISSING or (retry_failed and prog.state[i] == TaskState.FAILED))]
    out = ShardOutcome(shard_id, attempt, 0, 0, 0, len(indices) - len(todo))
    buffer: list[TaskRecord] = []
    seq = _next_seq(rd, shard_id, attempt)
    last_flush = time.monotonic()
    progress_path = shard_dir(rd.path, shard_id) / "progress.json"
    last_progress = 0.0
    runtime = frozen.raw.get("runtime", {})  # this run's settings (the driver writes them)
    max_errors = runtime.get("max_errors", study.max_errors)
    tasks_per_segment = runtime_tasks_per_segment(runtime, study.tasks_per_segment)
    systematic = _SystematicFailure(runtime.get("stop_on_systematic_failure", study.stop_on_systematic_failure),
                                    len(indices), succeeded_before=bool((prog.state[indices] == TaskState.SUCCEEDED).any()))
    n_failed_before = int((prog.state[indices] == TaskState.FAILED).sum()) if not retry_failed else 0

    def flush() -> None:
        nonlocal seq, last_flush
        if buffer and not (out.storage_error or out.superseded):
            if watch.replaced():  # --force replaced the study: these rows belong to no study now
                out.superseded = True
                emit(f"[shard {shard_id}] the result directory was reset (--force) since this shard started: "
                     f"dropping {len(buffer)} result(s) of the replaced study and stopping")
                buffer.clear()
                raise _EndShard()
            try:
                write_segment(rd.path, shard_id, attempt, seq, buffer, draws_dtype=study.draws_dtype,
                              compression=study.compression, stamp=stamp)
            except StorageFullError as exc:
                out.storage_error = str(exc)
                emit(f"[shard {shard_id}] ERROR {exc}")
                buffer.clear()  # not recorded: resume runs these tasks again
                raise _EndShard() from None
            seq += 1
            out.segments += 1
            buffer.clear()
        last_flush = time.monotonic()

    old_handlers = {}
    if handle_signals:
        def _on_signal(signum: int, frame: object) -> None:
            if out.stopped:  # a second signal while the first is handled: already stopping
                return
            out.stopped = True
            raise StopRequested(signal.Signals(signum).name)

        for sig in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
            old_handlers[sig] = signal.signal(sig, _on_signal)
        if _EARLY_STOP:  # told to stop while starting up: run nothing
            todo = []
            out.stopped = True
            out.stop_signal = signal.Signals(_EARLY_STOP[0]).name
            emit(f"[shard {shard_id}] received {signal.Signals(_EARLY_STOP[0]).name} while starting; stopping")
    try:
        ensure_shard_dir(rd.path, shard_id)
    except OSError as exc:
        todo = []
        out.storage_error = f"cannot create {shard_dir(rd.path, shard_id)}: {exc}"
        emit(f"[shard {shard_id}] ERROR {out.storage_error}")
    try:
        for idx in todo:
            rec = run_task(study, space.ref(idx), attempt=attempt, shard_id=shard_id)
            buffer.append(rec)
            out.n_run += 1
            if rec.status == "success":
                out.n_success += 1
            else:
                out.n_failed += 1
                first_line = rec.error_message.splitlines()[0] if rec.error_message else ""
                emit(f"[{rec.task_id}] FAILED in {rec.error_stage}: {rec.error_type}: {first_line}")
            for w in rec.warnings:  # every one: the driver folds repeats across workers (relay.FoldingEmit)
                emit(f"[{rec.task_id}] WARNING {w}")
            now = time.monotonic()
            if len(buffer) >= tasks_per_segment or now - last_flush >= flush_seconds:
                flush()
            if now - last_progress >= 2.0:
                try:
                    _write_progress(progress_path, attempt, out, len(indices))
                except OSError:
                    pass
                last_progress = now
            if max_errors is not None and n_failed_before + out.n_failed > max_errors:
                out.budget_exceeded = True
                emit(f"[shard {shard_id}] stopping: more than max_errors={max_errors} failed tasks")
                break
            if systematic.seen(rec):
                out.budget_exceeded = out.systematic = True
                emit(f"[shard {shard_id}] stopping early: the first {out.n_failed} task(s) all failed "
                     f"in {rec.error_stage} with {rec.error_type} (stop_on_systematic_failure)")
                break
    except StopRequested as sig:
        out.stopped = True
        out.stop_signal = str(sig)
        emit(f"[shard {shard_id}] received {sig}: flushing {len(buffer)} finished task(s) and stopping")
    except _EndShard:
        pass
    finally:
        # Signals stay blocked from here on: the flush must not be interrupted by a second one.
        if handle_signals:
            for sig in old_handlers:
                signal.signal(sig, signal.SIG_IGN)
        try:
            flush()
        except _EndShard:
            pass
        try:
            _write_progress(progress_path, attempt, out, len(indices))
        except OSError:  # progress is informational; a full disk is reported by the flush
            pass
        if handle_signals:
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
    return out


def _next_seq(rd: ResultDir, shard_id: int, attempt: int) -> int:
    d = shard_dir(rd.path, shard_id)
    if not d.exists():
        return 0
    seqs = [int(p.name.split("-")[1]) for p in d.glob(f"a{attempt:03d}-*.h5")]
    return max(seqs, default=-1) + 1


def _write_progress(path: Path, attempt: int, out: ShardOutcome, total: int) -> None:
    atomic_write_text(path, json.dumps({
        "attempt": attempt, "pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "n_run": out.n_run, "n_success": out.n_success, "n_failed": out.n_failed,
        "n_skipped": out.n_skipped, "n_tasks": total,
    }))


def _die_with_parent() -> None:
    """Ask Linux to send us SIGTERM when the driver that started us dies (no leaked workers)."""
    parent = os.environ.get("BAYESIM_PARENT_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() != int(parent):  # the driver died before prctl took effect
        sys.exit(EXIT_STOPPED)


def _serve(result_dir: str) -> int:
    """Run shards named on stdin (one JSON object a line) until stdin closes.

    Each request ``{"shard": 3, "attempt": 1, "retry_failed": false}`` is answered with
    one line ``{"shard_done": 3, "exit": 0, ...}``. A stop signal ends the shard and the
    process (exit code :data:`EXIT_STOPPED`), as it would end an array element.
    """
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        out = run_shard(result_dir, int(req["shard"]), int(req["attempt"]), bool(req.get("retry_failed")),
                        handle_signals=True)
        print(json.dumps({"shard_done": out.shard_id, "exit": out.exit_code, "run": out.n_run,
                          "success": out.n_success, "failed": out.n_failed}), flush=True)
        if out.storage_error:
            return EXIT_STORAGE
        if out.stopped or out.superseded:
            return EXIT_STOPPED
    return EXIT_DONE


def main(argv: list[str] | None = None) -> int:
    _die_with_parent()
    ap = argparse.ArgumentParser(prog="python -m bayesim_hpc.worker", description=__doc__)
    ap.add_argument("result_dir")
    ap.add_argument("shard_id", type=int, nargs="?")
    ap.add_argument("--attempt", type=int, default=1)
    ap.add_argument("--retry-failed", action="store_true")
    ap.add_argument("--serve", action="store_true", help="run the shards named on stdin, one JSON line each")
    args = ap.parse_args(argv)
    if args.serve:
        return _serve(args.result_dir)
    if args.shard_id is None:
        ap.error("give SHARD_ID (or --serve)")
    shard_id = args.shard_id
    out = run_shard(args.result_dir, shard_id, args.attempt, args.retry_failed, handle_signals=True)
    print(json.dumps({"shard_done": shard_id, "exit": out.exit_code, "run": out.n_run, "success": out.n_success,
                      "failed": out.n_failed}), flush=True)
    return out.exit_code


def _exit_now(code: int) -> None:
    """End the worker process with ``code`` once its output is flushed, skipping teardown.

    Every segment and progress file is already closed and renamed into place when
    :func:`run_shard` returns; what is left is stdout/stderr and logging. Interpreter
    teardown (garbage-collecting PyMC, PyTensor, numba and nutpie state) takes 0.8-1.5 s
    per process and does nothing a finished worker needs, so the process ends with
    ``os._exit``.
    """
    import logging

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more to say
            pass
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main())
