"""The scheduler's limits that refuse or hold submissions, and the cluster's parallel slots.

* ``MaxArraySize`` (``scontrol show config``): the highest array index + 1.
* ``MaxJobCount`` (same call): jobs slurmctld keeps at once, for everybody.
* ``MaxSubmitJobs`` of the user's association (``sacctmgr show assoc``) and ``MaxSubmitJobsPerUser``
  of the QOS (``sacctmgr show qos``): jobs -- each array element counts as one -- a user may
  have queued (pending or running). sbatch is *refused* beyond them
  (``QOSMaxSubmitJobPerUserLimit``, ``AssocMaxSubmitJobLimit``), so the study submits in
  waves of at most the room left (:meth:`SubmitLimits.room`).
* ``MaxJobs`` of the association / ``MaxJobsPerUser`` of the QOS: jobs that may *run* at once;
  more wait in the queue. They cap the slots the planner counts on.

All calls go through :func:`slurm_query.run_command` (counted, injectable ``run``). Anything
that cannot be read (no accounting, no sacctmgr) is simply "no limit known".

Example:
    >>> lim = read_limits(user="alice", qos="normal")        # doctest: +SKIP
    >>> lim.room(queued_jobs("alice"))                        # doctest: +SKIP
    48
"""

from __future__ import annotations

import getpass
import re
import subprocess
from dataclasses import dataclass, field

from . import slurm_query as sq

__all__ = ["LIMIT_REFUSED", "SubmitLimits", "cluster_slots", "queued_jobs", "read_limits"]

LIMIT_REFUSED = re.compile(r"MaxSubmitJob|MaxSubmitJobPerUser|Job violates accounting/QOS policy|"
                           r"MaxJobCount|Slurm temporarily unable to accept job", re.IGNORECASE)
"""sbatch errors that mean "not now: a submit limit" (the submission waits for room)."""


@dataclass
class SubmitLimits:
    max_array_size: int | None = None
    max_job_count: int | None = None
    max_submit: int | None = None  # per user, the smallest of association and QOS
    max_running: int | None = None
    sources: list[str] = field(default_factory=list)

    def room(self, queued: int) -> int | None:
        """How many more elements may be queued now (None: no limit known)."""
        caps = [c for c in (self.max_submit, self.max_job_count) if c is not None]
        return None if not caps else max(0, min(caps) - queued)

    def describe(self) -> str:
        return ", ".join(self.sources) or "no submit limits found"


def _int(text: str) -> int | None:
    text = (text or "").strip()
    return int(text) if text.isdigit() else None


def read_limits(*, user: str | None = None, account: str | None = None, qos: str | None = None,
                run: sq.Runner = subprocess.run) -> SubmitLimits:
    """The limits above, in at most three calls (scontrol, sacctmgr assoc, sacctmgr qos)."""
    user = user or getpass.getuser()
    out = SubmitLimits()
    proc = sq.run_command("config", ["scontrol", "show", "config"], run=run)
    if proc.returncode == 0:
        for key, attr in (("MaxArraySize", "max_array_size"), ("MaxJobCount", "max_job_count")):
            m = re.search(rf"^\s*{key}\s*=\s*(\d+)\s*$", proc.stdout or "", re.MULTILINE)
            if m:
                setattr(out, attr, int(m.group(1)))
                out.sources.append(f"{key}={m.group(1)}")
    qos_names: set[str] = {qos} if qos else set()
    try:
        proc = sq.run_command("config", ["sacctmgr", "-n", "-P", "show", "assoc", "where", f"user={user}",
                                         "format=Account,MaxSubmit,MaxJobs,QOS,DefaultQOS"], run=run)
    except sq.SlurmCommandError:
        return out
    if proc.returncode == 0:
        for line in (proc.stdout or "").splitlines():
            parts = line.split("|")
            if len(parts) < 5 or (account and parts[0] != account):
                continue
            for value, attr, label in ((parts[1], "max_submit", "MaxSubmitJobs"), (parts[2], "max_running", "MaxJobs")):
                v = _int(value)
                if v is not None:
                    cur = getattr(out, attr)
                    setattr(out, attr, v if cur is None else min(cur, v))
                    out.sources.append(f"association {parts[0]}/{user} {label}={v}")
            if not qos:
                qos_names.add(parts[4].strip() or "normal")
    try:
        proc = sq.run_command("config", ["sacctmgr", "-n", "-P", "show", "qos",
                                         "format=Name,MaxSubmitPU,MaxJobsPU"], run=run)
    except sq.SlurmCommandError:
        return out
    if proc.returncode == 0:
        for line in (proc.stdout or "").splitlines():
            parts = line.split("|")
            if len(parts) < 3 or parts[0] not in qos_names:
                continue
            for value, attr, label in ((parts[1], "max_submit", "MaxSubmitJobsPerUser"),
                                       (parts[2], "max_running", "MaxJobsPerUser")):
                v = _int(value)
                if v is not None:
                    cur = getattr(out, attr)
                    setattr(out, attr, v if cur is None else min(cur, v))
                    out.sources.append(f"QOS {parts[0]} {label}={v}")
    return out


def queued_jobs(user: str | None = None, *, run: sq.Runner = subprocess.run) -> int:
    """The user's jobs in the queue (pending, running, ...), each array element counted once."""
    user = user or getpass.getuser()
    proc = sq.run_command("query", ["squeue", "-h", "-r", "-u", user, "-o", "%i"], run=run)
    if proc.returncode != 0:
        raise sq.SlurmCommandError(f"squeue failed (exit {proc.returncode})", cmd=["squeue"],
                                   returncode=proc.returncode, stderr=proc.stderr or "")
    return sum(1 for line in (proc.stdout or "").splitlines() if line.strip())


def cluster_slots(partition: str | None = None, *, run: sq.Runner = subprocess.run) -> int | None:
    """Total CPUs of the partition's nodes (``sinfo -o %C``: allocated/idle/other/total)."""
    cmd = ["sinfo", "-h", "-o", "%C"] + (["-p", partition] if partition else [])
    try:
        proc = sq.run_command("config", cmd, run=run)
    except sq.SlurmCommandError:
        return None
    total = 0
    for line in (proc.stdout or "").splitlines():
        parts = line.strip().split("/")
        if len(parts) == 4 and parts[3].isdigit():
            total += int(parts[3])
    return total or None
