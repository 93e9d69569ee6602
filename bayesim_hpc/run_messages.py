"""What the driver tells the user when a run ends: the counts, and what to do next.

The advice depends on what happened: missing tasks need ``resume``; failed tasks need their
cause looked at (``status``, ``replay``); a run stopped early because every task failed the
same way needs the code fixed, not a resume.
"""

from __future__ import annotations

from typing import Any, Callable

from .resultdir import ResultDir

__all__ = ["report_end", "systematic_failure"]

_STAGE_OWNER = {"generate": "the data generator", "fit": "the fitter (or the model builder)",
                "metrics": "the metrics", "diagnostics": "the fitter's draws"}


def systematic_failure(rd: ResultDir, red: Any, max_errors: int | None) -> str | None:
    """The early-stop message when the run stopped because every task failed the same way."""
    if red is None or not red.n_failed or (max_errors is not None and red.n_failed > max_errors):
        return None  # (over max_errors: the error budget stopped the run)
    from .summary_file import read_summary

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


def report_end(emit: Callable[[str], None], rd: ResultDir, red: Any, unfinished: dict[int, str],
               advise: bool = True) -> None:
    """The end-of-run lines: counts, shards that did not finish and why, and what to do next."""
    msg = (f"bayesim-hpc: {red.n_success} succeeded, {red.n_failed} failed, {red.n_missing} missing "
           f"of {red.n_tasks} tasks; summary in {rd.summary}")
    emit(msg)
    for sid, why in sorted(unfinished.items())[:10]:
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
