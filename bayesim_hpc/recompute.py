"""Recompute metrics from retained draws, without refitting, and reduce again.

``bayesim-hpc remetric DIR`` recomputes the frozen study's metrics for every successful
task: after an extension added a metric (earlier tasks lack it), or after a change of the
code that computes per-cell measures. ``bayesim-hpc remetric DIR STUDY_FILE`` first takes
the metrics of the study file (new metrics, a changed definition or probability level);
everything else in the file must be the frozen study.

Each task's dataset is generated again from its identity seed (exactly as it was) and its
retained draws (and predictions, diagnostics) stand in for the fit. The new rows are written
as new segments of the task's shard with the task's attempt (they win over the old rows,
which ``clean`` may then remove); the task's other columns and artifacts are copied. A
remetric killed midway leaves study.json marked ``remetric_pending``; running it again
finishes it (it is idempotent). Retained ``float32`` draws give metrics of float32 draws.

Example:
    >>> out = remetric("results/my_study")                      # doctest: +SKIP
    >>> out = remetric("results/my_study", load_study_file("study.py"))   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from .config import Study
from .data import coerce_sim_data
from .errors import BayesimError
from .extend import Extension, plan_extension
from .fitters.base import FitResult
from .grid import space_from_raw
from .locking import DirLock
from .metrics import metric_columns
from .reduce import ReduceOutcome, reduce_results, select_winners
from .records import TaskState
from .resultdir import ResultDir
from .seeding import data_rng
from .storage import atomic_write_text, read_rows, read_task_artifacts, write_segment
from .task import TaskRecord, task_context

__all__ = ["remetric", "RemetricRefused"]


class RemetricRefused(BayesimError):
    """The metrics cannot be recomputed (e.g. the draws were not retained)."""


def _set_pending(rd: ResultDir, value: bool) -> None:
    raw = json.loads(rd.study_json.read_text())
    if value:
        raw["remetric_pending"] = True
    else:
        raw.pop("remetric_pending", None)
    atomic_write_text(rd.study_json, json.dumps(raw, indent=1, default=str))


def _artifacts(art: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in art.items() if k != "fit_bytes"}
    if "fit_bytes" in art:
        out["fit"] = art["fit_bytes"]
    return out


def _metric_prefixes(kinds: dict[str, str]) -> tuple[str, ...]:
    return tuple(f"{name}__" for name in kinds)


def remetric(result_dir: str | Path, study: Study | None = None, emit: Callable[[str], None] | None = None,
             block: int = 100) -> ReduceOutcome:
    """Recompute every successful task's metrics from its retained draws; reduce again."""
    emit = emit or (lambda line: print(line, file=sys.stderr, flush=True))
    rd = ResultDir(result_dir)
    if not rd.exists():
        raise BayesimError(f"{result_dir} is not a bayesim-hpc result directory (no study.json)")
    lock = DirLock(rd.driver_lock, purpose="driver")
    lock.acquire()
    try:
        raw = rd.read_frozen().raw
        loaded = rd.load_study()
        old_kinds = dict(raw["metric_kinds"])
        if study is not None:
            same_metrics = dataclasses.replace(study, metrics=loaded.metrics)
            ext = plan_extension(raw, loaded, same_metrics, str(rd.path))
            grows = [w for w in ext.what if not w.startswith("retain")]
            if grows:
                raise RemetricRefused(
                    f"the study file also grows the study ({'; '.join(grows)}); remetric only changes metrics. "
                    f"Run it first with `bayesim-hpc run STUDY_FILE --result-dir {rd.path}`, then remetric.")
            merged = dataclasses.replace(loaded, metrics=tuple(study.metrics), layout=raw.get("layout"),
                                         frozen_in=None)
        else:
            merged = loaded
        space = space_from_raw(raw)
        win = select_winners(rd, space.n_tasks)
        ok = win.state == TaskState.SUCCEEDED
        jobs = _collect(rd, win, ok)
        if not jobs:
            raise RemetricRefused(f"{rd.path} has no successful task to recompute")
        _check_draws(rd, jobs, raw)
        # check the metrics on one task before anything is written
        _recompute(merged, space, jobs[0], rd=rd, kinds=old_kinds, dry=True)
        if study is not None:
            now = {m.name: getattr(m, "kind", "mean") for m in study.metrics}
            what = [f"remetric: metrics {list(old_kinds)} -> {list(now)}"]
            rd.apply_extension(Extension(merged, space, what), shard_size=1)
        else:
            rd.apply_extension(Extension(merged, space, [f"remetric: metrics {list(old_kinds)} recomputed"]),
                               shard_size=1)
        _set_pending(rd, True)
        by_group: dict[tuple[int, int], list[TaskRecord]] = {}
        n = 0
        for job in jobs:
            rec = _recompute(merged, space, job, rd=rd, kinds=old_kinds)
            key = (job["shard"], job["attempt"])
            by_group.setdefault(key, []).append(rec)
            if len(by_group[key]) >= block:
                _flush(rd, key, by_group.pop(key), merged)
            n += 1
        for key, recs in by_group.items():
            _flush(rd, key, recs, merged)
        _set_pending(rd, False)
        emit(f"bayesim-hpc: recomputed the metrics of {n} task(s) from retained draws")
        return reduce_results(rd.path)
    finally:
        lock.release()


