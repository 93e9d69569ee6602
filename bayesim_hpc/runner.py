"""The driver: ``run_simulation`` and ``resume_simulation``.

The driver takes the result directory's driver lock (one driver at a time), freezes the
study on first use or checks that it has not changed, asks the segments what is missing,
hands the shards with missing tasks to the executor chosen at run time, and reduces.

Example:
    >>> result = run_simulation(config, executor="local", workers=4)   # doctest: +SKIP
    >>> result = resume_simulation("results/my_study")                   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence


from .config import Study
from .errors import (BayesimError, ConfigError, DriverStopped, ErrorBudgetExceeded, Interrupted, LockLostError,
                     SystematicFailureError)
from .executors import make_executor
from .executors.base import ProgressLine, RunContext, RunOutcome, default_shard_size
from .locking import DirLock
from .manifest import Manifest, scan_progress
from .reduce import reduce_results
from .notify import Notifier, NotifySettings, resolve_notify, start_notifier, with_slurm_mail
from .relay import FoldingEmit
from .run_messages import report_end as _report_end
from .run_messages import systematic_failure as _systematic_failure
from .prepare import live_work, missing_shards, prepare_result_dir, size_warnings  # noqa: F401 (re-exported)
from .resultdir import ResultDir, check_trusted, runtime_settings
from .results import SimulationResult
from .storage import StorageFullError

__all__ = ["run_simulation", "resume_simulation", "run_adaptive", "prepare_result_dir", "missing_shards"]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_text_option(name: str, value: Any) -> None:
    """Refuse control characters (newlines...) in a path or option that reaches a job script."""
    if isinstance(value, (str, Path)) and _CONTROL.search(str(value)):
        raise ConfigError(name, str(value), "contains a control character (newline, tab, ...), which would "
                          "corrupt the generated job script", "use a value without control characters")


class DriverInterrupted(BaseException):
    """Raised in the driver's main thread by SIGTERM (or when its lock was taken over).

    A BaseException, so no ``except Exception`` in an executor swallows it; the executor's
    ``finally`` blocks stop the workers on the way out."""


class _DriverSignals:
    """SIGTERM -> a clean stop; a lost lock -> SIGTERM to the main thread (see locking)."""

    def __init__(self, lock: DirLock):
        self.lock = lock
        self.reason: str | None = None
        self.installed = False
        self._old: Any = None

    def __enter__(self) -> "_DriverSignals":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handler)
            self.installed = True
        self.lock.on_lost = self._lost
        return self

    def _handler(self, signum: int, frame: object) -> None:
        if self.reason is not None:  # already stopping: a second signal changes nothing
            return
        self.reason = "lock lost" if self.lock.lost.is_set() else signal.Signals(signum).name
        raise DriverInterrupted(self.reason)

    def _lost(self) -> None:
        if self.installed:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)

    def __exit__(self, *exc: object) -> None:
        self.lock.on_lost = None
        if self.installed:
            signal.signal(signal.SIGTERM, self._old)


def run_simulation(
    config: Study,
    executor: str | Any = "inline",
    *,
    workers: int | None = None,
    resume: str = "auto",
    retry_failed: bool | None = None,
    force: bool = False,
    progress: bool | None = None,
    shard_size: int | None = None,
    max_attempts: int = 3,
    emit: Callable[[str], None] | None = None,
    reduce: bool = True,
    lock_stale_after: float = 120.0,
    keep_going: bool = False,
    notify: Sequence[str] | None = None,
    notify_options: dict[str, Any] | None = None,
    **executor_options: Any,
) -> SimulationResult:
    """Run (or finish) a study with the executor chosen now; the study code never changes.

    Args:
        config: the study (from :func:`simulation_config`).
        executor: ``"inline"``, ``"local"``, ``"mock"``, ``"slurm"`` or an executor object.
        workers: parallel slots for ``local``/``mock`` (default: CPU count).
        resume: ``"auto"`` (finish existing results of the same study, else start),
            ``"never"`` (refuse an existing directory), ``"must"`` (refuse a new one).
        retry_failed: re-run tasks recorded as failed (default: True when resuming).
        force: move the results of a *changed* study aside and start again.
        progress: show a progress line (default: when stderr is a terminal).
        shard_size: tasks per shard at first run (default: about 4 shards per slot).
        max_attempts: times a dying worker's shard is started again within this run.
        lock_stale_after: seconds without a heartbeat after which another host may break this
            driver's lock (see :mod:`bayesim_hpc.locking`).
        keep_going: do not stop early when the first tasks all fail the same way (this run
            only; see ``stop_on_systematic_failure`` in :func:`simulation_config`).
        notify: email addresses and webhook URLs told of the end, an early stop, a high failure
            rate or a stall (:mod:`bayesim_hpc.notify`); ``None`` keeps those of the last run,
            ``[]`` clears them. ``notify_options``: ``stall_minutes``, ``failure_rate``,
            ``min_interval_minutes``.
        executor_options: passed to the executor (e.g. ``profile=``, ``time_min=`` for Slurm).

    Returns a :class:`SimulationResult`. Raises :class:`ErrorBudgetExceeded` when more
    than ``max_errors`` tasks failed (after writing the summary of what finished).
    """
    if not isinstance(config, Study):
        raise ConfigError("config", config, "is not a Study", "build it with simulation_config(...)")
    emit = emit or _stderr
    tmp = None
    if config.result_path is None:
        tmp = tempfile.TemporaryDirectory(prefix="bayesim-")
        rd = ResultDir(tmp.name)
    else:
        rd = ResultDir(config.result_path)
    check_text_option("result_path", rd.path)
    for name, value in executor_options.items():
        check_text_option(name, value)
    notify_settings = resolve_notify(rd, notify, notify_options)
    executor_options = with_slurm_mail(notify_settings, executor, executor_options)
    ex = make_executor(executor, workers=workers, max_attempts=max_attempts, **executor_options)
    for line in size_warnings(config):
        emit(line)
    created = not rd.path.exists()
    rd.path.mkdir(parents=True, exist_ok=True)
    check_trusted(rd.path)  # workers will unpickle study.pkl from here
    lock = DirLock(rd.driver_lock, purpose="driver", stale_after=lock_stale_after, wait_foreign=True, notify=emit)
    with _DriverSignals(lock):
        try:
            lock.acquire()
            try:
                result = _drive(config, rd, ex, lock, tmp, emit, resume=resume, retry_failed=retry_failed,
                                force=force, progress=progress, shard_size=shard_size, max_attempts=max_attempts,
                                reduce=reduce, keep_going=keep_going, notify=notify_settings)
            finally:
                lock.release()
            if created and result.dry_run:  # a dry run leaves nothing behind, not even the directory
                shutil.rmtree(rd.path, ignore_errors=True)
            return result
        except DriverInterrupted as exc:  # arrived outside the run proper (taking the lock, reporting)
            if lock.lost.is_set():
                raise LockLostError(lock.lost_message()) from None
            raise DriverStopped(f"stopped by {exc}; finish with: bayesim-hpc resume {rd.path}") from None


def _drive(config: Study, rd: ResultDir, ex: Any, lock: DirLock, tmp: Any,
           emit: Callable[[str], None], *, resume: str, retry_failed: bool | None, force: bool,
           progress: bool | None, shard_size: int | None, max_attempts: int, reduce: bool,
           keep_going: bool = False, notify: NotifySettings | None = None) -> SimulationResult:
    """The body of :func:`run_simulation`, under the driver lock."""
    manifest = Manifest(rd, guard=lock)
    run_recorded = False
    notifier: Notifier | None = None
    try:
        size = shard_size or config.shard_size or default_shard_size(config.n_tasks, ex.parallelism)
        # an executor that sizes shards by cost (Slurm's time-aware plan) does so for a new study,
        # unless a shard size was given
        own = getattr(ex, "initial_shards", None) if not (shard_size or config.shard_size) else None
        is_new, config = prepare_result_dir(config, rd, resume, force, size, emit,
                                            (lambda: own(config, size)) if own is not None else None)
        rd.set_runtime({**runtime_settings(config, keep_going), **({"notify": notify.to_runtime()} if notify else {})})
        if retry_failed is None:
            retry_failed = not is_new
        todo, prog = missing_shards(rd, config, retry_failed)
        for path, why in prog.corrupt:
            emit(f"damaged segment {path.relative_to(rd.path)} ignored; its tasks will run again ({why})")
        for path, why in prog.foreign + prog.unreadable:
            emit(f"segment {path.relative_to(rd.path)} ignored; its tasks will run again ({why})")
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        manifest.update(lambda d: d.setdefault("runs", []).append(
            {"run_id": run_id, "executor": ex.name, "started": time.time(), "shards": len(todo),
             "driver_pid": _os_pid(), "driver_host": socket.gethostname()}))
        run_recorded = True
        done0 = prog.n_success + (0 if retry_failed else prog.n_failed)
        show = sys.stderr.isatty() if progress is None else progress
        bar = ProgressLine(config.n_tasks, done0, 0 if retry_failed else prog.n_failed, enabled=show)
        notifier = start_notifier(notify, rd, config.n_tasks, done0, 0 if retry_failed else prog.n_failed, emit,
                                  bar, detached=bool(getattr(ex, "detach", False)), dry_run=bool(
                                      getattr(ex, "dry_run", False)))
        if todo:
            emit(f"bayesim-hpc: {config.n_tasks} tasks in {len(rd.read_frozen().shards)} shards; "
                 f"{config.n_tasks - done0} to run in {len(todo)} shard(s) on executor '{ex.name}' ({rd.path})")
        folded = FoldingEmit(emit)  # warnings and failures of all workers, folded by kind
        ctx = RunContext(rd=rd, study=config, manifest=manifest, shard_ids=todo, retry_failed=retry_failed,
                         emit=folded, progress=bar, run_id=run_id, max_attempts=max_attempts,
                         failed_before=0 if retry_failed else prog.n_failed)
        try:
            with _interrupt_once():
                outcome = ex.run(ctx) if todo else RunOutcome()
        except KeyboardInterrupt:
            bar.close()
            manifest.update(lambda d: d["runs"][-1].update(ended=time.time(), interrupted="SIGINT"))
            kept = scan_progress(rd, config.n_tasks)
            where = ("the jobs already submitted keep running; " if ex.name == "slurm" else "")
            raise Interrupted(
                f"interrupted: {kept.n_success} succeeded and {kept.n_failed} failed task(s) of {config.n_tasks} "
                f"are kept in {rd.path}; {where}finish with: bayesim-hpc resume {rd.path}") from None
        bar.close()
        folded.close()
        manifest.update(lambda d: d["runs"][-1].update(ended=time.time(), completed=len(outcome.completed),
                                                        unfinished=len(outcome.unfinished), detached=outcome.detached))
        if outcome.dry_run:
            if is_new:  # leave no frozen study behind: the real run may define it differently
                _remove_new_study(rd)
            emit("dry run: nothing was submitted")
            return SimulationResult(rd.path, None, _tmpdir=tmp, dry_run=True)
        if outcome.detached:
            emit(f"submitted; the driver is leaving. Check with: bayesim-hpc status {rd.path}")
            return SimulationResult(rd.path, None, _tmpdir=tmp)
        if outcome.storage_error:
            if notifier is not None:
                notifier.event("stopped", "storage error", f"{outcome.storage_error}; free space, then: "
                               f"bayesim-hpc resume {rd.path}")
            raise StorageFullError(
                28, f"{outcome.storage_error}. Workers were stopped; finished tasks are kept. Free space in "
                    f"{rd.path}, then finish with: bayesim-hpc resume {rd.path}")
        lock.check()
        red = reduce_results(rd.path) if reduce else None
    except DriverInterrupted as exc:
        if lock.lost.is_set():
            raise LockLostError(lock.lost_message()) from None
        why = str(exc)
        if run_recorded:
            try:
                manifest.update(lambda d: d["runs"][-1].update(ended=time.time(), interrupted=why))
            except Exception:  # the record is a courtesy; the stop must go on
                pass
        if notifier is not None:
            notifier.event("stopped", f"stopped by {why}", f"the driver was stopped by {why}; finish with: "
                           f"bayesim-hpc resume {rd.path}")
        raise DriverStopped(f"stopped by {exc}: workers were told to flush and stop, finished tasks are kept, the "
                            f"lock is released. Finish with: bayesim-hpc resume {rd.path}") from None
    finally:
        if notifier is not None:
            notifier.close()
    result = SimulationResult(rd.path, red, _tmpdir=tmp)
    systematic = _systematic_failure(rd, red, config.max_errors) if outcome.budget_exceeded else None
    if notifier is not None and not outcome.detached and not outcome.dry_run:
        notifier.run_ended(red, outcome.budget_exceeded, systematic)
        notifier.close()
    if red is not None:
        _report_end(emit, rd, red, outcome.unfinished, advise=systematic is None)
    if outcome.budget_exceeded:
        if systematic:
            raise SystematicFailureError(systematic)
        raise ErrorBudgetExceeded(
            f"stopped: more than max_errors={config.max_errors} tasks failed "
            f"({red.n_failed if red else '?'} failed so far). See the error columns of {rd.summary} "
            f"or `bayesim-hpc status {rd.path}`; fix the cause, then `bayesim-hpc resume {rd.path}`."
        )
    return result


#: After a Ctrl-C, keep SIGINT ignored (the command line sets this: it is about to report and
#: exit, and a second Ctrl-C must not break that). In Python sessions the handler is restored.
IGNORE_SIGINT_AFTER_INTERRUPT = False


@contextlib.contextmanager
def _interrupt_once() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt once; a second one while the first is being cleaned up
    (workers stopped, segments flushed) is ignored instead of breaking the clean-up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    hit = []

    def first(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        hit.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        if not hit or not IGNORE_SIGINT_AFTER_INTERRUPT:
            signal.signal(signal.SIGINT, previous)


def _os_pid() -> int:
    import os

    return os.getpid()


def _remove_new_study(rd: ResultDir) -> None:
    """Undo what preparing a new result directory wrote (after a dry run)."""
    import shutil

    for p in (rd.study_json, rd.study_pkl, rd.manifest):
        p.unlink(missing_ok=True)
    for d in (rd.shards_dir, rd.logs):
        shutil.rmtree(d, ignore_errors=True)


def resume_simulation(path: str | Path, executor: str | Any | None = None, **kwargs: Any) -> SimulationResult:
    """Finish the study in ``path``: run only its missing and failed tasks.

    The study is read back from the directory; ``executor`` defaults to the one the last
    run used.
    """
    rd = ResultDir(path)
    if not rd.exists():
        raise BayesimError(f"nothing to resume: {path} holds no study (no study.json)")
    study = rd.load_study()
    if str(study.result_path) != str(rd.path):
        object.__setattr__(study, "result_path", rd.path)  # the directory was moved; the study is the same
    if executor is None:
        runs = Manifest(rd).read().get("runs", [])
        executor = runs[-1]["executor"] if runs else "inline"
    kwargs.setdefault("resume", "must")
    return run_simulation(study, executor, **kwargs)


def run_adaptive(config: Study, executor: str | Any = "inline", *, target_mcse: dict[str, float],
                 max_replicates: int, max_rounds: int = 20, max_growth: float = 4.0,
                 emit: Callable[[str], None] | None = None, **run_options: Any) -> SimulationResult:
    """Run ``config``, then add replicates in rounds until every cell meets ``target_mcse``
    (per-cell MCSE, e.g. ``{"coverage": 0.01, "bias": 0.02}``) or has ``max_replicates``.

    See :mod:`bayesim_hpc.adaptive` and docs/growing-a-study.md. ``run_options`` go to
    :func:`run_simulation`. Each round is an extension of the frozen study, so a driver killed
    in a round is finished by ``resume`` and the same call again goes on from there.

    Example:
        >>> result = run_adaptive(config, "local", target_mcse={"coverage": 0.01}, max_replicates=2000)  # doctest: +SKIP
    """
    import pandas as pd

    from .adaptive import cell_distances, check_targets, grow_cells, record_targets

    targets = check_targets(target_mcse, max_replicates)
    if config.n_replicates > max_replicates:
        raise ConfigError("max_replicates", max_replicates, f"is below n_replicates={config.n_replicates}",
                          "start with fewer replicates or raise the cap")
    if config.result_path is None:
        raise ConfigError("result_path", None, "is needed for adaptive rounds", "give result_path=...")
    if run_options.get("detach") or run_options.get("dry_run"):
        raise ConfigError("detach" if run_options.get("detach") else "dry_run", True,
                          "leaves no results to measure between rounds", "run adaptive rounds with the driver attached")
    emit = emit or _stderr
    result = run_simulation(config, executor, emit=emit, **run_options)
    rd = ResultDir(config.result_path)
    record_targets(rd, targets, max_replicates)
    for round_no in range(1, max_rounds + 1):
        raw = rd.read_frozen().raw
        dist = cell_distances(raw, pd.read_csv(rd.cells), targets, max_replicates, max_growth)
        grow = {c.cell: c.wanted for c in dist if not c.met and c.wanted > c.replicates}
        if not grow:
            met = sum(c.met for c in dist)
            emit(f"bayesim-hpc adaptive: {met} of {len(dist)} cell(s) meet the targets"
                 + (f"; {len(dist) - met} at the cap of {max_replicates} replicates" if met < len(dist) else ""))
            break
        lock = DirLock(rd.driver_lock, purpose="driver")
        lock.acquire()
        try:
            n_new = sum(v - c.replicates for c in dist for k, v in grow.items() if k == c.cell)
            size = config.shard_size or int(raw.get("shard_size") or default_shard_size(n_new, 1))
            grow_cells(rd, grow, round_no, dist, size)
        finally:
            lock.release()
        emit(f"bayesim-hpc adaptive round {round_no}: more replicates for {len(grow)} cell(s): "
             + ", ".join(f"{k} -> {v}" for k, v in list(grow.items())[:6]) + (" ..." if len(grow) > 6 else ""))
        opts = {k: v for k, v in run_options.items() if k not in ("resume", "force", "shard_size")}
        opts.setdefault("retry_failed", False)  # a round runs its new tasks; `resume` retries failures
        result = resume_simulation(rd.path, executor, emit=emit, **opts)
    return result
