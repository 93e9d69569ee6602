"""Adaptive replicates: add replicates where the Monte Carlo standard error misses a target.

``run_adaptive(config, target_mcse={"coverage": 0.01, "bias": 0.02}, max_replicates=2000)`` (in
:mod:`bayesim_hpc.runner`, the driver)
runs the study, then works in rounds: it reads each cell's MCSEs from ``cells.csv``, and a
cell that misses a target gets replicates: ``1.1 n (mcse / target)^2`` (MCSE shrinks as
``1/sqrt(n)``; 10 % headroom saves rounds), at most ``max_growth`` times what it has and never over ``max_replicates``.
It stops when every cell meets every target or has reached the cap. Each round is an
extension of the study (new blocks of tasks, new shards; see :mod:`bayesim_hpc.extend`),
recorded in the history, so a driver killed in a round is finished by ``resume`` and a
second ``run_adaptive`` goes on from there.

A target key names a per-cell measure of ``cells.csv`` or a prefix of it on ``__``
boundaries: ``"cover90"`` covers every ``cover90__<p>`` (``"coverage"`` every coverage measure
``cover<level>__<p>``), ``"bias"`` every ``bias__<p>``, ``"bias__slope"`` only that parameter. Each measure needs
its ``<measure>__mcse`` column. An MCSE of 0 (e.g. coverage 1.0 in every replicate) counts
as met; a missing MCSE (fewer than 2 successes) as missed.

Planning before any run: :func:`n_replicates_for`.

Example:
    >>> n_replicates_for(0.01, "coverage", expected=0.95)
    475
    >>> n_replicates_for(0.02, "bias", pilot_sd=0.3)
    225
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import ConfigError
from .extend import Extension
from .grid import space_from_raw
from .resultdir import ResultDir

__all__ = ["n_replicates_for", "cell_distances", "CellDistance", "check_targets", "adaptive_notes", "grow_cells"]


def n_replicates_for(target_mcse: float, measure: str, *, expected: float | None = None,
                     pilot_sd: float | None = None) -> int:
    """Replicates a cell needs for a measure's MCSE to reach ``target_mcse``.

    * ``"coverage"`` (binomial): ``p (1 - p) / target^2`` with ``p = expected`` (default 0.5,
      the worst case);
    * ``"bias"`` (or any mean): ``sd^2 / target^2`` with ``pilot_sd`` the SD of the estimates
      (or of the metric) seen in a pilot;
    * ``"empse"``: ``1 + sd^2 / (2 target^2)``.

    >>> n_replicates_for(0.05, "coverage")
    100
    """
    if not (isinstance(target_mcse, (int, float)) and target_mcse > 0):
        raise ConfigError("target_mcse", target_mcse, "must be a positive number", "e.g. 0.01")
    kind = measure.split("__")[0]
    if kind.startswith("coverage"):
        p = 0.5 if expected is None else float(expected)
        if not 0 <= p <= 1:
            raise ConfigError("expected", expected, "is not a proportion", "give the coverage you expect, e.g. 0.95")
        return max(2, math.ceil(p * (1 - p) / target_mcse**2 - 1e-9))
    if pilot_sd is None or not pilot_sd > 0:
        raise ConfigError("pilot_sd", pilot_sd, f"is needed to plan {measure!r}",
                          "give the SD of the estimates from a pilot run (cells.csv: empse__<param>)")
    if kind == "empse":
        return max(2, math.ceil(1 + pilot_sd**2 / (2 * target_mcse**2) - 1e-9))
    return max(2, math.ceil(pilot_sd**2 / target_mcse**2 - 1e-9))


def check_targets(target_mcse: Any, max_replicates: Any) -> dict[str, float]:
    if not isinstance(target_mcse, dict) or not target_mcse:
        raise ConfigError("target_mcse", target_mcse, "must be a dict of measure -> MCSE",
                          "e.g. target_mcse={'coverage': 0.01, 'bias': 0.02}")
    for k, v in target_mcse.items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ConfigError(f"target_mcse[{k!r}]", v, "must be a positive number", "e.g. 0.01")
    if isinstance(max_replicates, bool) or not isinstance(max_replicates, int) or max_replicates < 2:
        raise ConfigError("max_replicates", max_replicates, "must be an integer >= 2",
                          "cap the replicates per cell, e.g. max_replicates=2000")
    return {k: float(v) for k, v in target_mcse.items()}


@dataclass
class CellDistance:
    """How far one cell is from the targets: the worst ``mcse / target`` (<= 1: met)."""

    cell: str
    replicates: int
    worst_measure: str
    ratio: float
    wanted: int
    at_cap: bool

    @property
    def met(self) -> bool:
        return self.ratio <= 1.0


_COVER = re.compile(r"^cover\d+(__|$)")


def _matches(col: str, key: str) -> bool:
    if key == "coverage" and _COVER.match(col):  # any level: cover90__slope, cover50__mu, ...
        return True
    if key.startswith("coverage__") and _COVER.match(col):  # coverage__slope: that parameter at any level
        return col.split("__", 1)[1] == key.split("__", 1)[1] or col.split("__", 1)[1].startswith(key.split("__", 1)[1] + "__")
    return col == key or col.startswith(key + "__")


def cell_distances(raw: dict[str, Any], cells: pd.DataFrame, target_mcse: dict[str, float], max_replicates: int,
                   max_growth: float = 4.0) -> list[CellDistance]:
    """Per active cell: the worst MCSE/target and the replicates it would want (capped)."""
    space = space_from_raw(raw)
    measures = [c[:-len("__mcse")] for c in cells.columns if c.endswith("__mcse")]
    out = []
    for _, row in cells.iterrows():
        d, f = int(row["data_idx"]) - 1, int(row["fit_idx"]) - 1
        k = space._cell_lookup[(d, f)]
        reps = int(space.cell_reps[k])
        worst, worst_m, need = 0.0, "", reps
        for key, target in target_mcse.items():
            for m in (m for m in measures if _matches(m, key)):
                mcse = float(row[f"{m}__mcse"])
                ratio = math.inf if not np.isfinite(mcse) else mcse / target
                if ratio > worst or not worst_m:
                    worst, worst_m = ratio, m
                if ratio > 1:
                    grow = max_growth if not np.isfinite(ratio) else min(max_growth, 1.1 * ratio**2)  # 10 % headroom
                    need = max(need, math.ceil(reps * grow), reps + 1)
        wanted = min(max_replicates, need)
        label = space.format_id(d, f, 0).rsplit("_", 1)[0]
        out.append(CellDistance(label, reps, worst_m, worst, wanted, reps >= max_replicates))
    return out


def grow_cells(rd: ResultDir, grow: dict[str, int], round_no: int, dist: list[CellDistance], shard_size: int) -> None:
    """Freeze one adaptive round: the cells named in ``grow`` get that many replicates (new blocks,
    new shards, a history entry). The caller holds the driver lock."""
    raw = rd.read_frozen().raw
    study = rd.load_study()
    space = space_from_raw(raw)
    want = {}
    for k, (d, f) in enumerate(space.cells.tolist()):
        label = space.format_id(d, f, 0).rsplit("_", 1)[0]
        if label in grow and not space.hidden[k]:
            want[(d, f)] = grow[label]
    new_space = space.extend(want, space.n_data, space.n_fit)
    merged = dataclasses.replace(study, layout=new_space.to_layout(), frozen_in=None)
    worst = max(dist, key=lambda c: c.ratio)
    what = [f"adaptive round {round_no}: {new_space.n_tasks - space.n_tasks} new task(s) in {len(want)} cell(s) "
            f"(worst before: {worst.cell} {worst.worst_measure} at {worst.ratio:.2f} x target)"]
    rd.apply_extension(Extension(merged, new_space, what), shard_size)


def record_targets(rd: ResultDir, targets: dict[str, float], cap: int) -> None:
    """Keep the targets in study.json, so ``status`` can show each cell's distance to them."""
    from .storage import atomic_write_text

    raw = json.loads(rd.study_json.read_text())
    raw["adaptive"] = {"target_mcse": targets, "max_replicates": cap}
    atomic_write_text(rd.study_json, json.dumps(raw, indent=1, default=str))


def adaptive_notes(raw: dict[str, Any], cells_path: Path, max_rows: int = 10) -> list[str]:
    """Lines for ``status``: each cell's distance to the targets (from the last reduce)."""
    ad = raw.get("adaptive")
    if not ad or not cells_path.exists():
        return []
    try:
        dist = cell_distances(raw, pd.read_csv(cells_path), ad["target_mcse"], int(ad["max_replicates"]))
    except (KeyError, ValueError, pd.errors.EmptyDataError):
        return []
    targets = ", ".join(f"{k} <= {v:g}" for k, v in ad["target_mcse"].items())
    lines = [f"adaptive: target MCSE {targets}, at most {ad['max_replicates']} replicates per cell; "
             f"{sum(c.met for c in dist)} of {len(dist)} cell(s) meet it"]
    for c in sorted(dist, key=lambda c: -c.ratio)[:max_rows]:
        state = "met" if c.met else ("at cap" if c.at_cap else f"wants {c.wanted}")
        lines.append(f"  {c.cell}: {c.replicates} replicates, worst {c.worst_measure or '-'} "
                     f"MCSE {c.ratio:.2f} x target ({state})")
    return lines
