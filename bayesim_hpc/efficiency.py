"""How well a study used what it asked the scheduler for, and what to ask for next time.

``bayesim-hpc efficiency DIR`` reads the result directory (``study.json``, ``manifest.json``,
the segments; never ``study.pkl``) and, for a Slurm study with accounting, one ``sacct`` call
for the study's job ids (the manifest's submission records). Per resource class and per cell it
shows requested vs used memory (MaxRSS) and time (elapsed, CPU time), the core-hours spent in
fits vs start-up and idling, retries, failed runs and waiting in the queue, and a suggested
request for the next run: the 95th percentile of MaxRSS plus a margin, and the 95th percentile
of the elements' elapsed time plus a margin (:func:`suggest`). Without accounting (or for a
local study) it says what it cannot know and reports what the segments know.

The figures are pure functions of parsed rows (:func:`parse_usage`, :func:`class_figures`), so
they are tested against sacct output captured on a real cluster; the segments are read one at a
time (memory bounded by the number of cells and shards, not tasks).

The result directory is read by :mod:`.efficiency_study`.

Example:
    >>> runs = parse_usage("7_0|COMPLETED|2026-11-30T08:48:36|2026-11-30T08:48:37|2026-11-30T08:48:39|2|00:01.030|2|1|1G||n1\\n"
    ...                    "7_0.batch|COMPLETED|2026-11-30T08:48:37|2026-11-30T08:48:37|2026-11-30T08:48:39|2|00:00.012|2|1||3352K|n1")
    >>> runs[0].job_id, runs[0].req_mem_mb, round(runs[0].max_rss_mb, 2), runs[0].wait_s
    ('7_0', 1024.0, 3.27, 1.0)
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = ["Run", "Element", "ClassFigures", "CellFigures", "Suggestion", "Efficiency", "parse_duration_s",
           "parse_mem_mb", "parse_usage", "suggest", "class_figures", "at_least_after_failures",
           "SACCT_USAGE_FORMAT"]

#: the sacct fields read (``-P``: ``|``-separated; one allocation row and its step rows per run)
SACCT_USAGE_FORMAT = "JobID,State,Submit,Start,End,ElapsedRaw,TotalCPU,CPUTimeRAW,AllocCPUS,ReqMem,MaxRSS,NodeList"
_FAILED = {"FAILED", "OUT_OF_MEMORY", "TIMEOUT", "NODE_FAIL", "CANCELLED", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}

# ------------------------------------------------------------------------------------------ parsing


def parse_duration_s(text: str) -> float | None:
    """Seconds from sacct's durations: ``00:01.198``, ``1:02:03``, ``1-02:03:04``, ``12.5``.

    >>> parse_duration_s("00:01.198"), parse_duration_s("1:02:03"), parse_duration_s("1-00:00:01")
    (1.198, 3723.0, 86401.0)
    """
    text = (text or "").strip()
    if not text or text.upper() in ("INVALID", "UNKNOWN"):
        return None
    days = 0.0
    if "-" in text:
        d, text = text.split("-", 1)
        days = float(d)
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        return None
    secs = 0.0
    for p in parts:
        secs = secs * 60 + p
    return days * 86400 + secs


def parse_mem_mb(text: str, cpus: int = 1) -> float | None:
    """Megabytes from sacct's memory fields: ``2844K``, ``1.50M``, ``3G``, ``4Gc``; a bare number is KiB.

    A trailing ``c`` (per CPU, older ReqMem) is multiplied by ``cpus``; ``n`` (per node) is dropped.

    >>> parse_mem_mb("2048K"), parse_mem_mb("1G"), parse_mem_mb("2Gc", cpus=4), parse_mem_mb("")
    (2.0, 1024.0, 8192.0, None)
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)([nc]?)\s*", text or "")
    if not m:
        return None
    num = float(m.group(1))
    unit = m.group(2) or "K"
    mb = num * {"K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0 ** 2, "P": 1024.0 ** 3}[unit]
    return mb * (cpus if m.group(3) == "c" else 1)


def _epoch(text: str) -> float | None:
    text = (text or "").strip()
    if not text or text in ("Unknown", "None", "N/A"):
        return None
    try:
        return _dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


@dataclass
class Run:
    """One run of one element as sacct tells it (a requeued element has several)."""

    job_id: str  # "123_4", or "123" for a job of one element
    state: str
    submit: float | None = None
    start: float | None = None
    end: float | None = None
    elapsed_s: float = 0.0
    cpu_s: float | None = None  # TotalCPU: CPU seconds the processes used (user + system)
    core_s: float = 0.0  # CPUTimeRAW: allocated cores x elapsed
    alloc_cpus: int = 0
    req_mem_mb: float | None = None
    max_rss_mb: float | None = None  # the largest MaxRSS of its steps
    node: str = ""

    @property
    def wait_s(self) -> float | None:
        """Seconds from submission (or requeue) to start."""
        return None if self.submit is None or self.start is None else max(0.0, self.start - self.submit)


def parse_usage(text: str) -> list[Run]:
    """Runs from ``sacct -D -P -n --format SACCT_USAGE_FORMAT`` output, oldest first.

    An allocation row (``123_4``) starts a run; its step rows (``123_4.batch``, ``123_4.0``)
    follow it and give MaxRSS (their largest) and, where the allocation row has none, TotalCPU.
    Rows of array remainders that never ran (``123_[5-9]``) are skipped.
    """
    runs: list[Run] = []
    current: dict[str, Run] = {}
    for line in (text or "").splitlines():
        f = line.split("|")
        if len(f) < 12:
            continue
        jid = f[0].strip()
        if not jid or "[" in jid:
            continue
        base, _, step = jid.partition(".")
        state = f[1].split()[0] if f[1].split() else ""
        if not step:
            cpus = int(f[8]) if f[8].strip().isdigit() else 0
            r = Run(base, state.upper(), _epoch(f[2]), _epoch(f[3]), _epoch(f[4]),
                    float(f[5]) if f[5].strip().isdigit() else 0.0, parse_duration_s(f[6]),
                    float(f[7]) if f[7].strip().isdigit() else 0.0, cpus, parse_mem_mb(f[9], max(1, cpus)),
                    parse_mem_mb(f[10]), f[11].strip())
            runs.append(r)
            current[base] = r
        elif base in current:
            r = current[base]
            rss = parse_mem_mb(f[10])
            if rss is not None and (r.max_rss_mb is None or rss > r.max_rss_mb):
                r.max_rss_mb = rss
    return runs


# ------------------------------------------------------------------------------------------ figures


@dataclass
class Element:
    """One submitted array element, from the manifest, with what the segments and sacct say."""

    job_id: str
    resources: str  # the class label, e.g. "60min/2GB/1cpu"
    shards: list[int]
    cells: list[int]
    req_mem_mb: float | None
    req_time_min: float | None
    cpus: int
    retry: bool  # one of its shards had an element before (a resubmission)
    fit_s: float = 0.0  # sum of timing_total of the rows it wrote
    runs: list[Run] = field(default_factory=list)


@dataclass
class Suggestion:
    """A request for the next run: memory (MB, rounded up to 256 MB) and time (minutes, up to 5)."""

    mem_mb: int | None
    time_min: int | None
    basis: str  # what it rests on, e.g. "p95 of 12 runs' MaxRSS 1.4 GB + 20 %"

    @property
    def mem_gb(self) -> float | None:
        return None if self.mem_mb is None else round(self.mem_mb / 1024, 2)


def _p(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, float), q)) if len(values) else None


