r"""Slurm job states as sacct and squeue print them: names, array ids, exit codes, parsing.

Pure functions over text, no commands run here (:mod:`.slurm_query` runs them). The facts about
Slurm's output they rely on are listed in :mod:`.slurm_query`'s docstring.

>>> [(j.job_id, j.state) for j in parse_squeue("12_3|R|None|bayesim-x\n")]
[('12_3', 'RUNNING')]
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

_DELIM = "|"

STATES: tuple[str, ...] = (
    "PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL",
    "OUT_OF_MEMORY", "REQUEUED", "BOOT_FAIL", "DEADLINE", "SUSPENDED", "UNKNOWN",
)
"""The normalised job states :class:`JobState` uses."""

LOST_STATES: frozenset[str] = frozenset({
    "CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY", "FAILED", "BOOT_FAIL", "DEADLINE",
})
"""States of a job that ended without finishing its work."""

TERMINAL_STATES: frozenset[str] = LOST_STATES | {"COMPLETED"}
"""States after which the job will not run again on its own. ``REQUEUED`` is not one of them."""

# squeue/sacct spellings (long names and squeue's short codes) that are not already in STATES
_STATE_ALIASES = {
    "PD": "PENDING", "R": "RUNNING", "CD": "COMPLETED", "F": "FAILED", "CA": "CANCELLED",
    "TO": "TIMEOUT", "PR": "PREEMPTED", "NF": "NODE_FAIL", "OOM": "OUT_OF_MEMORY", "RQ": "REQUEUED",
    "BF": "BOOT_FAIL", "DL": "DEADLINE", "S": "SUSPENDED",
    # still running, or about to: not terminal
    "CG": "RUNNING", "COMPLETING": "RUNNING", "CF": "RUNNING", "CONFIGURING": "RUNNING",
    "SO": "RUNNING", "STAGE_OUT": "RUNNING", "SI": "RUNNING", "SIGNALING": "RUNNING",
    "RS": "RUNNING", "RESIZING": "RUNNING",
    # held in the queue (the reason says why)
    "RH": "PENDING", "REQUEUE_HOLD": "PENDING", "RF": "PENDING", "REQUEUE_FED": "PENDING",
    "RD": "PENDING", "RESV_DEL_HOLD": "PENDING", "SE": "PENDING", "SPECIAL_EXIT": "PENDING",
    "ST": "SUSPENDED", "STOPPED": "SUSPENDED",
    "RV": "CANCELLED", "REVOKED": "CANCELLED",
}


def normalise_state(raw: str) -> str:
    """Map a state as sacct/squeue print it to one of :data:`STATES`.

    ``"CANCELLED by 0"`` -> ``"CANCELLED"``; ``"CA"`` -> ``"CANCELLED"``; a truncated
    ``"CANCELLED+"`` -> ``"CANCELLED"``; ``"COMPLETING"`` -> ``"RUNNING"``; anything unknown ->
    ``"UNKNOWN"``.
    """
    words = raw.strip().upper().split()
    if not words:
        return "UNKNOWN"
    word = words[0].rstrip("+")
    if word in STATES:
        return word
    return _STATE_ALIASES.get(word, "UNKNOWN")


def is_terminal(state: str) -> bool:
    """True if a job in this state will not run again by itself (finished, failed or killed)."""
    return normalise_state(state) in TERMINAL_STATES


def is_lost(state: str) -> bool:
    """True if the job ended without finishing: cancelled, timed out, preempted, failed, ..."""
    return normalise_state(state) in LOST_STATES


@dataclass(frozen=True)
class JobState:
    """One job or one array element as the scheduler reports it.

    ``job_id`` is the id scancel/sacct accept: ``"123_4"`` for element 4 of array job 123 (even
    when Slurm has given the element its own numeric id), ``"125"`` for a plain job.
    ``exit_code`` is the process exit status and ``signal`` the signal that killed it, where
    known (sacct ``ExitCode`` ``"3:0"``; squeue reports neither). ``raw_state`` is the state as
    the scheduler printed it. ``reason`` is Slurm's reason text ("" for "None"): why a pending job
    waits (``JobArrayTaskLimit``, ``JobHeldUser``, ...); squeue gives e.g. ``NonZeroExitCode`` for
    a failed job, while sacct keeps the last pending reason on finished rows.
    """

    job_id: str
    array_job_id: str | None
    array_task_id: int | None
    name: str
    state: str
    exit_code: int | None = None
    reason: str = ""
    signal: int | None = None
    raw_state: str = ""

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def lost(self) -> bool:
        return self.state in LOST_STATES


def parse_exit_code(text: str) -> tuple[int | None, int | None]:
    """``"3:0"`` -> ``(3, 0)``; ``"0:15"`` -> ``(0, 15)``; empty or malformed -> ``(None, None)``."""
    m = re.fullmatch(r"\s*(\d+)(?::(\d+))?\s*", text or "")
    if not m:
        return None, None
    return int(m.group(1)), (int(m.group(2)) if m.group(2) is not None else None)


def expand_array_indices(spec: str) -> list[int]:
    """Expand Slurm's array index notation: ``"4-9%2"`` -> ``[4, ..., 9]``; ``"0,2"``; ``"1-7:2"``."""
    spec = spec.strip().strip("[]").split("%", 1)[0]
    out: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part)
        if not m:
            raise ValueError(f"not an array index range: {part!r} (in {spec!r})")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        step = int(m.group(3)) if m.group(3) is not None else 1
        if hi < lo or step < 1:
            raise ValueError(f"bad array index range: {part!r}")
        out.extend(range(lo, hi + 1, step))
    return out


