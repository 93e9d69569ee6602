"""Vectorised MCMC convergence diagnostics (Vehtari et al. 2021), matching ArviZ.

All functions take draws with dims ``(chain, draw, *shape)`` and compute the parameters
together in vectorised numpy (blocks of parameters, never one parameter at a time):

- :func:`rhat`: rank-normalised split R-hat, the larger of the bulk and the folded (tail)
  version - what ``arviz.rhat(method="rank")`` returns.
- :func:`ess_bulk`: ``arviz.ess(method="bulk")`` - ESS of the rank-normalised split chains.
- :func:`ess_tail`: ``arviz.ess(method="tail")`` - the smaller ESS of the 5 % and 95 %
  quantile indicators.
- :func:`diagnose`: all three from one pass (what :func:`summarize_draws` uses): one sort
  per parameter gives the bulk ranks, the median fold (two sorted runs, merged) and the
  tail quantiles; one buffer holds [folded z | bulk z | 5 % | 95 % indicators] so R-hat and
  the three ESS series are computed without copies, the ESS ones in a single batched FFT.

The numbers agree with ArviZ 0.23.4 to about 1e-14 relative (tested to 1e-6): the same
split, the same average-tie ranks and Blom offset ``(r - 3/8) / (S + 1/4)``, the same
``scipy.stats.norm.ppf``, the same type-7 quantile (``mquantiles(alphap=1, betap=1)``),
FFT autocovariance (zero-padded to a power of two >= 2n, exact like ArviZ's
``next_fast_len(2n)`` up to rounding, and about twice as fast), and Geyer's initial
positive + monotone sequence written in closed form (cumulative minimum of lag pairs).

Edge cases follow ArviZ: a parameter with any NaN gives NaN; fewer than 4 draws gives
NaN; R-hat with one chain gives NaN; constant draws give R-hat NaN and ESS equal to the
number of (split) draws. Input is converted to float64. One deliberate difference: when
every split chain is constant but the chains differ, R-hat is ``inf`` here, whereas ArviZ
divides by rounding noise and returns an arbitrary huge number (e.g. 7e7).

Example:
    >>> x = np.random.default_rng(0).normal(size=(4, 1000, 3))
    >>> rhat(x).shape
    (3,)
    >>> summarize_draws({"mu": x[..., 0], "beta": x[..., 1:]})["rhat_max"] < 1.01
    True
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np
from scipy.special import ndtri  # what scipy.stats.norm.ppf computes; importing scipy.stats costs ~1 s

__all__ = ["rhat", "ess_bulk", "ess_tail", "diagnose", "summarize_draws"]

#: convergence thresholds used everywhere (the fitter's warnings, the per-cell share, the report):
#: R-hat above this is flagged (Vehtari et al. 2021); bulk/tail ESS below this many per chain is low
RHAT_THRESHOLD = 1.01
ESS_PER_CHAIN = 100.0

_BLOM_C = 3 / 8
_TAIL_PROBS = (0.05, 0.95)


@lru_cache(maxsize=32)
def _z_table(size: int) -> np.ndarray:
    """Normal scores for every possible doubled average rank ``2r`` in ``0..2*size``.

    Average ranks of ties are multiples of 1/2, so ``2r`` is an integer and a lookup in
    this table gives exactly ``norm.ppf((r - c) / (size - 2c + 1))`` as ArviZ computes it.
    """
    r = np.arange(2 * size + 1, dtype=float) / 2.0
    table = ndtri((r - _BLOM_C) / (size - 2 * _BLOM_C + 1))
    table.flags.writeable = False
    return table


@lru_cache(maxsize=32)
def _z_rows(size: int, n_rows: int) -> np.ndarray:
    """Scores of the ranks ``1..size`` (no ties), repeated for ``n_rows`` rows, flat."""
    z = np.tile(_z_table(size)[2 : 2 * size + 1 : 2], n_rows)
    z.flags.writeable = False
    return z


def _z_scatter(sorted_vals: np.ndarray, dest: np.ndarray, out: np.ndarray) -> bool:
    """Scatter normal scores of average ranks into ``out`` (flat, rows x size).

    ``sorted_vals[p]`` is row p sorted ascending and ``dest`` (flat, same length) the flat
    position in ``out`` of each sorted value. Ties are found sparsely (they are rare in
    continuous draws). Returns True when some row has ties.
    """
    n_rows, size = sorted_vals.shape
    base = _z_rows(size, n_rows)
    tie_r, tie_c = np.nonzero(sorted_vals[:, 1:] == sorted_vals[:, :-1])
    if tie_r.size == 0:
        out[dest] = base
        return False
    z = base.copy()
    # runs of consecutive tied pairs (c, c+1) form one tie group [c_first, c_last + 1]
    pos = tie_r * size + tie_c
    new_run = np.empty(pos.size, dtype=bool)
    new_run[0] = True
    new_run[1:] = np.diff(pos) != 1
    run_first = pos[new_run]
    run_last = pos[np.append(new_run[1:], True)]
    length = run_last - run_first + 2  # elements in each group
    # average rank (1-based) = (c_first + 1 + c_last + 2) / 2 -> doubled: c_first + c_last + 3
    c_first = run_first % size
    twice = c_first + (run_last % size) + 3
    elem = np.repeat(run_first - np.cumsum(length) + length, length) + np.arange(length.sum())
    z[elem] = np.repeat(_z_table(size)[twice], length)
    out[dest] = z
    return True


def _rhat_from(z: np.ndarray, check_constant: bool = True) -> np.ndarray:
    """Classic R-hat of (rows, chains, draws) arrays (ArviZ ``_rhat``)."""
    n = z.shape[2]
    chain_mean = z.mean(axis=2)
    dev = z - chain_mean[:, :, None]
    dev *= dev
    chain_var = dev.sum(axis=2) / (n - 1)
    if check_constant:
        # a chain of identical values has variance 0 exactly (not rounding noise), so
        # chains stuck at different values give R-hat inf; ArviZ returns a huge finite
        # number there. (Without ties no chain of >= 2 draws can be constant.)
        chain_var[z.max(axis=2) == z.min(axis=2)] = 0.0
    between = n * chain_mean.var(axis=1, ddof=1)
    within = chain_var.mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt((between / within + n - 1) / n)


@lru_cache(maxsize=32)
def _fft_len(n_draw: int) -> int:
    """FFT length for the autocovariance of ``n_draw`` draws: a power of two >= 2 n.

    Any length >= 2n - 1 gives the exact (linear) autocovariance; ArviZ pads to
    ``next_fast_len(2n)`` (1000 for 500 draws), a power of two is about twice as fast
    in numpy's FFT and changes the result only by rounding (~1e-15 relative).
    """
    return 1 << max(1, (2 * n_draw - 1).bit_length())


def _ess_from(y: np.ndarray, const: np.ndarray | None = None) -> np.ndarray:
    """ESS of (rows, chains, draws) arrays, ArviZ ``_ess`` vectorised over rows.

    const: optional (rows,) bool, rows known to be constant (else found here).
    """
    n_rows, n_chain, n_draw = y.shape
    size = n_chain * n_draw
    out = np.full(n_rows, np.nan)
    if const is None:
        const = (y.max(axis=(1, 2)) - y.min(axis=(1, 2))) < np.finfo(float).resolution
    out[const] = size
    work = ~const
    if not work.any():
        return out
    if not work.all():
        y = y[work]
    chain_mean = y.mean(axis=2)
    m = _fft_len(n_draw)
    f = np.fft.rfft(y - chain_mean[:, :, None], n=m, axis=2).view(float)
    f *= f
    # |F|^2 averaged over chains (the irfft is linear, so average before it)
    f = f.sum(axis=1)  # (rows, 2 * n_freq): (re^2, im^2) pairs summed over chains
    power = (f[:, 0::2] + f[:, 1::2]) / n_chain
    acov = np.fft.irfft(power, n=m, axis=1)[:, :n_draw] / n_draw  # (rows, n_draw)

    mean_var = acov[:, 0] * n_draw / (n_draw - 1.0)
    var_plus = mean_var * (n_draw - 1.0) / n_draw
    if n_chain > 1:
        var_plus = var_plus + chain_mean.var(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = 1.0 - (mean_var[:, None] - acov) / var_plus[:, None]
    rho[:, 0] = 1.0

    # Geyer: pairs P_k = rho[2k] + rho[2k+1]; ArviZ reads pairs k = 1..k_max while all
    # earlier pairs are > 0, keeps the last one read if >= 0 (or just its even term if
    # > 0), then replaces pair sums by their running minimum (initial monotone sequence).
    k_max = len(range(1, n_draw - 3, 2))
    pairs = rho[:, 0 : 2 * k_max + 1 : 2] + rho[:, 1 : 2 * k_max + 2 : 2]
    not_pos = ~(pairs > 0)
    k_last = np.where(not_pos.any(axis=1), not_pos.argmax(axis=1), k_max)
    running_min = np.minimum.accumulate(pairs, axis=1)
    kept = np.arange(k_max + 1)[None, :] < k_last[:, None]
    pair_sum = np.where(kept, running_min, 0.0).sum(axis=1)
    r = np.arange(len(k_last))
    rho_even = rho[r, 2 * k_last]
    last_pair = pairs[r, k_last]
    tail = np.where((k_last == 0) | (last_pair >= 0) | (rho_even > 0), rho_even, 0.0)
    tau = -1.0 + 2.0 * pair_sum + tail
    tau = np.maximum(tau, 1 / np.log10(size))  # NaN propagates, as in ArviZ
    ess = size / tau
    ess[np.isnan(rho[:, 1])] = np.nan
    out[work] = ess
    return out


def _as_3d(x) -> tuple[np.ndarray, tuple[int, ...]]:
    a = np.asarray(x, dtype=float)
    if a.ndim < 2:
        raise ValueError(f"draws need dims (chain, draw, ...), got shape {a.shape}")
    shape = a.shape[2:]
    return a.reshape(a.shape[0], a.shape[1], -1), shape


#: Parameters are processed in blocks of about this many draws (each block vectorised),
#: so temporaries stay in cache and small enough for malloc to reuse.
_BLOCK_DRAWS = 8_000


def _diagnose3(
    x: np.ndarray, want_rhat: bool = True, want_bulk: bool = True, want_tail: bool = True
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Diagnostics of a (chain, draw, n_params) float64 array; each (n_params,) or None."""
    n_chain, n_draw, n_par = x.shape
    block = max(1, _BLOCK_DRAWS // max(1, n_chain * n_draw))
    if n_par <= block:
        return _diagnose_block(x, want_rhat, want_bulk, want_tail)
    parts = [
        _diagnose_block(x[:, :, i : i + block], want_rhat, want_bulk, want_tail)
        for i in range(0, n_par, block)
    ]
    return tuple(None if p[0] is None else np.concatenate(p) for p in zip(*parts))


def _diagnose_block(
    x: np.ndarray, want_rhat: bool, want_bulk: bool, want_tail: bool
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    n_chain, n_draw, n_par = x.shape
    nan = np.full(n_par, np.nan)
    res_rhat = nan.copy() if want_rhat else None
    res_bulk = nan.copy() if want_bulk else None
    res_tail = nan.copy() if want_tail else None
    if n_draw < 4 or n_par == 0 or n_chain < 1:
        return res_rhat, res_bulk, res_tail
    half = n_draw // 2
    n_split = 2 * n_chain
    size = n_split * half
    # One buffer, rows in blocks of n_par: [folded z | bulk z | 5 % indicator | 95 % indicator],
    # so R-hat reads blocks 0-1 and the ESS blocks 1-3 without copies. Block 2 first holds
    # the split chains: (params, split chains, half draws).
    i_fold, i_bulk, i_tail = 0, 1, 2
    buf = np.empty((4, n_par, n_split, half))
    split = buf[i_tail]
    xt = x.transpose(2, 0, 1)
    split[:, :n_chain] = xt[:, :, :half]
    split[:, n_chain:] = xt[:, :, n_draw - half :]
    flat = split.reshape(n_par, size)
    # a parameter with any NaN gets NaN (checked on the contiguous split, plus the middle
    # draw that an odd split leaves out)
    bad = np.isnan(flat).any(axis=1)
    if n_draw % 2:
        bad |= np.isnan(x[:, half, :]).any(axis=0)
    if bad.any():
        if bad.all():
            return res_rhat, res_bulk, res_tail
        good = ~bad
        sub = _diagnose_block(np.ascontiguousarray(x[:, :, good]), want_rhat, want_bulk, want_tail)
        for res, part in zip((res_rhat, res_bulk, res_tail), sub):
            if res is not None:
                res[good] = part
        return res_rhat, res_bulk, res_tail
    pv = n_par
    do_rhat = want_rhat and n_chain >= 2
    tail_sorted = want_tail and n_draw % 2 == 0  # the split keeps every draw: reuse the sort
    if want_bulk or do_rhat or tail_sorted:
        offs = (np.arange(pv) * size)[:, None]
        order = np.argsort(flat, axis=1)
        dest = (order + offs).ravel()  # flat position of each sorted value
        sorted_vals = flat.reshape(-1)[dest].reshape(pv, size)
    if want_bulk or do_rhat:
        ties = _z_scatter(sorted_vals, dest, buf[i_bulk].reshape(-1))

    if do_rhat:
        # fold around the median: abs(x - med) is two sorted runs of the sorted values
        h = size // 2  # size is even
        med = (sorted_vals[:, h - 1] + sorted_vals[:, h]) / 2.0
        folded = np.empty((pv, size))
        np.subtract(med[:, None], sorted_vals[:, h - 1 :: -1], out=folded[:, :h])
        np.subtract(sorted_vals[:, h:], med[:, None], out=folded[:, h:])
        forder = np.argsort(folded, axis=1, kind="stable")  # merges the two runs
        fsorted = folded.reshape(-1)[(forder + offs).ravel()].reshape(pv, size)
        pos_in_sorted = np.where(forder < h, h - 1 - forder, forder)
        fties = _z_scatter(fsorted, dest[(pos_in_sorted + offs).ravel()], buf[i_fold].reshape(-1))
        both = _rhat_from(buf[:2].reshape(2 * pv, n_split, half), check_constant=ties or fties)
        bulk_r, tail_r = both[pv:], both[:pv]
        # Python's max(bulk, tail) as ArviZ uses it: NaN bulk wins, NaN tail loses
        res_rhat[:] = np.where(np.isnan(bulk_r) | ~(tail_r > bulk_r), bulk_r, tail_r)

    if want_bulk or want_tail:
        first = i_bulk if want_bulk else i_tail
        last = 4 if want_tail else i_bulk + 1
        const = []
        if want_bulk:
            const.append(sorted_vals[:, 0] == sorted_vals[:, -1])
        if want_tail:
            if tail_sorted:
                srt = sorted_vals
            else:
                srt = np.sort(x.transpose(2, 0, 1).reshape(pv, -1), axis=1)
            n_all = srt.shape[1]
            qs = []
            for p in _TAIL_PROBS:
                # scipy.stats.mstats.mquantiles(alphap=1, betap=1), as ArviZ's quantile
                m = 1.0 + p * (1.0 - 1.0 - 1.0)
                aleph = n_all * p + m
                k = int(math.floor(min(max(aleph, 1), n_all - 1)))
                gamma = min(max(aleph - k, 0.0), 1.0)
                qs.append((1.0 - gamma) * srt[:, k - 1] + gamma * srt[:, k])
            # the indicators overwrite the split chains (block 2 is read before block 3)
            for j, q in zip((i_tail + 1, i_tail), qs[::-1]):
                ind = buf[j].reshape(pv, size)
                below = np.less_equal(flat, q[:, None])
                n_below = np.count_nonzero(below, axis=1)
                const.append((n_below == 0) | (n_below == size))
                ind[...] = below
            const[-2:] = const[-2:][::-1]
        ess = _ess_from(
            buf[first:last].reshape((last - first) * pv, n_split, half), np.concatenate(const)
        )
        i = 0
        if want_bulk:
            res_bulk[:] = ess[:pv]
            i = pv
        if want_tail:
            lo, hi = ess[i : i + pv], ess[i + pv : i + 2 * pv]
            # Python's min(lo, hi): NaN lo wins, NaN hi loses
            res_tail[:] = np.where(np.isnan(lo) | ~(hi < lo), lo, hi)
    return res_rhat, res_bulk, res_tail


def _shaped(v: np.ndarray, shape: tuple[int, ...]):
    return float(v[0]) if shape == () else v.reshape(shape)


def rhat(x) -> np.ndarray | float:
    """Rank-normalised split R-hat (max of bulk and tail), like ``arviz.rhat``.

    x: draws with dims (chain, draw, *shape). Returns an array of ``shape``
    (a float for 2-D input). NaN with fewer than 2 chains or 4 draws.
    """
    a, shape = _as_3d(x)
    return _shaped(_diagnose3(a, True, False, False)[0], shape)


def ess_bulk(x) -> np.ndarray | float:
    """Bulk effective sample size, like ``arviz.ess(method="bulk")``."""
    a, shape = _as_3d(x)
    return _shaped(_diagnose3(a, False, True, False)[1], shape)


def ess_tail(x) -> np.ndarray | float:
    """Tail effective sample size (5 % and 95 % quantiles), like ``arviz.ess(method="tail")``."""
    a, shape = _as_3d(x)
    return _shaped(_diagnose3(a, False, False, True)[2], shape)


def diagnose(x) -> tuple:
    """``(rhat, ess_bulk, ess_tail)`` of draws (chain, draw, *shape), sharing one sort."""
    a, shape = _as_3d(x)
    return tuple(_shaped(v, shape) for v in _diagnose3(a))


def _nan_reduce(fn, v: np.ndarray) -> float:
    v = np.asarray(v, dtype=float)
    if v.size == 0 or np.isnan(v).all():
        return float("nan")
    return float(fn(v))


def summarize_draws(
    draws: Mapping[str, np.ndarray], vars: Sequence[str] | None = None
) -> dict[str, float]:
    """Convergence summary of a fit's draws.

    draws: name -> array (chain, draw, *shape); every variable must have the same chains
        and draws. vars: the variables to summarise (default: all).

    Returns a flat dict: ``rhat_max`` (largest R-hat), ``ess_bulk_min`` and ``ess_tail_min``
    (smallest ESS), over every element of the chosen variables, NaNs skipped (NaN only
    when all are NaN); and per variable ``rhat.<name>`` (max over its elements),
    ``ess_bulk.<name>`` and ``ess_tail.<name>`` (min over its elements).
    """
    names = list(draws) if vars is None else [str(v) for v in vars]
    missing = [n for n in names if n not in draws]
    if missing:
        raise KeyError(f"summarize_draws: no draws for {missing}; have {sorted(draws)}")
    out: dict[str, float] = {}
    if not names:
        out.update(rhat_max=float("nan"), ess_bulk_min=float("nan"), ess_tail_min=float("nan"))
        return out
    arrays = []
    for n in names:
        a = np.asarray(draws[n], dtype=float)
        if a.ndim < 2:
            raise ValueError(f"draws[{n!r}] has shape {a.shape}; need (chain, draw, ...)")
        arrays.append(a.reshape(a.shape[0], a.shape[1], -1))
    cd = {a.shape[:2] for a in arrays}
    if len(cd) != 1:
        raise ValueError(f"summarize_draws: variables differ in (chain, draw): {sorted(cd)}")
    allx = np.concatenate(arrays, axis=2) if len(arrays) > 1 else arrays[0]
    r, eb, et = _diagnose3(allx)
    out["rhat_max"] = _nan_reduce(np.nanmax, r)
    out["ess_bulk_min"] = _nan_reduce(np.nanmin, eb)
    out["ess_tail_min"] = _nan_reduce(np.nanmin, et)
    start = 0
    for n, a in zip(names, arrays):
        sl = slice(start, start + a.shape[2])
        start = sl.stop
        out[f"rhat.{n}"] = _nan_reduce(np.nanmax, r[sl])
        out[f"ess_bulk.{n}"] = _nan_reduce(np.nanmin, eb[sl])
        out[f"ess_tail.{n}"] = _nan_reduce(np.nanmin, et[sl])
    return out
