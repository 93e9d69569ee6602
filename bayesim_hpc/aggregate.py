"""Per-cell performance measures with Monte Carlo standard errors.

For each parameter with an estimate (posterior mean) and a true value, following Morris,
White and Crowther (2019, Stat Med 38:2074, Table 6), with ``e_i = est_i - truth_i`` over
the ``n`` successful replicates of a cell:

* bias = mean(e), MCSE = sd(e) / sqrt(n)
* empirical SE = sd(est), MCSE = empSE / sqrt(2 (n - 1))
* MSE = mean(e^2), MCSE = sqrt(sum((e^2 - MSE)^2) / (n (n - 1)))
* coverage (metrics of kind ``coverage``) = mean(c), MCSE = sqrt(cov (1 - cov) / n)

Other metric columns get their mean and MCSE sd/sqrt(n); rank columns (SBC) are left to the
report's histograms. Columns are named ``<measure>__<param>`` and ``<...>__mcse``.

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

__all__ = ["cell_measures"]


def _sd(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if x.size > 1 else math.nan


def cell_measures(df: pd.DataFrame, metric_kinds: dict[str, str]) -> dict[str, Any]:
    """Performance measures of one cell's rows (failed rows are counted, not measured)."""
    ok = df[df["status"] == "success"]
    n = len(ok)
    out: dict[str, Any] = {"n_tasks": len(df), "n_success": n, "n_failed": len(df) - n}
    for col in [c for c in df.columns if c.startswith("estimate__")]:
        p = col[len("estimate__"):]
        if f"truth__{p}" not in df.columns:
            continue
        est = ok[col].to_numpy(float)
        e = est - ok[f"truth__{p}"].to_numpy(float)
        e, est = e[np.isfinite(e)], est[np.isfinite(est)]
        m = e.size
        bias = float(e.mean()) if m else math.nan
        mse = float(np.mean(e**2)) if m else math.nan
        empse = _sd(est)
        out[f"bias__{p}"] = bias
        out[f"bias__{p}__mcse"] = _sd(e) / math.sqrt(m) if m > 1 else math.nan
        out[f"empse__{p}"] = empse
        out[f"empse__{p}__mcse"] = empse / math.sqrt(2 * (m - 1)) if m > 1 else math.nan
        out[f"mse__{p}"] = mse
        out[f"mse__{p}__mcse"] = (math.sqrt(float(np.sum((e**2 - mse) ** 2)) / (m * (m - 1))) if m > 1 else math.nan)
    for col in df.columns:
        name = col.split("__", 1)[0]
        kind = metric_kinds.get(name)
        if kind is None or kind == "rank" or col == name:
            continue
        x = ok[col].to_numpy(float)
        x = x[np.isfinite(x)]
        mean = float(x.mean()) if x.size else math.nan
        out[col] = mean
        if kind == "coverage":
            out[f"{col}__mcse"] = math.sqrt(mean * (1 - mean) / x.size) if x.size else math.nan
        else:
            out[f"{col}__mcse"] = _sd(x) / math.sqrt(x.size) if x.size > 1 else math.nan
    for col, how in (("rhat_max", "max"), ("divergent", "sum"), ("ess_bulk", "min"), ("timing_total", "mean")):
        if col in ok.columns and n:
            x = ok[col].to_numpy(float)
            x = x[np.isfinite(x)]
            if x.size:
                out[f"{col}__{how}"] = float(getattr(np, how)(x))
    if "rhat_max" in ok.columns and n:
        out["share_rhat_gt_1.01"] = float(np.mean(ok["rhat_max"].to_numpy(float) > 1.01))
    return out
