"""The driver: ``run_simulation`` and ``resume_simulation``.

The driver takes the result directory's driver lock (one driver at a time), freezes the
study on first use or checks that it has not changed, asks the segments what is missing,
hands the shards with missing tasks to the executor chosen at run time, and reduces.

Example:
    >>> result = run_simulation(config, executor="local", workers=4)   # doctest: +SKIP
    >>> result = resume_simulation("results/my_study")                   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import Study
from .errors import BayesimError, ConfigError, ErrorBudgetExceeded, SystematicFailureError
from .executors import make_executor
from .executors.base import ProgressLine, RunContext, RunOutcome, default_shard_size
from .locking import DirLock
from .manifest import Manifest, scan_progress
from .reduce import reduce_results
from .resultdir import ResultDir, runtime_settings
from .results import SimulationResult

__all__ = ["run_simulation", "resume_simulation", "prepare_result_dir", "missing_shards"]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def prepare_result_dir(study: Study, rd: ResultDir, resume: str, force: bool, shard_size: int,
                       emit: Callable[[str], None] | None = None) -> tuple[bool, Study]:
    """Freeze a new study, or check an existing one and freeze what it adds (an extension).

    Returns (whether the directory was new, the study to run: the frozen one, as extended).
    """
    if resume not in ("auto", "never", "must"):
        raise ConfigError("resume", resume, "is not a resume mode", "use 'auto', 'never' or 'must'")
    if rd.exists():
        if force:
            moved = rd.discard_results()
            _stderr(f"force: previous results moved to {moved}; starting the study afresh")
        elif resume == "never":
            raise BayesimError(
                f"{rd.path} already holds results. Use resume='auto' to finish them, a new result_path, "
                "or force=True to move them aside and start again."
            )
        else:
            return False, _extend_or_check(study, rd, shard_size, emit or _stderr)
    elif resume == "must":
        raise BayesimError(f"nothing to resume: {rd.path} holds no study (no study.json)")
    rd.freeze(study, shard_size)
    return True, study


def _extend_or_check(study: Study, rd: ResultDir, shard_size: int, emit: Callable[[str], None]) -> Study:
    """The frozen study, grown by what ``study`` adds; refuses a changed study (:mod:`.extend`)."""
    from .extend import plan_extension

    frozen = rd.read_frozen()
    if study.frozen_in is not None and study.frozen_in == str(rd.path.resolve()):
        return study  # read back from this directory: it is the frozen study
    if frozen.raw.get("code") is None:  # made by bayesim-hpc 0.1: no extension, only the old comparison
        rd.check_same_study(study)
        return study
    loaded = rd.load_study()
    ext = plan_extension(frozen.raw, loaded, study, str(rd.path))
    if ext.empty:
        return dataclasses.replace(ext.study, result_path=study.result_path)
    rd.apply_extension(ext, shard_size)
    emit(f"bayesim-hpc: the study grew: {'; '.join(ext.what)}")
    return dataclasses.replace(ext.study, result_path=study.result_path)


def missing_shards(rd: ResultDir, study: Study, retry_failed: bool) -> tuple[list[int], Any]:
    """Shards that have tasks without a row (or, with ``retry_failed``, with a failed row)."""
    prog = scan_progress(rd, study.n_tasks)
    out = []
    active = study.space.active_mask()
    for shard in rd.read_frozen().shards:
        idx = study.space.shard_indices(shard)
        st = prog.state[idx[active[idx]]]
        if np.any(st == 0) or (retry_failed and np.any(st == 2)):
            out.append(shard.shard_id)
    return out, prog


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
    keep_going: bool = False,
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
        keep_going: do not stop early when the first tasks all fail the same way (this run
            only; see ``stop_on_systematic_failure`` in :func:`simulation_config`).
        executor_options: passed to the executor (e.g. ``profile=``, ``time_limit=`` for Slurm).

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
    ex = make_executor(executor, workers=workers, max_attempts=max_attempts, **executor_options)
    rd.path.mkdir(parents=True, exist_ok=True)
    lock = DirLock(rd.driver_lock, purpose="driver")
    lock.acquire()
    try:
        size = shard_size or config.shard_size or default_shard_size(config.n_tasks, ex.parallelism)
        is_new, config = prepare_result_dir(config, rd, resume, force, size, emit)
        rd.set_runtime(runtime_settings(config, keep_going))
        if retry_failed is None:
            retry_failed = not is_new
        todo, prog = missing_shards(rd, config, retry_failed)
        for path, why in prog.corrupt:
            emit(f"damaged segment {path.relative_to(rd.path)} ignored; its tasks will run again ({why})")
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        manifest = Manifest(rd)
        manifest.update(lambda d: d.setdefault("runs", []).append(
            {"run_id": run_id, "executor": ex.name, "started": time.time(), "shards": len(todo)}))
        done0 = prog.n_success + (0 if retry_failed else prog.n_failed)
        show = sys.stderr.isatty() if progress is None else progress
        bar = ProgressLine(config.n_tasks, done0, 0 if retry_failed else prog.n_failed, enabled=show)
        if todo:
            emit(f"bayesim-hpc: {config.n_tasks} tasks in {len(rd.read_frozen().shards)} shards; "
                 f"{config.n_tasks - done0} to run in {len(todo)} shard(s) on executor '{ex.name}' ({rd.path})")
        ctx = RunContext(rd=rd, study=config, manifest=manifest, shard_ids=todo, retry_failed=retry_failed,
                         emit=emit, progress=bar, run_id=run_id, max_attempts=max_attempts,
                         failed_before=0 if retry_failed else prog.n_failed)
        outcome = ex.run(ctx) if todo else RunOutcome()
        bar.close()
        manifest.update(lambda d: d["runs"][-1].update(ended=time.time(), completed=len(outcome.completed),
                                                        unfinished=len(outcome.unfinished), detached=outcome.detached))
        if outcome.dry_run:
            if is_new:  # leave no frozen study behind: the real run may define it differently
                _remove_new_study(rd)
            emit("dry run: nothing was submitted")
            return SimulationResult(rd.path, None, _tmpdir=tmp)
        if outcome.detached:
            emit(f"submitted; the driver is leaving. Check with: bayesim-hpc status {rd.path}")
            return SimulationResult(rd.path, None, _tmpdir=tmp)
        red = reduce_results(rd.path) if reduce else None
    finally:
        lock.release()
    result = SimulationResult(rd.path, red, _tmpdir=tmp)
    systematic = _systematic_failure(rd, red, config.max_errors) if outcome.budget_exceeded else None
    if red is not None:
        _report_end(emit, rd, red, outcome, advise=systematic is None)
    if outcome.budget_exceeded:
        if systematic:
            raise SystematicFailureError(systematic)
        raise ErrorBudgetExceeded(
            f"stopped: more than max_errors={config.max_errors} tasks failed "
            f"({red.n_failed if red else '?'} failed so far). See the error columns of {rd.summary} "
            f"or `bayesim-hpc status {rd.path}`; fix the cause, then `bayesim-hpc resume {rd.path}`."
        )
    return result


_STAGE_OWNER = {"generate": "the data generator", "fit": "the fitter (or the model builder)",
                "metrics": "the metrics", "diagnostics": "the fitter's draws"}


def _systematic_failure(rd: ResultDir, red: Any, max_errors: int | None) -> str | None:
    """The early-stop message when the run stopped because every task failed the same way."""
    if red is None or not red.n_failed or (max_errors is not None and red.n_failed > max_errors):
        return None  # (over max_errors: the error budget stopped the run)
    from .reduce import read_summary

    s = read_summary(rd.summary, columns=["task_id", "status", "error_type", "error_stage", "error_message"])
    failed = s[s["status"] == "failed"]
    kinds = failed.groupby(["error_stage", "error_type"]).size().sort_values(ascending=False)
    (stage, etype), n = kinds.index[0], int(kinds.iloc[0])
    first = failed[(failed["error_stage"] == stage) & (failed["error_type"] == etype)].iloc[0]
    message = (first["error_message"] or "").strip().splitlines()
    return (f"stopped early: the first {n} task(s) all failed in {stage} with {etype}: "
            f"{message[-1] if message else ''}\n"
            f"  This is a bug, not bad luck: resume cannot fix code. See one task fail with its traceback:\n"
            f"    bayesim-hpc replay {rd.path} {first['task_id']}\n"
            f"  Fix {_STAGE_OWNER.get(stage, 'the code')}, then run the study file again "
            + ("with --force (nothing succeeded, so nothing is lost)" if not red.n_success else
               f"into a new result directory (or with --force, which moves the {red.n_success} finished tasks aside)")
            + ". To run every task anyway: --keep-going "
            "(Python: keep_going=True, or stop_on_systematic_failure=None in simulation_config).")


def _remove_new_study(rd: ResultDir) -> None:
    """Undo what preparing a new result directory wrote (after a dry run)."""
    import shutil

    for p in (rd.study_json, rd.study_pkl, rd.manifest):
        p.unlink(missing_ok=True)
    for d in (rd.shards_dir, rd.logs):
        shutil.rmtree(d, ignore_errors=True)


def _report_end(emit: Callable[[str], None], rd: ResultDir, red: Any, outcome: RunOutcome, advise: bool = True) -> None:
    msg = (f"bayesim-hpc: {red.n_success} succeeded, {red.n_failed} failed, {red.n_missing} missing "
           f"of {red.n_tasks} tasks; summary in {rd.summary}")
    emit(msg)
    for sid, why in sorted(outcome.unfinished.items())[:10]:
        emit(f"  shard {sid}: {why}")
    if not advise:
        return
    if red.n_failed:
        emit(f"  failed tasks, with their errors: bayesim-hpc status {rd.path}; one with its traceback: "
             f"bayesim-hpc replay {rd.path} TASK_ID")
    if red.n_missing:
        emit(f"  to finish: bayesim-hpc resume {rd.path}    (Python: resume_simulation({str(rd.path)!r}))")
    elif red.n_failed:
        emit(f"  resume re-runs failed tasks ({'bayesim-hpc resume ' + str(rd.path)}): that helps when the cause "
             "was outside the code (a lost node, memory, a time limit); a bug needs the code fixed first")


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
