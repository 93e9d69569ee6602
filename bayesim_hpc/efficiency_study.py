"""The efficiency figures of one result directory (:mod:`.efficiency`), and a profile from them.

Reads ``study.json`` (the task space, the grids), ``manifest.json`` (the submission records:
job ids, resource classes, the shards of each element), the segments (``timing_total`` of each
row, one segment at a time) and, for Slurm studies, one ``sacct`` call for the study's array
jobs. Nothing of the study's code runs; nothing is written except by :func:`write_profile`.

Example:
    >>> eff = study_efficiency("results/my_study")                         # doctest: +SKIP
    >>> write_profile(eff, "next.yaml", base_profile="example-cluster")    # doctest: +SKIP
"""

from __future__ import annotations

import bisect
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .efficiency import (SACCT_USAGE_FORMAT, CellFigures, Efficiency, Element, Run, at_least_after_failures,
                         class_figures, parse_usage, suggest)
from .errors import BayesimError
from .executors import slurm_clusters
from .executors import slurm_query as sq
from .executors.slurm_job import read_done_record
from .executors.slurm_submit import element_shards
from .manifest import Manifest
from .resultdir import ResultDir
from .storage import SegmentError, iter_segment_paths, read_rows, study_stamp

__all__ = ["study_efficiency", "profile_with_suggestions", "write_profile", "sacct_usage"]

_CHUNK = 200  # job ids per sacct call
SHORT_RUN_S = 60.0


def sacct_usage(job_ids: list[str], *, run: Callable[..., Any] = subprocess.run) -> list[Run]:
    """Every run of the given (array) jobs and their steps, from ``sacct -D -P -n -j ...``.

    Raises :class:`~.executors.slurm_query.AccountingDisabledError` without accounting and
    :class:`~.executors.slurm_query.SlurmCommandError` when sacct fails or is missing.
    """
    out: list[Run] = []
    for i in range(0, len(job_ids), _CHUNK):
        cmd = ["sacct", "-D", "-P", "-n", "-j", ",".join(job_ids[i:i + _CHUNK]), "--format", SACCT_USAGE_FORMAT]
        proc = sq.run_command("query", cmd, run=run)
        if proc.returncode != 0:
            text = f"{proc.stderr or ''}\n{proc.stdout or ''}"
            err = sq.AccountingDisabledError if sq._ACCOUNTING_DISABLED.search(text) else sq.SlurmCommandError
            raise err(f"sacct failed (exit {proc.returncode})", cmd=cmd, returncode=proc.returncode,
                      stdout=proc.stdout or "", stderr=proc.stderr or "")
        out += parse_usage(proc.stdout or "")
    return out


def _segments(rd: ResultDir, raw: dict, space: Any, n_cells: int
              ) -> tuple[np.ndarray, dict[tuple[int, int], float], int]:
    """Per cell [rows, succeeded, failed, fit_s, fit_s_max] and per (shard, attempt) fit seconds."""
    acc = np.zeros((n_cells, 5))
    by_attempt: dict[tuple[int, int], float] = {}
    skipped = 0
    stamp = study_stamp(raw)
    for path in iter_segment_paths(rd.path):
        try:
            rows = read_rows(path, columns=("timing_total",), stamp=stamp, n_tasks=int(raw["n_tasks"]))
        except (SegmentError, OSError):
            skipped += 1
            continue
        if not rows.n_rows:
            continue
        t = rows.numbers.get("timing_total", np.full(rows.n_rows, np.nan))
        t = np.where(np.isfinite(t), t, 0.0)
        ok = np.array([s == "success" for s in rows.strings["status"]], dtype=bool)
        cells, _ = space.cell_and_rep(rows.index)
        np.add.at(acc[:, 0], cells, 1)
        np.add.at(acc[:, 1], cells, ok)
        np.add.at(acc[:, 2], cells, ~ok)
        np.add.at(acc[:, 3], cells, t)
        np.maximum.at(acc[:, 4], cells, t)
        key = (rows.shard_id, rows.attempt)
        by_attempt[key] = by_attempt.get(key, 0.0) + float(t.sum())
    return acc, by_attempt, skipped