def suggest(max_rss_mb: Sequence[float], elapsed_s: Sequence[float], *, mem_margin: float = 0.2,
            time_margin: float = 0.5, mem_step_mb: int = 256, time_step_min: int = 5) -> Suggestion:
    """The next request from measured runs: p95 of MaxRSS x (1 + ``mem_margin``), rounded up to
    ``mem_step_mb``; p95 of elapsed x (1 + ``time_margin``), rounded up to ``time_step_min``.

    >>> s = suggest([900, 1000, 1100], [600, 620, 700])
    >>> s.mem_mb, s.time_min
    (1536, 20)
    """
    rss = [v for v in max_rss_mb if v is not None and v > 0]
    el = [v for v in elapsed_s if v is not None and v > 0]
    mem = time_ = None
    basis = []
    if rss:
        p95 = _p(rss, 95)
        mem = max(mem_step_mb, int(math.ceil(p95 * (1 + mem_margin) / mem_step_mb)) * mem_step_mb)
        basis.append(f"memory: p95 of {len(rss)} run(s)' MaxRSS {_mb(p95)} + {mem_margin:.0%}")
    if el:
        p95 = _p(el, 95)
        time_ = max(time_step_min, int(math.ceil(p95 * (1 + time_margin) / 60 / time_step_min)) * time_step_min)
        basis.append(f"time: p95 of {len(el)} run(s)' elapsed {_dur(p95)} + {time_margin:.0%}")
    return Suggestion(mem, time_, "; ".join(basis) or "nothing measured")


