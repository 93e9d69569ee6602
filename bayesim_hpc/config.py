"""The study definition: :func:`simulation_config` validates eagerly and returns a :class:`Study`.

Example:
    >>> from bayesim_hpc import simulation_config, MockFitter, rmse_metric, bias_metric
    >>> def gen(spec, rng, ctx):
    ...     x = rng.normal(size=spec["n"])
    ...     y = 1 + 2 * x + rng.normal(scale=spec["sigma"], size=spec["n"])
    ...     return {"train": {"x": x, "y": y}, "response": "y",
    ...             "true_params": {"intercept": 1, "slope": 2, "sigma": spec["sigma"]}}
    >>> config = simulation_config(data_grid={"n": [100], "sigma": [1.0]},
    ...                            fit_grid={"model": ["linear"]}, data_generator=gen,
    ...                            fitter=MockFitter(), metrics=[rmse_metric(), bias_metric()],
    ...                            n_replicates=20, seed=42)
    >>> config.n_tasks
    20
"""

from __future__ import annotations

import inspect
import numbers
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .deprecation import renamed
from .errors import ConfigError
from .fingerprint import fingerprint_parts
from .grid import TaskSpace, expand_grid
from .retention import resolve_retention

__all__ = ["Study", "simulation_config", "fingerprint_parts"]

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_UNSET: Any = object()


@dataclass(frozen=True, eq=False)
class Study:
    """A validated, immutable study definition. Build it with :func:`simulation_config`."""

    data_grid: pd.DataFrame
    fit_grid: pd.DataFrame
    data_generator: Callable[..., Any]
    fitter: Any
    metrics: tuple[Any, ...]
    n_replicates: int
    seed: int
    retain: tuple[str, ...]
    result_path: Path | None = None
    #: a worker writes a segment after this many tasks (or after a minute, or when told to stop)
    tasks_per_segment: int = 100
    max_errors: int | None = None
    task_grid: pd.DataFrame | None = None
    shard_size: int | None = None
    stop_on_systematic_failure: int | None = 10
    draws_dtype: str = "float64"
    compression: str | None = None
    study_file: str | None = field(default=None, compare=False)
    #: the result directory this study was read back from (``ResultDir.load_study``), else None
    frozen_in: str | None = field(default=None, compare=False, repr=False)
    #: the frozen task layout of a study that grew (``study.json`` "layout"), else None
    layout: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @cached_property
    def space(self) -> TaskSpace:
        if self.layout is not None:
            return TaskSpace.from_layout(self.layout)
        return TaskSpace.from_grids(self.data_grid, self.fit_grid, self.n_replicates, self.task_grid)

    @property
    def n_tasks(self) -> int:
        return self.space.n_tasks

    # the old names of tasks_per_segment (before 0.3), kept for one release
    @property
    def chunk_size(self) -> int:
        renamed("Study.chunk_size", "Study.tasks_per_segment", where="bayesim_hpc")
        return self.tasks_per_segment

    @property
    def checkpoint_every(self) -> int:
        renamed("Study.checkpoint_every", "Study.tasks_per_segment", where="bayesim_hpc")
        return self.tasks_per_segment

    @property
    def flush_every(self) -> int:
        renamed("Study.flush_every", "Study.tasks_per_segment", where="bayesim_hpc")
        return self.tasks_per_segment

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle, also a study frozen before 0.3 (``chunk_size`` and ``checkpoint_every``)."""
        state = dict(state)
        if "tasks_per_segment" not in state:
            old = [state.pop(k) for k in ("chunk_size", "checkpoint_every") if k in state]
            state["tasks_per_segment"] = min(old) if old else 100
        self.__dict__.update(state)

    @cached_property
    def _columns(self) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
        """Each grid column as a list of plain Python values (``tolist`` keeps each column's type)."""
        return _plain_columns(self.data_grid), _plain_columns(self.fit_grid)

    def data_spec(self, d: int) -> dict[str, Any]:
        """Row ``d`` (0-based) of the data grid as a new plain dict; each value keeps its column's
        type: an int column gives Python ``int``, a float column ``float``, and so on.

        >>> from bayesim_hpc import MockFitter, bias_metric
        >>> simulation_config(data_grid={"n": [50], "sigma": [0.5]}, fit_grid={"m": ["a"]},
        ...     data_generator=lambda s, r, c: None, fitter=MockFitter(), metrics=[bias_metric()],
        ...     seed=1).data_spec(0)
        {'n': 50, 'sigma': 0.5}
        """
        return {k: v[d] for k, v in self._columns[0].items()}

    def fit_spec(self, f: int) -> dict[str, Any]:
        """Row ``f`` (0-based) of the fit grid as a new plain dict, types kept as in :meth:`data_spec`."""
        return {k: v[f] for k, v in self._columns[1].items()}

    def cell_label(self, d: int, f: int) -> str:
        """A cell's grid values, as a person reads them: ``n=50, sigma=0.5 | model=linear``."""
        data = ", ".join(f"{k}={v}" for k, v in self.data_spec(d).items())
        fit = ", ".join(f"{k}={v}" for k, v in self.fit_spec(f).items())
        return f"{data} | {fit}"

    def metric_kinds(self) -> dict[str, str]:
        return {m.name: getattr(m, "kind", "mean") for m in self.metrics}

    def replace(self, **changes: Any) -> "Study":
        """A copy with some fields changed, validated again."""
        current = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("frozen_in", "layout")}
        current["retain"] = list(current["retain"])
        current["metrics"] = list(current["metrics"])
        if any(k in changes for k in _OLD_TASKS_PER_SEGMENT) and "tasks_per_segment" not in changes:
            del current["tasks_per_segment"]  # an old name of it is changed
        current.update(changes)
        return simulation_config(**current)


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def _plain_columns(df: pd.DataFrame) -> dict[str, list[Any]]:
    """Column-wise, never row-wise: ``df.iloc[i]`` of mixed int/float columns is one float Series."""
    out = {}
    for col in df.columns:
        values = df[col].tolist()  # numeric and bool columns come back as Python int/float/bool
        out[str(col)] = [_plain(v) for v in values] if df[col].dtype == object else values
    return out


