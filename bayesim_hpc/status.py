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
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .executors.base import format_duration
from .locking import DirLock, _alive
from .manifest import Manifest
from .resultdir import ResultDir
from .adaptive import adaptive_notes
from .history import lifecycle_notes
from .records import TaskState
from .reduce import select_winners
from .storage import read_rows, shard_dir, study_stamp

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
    #: the study's history (created, what each extension added, when) and runtime notes
    history: list[str] = field(default_factory=list)
    n_hidden: int = 0
    foreign: list[dict[str, str]] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    driver_note: str = ""  # e.g. a stale lock whose process is gone
    #: Slurm nodes this study no longer submits to: node -> {"why", "since"} (executors.slurm_nodes)
    excluded_nodes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.n_missing == 0 and self.n_failed == 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=str)

    def render(self, max_rows: int = 20) -> str:
        """A plain-text report for the terminal."""
        total = max(1, self.n_tasks)
        lines = [f"study {self.path}",
                 f"  tasks: {self.n_tasks}  succeeded: {self.n_success} ({100.0 * self.n_success / total:.1f} %)  "
                 f"failed: {self.n_failed} ({100.0 * self.n_failed / total:.1f} %)  pending: {self.n_missing}  "
                 f"warnings: {self.n_warnings}"]
        if self.n_hidden:
            lines.append(f"  hidden: {self.n_hidden} task(s) of grid rows the study no longer names (kept on disk)")
        if self.history:
            lines.append("  history:")
            lines.extend(f"    {h}" for h in self.history)
        if self.driver:
            lines.append(f"  driver: {self.driver}")
        elif self.driver_note:
            lines.append(f"  driver: {self.driver_note}")
        if self.last_run:
            started = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.last_run.get("started", 0)))
            lines.append(f"  last run: executor {self.last_run.get('executor')}, started {started}"
                         + ("" if self.last_run.get("ended") else
                            " (no end recorded; its driver is still running)" if self.driver else
                            " (no end recorded: its driver was killed or lost)"))
        if self.eta_seconds is not None:
            lines.append(f"  rate: {self.rate_per_s:.2f} tasks/s, ETA {format_duration(self.eta_seconds)}")
        if self.scheduler_note:
            lines.append(f"  scheduler: {self.scheduler_note}")
        if self.excluded_nodes:
            lines.append(f"  excluded nodes (later submissions get --exclude; `bayesim-hpc nodes {self.path} --clear` "
                         "takes them off):")
            for node, info in sorted(self.excluded_nodes.items()):
                since = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.get("since", 0)))
                lines.append(f"    {node}: {info.get('why', '')} (since {since})")
        for c in self.corrupt:
            lines.append(f"  DAMAGED segment {c['segment']}: {c['error']} (its tasks count as pending; resume re-runs them)")
        for c in self.foreign:
            lines.append(f"  FOREIGN segment {c['segment']}: {c['error']} (not counted; `bayesim-hpc clean` quarantines it)")
        for c in self.unreadable:
            lines.append(f"  UNREADABLE segment {c['segment']}: {c['error']} (not counted now; kept)")
        lines.append("  per cell: succeeded / failed / pending   grid values (data | fit)")
        for c in self.cells[:max_rows]:
            lines.append(f"    {c['cell']:<12} {c['done']:>6} / {c['failed']:>5} / {c['pending']:>6}   {c['label']}")
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
            if s.get("logs"):
                lines.append(f"                 logs: {', '.join(s['logs'])}")
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
            lines.append(f"    see one with its traceback: bayesim-hpc replay {self.path} {self.failures[0]['task_id']}")
        if self.driver and self.n_missing:
            lines.append("  a driver is working on it: check again later (resume would be refused while it runs)")
        elif self.n_missing:
            lines.append(f"  to finish: bayesim-hpc resume {self.path}")
        elif self.n_failed:
            lines.append(f"  every task ran; resume re-runs the failed ones (bayesim-hpc resume {self.path}): that helps "
                         "when the cause was outside the code; a bug needs the code fixed first")
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
#: scheduler reasons that only explain why an element is *waiting*; stale once it runs or ended
_PENDING_REASONS = ("JobArrayTaskLimit", "Priority", "Resources", "QOSMaxJobsPerUserLimit", "AssocMaxJobsLimit",
                    "QOSMaxSubmitJobPerUserLimit", "BeginTime", "Dependency", "None")


def _current_reason(state: str, reason: str) -> str:
    """The reason to show: a pending element's reason is dropped once the element runs or ended.

    >>> _current_reason("RUNNING", "JobArrayTaskLimit"), _current_reason("PENDING", "JobArrayTaskLimit")
    ('', 'JobArrayTaskLimit')
    """
    if state != "PENDING" and reason.strip().strip("()") in _PENDING_REASONS:
        return ""
    return reason


_QUIET_STATES = ("COMPLETED", "PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING")


def _log_files(rd: ResultDir, shard_id: int, entry: dict[str, Any]) -> list[str]:
    """The log files of a shard's elements (local/mock: logs/sNNNNN.aNNN.log; Slurm: by job id)."""
    if not rd.logs.is_dir():
        return []
    found = sorted(rd.logs.glob(f"s{shard_id:05d}.a*.log"))
    job = (entry.get("job_ids") or [None])[-1]
    if job and not str(job).startswith("local-"):
        found += sorted(p for p in rd.logs.rglob(f"{job}_*") if p.is_file())
    return [str(p.relative_to(rd.path)) for p in found[-4:]]


