"""Metrics: objects with a ``name`` and ``compute(fit, data) -> dict[str, float]``.

A metric's keys become summary columns ``<name>__<key>``. The built-in metrics give one
column per parameter, keyed by the parameter (``bias__slope``, ``cover90__slope``); none
averages different parameters. Coverage, width and power names carry their nominal level
(``coverage_metric(0.9)`` is named ``cover90``). See :mod:`bayesim_hpc.names` for the
scheme and the aliases of the names used before version 0.2.

Example:
    >>> class MaxAbsError:
    ...     name = "max_abs_err_over_params"   # a cross-parameter value says so in its name
    ...     kind = "mean"
    ...     def compute(self, fit, data):
    ...         errs = [abs(fit.flat(p).mean() - t) for p, t in data.true_params.items()]
    ...         return {"all": float(max(errs))}
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .data import SimData
from .fitters.base import FitResult
from .names import level_suffix

__all__ = [
    "Metric",
    "rmse_metric",
    "bias_metric",
    "coverage_metric",
    "interval_width_metric",
    "power_metric",
    "posterior_mean_metric",
    "posterior_sd_metric",
    "sbc_rank_metric",
    "metric_columns",
]


@runtime_checkable
class Metric(Protocol):
    """What ``simulation_config(metrics=[...])`` accepts.

    ``kind`` tells the per-cell aggregation how to summarise the metric: ``"coverage"`` and
    ``"power"`` (0/1 indicators: proportion, binomial MCSE, Wilson interval), ``"rmse"``
    (root mean square over replicates), ``"rank"`` (SBC ranks: ECDF test, not averaged), or
    ``"mean"``.
    """

    name: str

    def compute(self, fit: FitResult, data: SimData) -> dict[str, float]: ...


def _params(fit: FitResult, data: SimData) -> list[str]:
    """Variables of interest that have both draws and a true value."""
    return [p for p in data.vars_of_interest if p in fit.draws and p in data.true_params]


@dataclass(frozen=True)
class RMSEMetric:
    """Root mean squared error, of parameters or of predictions.

    ``target="params"``: per task ``rmse__<p>`` is the absolute error of the posterior mean
    (the RMSE over one replicate); the cells column of the same name is the RMSE over the
    cell's replicates, ``sqrt(mean((est - truth)^2))``. ``target="predictions"``: the RMSE of
    ``fit.predictions["mean"]`` against the response over the observations of one task,
    ``rmse__pred_test`` (held-out data) or ``rmse__pred_train``; cells average it.
    ``"auto"`` uses predictions when the fit has them, else parameters.
    """

    name: str = "rmse"
    target: str = "auto"
    kind: str = "rmse"

    def compute(self, fit: FitResult, data: SimData) -> dict[str, float]:
        preds = (fit.predictions or {}).get("mean")
        if self.target == "predictions" or (self.target == "auto" and preds is not None):
            if preds is None or data.response is None:
                raise ValueError("rmse_metric(target='predictions') needs fit.predictions['mean'] and data.response")
            split = "test" if data.test is not None else "train"
            y = data.column(data.response, split)
            preds = np.asarray(preds, dtype=float)
            if preds.shape != y.shape:
                raise ValueError(f"predictions['mean'] has shape {preds.shape}, response {split} {y.shape}")
            return {f"pred_{split}": float(np.sqrt(np.mean((preds - y) ** 2)))}
        return {p: float(abs(fit.flat(p).mean() - data.true_params[p])) for p in _params(fit, data)}


@dataclass(frozen=True)
class BiasMetric:
    """Posterior mean minus truth, per parameter (``bias__<p>``); cells: its mean (the bias)."""

    name: str = "bias"
    kind: str = "mean"

    def compute(self, fit: FitResult, data: SimData) -> dict[str, float]:
        return {p: float(fit.flat(p).mean() - data.true_params[p]) for p in _params(fit, data)}


def _interval(fit: FitResult, p: str, prob: float) -> tuple[float, float]:
    lo, hi = np.quantile(fit.flat(p), [(1 - prob) / 2, (1 + prob) / 2])
    return float(lo), float(hi)


@dataclass(frozen=True)
class CoverageMetric:
    """1 if the central ``prob`` credible interval holds the true value, else 0.

    Keys per parameter: ``<p>`` (the indicator), ``<p>__lo`` and ``<p>__hi`` (the interval,
    which the cells need for bias-eliminated coverage ``becover``).
    """

    prob: float = 0.9
    name: str = "cover90"
    kind: str = "coverage"

    def compute(self, fit: FitResult, data: SimData) -> dict[str, float]:
        out: dict[str, float] = {}
        for p in _params(fit, data):
            lo, hi = _interval(fit, p, self.prob)
            out[p] = float(lo <= data.true_params[p] <= hi)
            out[f"{p}__lo"], out[f"{p}__hi"] = lo, hi
        return out


@dataclass(frozen=True)
class IntervalWidthMetric:
    """Width of the central ``prob`` credible interval, per parameter (``width90__<p>``)."""

    prob: float = 0.9
    name: str = "width90"
    kind: str = "mean"

    def compute(self, fit: FitResult, data: SimData) -> dict[str, float]:
        out = {}
        for p in _params(fit, data):
            lo, hi = _interval(fit, p, self.prob)
            out[p] = hi - lo
        return out


@dataclass(frozen=True)
class PowerMetric:
    """1 if the central ``prob`` credible interval excludes the null value, else 0.

    ``null``: one value for every parameter, or ``{param: value}`` (parameters not named are
    skipped). Cells: the share of replicates that exclude it (power where the truth differs
    from the null, type I error rate where it equals it), with binomial MCSE.
    """

    prob: float = 0.95
    null: Any = 0.0
    name: str = "power95"
    kind: str = "power"

    def compute(self, fit: FitResult, data: SimData) -> dict[str, float]:
        out = {}
        for p in [p for p in data.vars_of_interest if p in fit.draws]:
            null = self.null.get(p) if isinstance(self.null, dict) else self.null
            if null is None:
                continue
            lo, hi = _interval(fit, p, self.prob)
            out[p] = float(not lo <= float(null) <= hi)
        return out


@dataclass(frozen=True)
class PosteriorMeanMetric:
    """Kept so that study files naming it still load: the posterior mean of every variable
    of interest is always in the summary as ``estimate__<p>``. Adds no column."""

    name: str = "post_mean"
    kind: str = "mean"

    def compute(self, fit: FitResult, data: SimData) -> dict[str, float]:
        return {}


@dataclass(frozen=True)
class PosteriorSDMetric:
    """Kept so that study files naming it still load: the posterior SD of every variable of
    interest is always in the summary as ``se__<p>``. Adds no column."""

    name: str = "post_sd"
    kind: str = "mean"

    def compute(self, fit: FitResult, data: SimData) -> dict[str, float]:
        return {}


def _thin_positions(size: int, k: int) -> np.ndarray:
    return np.linspace(0, size - 1, k).round().astype(int)


@dataclass(frozen=True)
class SBCRankMetric:
    """Simulation-based calibration: rank of the true value among ``n_draws`` posterior draws.

    With a calibrated posterior and truths drawn from the prior, ranks are uniform on
    0..n_draws (Talts et al. 2018). Autocorrelated draws make ranks look non-uniform, so
    each parameter's draws are thinned to ``min(n_draws, ESS_bulk)`` evenly spaced draws
    (``thin_by_ess=True``); when that is fewer than ``n_draws``, the rank among the ``L'``
    kept draws is spread uniformly onto 0..n_draws (``floor((r' + v) (n_draws + 1) /
    (L' + 1))`` with ``v`` in [0, 1) a deterministic hash of the draws), which keeps
    calibrated ranks exactly uniform. Keys: ``<p>`` (the rank), ``<p>__max`` (``n_draws``)
    and ``<p>__kept`` (the draws it was ranked among).
    """

    n_draws: int = 99
    thin_by_ess: bool = True
    name: str = "sbc_rank"
    kind: str = "rank"

    def compute(self, fit: FitResult, data: SimData) -> dict[str, float]:
        from .diagnostics import ess_bulk

        out: dict[str, float] = {}
        L = self.n_draws
        for p in _params(fit, data):
            x = fit.flat(p)
            kept = min(L, x.size)
            if self.thin_by_ess and fit.draws[p].ndim == 2:
                ess = float(ess_bulk(fit.draws[p]))
                if np.isfinite(ess):
                    kept = max(1, min(kept, int(ess)))
            sel = x[_thin_positions(x.size, kept)]
            r = int(np.sum(sel < data.true_params[p]))
            if kept < L:
                v = (zlib.crc32(np.ascontiguousarray(x).tobytes()) & 0xFFFFFF) / 2**24
                r = min(L, int(np.floor((r + v) * (L + 1) / (kept + 1))))
            out[p], out[f"{p}__max"], out[f"{p}__kept"] = float(r), float(L), float(kept)
        return out


def rmse_metric(target: str = "auto", name: str = "rmse") -> RMSEMetric:
    """RMSE of posterior means across replicates (or of predictions, see :class:`RMSEMetric`)."""
    if target not in ("auto", "predictions", "params"):
        raise ValueError("rmse_metric(target=...) must be 'auto', 'predictions' or 'params'")
    return RMSEMetric(name=name, target=target)


def bias_metric(name: str = "bias") -> BiasMetric:
    """Bias of the posterior mean, per parameter."""
    return BiasMetric(name=name)


def _check_prob(prob: float) -> float:
    if not 0 < float(prob) < 1:
        raise ValueError(f"prob={prob!r} must lie strictly between 0 and 1, e.g. 0.9")
    return float(prob)


def _levelled(base: str, prob: float, name: str | None, what: str) -> str:
    if name is None:
        return f"{base}{level_suffix(prob)}"
    if not name.endswith(level_suffix(prob)):
        raise ValueError(f"{what}(prob={prob}, name={name!r}): the name must end with the nominal level "
                         f"{level_suffix(prob)!r} so that every column says its level, e.g. name='{name}{level_suffix(prob)}'")
    return name


def coverage_metric(prob: float = 0.9, name: str | None = None) -> CoverageMetric:
    """Coverage of central ``prob`` intervals, named ``cover<level>`` (``cover90`` at 0.9).

    A custom ``name`` must end with the level: ``coverage_metric(0.5, name="cov_pymc50")``.
    """
    prob = _check_prob(prob)
    return CoverageMetric(prob=prob, name=_levelled("cover", prob, name, "coverage_metric"))


def interval_width_metric(prob: float = 0.9, name: str | None = None) -> IntervalWidthMetric:
    """Width of central ``prob`` intervals, named ``width<level>`` (``width90`` at 0.9)."""
    prob = _check_prob(prob)
    return IntervalWidthMetric(prob=prob, name=_levelled("width", prob, name, "interval_width_metric"))


def power_metric(prob: float = 0.95, null: float | dict[str, float] = 0.0, name: str | None = None) -> PowerMetric:
    """Share of central ``prob`` intervals that exclude ``null`` (per parameter, or one for all),
    named ``power<level>`` (``power95`` at 0.95).

    >>> power_metric(0.95, null={"slope": 0.0}).name
    'power95'
    """
    prob = _check_prob(prob)
    if isinstance(null, dict):
        null = {str(k): float(v) for k, v in null.items()}
    else:
        null = float(null)
    return PowerMetric(prob=prob, null=null, name=_levelled("power", prob, name, "power_metric"))


def posterior_mean_metric() -> PosteriorMeanMetric:
    """No-op kept for old study files: ``estimate__<p>`` is always in the summary."""
    return PosteriorMeanMetric()


def posterior_sd_metric() -> PosteriorSDMetric:
    """No-op kept for old study files: ``se__<p>`` is always in the summary."""
    return PosteriorSDMetric()


def sbc_rank_metric(n_draws: int = 99, thin_by_ess: bool = True) -> SBCRankMetric:
    """SBC rank of the truth among ``n_draws`` posterior draws, thinned by ESS."""
    if int(n_draws) < 1:
        raise ValueError("sbc_rank_metric(n_draws=...) must be >= 1")
    return SBCRankMetric(n_draws=int(n_draws), thin_by_ess=bool(thin_by_ess))


def metric_columns(name: str, values: dict[str, float]) -> dict[str, float]:
    """Prefix a metric's keys with its name: ``{"slope": 1} -> {"bias__slope": 1}``."""
    return {f"{name}__{k}": float(v) for k, v in values.items()}
