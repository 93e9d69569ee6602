"""Read draws and sampler counts from nutpie's raw Arrow trace; build the InferenceData lazily.

``nutpie.sample(..., return_raw_trace=True)`` skips the conversion to ``arviz.InferenceData``
(about a third of a small model's fit). :func:`read_raw_trace` reads the same numbers from
the Arrow batches, bit for bit, and :class:`LazyInferenceData` builds the InferenceData -
exactly what ``nutpie.sample`` returns - on first use.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

__all__ = ["LazyInferenceData", "raw_trace_supported", "read_raw_trace"]

_log = logging.getLogger(__name__)

#: Sample-stat columns nutpie.sample leaves out of its InferenceData with default settings.
_RAW_SKIP_VARS = [
    "gradient", "unconstrained_draw", "mass_matrix_inv", "mass_matrix_eigvals", "mass_matrix_stds",
    "divergence_start", "divergence_end", "divergence_momentum", "divergence_start_gradient",
]


def _materialized(obj: Any) -> Any:
    return obj


class LazyInferenceData:
    """``FitResult.fit`` with ``lazy_idata=True``: the InferenceData, built on first use.

    Attribute and item access go to the InferenceData (built once, then kept); pickling
    stores the InferenceData itself. ``materialize()`` returns it.
    """

    __slots__ = ("_build", "_idata")
    #: FitResult.fit builds it on first read (see fitters.base)
    lazy_fit = True

    def __init__(self, build: Callable[[], Any]):
        self._build = build
        self._idata = None

    def materialize(self):
        """The ``arviz.InferenceData`` (what ``nutpie.sample`` would have returned)."""
        if self._idata is None:
            self._idata = self._build()
            self._build = None
        return self._idata

    @property
    def is_materialized(self) -> bool:
        return self._idata is not None

    def __getattr__(self, name: str):
        if name in LazyInferenceData.__slots__:  # not initialised (never via __init__)
            raise AttributeError(name)
        return getattr(self.materialize(), name)

    def __getitem__(self, key):
        return self.materialize()[key]

    def __contains__(self, key) -> bool:
        return key in self.materialize()

    def __iter__(self):
        return iter(self.materialize())

    def __reduce__(self):
        return (_materialized, (self.materialize(),))

    def __repr__(self) -> str:
        if self._idata is None:
            return "LazyInferenceData(<not built yet>)"
        return repr(self._idata)


class _RawFit:
    """Draws and sample-stat counts read from nutpie's raw Arrow trace."""

    __slots__ = ("draws", "divergent", "max_treedepth", "idata")

    def __init__(self, draws, divergent, max_treedepth, idata):
        self.draws = draws
        self.divergent = divergent
        self.max_treedepth = max_treedepth
        self.idata = idata  # LazyInferenceData


def _arrow_values(column, n_rows: int) -> np.ndarray | None:
    """One chain's column of a nutpie Arrow batch as (rows, *shape); None if it has nulls."""
    import pyarrow

    meta = column.field.metadata or {}
    shape = meta.get(b"shape", b"")
    shape = tuple(int(x) for x in shape.decode("utf-8").split(",")) if shape else ()
    col = pyarrow.array(column)
    if col.null_count:
        return None
    if hasattr(col, "flatten"):
        col = col.flatten()
    return col.to_numpy(zero_copy_only=False).reshape((n_rows,) + shape)


_RAW_SUPPORTED: list[bool] = []


def _raw_trace_supported() -> bool:
    """Whether this nutpie can return its raw trace and convert it as nutpie.sample does."""
    if not _RAW_SUPPORTED:
        try:
            import inspect

            import nutpie
            from nutpie.sample import _arrow_to_arviz  # noqa: F401

            ok = "return_raw_trace" in inspect.signature(nutpie.sample).parameters
        except Exception:  # pragma: no cover - another nutpie version
            ok = False
        if not ok:  # pragma: no cover
            _log.warning("PyMCFitter(lazy_idata=True): this nutpie has no raw trace; building InferenceData")
        _RAW_SUPPORTED.append(ok)
    return _RAW_SUPPORTED[0]


def _read_raw_trace(raw, compiled, var_names: list[str], n_draws: int) -> _RawFit:
    """Draws (chain, draw, ...) of ``var_names`` and stat counts of the posterior draws.

    ``draws`` is None when the trace is not laid out as expected (chains of other lengths,
    missing values, ...): the caller then builds the InferenceData and reads it as usual.
    """
    import pandas as pd
    from nutpie.sample import _arrow_to_arviz

    draw_batches, stat_batches = raw.get_arrow_trace()
    coords = {name: pd.Index(vals) for name, vals in (compiled.coords or {}).items()}

    def build():
        return _arrow_to_arviz(
            draw_batches, stat_batches, skip_vars=list(_RAW_SKIP_VARS), coords=coords, save_warmup=False
        )

    idata = LazyInferenceData(build)
    try:
        starts = []
        for stat in stat_batches:
            tuning = _arrow_values(stat.column("tuning"), stat.num_rows)
            if tuning is None or stat.num_rows - int(np.count_nonzero(tuning)) != n_draws:
                return _RawFit(None, 0.0, 0.0, idata)
            starts.append(int(np.count_nonzero(tuning)))
        draws = {}
        for v in var_names:
            parts = []
            for batch, start in zip(draw_batches, starts):
                vals = _arrow_values(batch.column(v), batch.num_rows)
                if vals is None:
                    return _RawFit(None, 0.0, 0.0, idata)
                parts.append(vals[start:])
            draws[v] = np.stack(parts)
        counts = []
        for name in ("diverging", "maxdepth_reached"):
            total = 0.0
            for stat, start in zip(stat_batches, starts):
                vals = _arrow_values(stat.column(name), stat.num_rows)
                if vals is None:
                    return _RawFit(None, 0.0, 0.0, idata)
                total += float(vals[start:].sum())
            counts.append(total)
    except (KeyError, ValueError, TypeError, AttributeError):
        return _RawFit(None, 0.0, 0.0, idata)
    return _RawFit(draws, counts[0], counts[1], idata)


raw_trace_supported = _raw_trace_supported
read_raw_trace = _read_raw_trace