def _collect(rd: ResultDir, win: Any, ok: np.ndarray) -> list[dict[str, Any]]:
    jobs = []
    for k, path in enumerate(win.segments):
        tasks, rows_won = win.rows_won(k)
        sel = ok[tasks]
        if not sel.any():
            continue
        rows = read_rows(path)
        for t, r in zip(tasks[sel], rows_won[sel]):
            jobs.append({"index": int(t), "row": int(r), "path": path, "shard": rows.shard_id,
                         "attempt": int(rows.attempts[r]), "task_id": rows.strings["task_id"][r],
                         "numbers": {c: float(v[r]) for c, v in rows.numbers.items() if np.isfinite(v[r])}})
    return jobs


def _check_draws(rd: ResultDir, jobs: list[dict[str, Any]], raw: dict[str, Any]) -> None:
    lacking = []
    by_path: dict[Path, list[str]] = {}
    for j in jobs:
        by_path.setdefault(j["path"], []).append(j["task_id"])
    for path, ids in by_path.items():
        with h5py.File(path, "r", locking=False) as f:
            lacking += [t for t in ids if f"tasks/{t}/draws" not in f]
    if lacking:
        raise RemetricRefused(
            f"{len(lacking)} of {len(jobs)} successful task(s) have no retained draws (e.g. {lacking[0]}): they ran "
            f"with retain={raw.get('retain')} (see the history in `bayesim-hpc status {rd.path}`). Metrics can be "
            "recomputed only from retained draws: retain=['draws'] (or the 'debug' profile; 'draws_if_warned' keeps "
            "only tasks that warned) would have allowed it. Run the study with that retention into a new "
            "directory, or add replicates with it: new tasks keep their draws.")


def _recompute(study: Study, space: Any, job: dict[str, Any], rd: ResultDir, kinds: dict[str, str],
               dry: bool = False) -> TaskRecord:
    ref = space.ref(job["index"])
    art = read_task_artifacts(rd.path / job["path"], job["task_id"])
    ctx = task_context(study, ref, attempt=job["attempt"], shard_id=job["shard"])
    try:
        data = coerce_sim_data(study.data_generator(study.data_spec(ref.data_idx),
                                                    data_rng(study.seed, ref.data_idx, ref.rep_idx), ctx))
        fit = FitResult(draws=art["draws"], predictions=art.get("predictions"),
                        diagnostics=dict(art.get("diagnostics", {})))
        cols: dict[str, float] = {}
        for m in study.metrics:
            cols.update(metric_columns(m.name, m.compute(fit, data)))
    except Exception as exc:
        raise BayesimError(
            f"recomputing the metrics of {job['task_id']} failed: {type(exc).__name__}: {exc}"
            + ("" if dry else f". Fix the metric, then run `bayesim-hpc remetric {rd.path}` again (nothing is lost: "
               "the old rows stay until new ones are written)")) from exc
    old = _metric_prefixes(kinds) + _metric_prefixes(study.metric_kinds())
    keep = {c: v for c, v in job["numbers"].items() if not c.startswith(old)}
    return TaskRecord(index=job["index"], task_id=job["task_id"], status="success", attempt=job["attempt"],
                      columns={**keep, **cols}, artifacts=_artifacts(art))


def _flush(rd: ResultDir, key: tuple[int, int], recs: list[TaskRecord], study: Study) -> None:
    from .worker import _next_seq

    shard, attempt = key
    write_segment(rd.path, shard, attempt, _next_seq(rd, shard, attempt), recs,
                  draws_dtype=study.draws_dtype, compression=study.compression)
