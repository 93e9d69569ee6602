"""MockFitter: fast, PyMC-free fits with real numbers, and knobs for fault drills.

For every variable of interest with true value ``t`` the mock posterior is
``Normal(t + s * z, s)`` with ``s = scale / sqrt(n_obs)`` and ``z ~ Normal(0, 1)`` drawn
from the fit seed. Such a posterior is calibrated by construction (90 % intervals cover
the truth 90 % of the time), so coverage, bias and RMSE are real, checkable numbers.

Example:
    >>> fitter = MockFitter(fail_rate=0.01, delay=0.0)   # 1 % of fits raise, for drills
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data import SimData, TaskContext
from .base import FitResult

__all__ = ["MockFitter"]


@dataclass
class MockFitter:
    """A fitter that needs no sampler.

    Fault knobs (each decided from the fit seed, so a drill is reproducible and does not
    change the draws of tasks it spares): ``fail_rate`` (raise ``RuntimeError``),
    ``nan_rate`` (NaN draws), ``warn_rate`` (a sampler-like warning), ``diverge_rate``
    (report divergent transitions), ``fail_tasks`` (task ids that always raise),
    ``delay`` (seconds slept per fit, for time-limit and preemption drills).
    """

    chains: int = 2
    draws: int = 200
    scale: float = 1.0
    fail_rate: float = 0.0
    nan_rate: float = 0.0
    warn_rate: float = 0.0
    diverge_rate: float = 0.0
    delay: float = 0.0
    fail_tasks: tuple[str, ...] = field(default_factory=tuple)
    compute_diagnostics: bool = True

    def fit(self, data: SimData, fit_spec: dict[str, Any], seed: int, task_ctx: TaskContext) -> FitResult:
        t0 = time.perf_counter()
        if self.delay:
            time.sleep(float(fit_spec.get("delay", self.delay)))
        u_fail, u_nan, u_warn, u_div = np.random.default_rng([seed, 1]).random(4)
        if task_ctx.task_id in self.fail_tasks or u_fail < self.fail_rate:
            raise RuntimeError(f"MockFitter: injected failure in {task_ctx.task_id}")
        rng = np.random.default_rng(seed)
        n_obs = _n_obs(data)
        s = float(fit_spec.get("scale", self.scale)) / np.sqrt(n_obs)
        draws = {}
        for p in data.vars_of_interest:
            truth = data.true_params.get(p, 0.0)
            centre = truth + s * rng.standard_normal()
            draws[p] = centre + s * rng.standard_normal((self.chains, self.draws))
        if u_nan < self.nan_rate:
            draws = {p: np.full_like(a, np.nan) for p, a in draws.items()}
        warnings = []
        n_div = 0
        if u_div < self.diverge_rate:
            n_div = 1 + int(u_div * 1000) % 20
            warnings.append(f"{n_div} divergent transitions after tuning")
        if u_warn < self.warn_rate:
            warnings.append("MockFitter: injected warning (effective sample size is low)")
        diagnostics: dict[str, float] = {"n_divergent": float(n_div), "n_max_treedepth": 0.0}
        if self.compute_diagnostics:
            from ..diagnostics import summarize_draws

            d = summarize_draws(draws, list(draws))
            diagnostics.update(rhat_max=d["rhat_max"], ess_bulk_min=d["ess_bulk_min"], ess_tail_min=d["ess_tail_min"])
        return FitResult(
            draws=draws,
            diagnostics=diagnostics,
            warnings=warnings,
            timing={"sampling": time.perf_counter() - t0},
        )


def _n_obs(data: SimData) -> int:
    if data.response is not None:
        try:
            return max(1, int(np.size(data.column(data.response))))
        except (KeyError, TypeError, IndexError):
            pass
    return 100