def _num(job_id: Any) -> int:
    """The number of a job id for ordering ("123"; anything else sorts first)."""
    return int(job_id) if str(job_id).isdigit() else 0


def _elements(subs: list[dict], shard_cells: dict[int, list[int]], by_attempt: dict[tuple[int, int], float]
              ) -> list[Element]:
    """The elements of the submission records, with the fit seconds of the segments they wrote.

    An element that starts a shard at attempt ``a`` writes attempts ``a``, ``a+1``, ... (one per
    restart); each (shard, attempt) of the segments goes to the element with the largest base
    attempt at or below it."""
    out: list[Element] = []
    seen: set[int] = set()
    bases: dict[int, list[tuple[int, int]]] = {}  # shard -> sorted (base attempt, element number)
    for sub in sorted(subs, key=lambda s: (s.get("time") or 0, _num(s["job_id"]))):
        raw_res = sub.get("resources_raw") or {}
        attempts = dict(zip((int(s) for s in sub.get("shards", [])), (int(a) for a in sub.get("attempts", []))))
        packs = element_shards(sub)
        ids = sub.get("elements") or [f"{sub['job_id']}_{i}" if len(packs) > 1 else str(sub["job_id"])
                                      for i in range(len(packs))]
        for eid, shards in zip(ids, packs):
            cells = sorted({c for s in shards for c in shard_cells.get(s, [])})
            el = Element(str(eid), str(sub.get("resources") or "-"), list(shards), cells,
                         raw_res.get("mem_mb"), raw_res.get("time_min"), int(raw_res.get("cpus_per_task") or 1),
                         retry=any(s in seen for s in shards))
            seen.update(shards)
            for s in shards:
                bisect.insort(bases.setdefault(s, []), (attempts.get(s, 1), len(out)))
            out.append(el)
    for (shard, attempt), secs in by_attempt.items():
        lst = bases.get(shard)
        if not lst:
            continue
        i = bisect.bisect_right(lst, (attempt, len(out))) - 1
        if i >= 0:
            out[lst[i][1]].fit_s += secs
    return out


