"""Paired comparisons between fit rows (methods) that saw the same datasets.

Every fit row of a data row fits the same dataset in replicate ``r`` (common random
numbers), so the difference of two methods' performance is estimated from per-replicate
differences, and its Monte Carlo SE uses their correlation (Morris, White & Crowther 2019,
section 5.2): for bias, ``d_i = e_i(A) - e_i(ref)`` and MCSE ``sd(d) / sqrt(n)``, which is
far smaller than the unpaired ``sqrt((var(e(A)) + var(e(ref))) / n)`` when the errors are
positively correlated. Likewise for MSE (``d_i = e_i(A)^2 - e_i(ref)^2``) and for each
coverage metric (difference of 0/1 indicators). ``relprec`` is rsimsum's relative
precision, ``100 ((empse_ref / empse_A)^2 - 1)``, MCSE
``200 (empse_ref / empse_A)^2 sqrt((1 - rho^2) / (n - 1))`` with ``rho`` the correlation of
the two methods' estimates. Only replicates where both fits succeeded are paired.

Columns per parameter ``p``: ``bias_diff__p``, ``mse_diff__p``, ``cover90_diff__p`` (per
coverage metric), ``relprec__p``, each with ``__mcse``; the differences also with
``__mcse_unpaired`` (what ignoring the pairing would give, for comparison).

Example:
    >>> res = load_results("results/my_study")                    # doctest: +SKIP
    >>> res.compare(reference={"model": "linear"})                 # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .names import add_current_names, split_column

__all__ = ["compare", "compare_summary"]


def _sd(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if x.size > 1 else math.nan


def _diff(a: np.ndarray, b: np.ndarray, name: str) -> dict[str, float]:
    n = a.size
    d = a - b
    return {name: float(d.mean()) if n else math.nan,
            f"{name}__mcse": _sd(d) / math.sqrt(n) if n > 1 else math.nan,
            f"{name}__mcse_unpaired": math.sqrt((_sd(a) ** 2 + _sd(b) ** 2) / n) if n > 1 else math.nan}


def _reference_idx(summary: pd.DataFrame, reference: int | dict | None) -> int:
    fits = summary.drop_duplicates("fit_idx").sort_values("fit_idx")
    if reference is None:
        return int(fits["fit_idx"].iloc[0])
    if isinstance(reference, (int, np.integer)):
        if int(reference) not in set(fits["fit_idx"]):
            raise ValueError(f"compare(reference={reference}): no fit row with fit_idx {reference}; "
                             f"fit rows: {sorted(fits['fit_idx'].tolist())}")
        return int(reference)
    if isinstance(reference, dict):
        sel = fits
        for k, v in reference.items():
            col = f"fit_{k}"
            if col not in sel.columns:
                raise ValueError(f"compare(reference={reference!r}): the fit grid has no column {k!r}; it has "
                                 f"{[c[4:] for c in fits.columns if c.startswith('fit_') and c != 'fit_idx']}")
            sel = sel[sel[col].astype(str) == str(v)]
        if len(sel) != 1:
            raise ValueError(f"compare(reference={reference!r}) matches {len(sel)} fit rows; name exactly one")
        return int(sel["fit_idx"].iloc[0])
    raise TypeError("compare(reference=...) takes a fit_idx (int), a dict of fit grid values, or None")


def compare_summary(summary: pd.DataFrame, metric_kinds: dict[str, str], reference: int | dict | None = None
                    ) -> pd.DataFrame:
    """The comparison table from a summary frame (see the module docstring)."""
    s = add_current_names(summary[summary["status"] == "success"])
    if s.empty:
        return pd.DataFrame()
    ref = _reference_idx(s, reference)
    params = [c[len("estimate__"):] for c in s.columns if c.startswith("estimate__") and f"truth__{c[10:]}" in s.columns]
    cover_cols = []
    for c in s.columns:
        parts = split_column(c)
        if parts and not parts[2] and metric_kinds.get(parts[0], "") in ("coverage", "power"):
            cover_cols.append(c)
    if not cover_cols:  # pre-0.2 directory: the kinds name old metrics; the current names start with cover
        cover_cols = [c for c in s.columns if (split_column(c) or ("", "", "x"))[0].startswith("cover")
                      and not (split_column(c) or ("", "", "x"))[2]]
    dcols = [c for c in s.columns if c.startswith("data_") and c != "data_idx"]
    fcols = [c for c in s.columns if c.startswith("fit_") and c != "fit_idx"]
    rows: list[dict[str, Any]] = []
    for d, block in s.groupby("data_idx", sort=True):
        base = block[block["fit_idx"] == ref].set_index("rep_idx")
        for f, other in block[block["fit_idx"] != ref].groupby("fit_idx", sort=True):
            other = other.set_index("rep_idx")
            reps = base.index.intersection(other.index)
            a, b = other.loc[reps], base.loc[reps]
            row: dict[str, Any] = {c: block[c].iloc[0] for c in dcols}
            row.update({c: other[c].iloc[0] for c in fcols})
            row.update(data_idx=int(d), fit_idx=int(f), reference_fit_idx=ref, n_pairs=int(reps.size))
            for p in params:
                ea = (a[f"estimate__{p}"] - a[f"truth__{p}"]).to_numpy(float)
                eb = (b[f"estimate__{p}"] - b[f"truth__{p}"]).to_numpy(float)
                ok = np.isfinite(ea) & np.isfinite(eb)
                ea, eb = ea[ok], eb[ok]
                row.update(_diff(ea, eb, f"bias_diff__{p}"))
                row.update(_diff(ea**2, eb**2, f"mse_diff__{p}"))
                xa = a[f"estimate__{p}"].to_numpy(float)[ok]
                xb = b[f"estimate__{p}"].to_numpy(float)[ok]
                n = xa.size
                sa, sb = _sd(xa), _sd(xb)
                if n > 2 and sa > 0 and sb > 0:
                    rho = float(np.corrcoef(xa, xb)[0, 1])
                    ratio2 = (sb / sa) ** 2
                    row[f"relprec__{p}"] = 100 * (ratio2 - 1)
                    row[f"relprec__{p}__mcse"] = 200 * ratio2 * math.sqrt(max(0.0, 1 - rho**2) / (n - 1))
                else:
                    row[f"relprec__{p}"] = row[f"relprec__{p}__mcse"] = math.nan
            for c in cover_cols:
                name, p, _ = split_column(c)
                ca, cb = a[c].to_numpy(float), b[c].to_numpy(float)
                ok = np.isfinite(ca) & np.isfinite(cb)
                row.update(_diff(ca[ok], cb[ok], f"{name}_diff__{p}"))
            rows.append(row)
    return pd.DataFrame(rows)


def compare(result, reference: int | dict | None = None) -> pd.DataFrame:
    """Per data row and fit row: differences to the ``reference`` fit row with paired MCSEs.

    ``reference``: a ``fit_idx`` (1-based), a dict of fit grid values (``{"model": "linear"}``)
    or None for the first fit row. Empty when the study has one fit row.
    """
    return compare_summary(result.summary, result.rd.read_frozen().raw.get("metric_kinds", {}), reference)
