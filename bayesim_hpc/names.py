"""Column names: one name per quantity, and the aliases that keep old result directories readable.

Summary columns (one row per task) and cells columns (one row per cell) share one scheme::

    <measure>__<param>             e.g. bias__slope, cover90__slope, rmse__slope
    <measure>__<param>__<detail>   e.g. bias__slope__mcse, cover90__slope__wilson_low,
                                        cover90__slope__lo (a task's interval bounds)

A metric column in the summary holds the task's value; the cells column of the same name
holds the measure over a cell's replicates (the mean of a bias or a coverage indicator, the
root mean square of an error for ``rmse``). Coverage, interval width and power carry their
nominal level in the name (``cover90``, ``width90``, ``power95``); :func:`nominal_level`
reads it back. No column averages different parameters.

Before version 0.2 metric columns were ``<metric>__by_param__<param>`` plus cross-parameter
averages (``rmse__value``, ``bias__value``, ``coverage__mean``), and the default coverage
metric was called ``coverage``. :func:`current_name` maps an old per-parameter name to its
current one; the cross-parameter averages have none (they are a different quantity) and
keep their old name in old directories. ``load_results`` adds the current names to the
frames of old directories and keeps the old ones beside them (see docs/metrics.md).

Before version 0.3 the sampler diagnostics were ``divergent`` and ``max_treedepth`` (counts,
now ``n_divergent`` and ``n_max_treedepth``) and ``ess_bulk``/``ess_tail`` (minima over the
variables, now ``ess_bulk_min`` and ``ess_tail_min``); their cells columns were
``divergent__sum`` and ``ess_bulk__min``. :func:`current_name` maps them too.

Example:
    >>> current_name("coverage__by_param__slope")
    'cover90__slope'
    >>> current_name("coverage_50__by_param__slope__mcse")
    'cover50__slope__mcse'
    >>> current_name("bias__value") is None
    True
    >>> current_name("divergent"), current_name("ess_bulk__min")
    ('n_divergent', 'ess_bulk_min__min')
    >>> nominal_level("cover90")
    0.9
"""

from __future__ import annotations

import re

import pandas as pd

__all__ = ["current_name", "add_current_names", "add_legacy_names", "nominal_level", "split_column",
           "level_suffix", "LEGACY_AGGREGATES", "DIAGNOSTIC_RENAMES"]

#: sampler diagnostics renamed in 0.3: a count says so (``n_``), a minimum says so (``_min``)
DIAGNOSTIC_RENAMES = {"divergent": "n_divergent", "max_treedepth": "n_max_treedepth",
                      "ess_bulk": "ess_bulk_min", "ess_tail": "ess_tail_min"}
#: the cells columns of those diagnostics before 0.3
_OLD_DIAGNOSTIC_CELLS = {"divergent__sum": "n_divergent__sum", "ess_bulk__min": "ess_bulk_min__min"}

#: old cross-parameter aggregates: no current name, never produced by this version
LEGACY_AGGREGATES = ("rmse__value", "rmse__n_obs", "bias__value", "coverage__mean", "width__mean")

_OLD_PREFIX = {"post_mean": "estimate", "post_sd": "se"}
_TRAILING_LEVEL = re.compile(r"(?<![0-9])(\d+(?:_\d+)?)$")
_OLD_LEVELLED = re.compile(r"^(coverage|width)(?:_(\d+))?$")


def level_suffix(prob: float) -> str:
    """``0.9 -> "90"``, ``0.975 -> "97_5"``: the nominal level as it appears in a name."""
    return f"{float(prob) * 100:g}".replace(".", "_")


def nominal_level(measure: str) -> float | None:
    """The nominal level at the end of a coverage/width/power name (``cover90`` -> 0.9,
    ``cov_pymc50`` -> 0.5), or None (``coverage``)."""
    m = _TRAILING_LEVEL.search(measure)
    if m is None or not 0 < float(m.group(1).replace("_", ".")) < 100:
        return None
    return round(float(m.group(1).replace("_", ".")) / 100, 6)


def split_column(col: str) -> tuple[str, str, str] | None:
    """``"cover90__slope__mcse" -> ("cover90", "slope", "mcse")``; detail is "" when absent."""
    parts = col.split("__")
    if len(parts) == 2:
        return parts[0], parts[1], ""
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    return None


def current_name(col: str) -> str | None:
    """The current name of an old column (a pre-0.2 per-parameter name, a pre-0.3 diagnostic),
    or None if ``col`` is not an old name."""
    if col in DIAGNOSTIC_RENAMES:
        return DIAGNOSTIC_RENAMES[col]
    if col in _OLD_DIAGNOSTIC_CELLS:
        return _OLD_DIAGNOSTIC_CELLS[col]
    if "__by_param__" not in col:
        return None
    metric, rest = col.split("__by_param__", 1)
    m = _OLD_LEVELLED.match(metric)
    if m:
        metric = ("cover" if m.group(1) == "coverage" else "width") + (m.group(2) or "90")
    metric = _OLD_PREFIX.get(metric, metric)
    return f"{metric}__{rest}"


def add_current_names(df: pd.DataFrame) -> pd.DataFrame:
    """Add the current name of every old column (a copy beside it); returns ``df`` itself if none.

    Where the current column exists already (a directory resumed after an upgrade holds
    rows of both versions), its missing values are taken from the old column: the two
    names mean the same quantity.
    """
    pairs = [(c, current_name(c)) for c in df.columns if current_name(c)]
    if not pairs:
        return df
    new = {cur: df[old].to_numpy() for old, cur in pairs if cur not in df.columns}
    out = pd.concat([df, pd.DataFrame(new, index=df.index)], axis=1) if new else df.copy()
    for old, cur in pairs:
        if cur not in new:
            out[cur] = out[cur].fillna(out[old])
    return out


def add_legacy_names(df: pd.DataFrame, legacy: list[str]) -> pd.DataFrame:
    """Add old names (``legacy``, as found in an old directory's summary) for the current
    columns of ``df`` that they map to, with their ``__mcse`` columns."""
    extra = {}
    for old in legacy:
        cur = current_name(old)
        for suffix in ("", "__mcse"):
            if cur and cur + suffix in df.columns and old + suffix not in df.columns:
                extra[old + suffix] = df[cur + suffix].to_numpy()
    if not extra:
        return df
    return pd.concat([df, pd.DataFrame(extra, index=df.index)], axis=1)