@dataclass
class ClassFigures:
    """Requested vs used, per resource class (elements with the same request)."""

    resources: str
    elements: int
    runs: int
    failed_runs: int
    retries: int  # resubmitted elements + in-place requeues
    req_mem_mb: float | None
    max_rss_p50_mb: float | None
    max_rss_p95_mb: float | None
    max_rss_max_mb: float | None
    req_time_min: float | None
    elapsed_p50_s: float | None
    elapsed_p95_s: float | None
    elapsed_max_s: float | None
    cpu_efficiency: float | None  # TotalCPU / (allocated cores x elapsed)
    core_h: float | None  # allocated core-hours of every run
    fit_core_h: float  # core-hours inside fits (timing_total of the rows written x cores)
    failed_core_h: float | None  # core-hours of runs that failed (OOM, timeout, node failure...)
    wait_p50_s: float | None
    wait_max_s: float | None
    suggestion: Suggestion

    @property
    def overhead_core_h(self) -> float | None:
        """Allocated core-hours not spent in fits: start-up, imports, compiles, idle cores."""
        return None if self.core_h is None else max(0.0, self.core_h - self.fit_core_h)


def class_figures(elements: Iterable[Element], **margins: Any) -> list[ClassFigures]:
    """Figures per resource class from elements with their runs (pure; see :func:`suggest`)."""
    groups: dict[str, list[Element]] = {}
    for e in elements:
        groups.setdefault(e.resources, []).append(e)
    out = []
    for label, els in groups.items():
        runs = [r for e in els for r in e.runs]
        rss = [r.max_rss_mb for r in runs if r.max_rss_mb is not None]
        el = [r.elapsed_s for r in runs if r.start is not None and r.end is not None]  # ended runs only
        waits = [w for w in (e.runs[0].wait_s for e in els if e.runs) if w is not None]
        cpu = [(r.cpu_s, r.core_s) for r in runs if r.cpu_s is not None and r.core_s > 0]
        fit_core_h = sum(e.fit_s * max(1, e.cpus) for e in els) / 3600
        req_mem = [e.req_mem_mb for e in els if e.req_mem_mb] or [r.req_mem_mb for r in runs if r.req_mem_mb]
        out.append(ClassFigures(
            resources=label, elements=len(els), runs=len(runs),
            failed_runs=sum(r.state in _FAILED for r in runs),
            retries=sum(e.retry for e in els) + sum(max(0, len(e.runs) - 1) for e in els),
            req_mem_mb=max(req_mem) if req_mem else None,
            max_rss_p50_mb=_p(rss, 50), max_rss_p95_mb=_p(rss, 95), max_rss_max_mb=max(rss) if rss else None,
            req_time_min=max((e.req_time_min for e in els if e.req_time_min), default=None),
            elapsed_p50_s=_p(el, 50), elapsed_p95_s=_p(el, 95), elapsed_max_s=max(el) if el else None,
            cpu_efficiency=(sum(c for c, _ in cpu) / sum(t for _, t in cpu)) if cpu else None,
            core_h=sum(r.core_s for r in runs) / 3600 if runs else None, fit_core_h=fit_core_h,
            failed_core_h=sum(r.core_s for r in runs if r.state in _FAILED) / 3600 if runs else None,
            wait_p50_s=_p(waits, 50), wait_max_s=max(waits) if waits else None,
            suggestion=at_least_after_failures(suggest(rss, el, **margins), runs, max(req_mem) if req_mem else None,
                                               max((e.req_time_min for e in els if e.req_time_min), default=None))))
    return out