def study_efficiency(path: str | Path, *, live: bool = True, run: Callable[..., Any] = subprocess.run,
                     mem_margin: float = 0.2, time_margin: float = 0.5) -> Efficiency:
    """The efficiency figures of a result directory (see :mod:`.efficiency`).

    ``live=False``: do not ask sacct (the figures then come from the segments and the done
    records). ``run``: a :func:`subprocess.run` stand-in for the sacct call (tests).
    """
    rd = ResultDir(path)
    if not rd.exists():
        raise FileNotFoundError(f"{path} is not a bayesim-hpc result directory (no study.json)")
    frozen = rd.read_frozen()
    raw, space = frozen.raw, frozen.space
    n_cells = len(space.cells)
    man = Manifest(rd).read()
    runs = man.get("runs", [])
    executor = runs[-1].get("executor") if runs else None
    notes: list[str] = []
    acc, by_attempt, skipped = _segments(rd, raw, space, n_cells)
    if skipped:
        notes.append(f"{skipped} segment(s) could not be read (damaged, foreign or unreadable) and are not counted")
    shard_cells = {sh.shard_id: [int(c) for c in np.unique(space.cell_and_rep(space.shard_indices(sh))[0])]
                   for sh in frozen.shards}
    subs = [s for s in man.get("submissions", []) if s.get("executor") == "slurm" and s.get("job_id")]
    elements = _elements(subs, shard_cells, by_attempt)
    accounting = False
    if elements and live:
        ids = sorted({str(s["job_id"]) for s in subs}, key=_num)
        clusters = ",".join(dict.fromkeys(c for s in subs for c in str(s.get("clusters") or "").split(",") if c))
        try:
            with slurm_clusters.using(clusters or None):  # the clusters the jobs went to (--clusters)
                usage = sacct_usage(ids, run=run)
            accounting = True
        except sq.AccountingDisabledError:
            usage = []
            notes.append("this cluster keeps no accounting (sacct: accounting storage is disabled): memory used "
                         "(MaxRSS), CPU time and waiting in the queue cannot be known; elapsed times below come from "
                         "the elements' own done records")
        except sq.SlurmCommandError as exc:
            usage = []
            notes.append(f"sacct did not answer ({exc}): memory used, CPU time and waiting cannot be known now")
        by_id: dict[str, list[Run]] = {}
        for r in usage:
            by_id.setdefault(r.job_id, []).append(r)
        for e in elements:
            e.runs = by_id.get(e.job_id, [])
        if accounting and not usage:
            notes.append("sacct knows none of the study's jobs (purged from the accounting database, or another "
                         "cluster)")
    elif elements:
        notes.append("not asking sacct (--no-live): memory, CPU time and waiting are not shown")
    if elements and not accounting:
        _from_done_records(rd, elements)
    if not elements:
        notes.append(f"executor {executor or '-'}: no Slurm submissions recorded, so nothing was requested from a "
                     "scheduler; the figures are the fits' own times from the segments")
    classes = class_figures(elements, mem_margin=mem_margin, time_margin=time_margin) if elements else []
    if accounting and any(c.elapsed_p95_s is not None and c.elapsed_p95_s < SHORT_RUN_S for c in classes):
        notes.append(f"runs shorter than {SHORT_RUN_S:.0f} s: Slurm samples memory (JobAcctGatherFrequency, often "
                     "every 30 s), so their MaxRSS may miss the peak; judge the memory suggestion from longer runs")
    cells = _cells(frozen, space, acc, elements, mem_margin)
    return Efficiency(str(rd.path), executor, accounting, classes, cells, notes, len(elements))


def _from_done_records(rd: ResultDir, elements: list[Element]) -> None:
    """Without sacct: one run per element from its done record (the job function's own clock)."""
    for e in elements:
        rec = read_done_record(rd.path.resolve(), e.job_id)
        if rec and rec.get("started") and rec.get("ended"):
            el = float(rec["ended"]) - float(rec["started"])
            e.runs = [Run(e.job_id, "COMPLETED" if rec.get("exit", 0) == 0 else "FAILED", None,
                          float(rec["started"]), float(rec["ended"]), el, None, el * e.cpus, e.cpus)]


def _cells(frozen: Any, space: Any, acc: np.ndarray, elements: list[Element], mem_margin: float
           ) -> list[CellFigures]:
    rss: dict[int, list[float]] = {}
    classes: dict[int, set[str]] = {}
    oom: dict[int, float] = {}  # the largest request of an element of the cell that ran out of memory
    for e in elements:
        vals = [r.max_rss_mb for r in e.runs if r.max_rss_mb is not None]
        for c in e.cells:
            rss.setdefault(c, []).extend(vals)
            classes.setdefault(c, set()).add(e.resources)
            if e.req_mem_mb and any(r.state == "OUT_OF_MEMORY" for r in e.runs):
                oom[c] = max(oom.get(c, 0.0), float(e.req_mem_mb))
    out = []
    for k in np.lexsort((space.cells[:, 1], space.cells[:, 0])):
        if space.hidden[k]:
            continue
        d, f = (int(v) for v in space.cells[k])
        data_spec, fit_spec = frozen.data_spec(d), frozen.fit_spec(f)
        label = (", ".join(f"{a}={b}" for a, b in data_spec.items()) + " | "
                 + ", ".join(f"{a}={b}" for a, b in fit_spec.items()))
        vals = rss.get(int(k), [])
        out.append(CellFigures(
            cell=space.format_id(d, f, 0).rsplit("_", 1)[0], label=label, spec={**data_spec, **fit_spec},
            rows=int(acc[k, 0]), succeeded=int(acc[k, 1]), failed=int(acc[k, 2]), fit_s=float(acc[k, 3]),
            fit_s_max=float(acc[k, 4]), resources=sorted(classes.get(int(k), ())),
            max_rss_p95_mb=float(np.percentile(vals, 95)) if vals else None, max_rss_max_mb=max(vals) if vals else None,
            suggestion=at_least_after_failures(suggest(vals, [], mem_margin=mem_margin),
                                               [Run("", "OUT_OF_MEMORY")] if int(k) in oom else [],
                                               oom.get(int(k)), None) if vals else None))
    return out


