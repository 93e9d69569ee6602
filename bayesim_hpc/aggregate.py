"""Per-cell performance measures with Monte Carlo standard errors.

For each parameter ``p`` with an estimate (posterior mean ``estimate__p``), a posterior SD
(``se__p``) and a true value, over the ``n`` successful replicates of a cell, with the
names and formulas of rsimsum (Morris, White & Crowther 2019, Stat Med 38:2074, Table 6;
``e_i = est_i - truth_i``)::

    bias     mean(e)                           MCSE sd(e) / sqrt(n)
    rbias    mean(e / truth)                   MCSE sd(e / truth) / sqrt(n)
    empse    sd(est)                           MCSE empse / sqrt(2 (n - 1))
    mse      mean(e^2)                         MCSE sqrt(sum((e^2 - mse)^2) / (n (n - 1)))
    rmse     sqrt(mse)                         MCSE mcse(mse) / (2 rmse)          (delta method)
    modelse  sqrt(mean(se^2))                  MCSE sqrt(var(se^2) / (4 n modelse^2))
    relerror 100 (modelse / empse - 1)         MCSE 100 (modelse / empse)
                                                    sqrt(var(se^2) / (4 n modelse^4) + 1 / (2 (n - 1)))

Coverage and power metrics (0/1 per task, e.g. ``cover90__p``, ``power95__p``): the share,
MCSE ``sqrt(c (1 - c) / n)`` and a 95 % Wilson interval ``__wilson_low``/``__wilson_high``
(inside [0, 1], not of zero width at 0 or 1). Bias-eliminated coverage ``becover90__p``: the
share of intervals (``cover90__p__lo``/``__hi``) that hold ``mean(est)``. Other metric
columns get their mean and MCSE sd/sqrt(n); SBC rank columns a simultaneous ECDF
uniformity test ``sbc_rank_pvalue__p`` (:mod:`bayesim_hpc.sbc`). Relative precision
against a reference fit row (``relprec``) and paired differences are in
:mod:`bayesim_hpc.compare`.

Example:
    >>> import pandas as pd
    >>> df = pd.DataFrame({"status": ["success"] * 3, "estimate__mu": [0.9, 1.1, 1.0],
    ...                    "truth__mu": [1.0, 1.0, 1.0]})
    >>> round(cell_measures(df, {})["bias__mu"], 12)
    0.0
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .diagnostics import RHAT_THRESHOLD
from .names import add_current_names, current_name, split_column

__all__ = ["cell_measures", "wilson_interval", "proportion", "point_measures"]

_Z95 = 1.959963984540054


def _sd(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if x.size > 1 else math.nan


def wilson_interval(k: float, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes of ``n`` (NaN, NaN when n == 0).

    >>> lo, hi = wilson_interval(20, 20)
    >>> round(lo, 3), hi
    (0.839, 1.0)
    """
    if n <= 0:
        return math.nan, math.nan
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))  # p inside despite rounding


def proportion(x: np.ndarray, name: str) -> dict[str, float]:
    """Share of 1s in ``x`` with binomial MCSE and the 95 % Wilson interval, as columns."""
    x = x[np.isfinite(x)]
    n = x.size
    share = float(x.mean()) if n else math.nan
    lo, hi = wilson_interval(float(x.sum()), n)
    return {name: share, f"{name}__mcse": math.sqrt(share * (1 - share) / n) if n else math.nan,
            f"{name}__wilson_low": lo, f"{name}__wilson_high": hi}


def point_measures(est: np.ndarray, truth: np.ndarray, se: np.ndarray | None, p: str) -> dict[str, float]:
    """bias, rbias, empse, mse, rmse, modelse, relerror of one parameter, with MCSEs."""
    out: dict[str, float] = {}
    ok = np.isfinite(est) & np.isfinite(truth)
    est, truth = est[ok], truth[ok]
    e = est - truth
    m = e.size
    nan = math.nan
    bias = float(e.mean()) if m else nan
    mse = float(np.mean(e**2)) if m else nan
    empse = _sd(est)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = e / truth
    rel_ok = np.all(truth != 0)
    out[f"bias__{p}"] = bias
    out[f"bias__{p}__mcse"] = _sd(e) / math.sqrt(m) if m > 1 else nan
    out[f"rbias__{p}"] = float(rel.mean()) if m and rel_ok else nan
    out[f"rbias__{p}__mcse"] = _sd(rel) / math.sqrt(m) if m > 1 and rel_ok else nan
    out[f"empse__{p}"] = empse
    out[f"empse__{p}__mcse"] = empse / math.sqrt(2 * (m - 1)) if m > 1 else nan
    out[f"mse__{p}"] = mse
    mse_mcse = math.sqrt(float(np.sum((e**2 - mse) ** 2)) / (m * (m - 1))) if m > 1 else nan
    out[f"mse__{p}__mcse"] = mse_mcse
    out[f"rmse__{p}"] = math.sqrt(mse) if m else nan
    out[f"rmse__{p}__mcse"] = mse_mcse / (2 * math.sqrt(mse)) if m > 1 and mse > 0 else nan
    if se is not None:
        s2 = se[ok] ** 2
        s2 = s2[np.isfinite(s2)]
        k = s2.size
        modelse = math.sqrt(float(s2.mean())) if k else nan
        var_s2 = float(np.var(s2, ddof=1)) if k > 1 else nan
        out[f"modelse__{p}"] = modelse
        out[f"modelse__{p}__mcse"] = math.sqrt(var_s2 / (4 * k * modelse**2)) if k > 1 and modelse > 0 else nan
        ratio = modelse / empse if empse and empse > 0 else nan
        out[f"relerror__{p}"] = 100 * (ratio - 1)
        out[f"relerror__{p}__mcse"] = (100 * ratio * math.sqrt(var_s2 / (4 * k * modelse**4) + 1 / (2 * (m - 1)))
                                       if k > 1 and m > 1 and modelse > 0 else nan)
    return out


