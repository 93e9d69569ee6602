"""An HTML report of a study: per-cell performance measures with MCSE, and plots.

Plots (PNG files beside the HTML, listed with their data sizes in ``report.json``):
coverage and bias by data configuration and model with +-2 MCSE error bars, an R-hat /
ESS / divergence overview, and SBC rank histograms when the study has a rank metric.

Example:
    >>> path = build_report("results/my_study")    # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .history import lifecycle_notes
from .results import load_results

__all__ = ["build_report"]


def _labels(cells: pd.DataFrame) -> tuple[list[str], list[str]]:
    dcols = [c for c in cells.columns if c.startswith("data_") and c != "data_idx"]
    fcols = [c for c in cells.columns if c.startswith("fit_") and c != "fit_idx"]
    dl = [", ".join(f"{c[5:]}={r[c]}" for c in dcols) for _, r in cells.iterrows()]
    fl = [", ".join(f"{c[4:]}={r[c]}" for c in fcols) for _, r in cells.iterrows()]
    return dl, fl


def _measure_plot(plt, cells: pd.DataFrame, cols: list[str], title: str, ref: float | None, path: Path) -> int:
    dl, fl = _labels(cells)
    data_keys = list(dict.fromkeys(dl))
    fits = list(dict.fromkeys(fl))
    fig, axes = plt.subplots(1, len(cols), figsize=(4.5 * len(cols), 3.8), squeeze=False)
    n_points = 0
    for ax, col in zip(axes[0], cols):
        for j, fit in enumerate(fits):
            rows = [i for i in range(len(cells)) if fl[i] == fit]
            x = np.array([data_keys.index(dl[i]) for i in rows]) + (j - (len(fits) - 1) / 2) * 0.12
            y = cells[col].to_numpy(float)[rows]
            err = 2 * cells.get(f"{col}__mcse", pd.Series(np.zeros(len(cells)))).to_numpy(float)[rows]
            ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, label=fit or "fit")
            n_points += int(np.isfinite(y).sum())
        if ref is not None:
            ax.axhline(ref, color="grey", ls="--", lw=1)
        ax.set_xticks(range(len(data_keys)))
        ax.set_xticklabels(data_keys, rotation=30, ha="right", fontsize=7)
        ax.set_title(col.replace("__by_param__", ": "), fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return n_points


def build_report(path: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.html`` (and ``report/*.png``, ``report.json``) for a result directory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = load_results(path)
    out = Path(out) if out else res.path / "report.html"
    figdir = out.parent / "report"
    figdir.mkdir(parents=True, exist_ok=True)
    cells, summary = res.cells, res.summary
    raw = res.rd.read_frozen().raw
    study = res.rd.load_study()
    plots: list[dict[str, Any]] = []

    cov_cols = [c for c in cells.columns if c.split("__")[0] in [m.name for m in study.metrics if getattr(m, "kind", "") == "coverage"]
                and "__by_param__" in c and not c.endswith("__mcse")]
    if cov_cols:
        nominal = next((getattr(m, "prob", None) for m in study.metrics if getattr(m, "kind", "") == "coverage"), None)
        n = _measure_plot(plt, cells, cov_cols, "Coverage by data configuration and model (+-2 MCSE)", nominal,
                          figdir / "coverage.png")
        plots.append({"file": "report/coverage.png", "title": "Coverage", "points": n})
    bias_cols = [c for c in cells.columns if c.startswith("bias__") and not c.endswith("__mcse") and "__by_param__" not in c
                 and c != "bias__value"]
    if bias_cols:
        n = _measure_plot(plt, cells, bias_cols, "Bias of the posterior mean (+-2 MCSE)", 0.0, figdir / "bias.png")
        plots.append({"file": "report/bias.png", "title": "Bias", "points": n})
    ok = summary[summary["status"] == "success"]
    diag = [c for c in ("rhat_max", "ess_bulk", "divergent") if c in ok.columns and ok[c].notna().any()]
    if diag:
        fig, axes = plt.subplots(1, len(diag), figsize=(4.2 * len(diag), 3.4), squeeze=False)
        n = 0
        for ax, c in zip(axes[0], diag):
            x = ok[c].to_numpy(float)
            x = x[np.isfinite(x)]
            ax.hist(x, bins=30)
            ax.set_title(c)
            n += x.size
            if c == "rhat_max":
                ax.axvline(1.01, color="red", ls="--", lw=1)
        fig.suptitle("Convergence diagnostics over all successful tasks")
        fig.tight_layout()
        fig.savefig(figdir / "diagnostics.png", dpi=90)
        plt.close(fig)
        plots.append({"file": "report/diagnostics.png", "title": "Diagnostics", "points": n})
    rank_metrics = [m for m in study.metrics if getattr(m, "kind", "") == "rank"]
    for m in rank_metrics:
        cols = [c for c in summary.columns if c.startswith(f"{m.name}__by_param__")]
        if not cols:
            continue
        fig, axes = plt.subplots(1, len(cols), figsize=(4 * len(cols), 3.2), squeeze=False)
        n = 0
        for ax, c in zip(axes[0], cols):
            r = ok[c].to_numpy(float)
            r = r[np.isfinite(r)]
            ax.hist(r, bins=min(20, int(getattr(m, "n_draws", 99)) + 1), range=(0, getattr(m, "n_draws", 99) + 1))
            if r.size:
                ax.axhline(r.size / min(20, int(getattr(m, "n_draws", 99)) + 1), color="grey", ls="--")
            ax.set_title(c.split("__by_param__")[-1])
            n += r.size
        fig.suptitle(f"SBC rank histograms ({m.name}): flat if calibrated")
        fig.tight_layout()
        fig.savefig(figdir / f"ranks_{m.name}.png", dpi=90)
        plt.close(fig)
        plots.append({"file": f"report/ranks_{m.name}.png", "title": f"SBC ranks ({m.name})", "points": n})

    shown = cells[[c for c in cells.columns if not c.endswith("_idx")]]
    counts = (f"{int((summary['status'] == 'success').sum())} succeeded, {int((summary['status'] != 'success').sum())} "
              f"failed, {res.n_missing} missing of {raw['n_tasks']} tasks")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>bayesim-hpc report</title>",
        "<style>body{font-family:sans-serif;margin:2em} table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right} img{max-width:100%}</style></head><body>",
        f"<h1>Study report</h1><p>{html.escape(str(res.path))}: {counts}; seed {raw['seed']}, "
        f"{raw['n_replicates']} replicates per cell, retention {', '.join(raw['retain'])}.</p>",
        "<h2>Performance measures per cell</h2><p>Columns ending in <code>__mcse</code> are Monte Carlo standard errors "
        "(Morris, White &amp; Crowther 2019).</p>",
        shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep=""),
    ]
    for p in plots:
        parts.append(f"<h2>{html.escape(p['title'])}</h2><img src='{p['file']}' alt='{html.escape(p['title'])}'>")
    history = lifecycle_notes(raw)
    if history:  # what was added to the study, and when (docs/growing-a-study.md)
        parts.append("<h2>History</h2><ul>" + "".join(f"<li>{html.escape(h)}</li>" for h in history) + "</ul>")
    parts.append("</body></html>")
    out.write_text("\n".join(parts))
    (out.parent / "report.json").write_text(json.dumps({"html": str(out), "plots": plots}, indent=1))
    return out
