"""The fitter protocol and what a fit returns.

A fitter is any object with ``fit(data, fit_spec, seed, task_ctx) -> FitResult``.
``seed`` is the task's integer fit seed: the same task must give the same draws with the
same seed, in any process and order.

Example:
    >>> class MyFitter:
    ...     def fit(self, data, fit_spec, seed, task_ctx):
    ...         rng = np.random.default_rng(seed)
    ...         return FitResult(draws={"mu": rng.normal(size=(2, 100))})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..data import SimData, TaskContext

__all__ = ["FitResult", "Fitter", "DIAGNOSTIC_COLUMNS"]

#: Diagnostics columns every summary has (NaN where a fitter cannot provide one).
#: ``n_divergent``/``n_max_treedepth`` count draws; ``ess_bulk_min``/``ess_tail_min`` are the
#: smallest ESS over the variables of interest (names before 0.3: ``divergent``, ``max_treedepth``,
#: ``ess_bulk``, ``ess_tail``; a fitter that still returns those keys gets a warning).
DIAGNOSTIC_COLUMNS = ("rhat_max", "ess_bulk_min", "ess_tail_min", "n_divergent", "n_max_treedepth")


class _BuiltOnRead:
    """``FitResult.fit``: a lazy fit object (one whose type sets ``lazy_fit = True`` and has
    ``materialize()``) is built the first time the attribute is read, so metrics, ArviZ
    and the ``fit`` retention get the real object while a study that never reads it pays
    nothing."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return None  # the dataclass default
        value = obj.__dict__.get(self.name)
        if getattr(type(value), "lazy_fit", False):
            value = value.materialize()
            obj.__dict__[self.name] = value
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.name] = value


@dataclass(repr=False)
class FitResult:
    """The outcome of one fit.

    draws: variable name -> array with dims (chain, draw, *shape).
    diagnostics: flat dict; at least the keys of ``DIAGNOSTIC_COLUMNS`` where known.
        ``ess_bulk_min``/``ess_tail_min`` are minima over the variables of interest.
    predictions: optional name -> array (e.g. posterior predictive mean on test data).
    warnings: messages the sampler or model raised, one string each.
    fit: optional raw fit object (stored only with retention ``fit``; pickled). A lazy one
        (``PyMCFitter``'s :class:`LazyInferenceData`) is built on first read of ``.fit``.
    timing: seconds, e.g. {"sampling": 0.05}.
    """

    draws: dict[str, np.ndarray]
    diagnostics: dict[str, float] = field(default_factory=dict)
    predictions: dict[str, np.ndarray] | None = None
    warnings: list[str] = field(default_factory=list)
    fit: Any = _BuiltOnRead()
    timing: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        draws = {}
        for name, arr in dict(self.draws).items():
            a = np.asarray(arr)
            if a.ndim < 2:
                raise ValueError(
                    f"FitResult.draws[{name!r}] has shape {a.shape}; "
                    "draws need dims (chain, draw, ...)"
                )
            draws[str(name)] = a
        self.draws = draws

    def __repr__(self) -> str:  # does not build a lazy fit object
        fit = self.__dict__.get("fit")
        return (f"FitResult(draws={ {k: v.shape for k, v in self.draws.items()} }, diagnostics={self.diagnostics}, "
                f"warnings={self.warnings}, fit={type(fit).__name__ if fit is not None else None})")

    def flat(self, name: str) -> np.ndarray:
        """All draws of a scalar variable, chains concatenated."""
        a = self.draws[name]
        return a.reshape(-1) if a.ndim == 2 else a.reshape(a.shape[0] * a.shape[1], -1)


@runtime_checkable
class Fitter(Protocol):
    """What ``simulation_config(fitter=...)`` accepts."""

    def fit(
        self, data: SimData, fit_spec: dict[str, Any], seed: int, task_ctx: TaskContext
    ) -> FitResult: ...