def _failures(rd: ResultDir, win: Any, state: np.ndarray) -> list[dict[str, Any]]:
    """Distinct failure kinds with counts; re-reads only segments whose winning rows failed."""
    kinds: dict[tuple[str, str], dict[str, Any]] = {}
    for k, path in enumerate(win.segments):
        tasks, rows_won = win.rows_won(k)
        rows_won = rows_won[state[tasks] == TaskState.FAILED]
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
    n = frozen.n_tasks
    space = frozen.space  # from study.json (its layout): status never loads (unpickles) the study's code
    win = select_winners(rd, n, columns=("n_warnings",), track=("n_warnings",), stamp=study_stamp(raw))
    task_state = win.state.copy()
    active = space.active_mask()
    task_state[~active] = TaskState.HIDDEN  # hidden cells: neither done nor pending
    n_active = int(np.count_nonzero(active))
    n_success, n_failed = int(np.count_nonzero(task_state == TaskState.SUCCEEDED)), int(np.count_nonzero(task_state == TaskState.FAILED))
    cell_of, _ = space.cell_and_rep(np.arange(n))
    n_cells = len(space.cells)
    done = np.bincount(cell_of[task_state == TaskState.SUCCEEDED], minlength=n_cells)
    failed = np.bincount(cell_of[task_state == TaskState.FAILED], minlength=n_cells)
    cells = []
    for k in np.lexsort((space.cells[:, 1], space.cells[:, 0])):
        if space.hidden[k]:
            continue
        d, f = (int(v) for v in space.cells[k])
        label = space.format_id(d, f, 0).rsplit("_", 1)[0]
        data_spec, fit_spec = frozen.data_spec(d), frozen.fit_spec(f)
        grid_values = (", ".join(f"{a}={b}" for a, b in data_spec.items()) + " | "
                       + ", ".join(f"{a}={b}" for a, b in fit_spec.items()))
        cells.append({"cell": label, "label": grid_values, "data": data_spec, "fit": fit_spec, "done": int(done[k]),
                      "failed": int(failed[k]), "pending": int(space.cell_reps[k] - done[k] - failed[k]),
                      "replicates": int(space.cell_reps[k])})
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
        st = task_state[space.shard_indices(sh)]
        entry = dict(mshards.get(str(sh.shard_id), {}))
        entry.update(live_states.get(sh.shard_id, {}))
        missing = int(np.count_nonzero(st == TaskState.MISSING))
        state = entry.get("state", "PENDING")
        if missing == 0 and state not in ("RUNNING",):
            state = "COMPLETED"
        shards.append({"shard": sh.shard_id, "tasks": sh.n_tasks, "done": int(np.count_nonzero(st == TaskState.SUCCEEDED)),
                       "failed": int(np.count_nonzero(st == TaskState.FAILED)), "missing": missing, "state": state,
                       "reason": _current_reason(state, entry.get("reason", "")),
                       "attempts": int(entry.get("attempts", 0)),
                       "job_ids": list(dict.fromkeys(entry.get("job_ids", []))),
                       "logs": _log_files(rd, sh.shard_id, entry) if state not in _QUIET_STATES else [],
                       "last_failure": entry.get("last_failure"), "escalated": entry.get("escalated")})
        try:
            pr = json.loads((shard_dir(rd.path, sh.shard_id) / "progress.json").read_text())
            if last and pr.get("time", 0) >= last.get("started", 0):
                rate_num += int(pr.get("n_run", 0))
                rate_t0 = last["started"]
        except (FileNotFoundError, json.JSONDecodeError):
            pass
    holder = DirLock(rd.driver_lock).holder()
    driver_note = ""
    if holder is not None and holder.host == socket.gethostname() and not _alive(holder.pid, holder.pid_started):
        driver_note = f"none running (stale lock of {holder.describe()}: that process is gone)"
        holder = None
    elif holder is not None and holder.host != socket.gethostname():
        driver_note = "on another host: its liveness is judged by its heartbeat, not checked here"
    eta = rate = None
    if rate_t0 is not None and rate_num and not (last or {}).get("ended") and holder is not None:
        rate = rate_num / max(1e-9, time.time() - rate_t0)
        eta = (n - n_success - n_failed) / rate if rate > 0 else None
    failures = _failures(rd, win, task_state)
    n_warn = int(np.nansum(win.tracked["n_warnings"]))
    return StudyStatus(
        path=str(rd.path), n_tasks=n_active, n_success=n_success, n_failed=n_failed,
        n_missing=n_active - n_success - n_failed, history=lifecycle_notes(raw) + adaptive_notes(raw, rd.cells),
        n_hidden=n - n_active,
        n_warnings=n_warn, cells=cells, shards=shards,
        corrupt=[{"segment": seg, "error": e} for seg, e in win.corrupt],
        driver=holder.describe() if holder else None, last_run=last, eta_seconds=eta, rate_per_s=rate,
        failures=failures, scheduler_note=note, driver_note=driver_note,
        foreign=[{"segment": seg, "error": e} for seg, e in win.foreign],
        unreadable=[{"segment": seg, "error": e} for seg, e in win.unreadable],
        elements=elements, excluded_nodes=dict(manifest.get("excluded_nodes") or {}),
    )
