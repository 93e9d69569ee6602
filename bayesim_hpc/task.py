"""Run one task: generate its dataset, fit, compute metrics, keep what retention names.

A task never raises: whatever its generator, fitter or metrics do, the result is a
:class:`TaskRecord` with ``status`` ``"success"`` or ``"failed"`` (with the error's type,
message, stage and traceback tail).

Example:
    >>> rec = run_task(study, study.space.ref(0))      # doctest: +SKIP
    >>> rec.status, rec.columns["bias__slope"]           # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
import traceback
import warnings as pywarnings
from typing import Any

import numpy as np

from .config import Study
from .deprecation import renamed
from .data import SimData, TaskContext, coerce_sim_data, columns_of
from .errors import TaskError
from .fitters.base import DIAGNOSTIC_COLUMNS, FitResult
from .grid import TaskRef
from .metrics import metric_columns
from .names import DIAGNOSTIC_RENAMES
from .records import TaskRecord
from .seeding import data_rng, data_seed_sequence, fit_seed_sequence, int_seed

__all__ = ["TaskRecord", "run_task", "task_context"]

_TRACEBACK_TAIL = 4000  # characters of traceback kept for a failed task


def task_context(study: Study, ref: TaskRef, attempt: int = 1, shard_id: int = -1) -> TaskContext:
    return TaskContext(
        task_id=ref.task_id,
        task_index=ref.index,
        data_idx=ref.data_idx,
        fit_idx=ref.fit_idx,
        rep_idx=ref.rep_idx,
        data_seed=int_seed(data_seed_sequence(study.seed, ref.data_idx, ref.rep_idx)),
        fit_seed=int_seed(fit_seed_sequence(study.seed, ref.data_idx, ref.fit_idx, ref.rep_idx)),
        attempt=attempt,
        shard_id=shard_id,
    )


def _check_draws(fit: FitResult, data: SimData) -> None:
    missing = [p for p in data.vars_of_interest if p not in fit.draws]
    if missing:
        raise TaskError(f"the fit has no draws for variables of interest {missing}; it has {sorted(fit.draws)}")
    bad = [p for p in data.vars_of_interest if not np.all(np.isfinite(fit.draws[p]))]
    if bad:
        raise FloatingPointError(f"non-finite draws (NaN or inf) for {bad}")


def _core_columns(fit: FitResult, data: SimData) -> dict[str, float]:
    """Columns the per-cell aggregates need whatever metrics were chosen: the posterior mean
    (``estimate__p``), the posterior SD (``se__p``) and the true value (``truth__p``)."""
    out = {}
    for p in data.vars_of_interest:
        if p in fit.draws and fit.draws[p].ndim == 2:
            out[f"estimate__{p}"] = float(fit.draws[p].mean())
            out[f"se__{p}"] = float(fit.draws[p].std(ddof=1)) if fit.draws[p].size > 1 else float("nan")
            if p in data.true_params:
                out[f"truth__{p}"] = float(data.true_params[p])
    return out


def _diagnostic_columns(fit: FitResult) -> dict[str, float]:
    out = {k: math.nan for k in DIAGNOSTIC_COLUMNS}
    for k, v in fit.diagnostics.items():
        k = str(k)
        if k in DIAGNOSTIC_RENAMES:  # a fitter written before 0.3 (run_task warns, outside the task)
            k = DIAGNOSTIC_RENAMES[k]
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue  # non-scalar diagnostics are not summary columns
    return out


def _artifacts(study: Study, fit: FitResult | None, data: SimData | None, warns: list[str]) -> dict[str, Any]:
    keep = set(study.retain)
    out: dict[str, Any] = {}
    if fit is not None:
        if "draws" in keep or ("draws_if_warned" in keep and warns):
            out["draws"] = fit.draws
        if "predictions" in keep and fit.predictions:
            out["predictions"] = {k: np.asarray(v) for k, v in fit.predictions.items()}
        if "fit" in keep and fit.fit is not None:
            try:
                import cloudpickle

                out["fit"] = cloudpickle.dumps(fit.fit)
            except Exception as exc:  # an unpicklable fit object must not fail the task
                warns.append(f"fit object not retained: {type(exc).__name__}: {exc}")
        if "diagnostics" in keep:
            out["diagnostics"] = dict(fit.diagnostics)
    if data is not None and "data" in keep:
        out["data"] = {
            "train": columns_of(data.train),
            "test": columns_of(data.test),
            "true_params": dict(data.true_params),
        }
    if "warnings" in keep and warns:
        out["warnings"] = list(warns)
    return out


def _missing_key_hint(exc: Exception, stage: str, study: Study, ref: TaskRef) -> str:
    """For a KeyError of a grid name in the generator or fitter: the keys the spec does have."""
    if not isinstance(exc, KeyError) or stage not in ("generate", "fit") or not exc.args:
        return ""
    spec = study.data_spec(ref.data_idx) if stage == "generate" else study.fit_spec(ref.fit_idx)
    if exc.args[0] in spec:
        return ""
    name = "data_spec (a row of data_grid)" if stage == "generate" else "fit_spec (a row of fit_grid)"
    return f" (not in {name}, which has: {', '.join(map(repr, spec))})"


def _shape_of(values: Any) -> str:
    if not isinstance(values, dict):
        return f"a {type(values).__name__}, not a dict"
    bad = {k: getattr(v, "shape", type(v).__name__) for k, v in values.items() if getattr(v, "size", 1) != 1}
    return f"non-scalar values {bad}" if bad else "values that are not numbers"


def run_task(study: Study, ref: TaskRef, attempt: int = 1, shard_id: int = -1) -> TaskRecord:
    """Run one task to a :class:`TaskRecord`; never raises for the task's own errors."""
    ctx = task_context(study, ref, attempt, shard_id)
    rec = TaskRecord(index=ref.index, task_id=ref.task_id, status="failed", attempt=attempt)
    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    stage = "generate"
    data: SimData | None = None
    fit: FitResult | None = None
    warns: list[str] = []
    with pywarnings.catch_warnings(record=True) as caught:
        pywarnings.simplefilter("always")
        try:
            t0 = time.perf_counter()
            rng = data_rng(study.seed, ref.data_idx, ref.rep_idx)
            data = coerce_sim_data(study.data_generator(study.data_spec(ref.data_idx), rng, ctx))
            timing["timing_generate"] = time.perf_counter() - t0
            stage = "fit"
            t0 = time.perf_counter()
            fit = study.fitter.fit(data, study.fit_spec(ref.fit_idx), ctx.fit_seed, ctx)
            if not isinstance(fit, FitResult):
                raise TaskError(f"fitter.fit returned {type(fit).__name__}, expected FitResult")
            timing["timing_fit"] = time.perf_counter() - t0
            for k, v in fit.timing.items():  # the fitter's own breakdown, e.g. timing_fit_sampling
                timing[f"timing_fit_{k}"] = float(v)
            warns.extend(str(w) for w in fit.warnings)
            _check_draws(fit, data)
            stage = "metrics"
            t0 = time.perf_counter()
            cols: dict[str, float] = {}
            for m in study.metrics:
                values = m.compute(fit, data)
                try:
                    cols.update(metric_columns(m.name, values))
                except (TypeError, ValueError, AttributeError) as exc:
                    raise TaskError(
                        f"metric {m.name!r} ({type(m).__name__}) returned {_shape_of(values)}: a metric must "
                        f"return a dict of scalars, e.g. {{'value': 0.3}} ({exc})") from None
            cols.update(_core_columns(fit, data))
            timing["timing_metrics"] = time.perf_counter() - t0
            if "diagnostics" in study.retain:
                cols.update(_diagnostic_columns(fit))
            rec.columns = cols
            rec.status = "success"
        except Exception as exc:  # a task's failure is data, not a crash
            rec.error_type = type(exc).__name__
            rec.error_message = (str(exc) + _missing_key_hint(exc, stage, study, ref))[:2000]
            rec.error_stage = stage
            rec.error_traceback = traceback.format_exc()[-_TRACEBACK_TAIL:]
        warns.extend(f"{w.category.__name__}: {w.message}" for w in caught)
    for old in set(fit.diagnostics if fit is not None else ()) & set(DIAGNOSTIC_RENAMES):
        renamed(f"FitResult.diagnostics[{old!r}]", f"FitResult.diagnostics[{DIAGNOSTIC_RENAMES[old]!r}]",
                where=f"fitter {type(study.fitter).__name__}")
    timing["timing_total"] = time.perf_counter() - t_start
    rec.columns.update(timing)
    rec.warnings = list(dict.fromkeys(warns))  # de-duplicated, order kept
    if "warnings" in study.retain:
        rec.columns["n_warnings"] = float(len(rec.warnings))
    rec.artifacts = _artifacts(study, fit, data, rec.warnings)
    return rec

