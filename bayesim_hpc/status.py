"""Where a study stands, read from its result directory (and the scheduler, for Slurm runs).

Counts come from the segments, which are the truth; shard states, attempts, job ids and
reasons from the manifest; live job states from one scheduler query when the last run
used Slurm. Nothing here writes anything.

Example:
    >>> st = study_status("results/my_study")        # doctest: +SKIP
    >>> print(st.render())                           # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .locking import DirLock
from .manifest import Manifest
from .resultdir import ResultDir
from .reduce import select_winners
from .storage import read_rows, shard_dir

__all__ = ["StudyStatus", "study_status"]


@dataclass
class StudyStatus:
    path: str
    n_tasks: int
    n_success: int
    n_failed: int
    n_missing: int
    n_warnings: int
    cells: list[dict[str, Any]]
    shards: list[dict[str, Any]]
    corrupt: list[dict[str, str]]
    driver: str | None
    last_run: dict[str, Any] | None
    eta_seconds: float | None
    rate_per_s: float | None
    failures: list[dict[str, str]] = field(default_factory=list)
    scheduler_note: str = ""
    elements: list[dict[str, Any]] = field(default_factory=list)  # Slurm: predicted vs measured seconds

    @property
    def complete(self) -> bool:
        return self.n_missing == 0 and self.n_failed == 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=str)

    def render(self, max_rows: int = 20) -> str:
        """A plain-text report for the terminal."""
        pct = 100.0 * (self.n_success + self.n_failed) / max(1, self.n_tasks)
        lines = [f"study {self.path}",
                 f"  tasks: {self.n_tasks}  done: {self.n_success}  failed: {self.n_failed}  "
                 f"pending: {self.n_missing}  ({pct:.1f} % finished)  warnings: {self.n_warnings}"]
        if self.driver:
            lines.append(f"  driver: {self.driver}")
        if self.last_run:
            started = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.last_run.get("started", 0)))
            lines.append(f"  last run: executor {self.last_run.get('executor')}, started {started}"
                         + ("" if self.last_run.get("ended") else " (no end recorded)"))
        if self.eta_seconds is not None:
            lines.append(f"  rate: {self.rate_per_s:.2f} tasks/s, ETA {time.strftime('%H:%M:%S', time.gmtime(self.eta_seconds))}")
        if self.scheduler_note:
            lines.append(f"  scheduler: {self.scheduler_note}")
        for c in self.corrupt:
            lines.append(f"  DAMAGED segment {c['segment']}: {c['error']} (its tasks count as pending; resume re-runs them)")
        lines.append("  per cell (data x fit): done / failed / pending")
        for c in self.cells[:max_rows]:
            lines.append(f"    {c['cell']:<28} {c['done']:>6} / {c['failed']:>5} / {c['pending']:>6}")
        if len(self.cells) > max_rows:
            lines.append(f"    ... {len(self.cells) - max_rows} more cells (--json for all)")
        unfinished = [s for s in self.shards if s["missing"] or s["state"] not in ("COMPLETED", "PENDING")]
        lines.append(f"  shards: {len(self.shards)}, {sum(1 for s in self.shards if s['missing'] == 0)} complete")
        for s in unfinished[:max_rows]:
            why = f" - {s['reason']}" if s.get("reason") else ""
            lf = s.get("last_failure")
            if lf and lf.get("reason") != s.get("reason"):
                why += f" (last failure: {lf['state']}: {lf['reason']})"
            jobs = f" job {s['job_ids'][-1]}" if s.get("job_ids") else ""
            lines.append(f"    shard {s['shard']:>5}: {s['state']:<11} {s['missing']:>5} missing, {s['failed']:>4} failed, "
                         f"attempts {s['attempts']}{jobs}{why}")
        recovered = [s for s in self.shards if s["missing"] == 0 and (s.get("escalated") or s.get("last_failure"))]
        for s in recovered[:max_rows]:  # finished, but not at the first try: say why
            if s.get("escalated"):
                e = s["escalated"]
                lines.append(f"    shard {s['shard']:>5}: completed after {e['cause']} ({e['from']} -> {e['to']})")
            else:
                lf = s["last_failure"]
                lines.append(f"    shard {s['shard']:>5}: completed after {lf['state']} ({lf['reason']})")
        lines += _element_lines(self.elements, max_rows)
        if self.failures:
            lines.append("  failures (first of each kind):")
            for f in self.failures[:max_rows]:
                lines.append(f"    {f['task_id']}: {f['count']} x {f['error_type']} in {f['stage']}: {f['message']}")
        if not self.complete:
            lines.append(f"  to finish: bayesim-hpc resume {self.path}")
        return "\n".join(lines)


def _element_lines(elements: list[dict[str, Any]], max_rows: int) -> list[str]:
    """Predicted vs measured seconds of Slurm elements, per resource class."""
    if not elements:
        return []
    out = ["  Slurm elements: predicted vs measured seconds (measured from their done records)"]
    classes: dict[str, list[dict[str, Any]]] = {}
    for e in elements:
        classes.setdefault(str(e.get("resources") or "-"), []).append(e)
    for label, els in classes.items():
        pred = [e["predicted_s"] for e in els if e.get("predicted_s") is not None]
        meas = [e["measured_s"] for e in els if e.get("measured_s") is not None]
        p = f"{np.mean(pred):.0f} s" if pred else "-"
        m = f"{np.mean(meas):.0f} s ({len(meas)} finished)" if meas else "- (none finished)"
        out.append(f"    class {label}: {len(els)} element(s), mean predicted {p}, mean measured {m}")
    return out


def _failures(rd: ResultDir, win: Any, state: np.ndarray) -> list[dict[str, Any]]:
    """Distinct failure kinds with counts; re-reads only segments whose winning rows failed."""
    kinds: dict[tuple[str, str], dict[str, Any]] = {}
    for k, path in enumerate(win.segments):
        tasks, rows_won = win.rows_won(k)
        rows_won = rows_won[state[tasks] == 2]
        if rows_won.size == 0:
            continue
        rows = read_rows(path, columns=())
        for i in rows_won:
            key = (rows.strings["error_type"][i], rows.strings["error_stage"][i])
            entry = kinds.setdefault(key, {"task_id": rows.strings["task_id"][i], "error_type": key[0],
                                           "stage": key[1], "message": rows.strings["error_message"][i][:200],
                                           "count": 0})
            entry["count"] += 1
    return sorted(kinds.values(), key=lambda e: -e["count"])


def study_status(path: str | Path, live: bool = True) -> StudyStatus:
    """Collect the state of a study. ``live``: ask the scheduler about a Slurm run's jobs."""
    rd = ResultDir(path)
    if not rd.exists():
        raise FileNotFoundError(f"{path} is not a bayesim-hpc result directory (no study.json)")
    frozen = rd.read_frozen()
    raw = frozen.raw
    n, n_rep = frozen.n_tasks, int(raw["n_replicates"])
    study = rd.load_study()
    win = select_winners(rd, n, columns=("n_warnings",), track=("n_warnings",))  # one pass over the segments
    task_state = win.state
    n_success, n_failed = int(np.count_nonzero(task_state == 1)), int(np.count_nonzero(task_state == 2))
    cell_of = np.arange(n) // n_rep
    n_cells = n // n_rep
    done = np.bincount(cell_of[task_state == 1], minlength=n_cells)
    failed = np.bincount(cell_of[task_state == 2], minlength=n_cells)
    cells = []
    for k in range(n_cells):
        d, f = (int(v) for v in study.space.cells[k])
        label = f"d{d + 1:03d}_f{f + 1:03d}"
        cells.append({"cell": label, "data": study.data_spec(d), "fit": study.fit_spec(f), "done": int(done[k]),
                      "failed": int(failed[k]), "pending": int(n_rep - done[k] - failed[k])})
    manifest = Manifest(rd).read()
    mshards = manifest.get("shards", {})
    live_states: dict[int, dict] = {}
    note = ""
    runs = manifest.get("runs", [])
    last = runs[-1] if runs else None
    if live and last and last.get("executor") == "slurm":
        try:
            from .executors.slurm import SlurmExecutor

            live_states = SlurmExecutor().live_states(rd)
            note = f"{len(live_states)} job element(s) known to Slurm"
        except Exception as exc:  # status must work when the scheduler does not answer
            note = f"could not ask Slurm ({type(exc).__name__}: {exc}); states below are from the manifest"
    elements: list[dict[str, Any]] = []
    if last and last.get("executor") == "slurm":
        from .executors.slurm import SlurmExecutor

        elements = SlurmExecutor().element_times(rd)  # manifest + done records: files only
    shards = []
    rate_num, rate_t0 = 0, None
    for sh in frozen.shards:
        st = task_state[study.space.shard_indices(sh)]
        entry = dict(mshards.get(str(sh.shard_id), {}))
        entry.update(live_states.get(sh.shard_id, {}))
        missing = int(np.count_nonzero(st == 0))
        state = entry.get("state", "PENDING")
        if missing == 0 and state not in ("RUNNING",):
            state = "COMPLETED"
        shards.append({"shard": sh.shard_id, "tasks": sh.n_tasks, "done": int(np.count_nonzero(st == 1)),
                       "failed": int(np.count_nonzero(st == 2)), "missing": missing, "state": state,
                       "reason": entry.get("reason", ""), "attempts": int(entry.get("attempts", 0)),
                       "job_ids": entry.get("job_ids", []), "last_failure": entry.get("last_failure"),
                       "escalated": entry.get("escalated")})
        try:
            pr = json.loads((shard_dir(rd.path, sh.shard_id) / "progress.json").read_text())
            if last and pr.get("time", 0) >= last.get("started", 0):
                rate_num += int(pr.get("n_run", 0))
                rate_t0 = last["started"]
        except (FileNotFoundError, json.JSONDecodeError):
            pass
    eta = rate = None
    if rate_t0 is not None and rate_num and not (last or {}).get("ended"):
        rate = rate_num / max(1e-9, time.time() - rate_t0)
        eta = (n - n_success - n_failed) / rate if rate > 0 else None
    holder = DirLock(rd.driver_lock).holder()
    failures = _failures(rd, win, task_state)
    n_warn = int(np.nansum(win.tracked["n_warnings"]))
    return StudyStatus(
        path=str(rd.path), n_tasks=n, n_success=n_success, n_failed=n_failed, n_missing=n - n_success - n_failed,
        n_warnings=n_warn, cells=cells, shards=shards,
        corrupt=[{"segment": seg, "error": e} for seg, e in win.corrupt],
        driver=holder.describe() if holder else None, last_run=last, eta_seconds=eta, rate_per_s=rate,
        failures=failures, scheduler_note=note, elements=elements,
    )
