"""The report's figures, each returned as an embedded PNG (a ``data:`` URI) with its size.

* :func:`nested_loop_figure`: one panel per parameter; the data rows in nested-loop order
  on the x axis (Rücker & Schwarzer 2014), methods (fit rows) side by side with their
  intervals, a reference line, and the data grid's factors drawn as steps beneath.
* :func:`zip_figure`: zip plots of coverage (Morris, White & Crowther 2019, Fig. 4), one
  panel per parameter and cell: every replicate's interval, centred on the truth and
  ranked by how far the truth lies from its centre; misses in red.
* :func:`ecdf_figure`: SBC ECDF-difference plots with simultaneous 95 % bands.
* :func:`histogram_figure`: convergence diagnostics over all tasks.

Example:
    >>> uri, n = histogram_figure({"rhat_max": np.array([1.0, 1.01])}, "R-hat")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import io
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from .diagnostics import RHAT_THRESHOLD

__all__ = ["nested_loop_figure", "zip_figure", "ecdf_figure", "histogram_figure", "cell_label"]

_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _encode(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def grid_cols(frame: pd.DataFrame, prefix: str) -> list[str]:
    return [c for c in frame.columns if c.startswith(prefix + "_") and c != f"{prefix}_idx"]


def cell_label(row, prefix: str) -> str:
    """``n=50, sigma=1.0`` for the data (``prefix="data"``) or fit grid values of a row (a
    dict, or a Series of one column's type; a mixed-type Series turns ints into floats)."""
    keys = row.index if isinstance(row, pd.Series) else row.keys()
    cols = [c for c in keys if c.startswith(prefix + "_") and c != f"{prefix}_idx"]
    return ", ".join(f"{c[len(prefix) + 1:]}={row[c]}" for c in cols) or f"{prefix} {row.get(prefix + '_idx', '')}"


def records(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts with each column's own type (``iterrows`` would make 50 into 50.0)."""
    return frame.to_dict("records")


def _grid_steps(ax, data_rows: pd.DataFrame) -> None:
    """The data grid's factors as step lines under the panel (nested-loop plot legend)."""
    cols = grid_cols(data_rows, "data")
    x = np.arange(len(data_rows))
    for k, c in enumerate(cols):
        vals = data_rows[c].tolist()
        levels = list(dict.fromkeys(vals))
        y = np.array([levels.index(v) for v in vals], dtype=float)
        y = k + 0.55 * (y / max(1, len(levels) - 1))
        ax.step(x, y, where="mid", color="0.3", lw=1)
        ax.text(-0.75, k + 0.3, c[5:], ha="right", va="center", fontsize=7)
        for xi, yi, v in zip(x, y, vals):
            if xi == 0 or vals[xi - 1] != v:
                ax.text(xi - 0.45, yi + 0.1, str(v), fontsize=6, color="0.2")
    ax.set_ylim(-0.1, max(1, len(cols)) + 0.1)
    ax.set_yticks([])
    ax.set_xticks(x)
    ax.tick_params(labelsize=6)
    ax.set_xlim(-0.7, len(data_rows) - 0.3)
    for s in ("top", "right", "left"):
        ax.spines[s].set_visible(False)


def nested_loop_figure(cells: pd.DataFrame, measure: str, params: Sequence[str], title: str,
                       ref: float | Callable[[str], float] | None = None,
                       interval: str = "mcse", overlay: str | None = None) -> tuple[str, int]:
    """Panels per parameter of ``<measure>__<param>`` across data rows, one series per fit row.

    ``interval``: ``"mcse"`` (+-2 MCSE) or ``"wilson"`` (the Wilson columns); ``overlay``: a
    second measure drawn as hollow markers (e.g. modelse over empse). Returns (uri, points).
    """
    plt = _plt()
    data_rows = cells.drop_duplicates("data_idx").sort_values("data_idx").reset_index(drop=True)
    fits = cells.drop_duplicates("fit_idx").sort_values("fit_idx")
    ncol = min(3, len(params))
    nrow = -(-len(params) // ncol)
    steps = len(grid_cols(data_rows, "data")) > 1
    n_factors = len(grid_cols(data_rows, "data"))
    step_h = 0.35 * n_factors + 0.3 if steps else 0.0
    fig = plt.figure(figsize=(4.6 * ncol, (3.4 + step_h) * nrow + 0.5))
    outer = fig.add_gridspec(nrow, ncol, hspace=0.45, wspace=0.25, top=1 - 0.55 / ((3.4 + step_h) * nrow + 0.5),
                             bottom=0.06, left=0.07, right=0.98)
    width = 0.6 / max(1, len(fits))
    n_points = 0
    for i, p in enumerate(params):
        r, c = divmod(i, ncol)
        if steps:
            inner = outer[r, c].subgridspec(2, 1, height_ratios=[3.4, step_h], hspace=0.08)
            ax, ax_steps = fig.add_subplot(inner[0]), fig.add_subplot(inner[1])
        else:
            ax, ax_steps = fig.add_subplot(outer[r, c]), None
        col = f"{measure}__{p}"
        if col not in cells.columns:
            ax.set_visible(False)
            continue
        for j, frow in enumerate(records(fits)):
            sub = cells[cells["fit_idx"] == frow["fit_idx"]].set_index("data_idx").reindex(data_rows["data_idx"])
            x = np.arange(len(data_rows)) + (j - (len(fits) - 1) / 2) * width
            y = sub[col].to_numpy(float)
            if interval == "wilson" and f"{col}__wilson_low" in sub.columns:
                lo, hi = sub[f"{col}__wilson_low"].to_numpy(float), sub[f"{col}__wilson_high"].to_numpy(float)
                err = np.clip(np.vstack([y - lo, hi - y]), 0, None)
            elif f"{col}__mcse" in sub.columns:
                err = 2 * sub[f"{col}__mcse"].to_numpy(float)
            else:
                err = None
            colour = _COLOURS[j % len(_COLOURS)]
            ax.errorbar(x, y, yerr=err, fmt="o-", ms=4, lw=0.8, capsize=2, color=colour,
                        label=cell_label(frow, "fit"))
            if overlay and f"{overlay}__{p}" in sub.columns:
                ax.plot(x, sub[f"{overlay}__{p}"].to_numpy(float), "s", mfc="none", color=colour, ms=6)
            n_points += int(np.isfinite(y).sum())
        level = ref(p) if callable(ref) else ref
        if level is not None:
            ax.axhline(level, color="grey", ls="--", lw=1)
        ax.set_title(p, fontsize=10)
        ax.set_xticks(range(len(data_rows)))
        ax.set_xticklabels([] if steps else [cell_label(r_, "data") for r_ in records(data_rows)],
                           rotation=30, ha="right", fontsize=7)
        ax.set_xlim(-0.7, len(data_rows) - 0.3)
        if i == 0:
            ax.legend(fontsize=7, loc="best")
        if ax_steps is not None:
            _grid_steps(ax_steps, data_rows)
    fig.suptitle(title, fontsize=11)
    return _encode(fig), n_points


def _panel_grid(n_rows: int, n_cols: int, w: float = 2.4, h: float = 2.3):
    """Small multiples with fixed margins (``tight_layout`` costs seconds on 24 panels)."""
    plt = _plt()
    width, height = w * n_cols + 0.8, h * n_rows + 0.7
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=0.7 / width, right=1 - 0.15 / width, bottom=0.35 / height, top=1 - 0.75 / height,
                        wspace=0.35, hspace=0.6)
    return fig, axes


def zip_figure(summary: pd.DataFrame, cells: pd.DataFrame, metric: str, params: Sequence[str],
               nominal: float | None) -> tuple[str, int]:
    """Zip plots: rows are parameters, columns are cells (data row x fit row)."""
    ok = summary[summary["status"] == "success"]
    keys = cells[["data_idx", "fit_idx"]].drop_duplicates().to_numpy()
    fig, axes = _panel_grid(len(params), len(keys))
    n_points = 0
    for i, p in enumerate(params):
        lo_c, hi_c, t_c = f"{metric}__{p}__lo", f"{metric}__{p}__hi", f"truth__{p}"
        for j, (d, f) in enumerate(keys):
            ax = axes[i][j]
            sub = ok[(ok["data_idx"] == d) & (ok["fit_idx"] == f)]
            if lo_c not in sub.columns or sub.empty:
                ax.set_visible(False)
                continue
            lo, hi, t = (sub[c].to_numpy(float) for c in (lo_c, hi_c, t_c))
            fin = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(t)
            lo, hi, t = lo[fin] - t[fin], hi[fin] - t[fin], t[fin]
            half = np.maximum((hi - lo) / 2, 1e-300)
            z = np.abs((lo + hi) / 2) / half
            order = np.argsort(z, kind="stable")
            y = np.empty(z.size)
            y[order] = (np.arange(z.size) + 0.5) / max(1, z.size) * 100
            covers = (lo <= 0) & (hi >= 0)
            for mask, colour in ((covers, "#1f77b4"), (~covers, "#d62728")):
                ax.hlines(y[mask], lo[mask], hi[mask], color=colour, lw=0.7)
            ax.axvline(0, color="k", lw=0.6)
            if nominal is not None:
                ax.axhline(nominal * 100, color="grey", ls="--", lw=0.8)
            ax.set_ylim(0, 100)
            _label_cell_panel(ax, cells, d, f, f"{p}\ncentile of |z|" if j == 0 else None)
            n_points += int(z.size)
    fig.suptitle(f"Zip plots of {metric}: intervals minus truth, ranked; red = misses the truth", fontsize=10)
    return _encode(fig), n_points


def _label_cell_panel(ax: Any, cells: pd.DataFrame, d: int, f: int, ylabel: str | None) -> None:
    """Title a per-cell panel with the cell's grid values; the first panel of a row gets ``ylabel``."""
    row = records(cells[(cells["data_idx"] == d) & (cells["fit_idx"] == f)])[0]
    ax.set_title(f"{cell_label(row, 'data')}\n{cell_label(row, 'fit')}", fontsize=6)
    ax.tick_params(labelsize=6)
    if ylabel is not None:
        ax.set_ylabel(ylabel, fontsize=7)


def ecdf_figure(summary: pd.DataFrame, cells: pd.DataFrame, metric: str, params: Sequence[str]) -> tuple[str, int]:
    """SBC ECDF-difference plots with simultaneous 95 % bands, per parameter and cell."""
    from .sbc import ecdf_difference

    ok = summary[summary["status"] == "success"]
    keys = cells[["data_idx", "fit_idx"]].drop_duplicates().to_numpy()
    fig, axes = _panel_grid(len(params), len(keys), w=2.5, h=2.1)
    n_points = 0
    for i, p in enumerate(params):
        for j, (d, f) in enumerate(keys):
            ax = axes[i][j]
            sub = ok[(ok["data_idx"] == d) & (ok["fit_idx"] == f)]
            r = sub.get(f"{metric}__{p}", pd.Series(dtype=float)).to_numpy(float)
            r = r[np.isfinite(r)]
            mx = sub.get(f"{metric}__{p}__max", pd.Series(dtype=float)).to_numpy(float)
            if r.size < 2 or not np.isfinite(mx).any():
                ax.set_visible(False)
                continue
            e = ecdf_difference(r, int(np.nanmax(mx)))
            ax.fill_between(e["z"], e["lower"], e["upper"], color="0.85", step="mid")
            out = (e["diff"] < e["lower"]) | (e["diff"] > e["upper"])
            ax.step(e["z"], e["diff"], where="mid", color="#d62728" if out.any() else "#1f77b4", lw=1)
            ax.axhline(0, color="k", lw=0.5)
            _label_cell_panel(ax, cells, d, f, f"{p}\nECDF - uniform" if j == 0 else None)
            n_points += int(r.size)
    fig.suptitle(f"SBC ({metric}): ECDF difference with simultaneous 95 % band; red leaves the band", fontsize=10)
    return _encode(fig), n_points


def histogram_figure(columns: dict[str, np.ndarray], title: str) -> tuple[str, int]:
    """Histograms of diagnostics (a red line at the R-hat threshold, 1.01)."""
    fig, axes = _panel_grid(1, len(columns), w=4.0, h=3.0)
    n = 0
    for ax, (name, x) in zip(axes[0], columns.items()):
        x = x[np.isfinite(x)]
        ax.hist(x, bins=30, color="#1f77b4")
        ax.set_title(name, fontsize=9)
        if name == "rhat_max":
            ax.axvline(RHAT_THRESHOLD, color="red", ls="--", lw=1)
        n += x.size
    fig.suptitle(title, fontsize=10)
    return _encode(fig), n