_JOB_ID_RE = re.compile(r"(?P<base>\d+(?:\+\d+)?)(?:_(?:(?P<task>\d+)|\[(?P<range>[^\]]*)\]))?")


def parse_job_id(text: str) -> tuple[str, list[int] | None, bool] | None:
    """Split a job id as sacct/squeue print it.

    Returns ``(base, tasks, is_range)``: ``"123_4"`` -> ``("123", [4], False)``;
    ``"123_[4-9%2]"`` -> ``("123", [4..9], True)``; ``"125"`` -> ``("125", None, False)``.
    Returns None for step rows (``"123.batch"``, ``"123_4.extern"``, ``"123.0"``) and garbage.
    """
    text = text.strip()
    m = _JOB_ID_RE.fullmatch(text)
    if not m:
        return None
    if m.group("task") is not None:
        return m.group("base"), [int(m.group("task"))], False
    if m.group("range") is not None:
        return m.group("base"), expand_array_indices(m.group("range")), True
    return m.group("base"), None, False


def _collect(rows: Iterable[tuple[str, str, str, str, str]]) -> list[JobState]:
    """Rows of (job id, raw state, exit code, reason, name) -> one JobState per job/element.

    A later row for the same element replaces an earlier one (requeue history: latest wins),
    and a row naming one element always beats an element expanded from a range row, whatever
    the order (the range row is the array's pending/cancelled remainder).
    """
    found: dict[tuple[str, int | None], tuple[bool, JobState]] = {}
    for job_id, raw_state, exit_text, reason, name in rows:
        parsed = parse_job_id(job_id)
        if parsed is None:
            continue
        base, tasks, is_range = parsed
        code, sig = parse_exit_code(exit_text)
        state = normalise_state(raw_state)
        reason = "" if reason.strip() in ("", "None") else reason.strip()
        for task in tasks if tasks is not None else [None]:
            key = (base, task)
            if is_range and key in found and found[key][0]:
                continue  # an explicit row for this element wins
            found[key] = (not is_range, JobState(
                job_id=base if task is None else f"{base}_{task}",
                array_job_id=None if task is None else base,
                array_task_id=task,
                name=name,
                state=state,
                exit_code=code,
                reason=reason,
                signal=sig,
                raw_state=raw_state.strip(),
            ))

    def order(key: tuple[str, int | None]) -> tuple[int, str, int]:
        base, task = key
        head = base.split("+", 1)[0]
        return (int(head) if head.isdigit() else 0, base, -1 if task is None else task)

    return [found[k][1] for k in sorted(found, key=order)]


def _split_rows(text: str, nfields: int) -> Iterable[tuple[str, ...]]:
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split(_DELIM, nfields - 1)
        if len(parts) == nfields:
            yield tuple(parts)


_STEP_RE = re.compile(r"(\d+(?:\+\d+)?(?:_\d+)?)\.[\w-]+")


def parse_sacct(text: str) -> list[JobState]:
    """Parse ``sacct -P -n --format JobID,State,ExitCode,Reason,JobName`` output.

    Step rows (``123_4.batch``, ``123_4.0``) are not entries of their own, but a step that ran
    out of memory marks its job: submitit runs the work as an ``srun`` step, so a cgroup OOM
    kill leaves the job FAILED (srun's exit 1) and only the step OUT_OF_MEMORY. Such a job is
    reported OUT_OF_MEMORY.
    """
    rows = list(_split_rows(text, 5))
    oom = set()
    for row in rows:
        m = _STEP_RE.fullmatch(row[0].strip())
        if m and normalise_state(row[1]) == "OUT_OF_MEMORY":
            oom.add(m.group(1))
    states = _collect(rows)  # type: ignore[arg-type]
    return [replace(s, state="OUT_OF_MEMORY", raw_state=f"OUT_OF_MEMORY (step; job {s.raw_state})")
            if s.job_id in oom and s.state in ("FAILED", "OUT_OF_MEMORY") else s for s in states]


def parse_squeue(text: str) -> list[JobState]:
    """Parse ``squeue -h -o '%i|%T|%r|%j'`` output (with or without ``-r``)."""
    return _collect((jid, st, "", reason, name) for jid, st, reason, name in _split_rows(text, 4))
