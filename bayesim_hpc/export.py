"""Export a study's results as Parquet or CSV, wide and long (tidy), for R, DuckDB, pandas.

Files written to the output folder (``.parquet`` or ``.csv``)::

    summary        one row per task, the columns of ``load_results(DIR).summary``
    cells          one row per cell, the columns of ``load_results(DIR).cells``
    compare        paired comparisons to the reference fit row (studies with >1 fit row)
    summary_long   task keys + measure, param, detail, value: one row per task and column
    cells_long     cell keys + measure, param, value, mcse, wilson_low, wilson_high, ...
    compare_long   the same for the comparisons
    export.json    what was written, from which directory, with row counts

A long row splits a column name ``<measure>__<param>__<detail>`` (see
:mod:`bayesim_hpc.names`) into its parts; for cells and comparisons the details
(``mcse``, ``wilson_low``, ...) become columns beside ``value``. Columns that are not
measures (``rhat_max``, ``timing_total``) have an empty ``param``.

Read-only: this reads ``study.json``, ``summary.h5`` and ``cells.csv`` (re-reducing first
when segments are newer, like ``report``); it never unpickles ``study.pkl`` or imports the
study's code.

Example:
    >>> paths = export_results("results/my_study", "results/my_study/export")  # doctest: +SKIP
    >>> import duckdb; duckdb.sql("select * from 'results/my_study/export/cells_long.parquet'")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from .names import split_column
from .results import load_results

__all__ = ["export_results", "long_summary", "long_measures"]

_TASK_KEYS = ("task_id", "status", "data_idx", "fit_idx", "rep_idx")
_CELL_KEYS = ("data_idx", "fit_idx", "reference_fit_idx", "n_tasks", "n_success", "n_failed", "n_pairs")


def _key_columns(df: pd.DataFrame, keys: tuple[str, ...]) -> list[str]:
    grid = [c for c in df.columns if c.startswith(("data_", "fit_")) and c not in ("data_idx", "fit_idx")]
    return [c for c in keys if c in df.columns] + grid


def _parts(col: str) -> tuple[str, str, str]:
    parts = split_column(col)
    return parts if parts is not None else (col, "", "")


def long_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per task and numeric column: keys + ``measure``, ``param``, ``detail``, ``value``."""
    keys = _key_columns(summary, _TASK_KEYS)
    skip = set(keys) | {"index", "attempt", "segment"}
    value_cols = [c for c in summary.columns if c not in skip and pd.api.types.is_numeric_dtype(summary[c])]
    long = summary.melt(id_vars=keys, value_vars=value_cols, var_name="column", value_name="value")
    parts = pd.DataFrame([_parts(c) for c in value_cols], columns=["measure", "param", "detail"], index=value_cols)
    long = long.join(parts, on="column").drop(columns="column")
    return long[keys + ["measure", "param", "detail", "value"]]


def long_measures(table: pd.DataFrame) -> pd.DataFrame:
    """Cells or comparisons in long form: keys + ``measure``, ``param``, ``value`` and one
    column per detail (``mcse``, ``wilson_low``, ``wilson_high``, ``mcse_unpaired``)."""
    if table.empty:
        return pd.DataFrame(columns=["measure", "param", "value"])
    keys = _key_columns(table, _CELL_KEYS)
    value_cols = [c for c in table.columns if c not in keys and pd.api.types.is_numeric_dtype(table[c])]
    long = table.melt(id_vars=keys, value_vars=value_cols, var_name="column", value_name="v")
    parts = pd.DataFrame([_parts(c) for c in value_cols], columns=["measure", "param", "detail"], index=value_cols)
    long = long.join(parts, on="column").drop(columns="column")
    long["detail"] = long["detail"].replace("", "value")
    wide = long.pivot_table(index=keys + ["measure", "param"], columns="detail", values="v", aggfunc="first",
                            dropna=False, sort=False).reset_index()
    wide.columns.name = None
    details = [c for c in ("value", "mcse", "mcse_unpaired", "wilson_low", "wilson_high") if c in wide.columns]
    rest = [c for c in wide.columns if c not in keys + ["measure", "param"] + details]
    wide = wide[keys + ["measure", "param"] + details + rest]
    return wide[wide[details + rest].notna().any(axis=1)].reset_index(drop=True)


def _write(df: pd.DataFrame, path: Path, fmt: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp)
    else:
        df.to_csv(tmp, index=False)
    tmp.replace(path)


def export_results(result_dir: str | Path, output: str | Path, format: str = "parquet",
                   reference: int | dict | None = None) -> list[Path]:
    """Write the tables listed in the module docstring to ``output``; returns their paths."""
    if format not in ("parquet", "csv"):
        raise ValueError(f"export format {format!r}: use 'parquet' or 'csv'")
    res = load_results(result_dir)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    tables: dict[str, pd.DataFrame] = {"summary": res.summary, "cells": res.cells}
    comp = res.compare(reference=reference)
    if not comp.empty:
        tables["compare"] = comp
    tables["summary_long"] = long_summary(res.summary)
    tables["cells_long"] = long_measures(res.cells)
    if not comp.empty:
        tables["compare_long"] = long_measures(comp)
    written: list[Path] = []
    meta: dict[str, Any] = {"result_dir": str(res.path), "format": format, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            "tables": {}}
    for name, df in tables.items():
        path = out / f"{name}.{format}"
        _write(df, path, format)
        written.append(path)
        meta["tables"][name] = {"file": path.name, "rows": int(len(df)), "columns": int(df.shape[1])}
    (out / "export.json").write_text(json.dumps(meta, indent=1))
    return written