# --- validation ------------------------------------------------------------------------
def _check_grid(name: str, grid: Any) -> pd.DataFrame:
    if grid is None:
        raise ConfigError(name, grid, "is required", f"pass a pandas DataFrame or a dict of lists, e.g. {name}={{'n': [100]}}")
    if not isinstance(grid, (pd.DataFrame, Mapping)):
        raise ConfigError(name, grid, f"must be a DataFrame or a dict of lists, not {type(grid).__name__}",
                          f"e.g. {name}={{'n': [100, 500]}}")
    if isinstance(grid, Mapping):
        for k, v in grid.items():
            if isinstance(v, (list, tuple, np.ndarray, pd.Series)) and len(v) == 0:
                raise ConfigError(f"{name}[{k!r}]", v, "is empty", "give at least one value")
    df = expand_grid(grid)
    if len(df) == 0 or len(df.columns) == 0:
        raise ConfigError(name, grid, "has no rows or no columns", "give at least one column with one value")
    seen = set()
    for col in df.columns:
        if not isinstance(col, str) or not _NAME_RE.match(col) or "__" in col:
            raise ConfigError(f"{name} column", col, "is not a valid column name",
                              "use names of letters, digits and single underscores, starting with a letter")
        seen.add(col)
        for v in df[col]:
            if not isinstance(_plain(v), (str, bool, numbers.Number)) or v is None:
                raise ConfigError(f"{name}[{col!r}]", v, "holds a value that is not a scalar",
                                  "use numbers, strings or booleans; put larger objects in the generator")
    if df.duplicated().any():
        first = int(np.flatnonzero(df.duplicated().to_numpy())[0])
        raise ConfigError(name, df.iloc[first].to_dict(), f"row {first + 1} repeats an earlier row",
                          "remove duplicate rows; use n_replicates for repetitions")
    return df


def _check_int(name: str, value: Any, minimum: int, allow_none: bool = False, example: str = "") -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(name, value, "must be an integer", f"pass an integer >= {minimum}{example}")
    if value < minimum:
        raise ConfigError(name, value, f"must be >= {minimum}", f"pass an integer >= {minimum}{example}")
    return int(value)


def _check_callable_arity(name: str, fn: Any, n: int, signature: str) -> None:
    if not callable(fn):
        raise ConfigError(name, fn, "is not callable", f"pass a function {signature}")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    params = list(sig.parameters.values())
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if len(positional) < n or len(required) > n:
        raise ConfigError(name, fn, f"takes {len(positional)} positional argument(s), it is called with {n}",
                          f"define it as {signature}")


