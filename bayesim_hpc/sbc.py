"""Simulation-based calibration: ECDF of ranks with simultaneous bands, and a uniformity test.

Ranks ``r`` of the truth among ``L`` posterior draws are uniform on ``0..L`` for a calibrated
posterior. Following Säilynoja, Bürkner & Vehtari (2022, Stat Comput 32:32), the empirical
CDF of ``n`` ranks is evaluated at ``z_j = j / (L + 1)``; under uniformity ``n F(z_j)`` is
``Binomial(n, z_j)`` at each point. A band that holds *all* points at once with probability
``prob`` uses pointwise binomial quantiles at an adjusted level ``gamma``, found by
simulation: for uniform samples, ``s = min_j min(P(K <= k_j), P(K >= k_j))`` and ``gamma`` is
the ``1 - prob`` quantile of ``s``. The same statistic gives a test: the p-value of observed
ranks is the share of uniform samples with a smaller ``s`` (a simultaneous test, unlike a
chi-square on binned ranks, it needs no bins and looks at every part of the ECDF).

Example:
    >>> rng = np.random.default_rng(1)
    >>> ranks = rng.integers(0, 100, size=200)
    >>> band = ecdf_band(200, 99)
    >>> bool(inside_band(ranks, 99, band))
    True
    >>> 0 <= uniformity_pvalue(ranks, 99) <= 1
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["EcdfBand", "ecdf_band", "ecdf_counts", "ecdf_difference", "inside_band", "uniformity_pvalue"]

_MAX_POINTS = 200


@dataclass(frozen=True)
class EcdfBand:
    """A simultaneous band for the ECDF of ``n`` ranks on ``0..max_rank``.

    ``z``: evaluation points; ``lower``/``upper``: the band for F(z) (fractions);
    ``gamma``: the pointwise tail probability that makes it simultaneous; ``prob``: its level.
    """

    n: int
    max_rank: int
    prob: float
    z: np.ndarray
    j: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    gamma: float
    null_stats: np.ndarray  # sorted s of the uniform simulations


def _points(max_rank: int) -> np.ndarray:
    j = np.arange(1, max_rank + 1)
    if j.size > _MAX_POINTS:
        j = np.unique(np.linspace(1, max_rank, _MAX_POINTS).round().astype(int))
    return j


def ecdf_counts(ranks: np.ndarray, max_rank: int, j: np.ndarray | None = None) -> np.ndarray:
    """``k_j = #(ranks < j)`` at the evaluation points (rows: samples if ``ranks`` is 2-D)."""
    r = np.asarray(ranks)
    j = _points(max_rank) if j is None else j
    r2 = r.reshape(-1, r.shape[-1]).astype(np.int64)
    width = max_rank + 1
    flat = (np.arange(r2.shape[0])[:, None] * width + np.clip(r2, 0, max_rank)).ravel()
    counts = np.bincount(flat, minlength=r2.shape[0] * width).reshape(r2.shape[0], width)
    cum = np.cumsum(counts, axis=1)  # cum[:, m] = #(r <= m)
    out = cum[:, j - 1]
    return out if r.ndim > 1 else out[0]


def _stat(k: np.ndarray, n: int, z: np.ndarray) -> np.ndarray:
    from scipy.stats import binom

    lo = binom.cdf(k, n, z)          # P(K <= k)
    hi = binom.sf(k - 1, n, z)       # P(K >= k)
    return np.minimum(lo, hi).min(axis=-1)


@lru_cache(maxsize=64)
def _band(n: int, max_rank: int, prob: float, n_sim: int, seed: int) -> EcdfBand:
    from scipy.stats import binom

    j = _points(max_rank)
    z = j / (max_rank + 1)
    rng = np.random.default_rng(seed)
    stats = np.empty(n_sim)
    for a in range(0, n_sim, 500):
        b = min(n_sim, a + 500)
        k = ecdf_counts(rng.integers(0, max_rank + 1, size=(b - a, n)), max_rank, j)
        stats[a:b] = _stat(k, n, z)
    stats.sort()
    g = float(np.quantile(stats, 1 - prob, method="lower"))
    lower = binom.ppf(g, n, z) / n
    upper = binom.isf(g, n, z) / n
    return EcdfBand(n, max_rank, prob, z, j, lower, upper, 2 * g, stats)


def ecdf_band(n: int, max_rank: int, prob: float = 0.95, n_sim: int = 2000, seed: int = 20220101) -> EcdfBand:
    """The simultaneous ``prob`` band for the ECDF of ``n`` uniform ranks on ``0..max_rank``."""
    if n < 1 or max_rank < 1:
        raise ValueError(f"ecdf_band needs n >= 1 and max_rank >= 1, got n={n}, max_rank={max_rank}")
    return _band(int(n), int(max_rank), float(prob), int(n_sim), int(seed))


def inside_band(ranks: np.ndarray, max_rank: int, band: EcdfBand) -> np.ndarray | bool:
    """Whether the ECDF of ``ranks`` (one sample, or rows of samples) lies inside ``band``."""
    f = ecdf_counts(ranks, max_rank, band.j) / band.n
    eps = 1e-12
    return np.all((f >= band.lower - eps) & (f <= band.upper + eps), axis=-1)


def ecdf_difference(ranks: np.ndarray, max_rank: int, prob: float = 0.95) -> dict[str, np.ndarray]:
    """What the ECDF-difference plot draws: ``z``, ``F(z) - z`` and the band minus ``z``."""
    r = np.asarray(ranks)[np.isfinite(ranks)].astype(int)
    band = ecdf_band(r.size, max_rank, prob)
    f = ecdf_counts(r, max_rank, band.j) / r.size
    return {"z": band.z, "diff": f - band.z, "lower": band.lower - band.z, "upper": band.upper - band.z}


def uniformity_pvalue(ranks: np.ndarray, max_rank: int, n_sim: int = 2000) -> float:
    """P-value of the simultaneous ECDF test of uniform ranks (NaN with fewer than 2 ranks)."""
    r = np.asarray(ranks, dtype=float)
    r = r[np.isfinite(r)].astype(int)
    if r.size < 2:
        return float("nan")
    band = ecdf_band(r.size, max_rank, 0.95, n_sim)
    s = float(_stat(ecdf_counts(r, max_rank, band.j), r.size, band.z))
    return float((np.searchsorted(band.null_stats, s, side="right") + 1) / (band.null_stats.size + 1))