def _current_kinds(metric_kinds: dict[str, str]) -> dict[str, str]:
    out = dict(metric_kinds)
    for name, kind in metric_kinds.items():
        cur = current_name(f"{name}__by_param__x")
        if cur:
            out.setdefault(cur.split("__")[0], kind)
    for core in ("estimate", "se", "truth"):  # old post_mean/post_sd metrics now name core columns
        out.pop(core, None)
    return out


def _numeric(ok: pd.DataFrame) -> dict[str, np.ndarray]:
    """The numeric columns as float arrays, converted in one block (per-column access is slow)."""
    cols = [c for c, t in ok.dtypes.items() if pd.api.types.is_numeric_dtype(t)]
    arr = ok[cols].to_numpy(dtype=float, na_value=np.nan) if cols else np.empty((len(ok), 0))
    return {c: arr[:, j] for j, c in enumerate(cols)}


def cell_measures(df: pd.DataFrame, metric_kinds: dict[str, str]) -> dict[str, Any]:
    """Performance measures of one cell's rows (failed rows are counted, not measured)."""
    ok = add_current_names(df[df["status"] == "success"])
    kinds = _current_kinds(metric_kinds)
    n = len(ok)
    out: dict[str, Any] = {"n_tasks": len(df), "n_success": n, "n_failed": len(df) - n}
    X = _numeric(ok)
    for col in [c for c in X if c.startswith("estimate__")]:
        p = col[len("estimate__"):]
        if f"truth__{p}" not in X:
            continue
        out.update(point_measures(X[col], X[f"truth__{p}"], X.get(f"se__{p}"), p))
    ranks: dict[str, list[str]] = {}
    for col, x in X.items():
        parts = split_column(col)
        if parts is None or parts[2] or parts[0] not in kinds or col in out:
            continue
        name, p, _ = parts
        kind = kinds[name]
        if kind in ("coverage", "power"):
            out.update(proportion(x, col))
            if kind == "coverage" and f"{col}__lo" in X and f"estimate__{p}" in X:
                lo, hi, est = X[f"{col}__lo"], X[f"{col}__hi"], X[f"estimate__{p}"]
                fin = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(est)
                if fin.any():
                    centre = est[fin].mean()
                    be = ((lo[fin] <= centre) & (centre <= hi[fin])).astype(float)
                    out.update(proportion(be, f"be{col}"))
        elif kind == "rank":
            ranks.setdefault(name, []).append(p)
        elif kind == "rmse" and not p.startswith("pred_"):
            x = x[np.isfinite(x)]
            mse = float(np.mean(x**2)) if x.size else math.nan
            out[col] = math.sqrt(mse)
            mcse = math.sqrt(float(np.sum((x**2 - mse) ** 2)) / (x.size * (x.size - 1))) if x.size > 1 else math.nan
            out[f"{col}__mcse"] = mcse / (2 * math.sqrt(mse)) if mse > 0 else math.nan
        else:
            x = x[np.isfinite(x)]
            out[col] = float(x.mean()) if x.size else math.nan
            out[f"{col}__mcse"] = _sd(x) / math.sqrt(x.size) if x.size > 1 else math.nan
    for name, params in ranks.items():
        from .sbc import uniformity_pvalue

        for p in [q for q in params if q != "n_draws"]:  # n_draws: a pre-0.2 column
            mx = X.get(f"{name}__{p}__max", X.get(f"{name}__n_draws"))
            if mx is None or not np.isfinite(mx).any():
                continue
            out[f"{name}_pvalue__{p}"] = uniformity_pvalue(X[f"{name}__{p}"], int(np.nanmax(mx)))
    for col, how in (("rhat_max", "max"), ("n_divergent", "sum"), ("ess_bulk_min", "min"), ("timing_total", "mean")):
        if col in X and n:
            x = X[col]
            x = x[np.isfinite(x)]
            if x.size:
                out[f"{col}__{how}"] = float(getattr(np, how)(x))
    if "rhat_max" in X and n:
        out[f"share_rhat_gt_{RHAT_THRESHOLD:g}"] = float(np.mean(X["rhat_max"] > RHAT_THRESHOLD))
    return out
