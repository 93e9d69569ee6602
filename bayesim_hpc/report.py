"""The study report: one self-contained HTML page organised by the questions people ask.

Sections: which method is biased (nested-loop plots of bias per parameter, +-2 MCSE),
where coverage fails (coverage with Wilson intervals against the nominal level, zip
plots), how precision compares (empirical and model-based SE, relative error, paired
comparisons to a reference fit row), whether the sampler converged (R-hat, ESS,
divergences), SBC (ECDF differences with simultaneous bands), and what failed or warned
(grouped by kind, with example task ids and the ``replay`` command). Each measure has a
long table (one row per cell and parameter). Images are embedded PNGs, so the file reads
offline and can be attached to an email. ``report.json`` beside it lists the plots.

Read-only: it reads ``study.json``, ``summary.h5``, ``cells.csv`` and, for warnings, the
segments' warning strings; it never loads ``study.pkl`` or the study's code.

Example:
    >>> path = build_report("results/my_study")    # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .history import lifecycle_notes
from .diagnostics import RHAT_THRESHOLD
from .names import LEGACY_AGGREGATES, nominal_level, split_column
from .report_plots import cell_label, ecdf_figure, histogram_figure, nested_loop_figure, records, zip_figure
from .results import load_results

__all__ = ["build_report"]

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_MAX_CELLS_PER_FIGURE = 12
_MAX_WARNED_TASKS = 2000
_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;line-height:1.4}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:12px;margin:.5em 0 1.5em} caption{text-align:left;font-weight:bold;padding:4px 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right} th{background:#f3f3f3} td.l,th.l{text-align:left}
img{max-width:100%;border:1px solid #eee} .flag{color:#b00020} .ok{color:#1b5e20} code{background:#f5f5f5;padding:0 3px}
nav a{margin-right:1em} details{margin:.5em 0} .small{font-size:12px;color:#555}"""


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "" if not np.isfinite(v) else f"{v:.4g}"
    return html.escape(str(v))


def _table(rows: list[dict[str, Any]], caption: str, left: int = 0, fold: bool = False) -> str:
    """An HTML table; ``fold``: inside a <details> that opens on a click (long per-measure tables)."""
    if not rows:
        return ""
    if fold:
        return (f"<details><summary>Table: {html.escape(caption)} ({len(rows)} rows)</summary>"
                f"{_table(rows, caption, left)}</details>")
    cols = list(rows[0])
    head = "".join(f"<th class='{'l' if i < left else ''}'>{html.escape(c)}</th>" for i, c in enumerate(cols))
    body = "".join("<tr>" + "".join(f"<td class='{'l' if i < left else ''}'>{_fmt(r.get(c))}</td>"
                                    for i, c in enumerate(cols)) + "</tr>" for r in rows)
    return f"<table><caption>{html.escape(caption)}</caption><tr>{head}</tr>{body}</table>"


def _params(cells: pd.DataFrame, measure: str) -> list[str]:
    out = []
    for c in cells.columns:
        parts = split_column(c)
        if parts and parts[0] == measure and not parts[2] and c not in LEGACY_AGGREGATES:
            out.append(parts[1])
    return out


