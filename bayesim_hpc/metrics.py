"""Metrics: objects with a ``name`` and ``compute(fit, data) -> dict[str, float]``.

A metric's keys become summary columns ``<name>__<key>``; per-parameter values use the
key ``by_param__<param>``, so ``coverage_metric()`` gives ``coverage__mean`` and
``coverage__by_param__slope``.

Example:
    >>> class MaxAbsError:
    ...     name = "max_abs_err"
    ...     kind = "mean"
    ...     def compute(self, fit, data):
    ...         errs = [abs(fit.flat(p).mean() - t) for p, t in data.true_params.items()]
    ...         return {"value": float(max(errs))}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from .data import SimData
from .fitters.base import FitResult

__all__ = [
    "Metric",
    "rmse_metric",
    "bias_metric",
    "coverage_metric",
    "interval_width_metric",
    "posterior_mean_metric",
    "posterior_sd_metric",
    "sbc_rank_metric",
    "metric_columns",
]


@runtime_checkable
class Metric(Protocol):
    """What ``simulation_config(metrics=[...])`` accepts.

    ``kind`` tells the per-cell aggregation how to summarise the metric: ``"coverage"``
    (a 0/1 indicator: binomial MCSE), ``"rank"`` (not averaged), or ``"mean"``.
    """

    name: str

    def compute(self, fit: FitResult, data: SimData) -> dict[str, float]: ...


def _params(fit: FitResult, data: SimData) -> list[str]:
    """Variables of interest that have both draws and a true value."""
    return [p for p in data.vars_of_interest if p in fit.draws and p in data.true_params]


def _by_param(values: dict[str, float], summary_key: str, summary: float) -> dict[str, float]:
    out = {summary_key: float(summary)}
    out.update({f"by_param__{p}": float(v) for p, v in values.items()})
    return out


@dataclass(frozen=True)
class RMSEMetric:
    """Root mean squared error.

    ``target="predictions"``: of the fitter's ``predictions["mean"]`` against the response
    (test data when present, else train). ``target="params"``: of posterior means against
    true parameters. ``"auto"`` uses predictions when the fit has them.
    """

    name: str = "rmse"
    target: str = "auto"
    kind: str = "mean"

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
            return {"value": float(np.sqrt(np.mean((preds - y) ** 2))), "n_obs": float(y.size)}
        ps = _params(fit, data)
        err = np.array([fit.flat(p).mean() - data.true_params[p] for p in ps], dtype=float)
        return {"value": float(np.sqrt(np.mean(err**2))) if ps else float("nan"), "n_obs": float(len(ps))}


@dataclass(frozen=True)
class BiasMetric:
    """Posterior mean minus truth, per parameter and averaged (``bias__value``)."""

    name: str = "bias"
    kind: str = "mean"

    def compute(self, fit: FitResult, data: SimData) -> dict[str, float]:
        vals = {p: fit.flat(p).mean() - data.true_params[p] for p in _params(fit, data)}
        return _by_param(vals, "value", np.mean(list(vals.values())) if vals else np.nan)


def _interval(fit: FitResult, p: str, prob: float) -> tuple[float, float]:
    lo, hi = np.quantile(fit.flat(p), [(1 - prob) / 2, (1 + prob) / 2])
    return float(lo), float(hi)


@dataclass(frozen=True)
class CoverageMetric:
    """1 if the central ``prob`` credible interval holds the true value, else 0."""

    prob: float = 0.9
    name: str = "coverage"
    kind: str = "coverage"

    def compute(self, fit: FitResult, data: SimData) -> dict[str, float]:
        vals = {}
        for p in _params(fit, data):
            lo, hi = _interval(fit, p, self.prob)
            vals[p] = float(lo <= data.true_params[p] <= hi)
        return _by_param(vals, "mean", np.mean(list(vals.values())) if vals else np.nan)


@dataclass(frozen=True)
class IntervalWidthMetric:
    """Width of the central ``prob`` credible interval."""

    prob: float = 0.9
    name: str = "width"
    kind: str = "mean"

    def compute(self, fit: FitResult, data: SimData) -> dict[str, float]:
        vals = {}
        for p in _params(fit, data):
            lo, hi = _interval(fit, p, self.prob)
            vals[p] = hi - lo
        return _by_param(vals, "mean", np.mean(list(vals.values())) if vals else np.nan)


@dataclass(frozen=True)
class PosteriorMeanMetric:
    name: str = "post_mean"
    kind: str = "mean"

    def compute(self, fit: FitResult, data: SimData) -> dict[str, float]:
        return {f"by_param__{p}": float(fit.flat(p).mean()) for p in data.vars_of_interest if p in fit.draws}


@dataclass(frozen=True)
class PosteriorSDMetric:
    name: str = "post_sd"
    kind: str = "mean"

    def compute(self, fit: FitResult, data: SimData) -> dict[str, float]:
        return {f"by_param__{p}": float(fit.flat(p).std(ddof=1)) for p in data.vars_of_interest if p in fit.draws}


@dataclass(frozen=True)
class SBCRankMetric:
    """Simulation-based calibration: rank of the true value among ``n_draws`` thinned draws.

    With a calibrated posterior and truths drawn from the prior, ranks are uniform on
    0..n_draws (Talts et al. 2018). Draws are thinned evenly to reduce autocorrelation.
    """

    n_draws: int = 99
    name: str = "sbc_rank"
    kind: str = "rank"

    def compute(self, fit: FitResult, data: SimData) -> dict[str, float]:
        out: dict[str, float] = {"n_draws": float(self.n_draws)}
        for p in _params(fit, data):
            x = fit.flat(p)
            idx = np.linspace(0, x.size - 1, self.n_draws).round().astype(int)
            out[f"by_param__{p}"] = float(np.sum(x[idx] < data.true_params[p]))
        return out


def rmse_metric(target: str = "auto", name: str = "rmse") -> RMSEMetric:
    """RMSE of predictions (or of posterior means, see :class:`RMSEMetric`)."""
    if target not in ("auto", "predictions", "params"):
        raise ValueError("rmse_metric(target=...) must be 'auto', 'predictions' or 'params'")
    return RMSEMetric(name=name, target=target)


def bias_metric(name: str = "bias") -> BiasMetric:
    """Bias of the posterior mean."""
    return BiasMetric(name=name)


def _check_prob(prob: float) -> float:
    if not 0 < float(prob) < 1:
        raise ValueError(f"prob={prob!r} must lie strictly between 0 and 1, e.g. 0.9")
    return float(prob)


def coverage_metric(prob: float = 0.9, name: str | None = None) -> CoverageMetric:
    """Coverage of central ``prob`` intervals; named ``coverage`` at 0.9, else ``coverage_<pct>``."""
    prob = _check_prob(prob)
    return CoverageMetric(prob=prob, name=name or ("coverage" if prob == 0.9 else f"coverage_{round(prob * 100)}"))


def interval_width_metric(prob: float = 0.9, name: str | None = None) -> IntervalWidthMetric:
    """Width of central ``prob`` intervals."""
    prob = _check_prob(prob)
    return IntervalWidthMetric(prob=prob, name=name or ("width" if prob == 0.9 else f"width_{round(prob * 100)}"))


def posterior_mean_metric() -> PosteriorMeanMetric:
    return PosteriorMeanMetric()


def posterior_sd_metric() -> PosteriorSDMetric:
    return PosteriorSDMetric()


def sbc_rank_metric(n_draws: int = 99) -> SBCRankMetric:
    """SBC rank of the truth among ``n_draws`` thinned posterior draws."""
    if int(n_draws) < 1:
        raise ValueError("sbc_rank_metric(n_draws=...) must be >= 1")
    return SBCRankMetric(n_draws=int(n_draws))


def metric_columns(name: str, values: dict[str, float]) -> dict[str, float]:
    """Prefix a metric's keys with its name: ``{"value": 1} -> {"rmse__value": 1}``."""
    return {f"{name}__{k}": float(v) for k, v in values.items()}