def at_least_after_failures(s: Suggestion, runs: Sequence[Run], req_mem_mb: float | None,
                            req_time_min: float | None, factor: float = 2.0) -> Suggestion:
    """A run that ran out of memory (time) used all it had: its MaxRSS (elapsed) understates the
    need, so the suggestion is at least ``factor`` times the request (as escalation would ask).

    >>> oom = Run("1", "OUT_OF_MEMORY", max_rss_mb=290.0)
    >>> at_least_after_failures(suggest([290.0], []), [oom], 300, None).mem_mb
    768
    """
    mem, time_, basis = s.mem_mb, s.time_min, [s.basis]
    if req_mem_mb and any(r.state == "OUT_OF_MEMORY" for r in runs):
        floor = int(math.ceil(req_mem_mb * factor / 256)) * 256
        if mem is None or mem < floor:
            mem = floor
            basis.append(f"runs ran out of memory: at least {factor:g} x the request {_mb(req_mem_mb)}")
    if req_time_min and any(r.state == "TIMEOUT" for r in runs):
        floor_t = int(math.ceil(req_time_min * factor / 5)) * 5
        if time_ is None or time_ < floor_t:
            time_ = floor_t
            basis.append(f"runs ran out of time: at least {factor:g} x the request {req_time_min:g} min")
    return s if (mem, time_) == (s.mem_mb, s.time_min) else Suggestion(mem, time_, "; ".join(basis))


@dataclass
class CellFigures:
    """What the segments say about one cell, and the memory of the elements that ran it."""

    cell: str
    label: str
    spec: dict[str, Any]
    rows: int  # task rows written (every attempt)
    succeeded: int
    failed: int
    fit_s: float  # sum of timing_total
    fit_s_max: float
    resources: list[str]
    max_rss_p95_mb: float | None = None
    max_rss_max_mb: float | None = None
    suggestion: Suggestion | None = None

    @property
    def fit_s_mean(self) -> float | None:
        return self.fit_s / self.rows if self.rows else None


def _mb(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1024:.2f} GB" if v >= 1024 else f"{v:.0f} MB"


def _dur(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 3600:.1f} h" if v >= 3600 else f"{v / 60:.1f} min" if v >= 60 else f"{v:.1f} s"