def _long(cells: pd.DataFrame, measure: str, extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """One row per cell and parameter for ``measure`` (value, MCSE, Wilson, extra measures)."""
    rows = []
    for r in records(cells.sort_values(["data_idx", "fit_idx"])):
        for p in _params(cells, measure):
            col = f"{measure}__{p}"
            row = {"data": cell_label(r, "data"), "fit": cell_label(r, "fit"), "param": p, measure: r[col],
                   "MCSE": r.get(f"{col}__mcse", np.nan)}
            if f"{col}__wilson_low" in r:
                row["95% Wilson"] = f"[{_fmt(r[f'{col}__wilson_low'])}, {_fmt(r[f'{col}__wilson_high'])}]"
            for m in extra:
                if f"{m}__{p}" in r:
                    row[m] = r[f"{m}__{p}"]
                    if f"{m}__{p}__mcse" in r:
                        row[f"{m} MCSE"] = r[f"{m}__{p}__mcse"]
            rows.append(row)
    return rows


def _img(uri: str, alt: str) -> str:
    return f"<img src='{uri}' alt='{html.escape(alt)}'>"


def _bias_findings(cells: pd.DataFrame) -> str:
    flags = []
    for r in records(cells):
        for p in _params(cells, "bias"):
            b, m = r[f"bias__{p}"], r.get(f"bias__{p}__mcse", np.nan)
            if np.isfinite(b) and np.isfinite(m) and m > 0 and abs(b) > 3 * m:
                flags.append(f"{p} with {cell_label(r, 'fit')} at {cell_label(r, 'data')}: bias {b:.3g} "
                             f"(MCSE {m:.2g})")
    if not flags:
        return "<p class='ok'>No bias beyond 3 Monte Carlo SEs.</p>"
    return "<p class='flag'>Bias beyond 3 Monte Carlo SEs:</p><ul>" + "".join(
        f"<li>{html.escape(f)}</li>" for f in flags[:20]) + ("<li>...</li>" if len(flags) > 20 else "") + "</ul>"


def _coverage_findings(cells: pd.DataFrame, metric: str, nominal: float | None) -> str:
    if nominal is None:
        return ""
    flags = []
    for r in records(cells):
        for p in _params(cells, metric):
            lo, hi = r.get(f"{metric}__{p}__wilson_low", np.nan), r.get(f"{metric}__{p}__wilson_high", np.nan)
            if np.isfinite(lo) and not lo <= nominal <= hi:
                flags.append(f"{p} with {cell_label(r, 'fit')} at {cell_label(r, 'data')}: "
                             f"{r[f'{metric}__{p}']:.1%} (95% Wilson {lo:.1%} to {hi:.1%})")
    if not flags:
        return f"<p class='ok'>Every Wilson interval holds the nominal {nominal:.0%}.</p>"
    return (f"<p class='flag'>Coverage differs from the nominal {nominal:.0%} (Wilson interval excludes it):</p><ul>"
            + "".join(f"<li>{html.escape(f)}</li>" for f in flags[:20]) + "</ul>")


def _failures(summary: pd.DataFrame, path: Path) -> str:
    bad = summary[summary["status"] != "success"]
    if bad.empty:
        return "<p class='ok'>No task failed.</p>"
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records(bad):
        first = str(r.get("error_message", "")).strip().splitlines()[0] if str(r.get("error_message", "")).strip() else ""
        groups[(r.get("error_stage", ""), r.get("error_type", ""), _NUMBER.sub("#", first)[:200])].append(r)
    rows = []
    for (stage, etype, msg), rs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        cells = sorted({cell_label(r, "data") + " / " + cell_label(r, "fit") for r in rs})
        ids = [r["task_id"] for r in rs[:3]]
        rows.append({"tasks": len(rs), "stage": stage, "error": f"{etype}: {msg}", "cells": "; ".join(cells[:4])
                     + (" ..." if len(cells) > 4 else ""), "example tasks": ", ".join(ids),
                     "replay": f"bayesim-hpc replay {path} {ids[0]}"})
    return (f"<p class='flag'>{len(bad)} tasks failed, in {len(rows)} kinds. Re-run one in process with its exact "
            "seeds with the replay command (add <code>--pdb</code> to debug it).</p>" + _table(rows, "Failures by kind", 6))


def _warnings(res, summary: pd.DataFrame) -> str:
    if "n_warnings" not in summary.columns:
        return "<p class='small'>Warnings were not retained (add 'warnings' to retain=...).</p>"
    warned = summary[summary["n_warnings"].fillna(0) > 0]
    if warned.empty:
        return "<p class='ok'>No task warned.</p>"
    import h5py

    kinds: dict[str, list[str]] = defaultdict(list)
    examples: dict[str, str] = {}
    read = warned.head(_MAX_WARNED_TASKS)
    for seg, block in read.groupby("segment"):
        with h5py.File(res.path / seg, "r", locking=False) as f:
            for tid in block["task_id"]:
                ds = f.get(f"tasks/{tid}/warnings")
                for w in ([] if ds is None else ds[...]):
                    w = w.decode() if isinstance(w, bytes) else str(w)
                    k = _NUMBER.sub("#", w)[:200]
                    kinds[k].append(tid)
                    examples.setdefault(k, w)
    rows = [{"tasks": len(ids), "warning (numbers masked)": k, "example": examples[k][:200],
             "example tasks": ", ".join(ids[:3]), "replay": f"bayesim-hpc replay {res.path} {ids[0]}"}
            for k, ids in sorted(kinds.items(), key=lambda kv: -len(kv[1]))]
    note = (f" (read from the first {_MAX_WARNED_TASKS} of {len(warned)} tasks that warned)"
            if len(warned) > _MAX_WARNED_TASKS else "")
    return f"<p>{len(warned)} tasks warned{note}.</p>" + _table(rows, "Warnings by kind", 5)


def _coverage_metrics(cells: pd.DataFrame, kinds: dict[str, str]) -> list[str]:
    """Coverage metrics with a nominal level in their name (old ``coverage`` columns appear as ``cover90``)."""
    names = {split_column(c)[0] for c in cells.columns if split_column(c) and not split_column(c)[2]}
    return sorted(m for m in names if (kinds.get(m) == "coverage" or m.startswith("cover"))
                  and nominal_level(m) is not None and _params(cells, m))


def _select_cells(cells: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    if len(cells) <= _MAX_CELLS_PER_FIGURE:
        return cells, ""
    return cells.head(_MAX_CELLS_PER_FIGURE), (f"<p class='small'>Showing the first {_MAX_CELLS_PER_FIGURE} of "
                                               f"{len(cells)} cells; the tables have all.</p>")


def build_report(path: str | Path, out: str | Path | None = None,
                 extra_sections: list[tuple[str, str, str]] | tuple = ()) -> Path:
    """Write ``report.html`` (one self-contained file) and ``report.json`` for a result directory.

    ``extra_sections``: (key, title, HTML body) sections added at the end (the command line adds
    the efficiency section of :mod:`bayesim_hpc.efficiency_study` this way).
    """
    res = load_results(path)
    out = Path(out) if out else res.path / "report.html"
    cells = res.cells.sort_values(["data_idx", "fit_idx"]).reset_index(drop=True)
    summary = res.summary
    raw = res.rd.read_frozen().raw
    kinds: dict[str, str] = raw.get("metric_kinds", {})
    plots: list[dict[str, Any]] = []

    def figure(title: str, made: tuple[str, int]) -> str:
        plots.append({"title": title, "points": made[1], "bytes": len(made[0])})
        return _img(made[0], title)

    ok = summary[summary["status"] == "success"]
    params = _params(cells, "bias")
    sections: list[tuple[str, str, str]] = []
    # --- bias ----------------------------------------------------------------------------
    body = _bias_findings(cells)
    if params:
        body += figure("Bias", nested_loop_figure(cells, "bias", params, "Bias of the posterior mean (+-2 MCSE)", 0.0))
        body += _table(_long(cells, "bias", ("rbias",)), "Bias (posterior mean minus truth) and relative bias", 3, fold=True)
        body += _table(_long(cells, "rmse", ("mse",)), "RMSE over replicates", 3, fold=True)
    sections.append(("bias", "Which method is biased?", body))
    # --- coverage ------------------------------------------------------------------------
    body = ""
    zip_cells, note = _select_cells(cells)
    for metric in _coverage_metrics(cells, kinds):
        nominal = nominal_level(metric)
        ps = _params(cells, metric)
        body += f"<h3>{html.escape(metric)}: nominal {nominal if nominal is not None else '?'}</h3>"
        body += _coverage_findings(cells, metric, nominal)
        body += figure(f"Coverage ({metric})", nested_loop_figure(
            cells, metric, ps, f"{metric}: coverage with 95% Wilson intervals", nominal, interval="wilson"))
        if any(f"{metric}__{p}__lo" in summary.columns for p in ps):
            body += note + figure(f"Zip plot ({metric})", zip_figure(summary, zip_cells, metric, ps, nominal))
        body += _table(_long(cells, metric, (f"be{metric}",)), f"Coverage {metric} and bias-eliminated coverage", 3, fold=True)
    for metric in sorted(m for m, k in kinds.items() if k == "power"):
        if _params(cells, metric):
            body += figure(f"Power ({metric})", nested_loop_figure(cells, metric, _params(cells, metric),
                                                                   f"{metric}: share excluding the null", None,
                                                                   interval="wilson"))
            body += _table(_long(cells, metric), f"{metric}: share of intervals excluding the null", 3, fold=True)
    sections.append(("coverage", "Where does coverage fail?", body or "<p>No coverage metric in this study.</p>"))
    # --- precision -----------------------------------------------------------------------
    body = ""
    if _params(cells, "empse"):
        body += figure("Precision", nested_loop_figure(cells, "empse", _params(cells, "empse"),
                                                       "Empirical SE (+-2 MCSE); squares: model-based SE", None,
                                                       overlay="modelse"))
        body += _table(_long(cells, "empse", ("modelse", "relerror")),
                       "Empirical SE, model-based SE (root mean posterior variance), relative error in % ", 3, fold=True)
    comp = res.compare()
    if not comp.empty:
        rows = []
        for r in records(comp):
            for p in params:
                row = {"data": cell_label(r, "data"), "fit": cell_label(r, "fit"), "param": p,
                       "pairs": r["n_pairs"]}
                for m in ("bias_diff", "mse_diff", "relprec"):
                    row[m] = r.get(f"{m}__{p}", np.nan)
                    row[f"{m} MCSE"] = r.get(f"{m}__{p}__mcse", np.nan)
                rows.append(row)
        ref = records(cells[cells["fit_idx"] == comp["reference_fit_idx"].iloc[0]])[0]
        body += _table(rows, f"Paired comparisons with {cell_label(ref, 'fit')} (same datasets; paired MCSE)", 3)
    sections.append(("precision", "How does precision compare?", body or "<p>No estimates with true values.</p>"))
    # --- convergence ---------------------------------------------------------------------
    diag = {c: ok[c].to_numpy(float) for c in ("rhat_max", "ess_bulk_min", "n_divergent") if c in ok.columns
            and ok[c].notna().any()}
    body = ""
    if diag:
        body += figure("Diagnostics", histogram_figure(diag, "Convergence diagnostics over all successful tasks"))
        cols = [c for c in ("rhat_max__max", f"share_rhat_gt_{RHAT_THRESHOLD:g}", "ess_bulk_min__min", "n_divergent__sum") if c in cells.columns]
        body += _table([{"data": cell_label(r, "data"), "fit": cell_label(r, "fit"), **{c: r[c] for c in cols}}
                        for r in records(cells)], "Convergence per cell", 2)
    sections.append(("convergence", "Did the sampler converge?",
                     body or "<p>No diagnostics retained (add 'diagnostics' to retain=...).</p>"))
    # --- SBC -----------------------------------------------------------------------------
    for metric in sorted(m for m, k in kinds.items() if k == "rank"):
        ps = [p for p in _params(cells, f"{metric}_pvalue")]
        if not ps:
            continue
        body = note + figure(f"SBC ranks ({metric})", ecdf_figure(summary, zip_cells, metric, ps))
        body += _table(_long(cells, f"{metric}_pvalue"), "Uniformity of ranks: simultaneous ECDF test p-value", 3, fold=True)
        sections.append((f"sbc_{metric}", f"Are posteriors calibrated (SBC, {metric})?", body))
    # --- failures ------------------------------------------------------------------------
    sections.append(("failures", "What failed or warned?", _failures(summary, res.path) + _warnings(res, summary)))

    history = lifecycle_notes(raw)
    if history:  # what was added to the study, and when (docs/growing-a-study.md)
        sections.append(("history", "History",
                         "<ul>" + "".join(f"<li>{html.escape(h)}</li>" for h in history) + "</ul>"))

    sections += list(extra_sections)
    n_ok = int((summary["status"] == "success").sum())
    grids = "; ".join(f"{k}: {', '.join(map(str, dict.fromkeys(v)))}" for k, v in raw.get("data_grid", {}).items())
    fgrids = "; ".join(f"{k}: {', '.join(map(str, dict.fromkeys(v)))}" for k, v in raw.get("fit_grid", {}).items())
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>bayesim-hpc report: "
        f"{html.escape(res.path.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Study report: {html.escape(res.path.name)}</h1>",
        f"<p>{html.escape(str(res.path))}: <b>{n_ok}</b> succeeded, <b>{len(summary) - n_ok}</b> failed, "
        f"<b>{res.n_missing}</b> missing of {raw['n_tasks']} tasks; {raw['n_replicates']} replicates per cell, "
        f"seed {raw['seed']}, created {html.escape(str(raw.get('created', '')))}.<br>Data grid: {html.escape(grids)}. "
        f"Fit grid: {html.escape(fgrids)}.</p>",
        "<p class='small'>Measures follow Morris, White &amp; Crowther (2019) with rsimsum's names; MCSE = Monte "
        "Carlo standard error; coverage intervals are 95 % Wilson intervals. Names: docs/metrics.md.</p>",
        "<nav>" + "".join(f"<a href='#{k}'>{html.escape(t)}</a>" for k, t, _ in sections) + "</nav>",
    ]
    for key, title, body in sections:
        parts.append(f"<section id='{key}'><h2>{html.escape(title)}</h2>{body}</section>")
    parts.append("</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))
    (out.parent / "report.json").write_text(json.dumps({"html": str(out), "plots": plots,
                                                        "sections": [k for k, _, _ in sections]}, indent=1))
    return out