def _check_task_grid(task_grid: Any, nd: int, nf: int) -> pd.DataFrame | None:
    if task_grid is None:
        return None
    if not isinstance(task_grid, pd.DataFrame) or not {"data_idx", "fit_idx"} <= set(task_grid.columns):
        raise ConfigError("task_grid", task_grid, "must be a DataFrame with columns data_idx and fit_idx",
                          "list the (data row, fit row) pairs to run, 1-based, e.g. pd.DataFrame({'data_idx': [1, 2], 'fit_idx': [1, 1]})")
    tg = task_grid[["data_idx", "fit_idx"]].reset_index(drop=True)
    for col, n in (("data_idx", nd), ("fit_idx", nf)):
        vals = tg[col].to_numpy()
        if not np.issubdtype(vals.dtype, np.integer) or vals.min() < 1 or vals.max() > n:
            raise ConfigError(f"task_grid[{col!r}]", list(vals[:5]), f"must hold integers from 1 to {n}",
                              "use 1-based row numbers of the grid")
    if tg.duplicated().any() or len(tg) == 0:
        raise ConfigError("task_grid", task_grid, "is empty or repeats a (data_idx, fit_idx) pair", "list each pair once")
    return tg


_OLD_TASKS_PER_SEGMENT = ("chunk_size", "checkpoint_every", "max_in_memory")


def _tasks_per_segment(value: Any, old_names: dict[str, Any]) -> int:
    """``tasks_per_segment``, or the smallest of its old names (each warns once), default 100."""
    unknown = sorted(set(old_names) - set(_OLD_TASKS_PER_SEGMENT))
    if unknown:
        raise TypeError(f"simulation_config() got an unexpected keyword argument {unknown[0]!r}")
    old = {}
    for k in _OLD_TASKS_PER_SEGMENT:
        if old_names.get(k) is not None:
            renamed(k, "tasks_per_segment", where="simulation_config", stacklevel=4)
            old[k] = _check_int(k, old_names[k], 1, example=", e.g. tasks_per_segment=100")
    if value is not None and old and any(v != value for v in old.values()):
        k = next(k for k, v in old.items() if v != value)
        raise ConfigError(k, old[k], f"conflicts with tasks_per_segment={value} (it is its old name)",
                          "pass only tasks_per_segment")
    if value is None:
        value = min(old.values()) if old else 100
    return _check_int("tasks_per_segment", value, 1, example=", e.g. tasks_per_segment=100")