def _pct(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{100 * a / b:.0f} %"


@dataclass
class Efficiency:
    """A study's use of its requests: per resource class, per cell, and what could not be known."""

    path: str
    executor: str | None
    accounting: bool  # sacct answered for the study's jobs
    classes: list[ClassFigures]
    cells: list[CellFigures]
    notes: list[str] = field(default_factory=list)  # what cannot be known, and why
    elements: int = 0

    def to_json(self) -> str:
        def conv(o: Any) -> Any:
            d = asdict(o)
            if isinstance(o, ClassFigures):
                d["overhead_core_h"] = o.overhead_core_h
            return d

        return json.dumps({"path": self.path, "executor": self.executor, "accounting": self.accounting,
                           "elements": self.elements, "notes": self.notes,
                           "classes": [conv(c) for c in self.classes], "cells": [conv(c) for c in self.cells]},
                          indent=1, default=str)

    def render(self, max_rows: int = 20) -> str:
        """Plain text for the terminal."""
        lines = [f"efficiency of {self.path} (executor {self.executor or '-'}; "
                 f"{'accounting: sacct' if self.accounting else 'no accounting figures'})"]
        lines += [f"  note: {n}" for n in self.notes]
        for c in self.classes:
            lines.append(f"  class {c.resources}: {c.elements} element(s), {c.runs} run(s), {c.failed_runs} failed, "
                         f"{c.retries} retried")
            if c.runs:
                lines.append(f"    memory: requested {_mb(c.req_mem_mb)}, MaxRSS p50 {_mb(c.max_rss_p50_mb)}, "
                             f"p95 {_mb(c.max_rss_p95_mb)}, max {_mb(c.max_rss_max_mb)} "
                             f"({_pct(c.max_rss_p95_mb, c.req_mem_mb)} of the request at p95)")
                lines.append(f"    time: requested {_dur(c.req_time_min * 60 if c.req_time_min else None)}, elapsed "
                             f"p50 {_dur(c.elapsed_p50_s)}, p95 {_dur(c.elapsed_p95_s)}, max {_dur(c.elapsed_max_s)}"
                             + (f"; CPU efficiency {c.cpu_efficiency:.0%}" if c.cpu_efficiency is not None else ""))
                lines.append(f"    core-hours: {c.core_h:.3f} allocated, {c.fit_core_h:.3f} in fits "
                             f"({_pct(c.fit_core_h, c.core_h)}), {c.overhead_core_h:.3f} start-up/idle, "
                             f"{c.failed_core_h:.3f} in failed runs")
                lines.append(f"    waiting in the queue: p50 {_dur(c.wait_p50_s)}, max {_dur(c.wait_max_s)}")
            else:
                lines.append(f"    fits: {c.fit_core_h:.3f} core-hours (from the segments)")
            s = c.suggestion
            if s.mem_mb or s.time_min:
                lines.append(f"    suggested next request: --mem {_mb(s.mem_mb)} --time {s.time_min or '-'} min "
                             f"({s.basis})")
        lines.append("  per cell: rows (succeeded/failed), fit seconds mean / max, elements' MaxRSS p95, suggestion")
        for c in self.cells[:max_rows]:
            sug = f"{_mb(c.suggestion.mem_mb)}" if c.suggestion and c.suggestion.mem_mb else "-"
            mean = f"{c.fit_s_mean:.2f}" if c.fit_s_mean is not None else "-"
            lines.append(f"    {c.cell:<12} {c.rows:>6} ({c.succeeded}/{c.failed})  {mean} / {c.fit_s_max:.2f} s  "
                         f"{_mb(c.max_rss_p95_mb)}  {sug}   {c.label}")
        if len(self.cells) > max_rows:
            lines.append(f"    ... {len(self.cells) - max_rows} more cells (--json for all)")
        if any(c.suggestion.mem_mb or c.suggestion.time_min for c in self.classes):
            lines.append(f"  write these into a profile: bayesim-hpc efficiency {self.path} --write-profile "
                         "next.yaml [--from YOUR_PROFILE]")
        return "\n".join(lines)

    def to_html(self) -> str:
        """A report section: notes, one table per class, one per cell."""
        out = "".join(f"<p>{html.escape(n)}</p>" for n in self.notes)
        rows = []
        for c in self.classes:
            rows.append({"class": c.resources, "elements": c.elements, "runs": c.runs, "failed runs": c.failed_runs,
                         "retries": c.retries, "requested mem": _mb(c.req_mem_mb), "MaxRSS p95": _mb(c.max_rss_p95_mb),
                         "requested time": _dur(c.req_time_min * 60 if c.req_time_min else None),
                         "elapsed p95": _dur(c.elapsed_p95_s),
                         "core-h": "-" if c.core_h is None else f"{c.core_h:.3f}",
                         "core-h in fits": f"{c.fit_core_h:.3f}", "wait p50": _dur(c.wait_p50_s),
                         "suggested mem": _mb(c.suggestion.mem_mb),
                         "suggested time": f"{c.suggestion.time_min} min" if c.suggestion.time_min else "-"})
        out += _html_table(rows, "Per resource class: requested vs used")
        out += _html_table([{"cell": c.cell, "grid values": c.label, "rows": c.rows, "failed": c.failed,
                             "fit s (mean)": "-" if c.fit_s_mean is None else f"{c.fit_s_mean:.3f}",
                             "MaxRSS p95": _mb(c.max_rss_p95_mb)} for c in self.cells], "Per cell")
        return out + (f"<p>Write the suggestions into a profile: <code>bayesim-hpc efficiency "
                      f"{html.escape(self.path)} --write-profile next.yaml</code></p>" if self.accounting else "")


def _html_table(rows: list[dict[str, Any]], caption: str) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><caption>{html.escape(caption)}</caption><tr>{head}</tr>{body}</table>"