# ------------------------------------------------------------------------------------------ profile


def profile_with_suggestions(eff: Efficiency, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """``base`` (a loaded profile) with ``mem_gb`` and ``time_min`` from the measured suggestions.

    ``time_min``: the largest suggested time of any class. ``mem_gb``: the smallest per-cell
    suggestion; cells that need more get a rule of their own (``match`` on their grid values),
    ahead of the profile's own rules, which keep their partition/qos/CPUs but lose their memory
    and time (the measurements replace them).
    """
    from .executors.slurm_profile import _matches

    times = [c.suggestion.time_min for c in eff.classes if c.suggestion.time_min]
    cell_mem = [(c, c.suggestion.mem_mb) for c in eff.cells if c.suggestion and c.suggestion.mem_mb]
    class_mem = [c.suggestion.mem_mb for c in eff.classes if c.suggestion.mem_mb]
    if not times and not class_mem:
        raise BayesimError(f"nothing measured to suggest from in {eff.path}: suggestions need the elements' MaxRSS "
                           "and elapsed times from sacct (Slurm accounting)" + (f" ({eff.notes[0]})" if eff.notes else ""))
    out = dict(base or {})
    old_rules = [dict(r) for r in out.get("rules") or []]
    if times:
        out.pop("time", None)  # the name before 0.3
        out["time_min"] = max(times)
    floor = min(m for _, m in cell_mem) if cell_mem else max(class_mem) if class_mem else None
    new_rules = []
    if floor is not None:
        out.pop("mem", None)
        out["mem_gb"] = round(floor / 1024, 2)
        for cell, m in cell_mem:
            if m <= floor:
                continue
            rule: dict[str, Any] = {"match": {k: _plain(v) for k, v in cell.spec.items()}, "mem_gb": round(m / 1024, 2)}
            for r in old_rules:  # keep what the old rule for this cell said besides memory and time
                if all(_matches(cell.spec.get(k), v) for k, v in (r.get("match") or {}).items()):
                    rule.update({k: r[k] for k in ("partition", "qos", "cpus_per_task") if k in r})
                    break
            new_rules.append(rule)
    kept = []
    for r in old_rules:
        drop = ("mem", "mem_gb", "time", "time_min") if floor is not None else ("time", "time_min")
        r = {k: v for k, v in r.items() if k not in drop}
        if set(r) - {"match"}:
            kept.append(r)
    out["rules"] = new_rules + kept
    return out


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def write_profile(eff: Efficiency, out: str | Path, base_profile: str | None = None) -> Path:
    """Write a profile YAML with the suggestions (on top of ``base_profile``, a name or path).

    The file is read back with :func:`~.executors.slurm_profile.load_profile` before returning,
    so it is a valid profile.
    """
    import yaml

    from .executors.slurm_profile import load_profile

    prof = profile_with_suggestions(eff, load_profile(base_profile) if base_profile else {})
    basis = sorted({c.suggestion.basis for c in eff.classes if c.suggestion.mem_mb or c.suggestion.time_min})
    head = [f"# written by `bayesim-hpc efficiency {eff.path} --write-profile` on {time.strftime('%Y-%m-%d %H:%M')}",
            f"# from: {base_profile or 'no profile (only the measured keys)'}; measured over {eff.elements} element(s)"]
    head += [f"#   {b}" for b in basis]
    path = Path(out)
    path.write_text("\n".join(head) + "\n" + yaml.safe_dump(prof, sort_keys=False, default_flow_style=None))
    load_profile(str(path.resolve()))
    return path