def simulation_config(
    data_grid: Any = None,
    fit_grid: Any = None,
    data_generator: Callable[..., Any] | None = None,
    fitter: Any = None,
    metrics: Sequence[Any] | None = None,
    n_replicates: int = 1,
    seed: int | None = None,
    retain: str | Sequence[str] = "standard",
    result_path: str | Path | None = None,
    tasks_per_segment: int | None = None,
    max_errors: int | None = None,
    task_grid: pd.DataFrame | None = None,
    shard_size: int | None = None,
    stop_on_systematic_failure: int | None = 10,
    draws_dtype: str = "float64",
    compression: str | None = None,
    study_file: str | None = None,
    **old_names: Any,
) -> Study:
    """Define a simulation study; every field is checked now, before anything runs.

    Args:
        data_grid: data-generating configurations (DataFrame, or dict expanded to all combinations).
        fit_grid: model configurations, same forms.
        data_generator: ``f(data_spec: dict, rng: numpy.random.Generator, task_ctx) -> SimData | dict``.
        fitter: an object with ``fit(data, fit_spec, seed, task_ctx) -> FitResult``.
        metrics: metric objects (``rmse_metric()``, ...); names must be unique.
        n_replicates: replicates per (data, fit) cell.
        seed: the study seed (non-negative integer); all task seeds derive from it.
        retain: ``"minimal"``, ``"standard"``, ``"debug"`` or a list of artifacts.
        result_path: result directory (None: a temporary one, removed with the result).
        tasks_per_segment: a worker writes its buffered results as one segment after this many
            tasks (default 100), after a minute, and when told to stop; it bounds a worker's
            memory and what a node failure loses. Old names (warn): ``chunk_size``,
            ``checkpoint_every``, ``max_in_memory`` (given together: the smallest counts).
        max_errors: stop the study once more than this many tasks failed (None: no limit).
        task_grid: optional DataFrame of 1-based ``data_idx``/``fit_idx`` pairs to run
            instead of the full cross.
        shard_size: tasks per worker shard (None: chosen by the executor at first run).
        stop_on_systematic_failure: stop the study when the first this-many tasks a worker runs
            (or every task of a shard) all fail with the same error type in the same stage
            before any task of the shard succeeded: a bug in the generator, fitter or metrics,
            not bad luck. None never stops early; ``bayesim-hpc run --keep-going`` sets None
            for one run.
        draws_dtype: ``"float64"`` or ``"float32"`` for retained draws and predictions.
        compression: ``None``, ``"gzip"`` or ``"lzf"`` for retained heavy artifacts.
    """
    dg = _check_grid("data_grid", data_grid)
    fg = _check_grid("fit_grid", fit_grid)
    if data_generator is None:
        raise ConfigError("data_generator", None, "is required", "pass a function (data_spec, rng, task_ctx) -> SimData")
    _check_callable_arity("data_generator", data_generator, 3, "data_generator(data_spec, rng, task_ctx)")
    if fitter is None:
        raise ConfigError("fitter", None, "is required", "pass a fitter, e.g. MockFitter() or PyMCFitter(build_model)")
    if isinstance(fitter, type):
        raise ConfigError("fitter", fitter, "is a class, not an instance", f"call it: fitter={fitter.__name__}()")
    if not callable(getattr(fitter, "fit", None)):
        raise ConfigError("fitter", fitter, "has no fit() method",
                          "pass an object with fit(data, fit_spec, seed, task_ctx) -> FitResult")
    _check_callable_arity("fitter.fit", fitter.fit, 4, "fit(self, data, fit_spec, seed, task_ctx)")
    if metrics is None or isinstance(metrics, (str, bytes)) or not isinstance(metrics, (list, tuple)):
        raise ConfigError("metrics", metrics, "must be a list of metrics", "e.g. metrics=[rmse_metric(), bias_metric()]")
    if len(metrics) == 0:
        raise ConfigError("metrics", metrics, "is empty", "give at least one metric, e.g. [rmse_metric()]")
    names: list[str] = []
    for i, m in enumerate(metrics):
        if isinstance(m, str):
            from . import metrics as builtin

            factory = f"{m.lower().removesuffix('_metric')}_metric"
            known = sorted(n for n in dir(builtin) if n.endswith("_metric") and not n.startswith("_"))
            fix = (f"pass the metric object: metrics=[{factory}()] (from bayesim_hpc import {factory})"
                   if factory in known else f"pass metric objects, e.g. {', '.join(f'{k}()' for k in known)}")
            raise ConfigError(f"metrics[{i}]", m, "is a name, not a metric", fix)
        if callable(m) and not hasattr(m, "compute"):
            raise ConfigError(f"metrics[{i}]", m, "is a function, not a metric object",
                              "call the factory: rmse_metric() rather than rmse_metric")
        name = getattr(m, "name", None)
        if not isinstance(name, str) or not _NAME_RE.match(name) or "__" in name or not callable(getattr(m, "compute", None)):
            raise ConfigError(f"metrics[{i}]", m, "needs a name (letters, digits, single underscores) and compute(fit, data)",
                              "see bayesim_hpc.metrics for the protocol")
        if name in names:
            raise ConfigError(f"metrics[{i}]", name, "repeats a metric name",
                              "give each metric a unique name, e.g. coverage_metric(0.5, name='coverage50')")
        names.append(name)
    n_rep = _check_int("n_replicates", n_replicates, 1, example=", e.g. n_replicates=100")
    if seed is None:
        raise ConfigError("seed", None, "is required for reproducible results", "pass seed=<integer>, e.g. seed=42")
    seed_i = _check_int("seed", seed, 0, example=", e.g. seed=42")
    if seed_i >= 2**63:
        raise ConfigError("seed", seed, "is too large", "use an integer below 2**63")
    retain_l = resolve_retention(retain)
    if result_path is not None and not isinstance(result_path, (str, Path)):
        raise ConfigError("result_path", result_path, "must be a path", "pass a string or pathlib.Path")
    if result_path is not None and Path(result_path).exists() and not Path(result_path).is_dir():
        raise ConfigError("result_path", str(result_path), "exists and is not a directory", "choose a new directory name")
    tps = _tasks_per_segment(tasks_per_segment, old_names)
    me = _check_int("max_errors", max_errors, 0, allow_none=True, example=" or None for no limit")
    tg = _check_task_grid(task_grid, len(dg), len(fg))
    ss = _check_int("shard_size", shard_size, 1, allow_none=True, example=" or None")
    sosf = _check_int("stop_on_systematic_failure", stop_on_systematic_failure, 1, allow_none=True,
                      example=" (failed tasks in a row) or None to never stop early")
    if draws_dtype not in ("float64", "float32"):
        raise ConfigError("draws_dtype", draws_dtype, "is not supported", "use 'float64' or 'float32'")
    if compression not in (None, "gzip", "lzf"):
        raise ConfigError("compression", compression, "is not supported", "use None, 'gzip' or 'lzf'")
    return Study(
        data_grid=dg, fit_grid=fg, data_generator=data_generator, fitter=fitter, metrics=tuple(metrics),
        n_replicates=n_rep, seed=seed_i, retain=tuple(retain_l),
        result_path=Path(result_path) if result_path is not None else None,
        tasks_per_segment=tps, max_errors=me, task_grid=tg, shard_size=ss,
        stop_on_systematic_failure=sosf,
        draws_dtype=draws_dtype, compression=compression, study_file=study_file,
    )
