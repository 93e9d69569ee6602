"""Which partition each resource class goes to, read from the cluster's own configuration.

Two calls read the partitions (both are counted by :func:`slurm_query.run_command`):

* ``scontrol -a show partition -o``: per partition ``MaxTime``, ``DefaultTime``,
  ``MaxMemPerNode`` / ``MaxMemPerCPU``, ``MaxCPUsPerNode``, ``State``, ``Default``, ``Hidden``,
  ``RootOnly`` and who may submit (``AllowAccounts``/``DenyAccounts``, ``AllowGroups``,
  ``AllowQos``/``DenyQos``);
* ``sinfo -h -N -o '%N|%R|%c|%m|%G'``: each node of each partition with its CPUs, memory
  (``RealMemory``, MB) and GRES.

:func:`choose_partition` is a pure function of those figures and one request: among the
partitions the user may submit to (``State=UP``, not hidden, not GPU-only, access allowed) it
takes those that hold the request (time <= MaxTime, memory <= what one node gives a job,
CPUs <= CPUs of one node) and, of these, the *smallest* (shortest MaxTime, then least memory per
node, then fewest CPUs per node). Partitions that tie on all three are all named, as a comma
list (Slurm then starts the job in whichever frees up first). A profile that names a partition
keeps it, but a request that partition cannot hold is refused the same way.

A request that no partition can hold raises :class:`PartitionError` before anything is submitted;
it names the largest partition, its limits, and the request field to change.

Example:
    >>> parts = parse_partitions(SCONTROL_EXAMPLE, SINFO_EXAMPLE)
    >>> from bayesim_hpc.executors.slurm_profile import Resources
    >>> choose_partition(parts, Resources(time_min=20, mem_mb=2048)).partition
    'short'
    >>> choose_partition(parts, Resources(time_min=120, mem_mb=2048)).partition
    'debug,other'
"""

from __future__ import annotations

import getpass
import grp
import os
import pwd
import re
import subprocess
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from ..errors import PartitionError
from . import slurm_query as sq
from .slurm_profile import Resources, minutes

__all__ = ["Partition", "PartitionChoice", "PartitionError", "Placement", "Submitter", "choose_partition",
           "parse_partitions", "read_partitions", "submitter"]

INF = float("inf")

SCONTROL_EXAMPLE = (
    "PartitionName=debug AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL Default=YES DefaultTime=NONE Hidden=NO "
    "MaxTime=UNLIMITED MaxCPUsPerNode=UNLIMITED Nodes=n[1-2] RootOnly=NO State=UP MaxMemPerNode=UNLIMITED\n"
    "PartitionName=other AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL Default=NO DefaultTime=NONE Hidden=NO "
    "MaxTime=UNLIMITED MaxCPUsPerNode=UNLIMITED Nodes=n[1-2] RootOnly=NO State=UP MaxMemPerNode=UNLIMITED\n"
    "PartitionName=short AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL Default=NO DefaultTime=00:10:00 Hidden=NO "
    "MaxTime=00:30:00 MaxCPUsPerNode=UNLIMITED Nodes=n[1-2] RootOnly=NO State=UP MaxMemPerNode=4000\n")
SINFO_EXAMPLE = ("n1|debug|4|16000|(null)\nn1|other|4|16000|(null)\nn1|short|4|16000|(null)\n"
                 "n2|debug|4|16000|(null)\nn2|other|4|16000|(null)\nn2|short|4|16000|(null)\n")


@dataclass(frozen=True)
class Partition:
    """One partition: the most a single job element may get in it, and who may use it.

    ``max_time_min``/``mem_mb``/``cpus`` are ``None`` when unlimited (or unknown).
    """

    name: str
    max_time_min: int | None = None
    default_time_min: int | None = None
    mem_mb: int | None = None          #: the most memory one node gives a job (RealMemory, MaxMemPerNode)
    cpus: int | None = None            #: the most CPUs of one node (CPUs, MaxCPUsPerNode)
    nodes: int = 0
    state: str = "UP"
    default: bool = False
    hidden: bool = False
    root_only: bool = False
    gpu_only: bool = False             #: every node has a GPU (GRES gpu)
    allow_accounts: tuple[str, ...] | None = None  #: None: ALL
    deny_accounts: tuple[str, ...] = ()
    allow_groups: tuple[str, ...] | None = None
    allow_qos: tuple[str, ...] | None = None
    deny_qos: tuple[str, ...] = ()

    def size(self) -> tuple[float, float, float]:
        """What "smaller" means: MaxTime, then memory per node, then CPUs per node."""
        return tuple(INF if v is None else float(v) for v in (self.max_time_min, self.mem_mb, self.cpus))  # type: ignore[return-value]

    def limits(self) -> str:
        """``"MaxTime 30 min, 4000 MB and 4 CPUs per node"``."""
        t = "MaxTime unlimited" if self.max_time_min is None else f"MaxTime {self.max_time_min} min"
        m = "memory unlimited" if self.mem_mb is None else f"{self.mem_mb} MB"
        c = "CPUs unlimited" if self.cpus is None else f"{self.cpus} CPUs"
        return f"{t}, {m} and {c} per node"

    def too_small(self, res: Resources) -> list[tuple[str, str]]:
        """(request field, why) for each limit of this partition the request exceeds."""
        out = []
        if self.max_time_min is not None and res.time_min > self.max_time_min:
            out.append(("time", f"time {res.time_min} min > MaxTime {self.max_time_min} min"))
        if self.mem_mb is not None and res.mem_mb is not None and res.mem_mb > self.mem_mb:
            out.append(("mem_gb", f"memory {res.mem_mb} MB > {self.mem_mb} MB per node"))
        if self.cpus is not None and res.cpus_per_task > self.cpus:
            out.append(("cpus_per_task", f"{res.cpus_per_task} CPUs > {self.cpus} per node"))
        return out


@dataclass(frozen=True)
class Submitter:
    """Who submits: what the partitions' Allow*/Deny* lists are checked against (None: not known)."""

    user: str
    account: str | None = None
    qos: str | None = None
    groups: tuple[str, ...] = ()
    root: bool = False


@dataclass(frozen=True)
class PartitionChoice:
    """``partition``: what sbatch gets (``"short"``, ``"debug,other"``), or None to leave it to Slurm."""

    partition: str | None
    why: str
    named: bool = False
    notes: tuple[str, ...] = field(default=())


# ----------------------------------------------------------------------------------------- parsing
_KV = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_]*)=(\S*)")


def _fields(line: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in _KV.finditer(line)}


def _time(value: str | None) -> int | None:
    if not value or value.upper() in ("UNLIMITED", "INFINITE", "NONE", "N/A"):
        return None
    return minutes(value)


def _num(value: str | None) -> int | None:
    if not value or not value.isdigit():
        return None
    return int(value)


def _names(value: str | None) -> tuple[str, ...] | None:
    """``ALL``/missing -> None (everybody); ``a,b`` -> ("a", "b")."""
    if value is None or value.upper() in ("ALL", "(NULL)", ""):
        return None
    return tuple(v for v in value.split(",") if v)


def parse_partitions(scontrol_text: str, sinfo_text: str = "") -> list[Partition]:
    """Partitions from ``scontrol -a show partition -o`` and ``sinfo -h -N -o '%N|%R|%c|%m|%G'``.

    Memory and CPUs per node come from the nodes (the largest node; capped by ``MaxMemPerNode``,
    ``MaxMemPerCPU`` times the node's CPUs, ``MaxCPUsPerNode``). Order: as the cluster lists them.
    """
    nodes: dict[str, list[tuple[int | None, int | None, bool]]] = {}
    for line in sinfo_text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 4:
            continue
        _node, part, cpus, mem = parts[:4]
        gres = parts[4] if len(parts) > 4 else ""
        nodes.setdefault(part.rstrip("*"), []).append(
            (_num(cpus.rstrip("+")), _num(mem.rstrip("+")), "gpu" in gres.lower()))
    out = []
    for line in scontrol_text.splitlines():
        f = _fields(line)
        name = f.get("PartitionName")
        if not name:
            continue
        mine = nodes.get(name, [])
        node_cpus = [c for c, _, _ in mine if c is not None]
        node_mem = [m for _, m, _ in mine if m is not None]
        cpus = max(node_cpus) if node_cpus else _num(f.get("TotalCPUs"))
        max_cpus = _num(f.get("MaxCPUsPerNode"))
        if max_cpus is not None:
            cpus = max_cpus if cpus is None else min(cpus, max_cpus)
        mem = max(node_mem) if node_mem else None
        cap = _num(f.get("MaxMemPerNode"))
        per_cpu = _num(f.get("MaxMemPerCPU"))
        if per_cpu is not None and cpus is not None:
            cap = per_cpu * cpus if cap is None else min(cap, per_cpu * cpus)
        if cap is not None:
            mem = cap if mem is None else min(mem, cap)
        out.append(Partition(
            name=name, max_time_min=_time(f.get("MaxTime")), default_time_min=_time(f.get("DefaultTime")),
            mem_mb=mem, cpus=cpus, nodes=len(mine) or (_num(f.get("TotalNodes")) or 0),
            state=(f.get("State") or "UP").upper(), default=f.get("Default") == "YES",
            hidden=f.get("Hidden") == "YES", root_only=f.get("RootOnly") == "YES",
            gpu_only=bool(mine) and all(g for _, _, g in mine),
            allow_accounts=_names(f.get("AllowAccounts")), deny_accounts=_names(f.get("DenyAccounts")) or (),
            allow_groups=_names(f.get("AllowGroups")), allow_qos=_names(f.get("AllowQos")),
            deny_qos=_names(f.get("DenyQos")) or ()))
    return out


def read_partitions(*, run: sq.Runner = subprocess.run) -> list[Partition] | None:
    """The cluster's partitions (two calls), or None if they cannot be read."""
    try:
        proc = sq.run_command("config", ["scontrol", "-a", "show", "partition", "-o"], run=run)
        if proc.returncode != 0 or "PartitionName=" not in (proc.stdout or ""):
            return None
        nodes = sq.run_command("config", ["sinfo", "-h", "-N", "-o", "%N|%R|%c|%m|%G"], run=run)
    except sq.SlurmCommandError:
        return None
    return parse_partitions(proc.stdout or "", nodes.stdout or "" if nodes.returncode == 0 else "")


def submitter(account: str | None = None, qos: str | None = None, *,
              default_account: Callable[[str], str | None] | None = None) -> Submitter:
    """Who is submitting: the user, their groups, the account (``default_account(user)`` if not given)."""
    user = getpass.getuser()
    try:
        pw = pwd.getpwnam(user)
        groups = tuple(sorted({grp.getgrgid(g).gr_name for g in os.getgrouplist(user, pw.pw_gid)}))
    except (KeyError, OSError):
        groups = ()
    if account is None and default_account is not None:
        account = default_account(user)
    return Submitter(user=user, account=account, qos=qos, groups=groups, root=os.geteuid() == 0)


def default_account(user: str, *, run: sq.Runner = subprocess.run) -> str | None:
    """The user's default account (``sacctmgr show user``), None if unknown."""
    try:
        proc = sq.run_command("config", ["sacctmgr", "-n", "-P", "show", "user", user, "format=DefaultAccount"],
                              run=run)
    except sq.SlurmCommandError:
        return None
    text = (proc.stdout or "").strip().splitlines()
    return text[0].strip() or None if proc.returncode == 0 and text else None


# ----------------------------------------------------------------------------------------- choice
def refused(p: Partition, who: Submitter | None) -> str | None:
    """Why the user may not (or should not, unasked) submit to ``p``; None if they may."""
    if p.state != "UP":
        return f"State={p.state}"
    if p.hidden:
        return "hidden"
    if p.gpu_only:
        return "GPU nodes only"
    if who is None:
        return None
    if p.root_only and not who.root:
        return "RootOnly=YES"
    if who.account is not None:
        if p.allow_accounts is not None and who.account not in p.allow_accounts:
            return f"AllowAccounts={','.join(p.allow_accounts)} (account {who.account})"
        if who.account in p.deny_accounts:
            return f"DenyAccounts has {who.account}"
    if p.allow_groups is not None and who.groups and not set(p.allow_groups) & set(who.groups):
        return f"AllowGroups={','.join(p.allow_groups)} (you are in {','.join(who.groups)})"
    if who.qos is not None:
        if p.allow_qos is not None and who.qos not in p.allow_qos:
            return f"AllowQos={','.join(p.allow_qos)} (qos {who.qos})"
        if who.qos in p.deny_qos:
            return f"DenyQos has {who.qos}"
    return None


def _request(res: Resources) -> str:
    return f"{res.time_min} min, {res.mem or 'default memory'}, {res.cpus_per_task} CPU(s)"


def _most(values: Iterable[int | None]) -> int | None:
    """The largest value; None if any is unlimited (None)."""
    vals = list(values)
    return None if not vals or None in vals else max(v for v in vals if v is not None)


def _no_fit(res: Resources, pool: Sequence[Partition], subject: str) -> PartitionError:
    largest = max(pool, key=lambda p: p.size())
    # name each field no partition of the pool can hold, with the most any of them allows
    fixes = []
    top_time = _most(p.max_time_min for p in pool)
    if top_time is not None and res.time_min > top_time:
        fixes.append(f"time (profile key time, option --time) to at most {top_time} min")
    top_mem = _most(p.mem_mb for p in pool)
    if res.mem_mb is not None and top_mem is not None and res.mem_mb > top_mem:
        fixes.append(f"mem_gb (option --mem) to at most {top_mem / 1024:.1f} GB")
    top_cpu = _most(p.cpus for p in pool)
    if top_cpu is not None and res.cpus_per_task > top_cpu:
        fixes.append(f"cpus_per_task to at most {top_cpu}")
    if not fixes:
        fixes.append("time, mem_gb or cpus_per_task: no single partition has all of them")
    why = "; ".join(w for _, w in largest.too_small(res))
    return PartitionError(
        f"{subject} a request of {_request(res)}: the largest, {largest.name} "
        f"({largest.limits()}), cannot: {why}. Fix: lower {'; or '.join(fixes)}, or ask for a per-cell rule "
        f"(profile rules) only where it is needed")


def choose_partition(partitions: Sequence[Partition] | None, res: Resources, who: Submitter | None = None, *,
                     candidates: Iterable[str] | None = None) -> PartitionChoice:
    """The partition(s) for one resource class (pure: no Slurm calls).

    ``res.partition`` (the profile's, an option's, a rule's) is kept if one of its partitions
    holds the request. Otherwise the smallest usable partition that holds it, or all that tie.
    ``candidates`` limits the choice (profile key ``partitions``). ``partitions=None`` (not
    readable): the request is left to Slurm.

    Raises:
        PartitionError: no (named / candidate) partition can hold the request.
    """
    if partitions is None:
        return PartitionChoice(res.partition, "partitions could not be read (scontrol); "
                               + (f"{res.partition} as named" if res.partition else "Slurm's default partition"),
                               named=res.partition is not None)
    by_name = {p.name: p for p in partitions}
    if res.partition:
        names = [n.strip() for n in res.partition.split(",") if n.strip()]
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise PartitionError(f"partition={res.partition!r}: no partition {', '.join(unknown)} on this cluster; "
                                 f"it has {', '.join(by_name) or 'none'}. Fix: name one of these (profile key "
                                 "partition, option --partition), or leave partition out to let bayesim-hpc choose")
        named = [by_name[n] for n in names]
        holding = [p for p in named if not p.too_small(res)]
        if not holding:
            err = _no_fit(res, named, f"the partition named in the profile or options ({res.partition}) cannot hold")
            fits = [p.name for p in partitions if not p.too_small(res) and refused(p, who) is None]
            raise PartitionError(f"{err}; or name a partition that holds it ({', '.join(fits) or 'none does'}; "
                                 "profile key partition, option --partition) or leave partition out to let "
                                 "bayesim-hpc choose")
        notes = tuple(f"{p.name} cannot hold it ({'; '.join(w for _, w in p.too_small(res))})"
                      for p in named if p not in holding)
        notes += tuple(f"{p.name}: {r}" for p in named if (r := refused(p, who)) is not None)
        return PartitionChoice(res.partition, f"named in the profile or options ({'; '.join(p.name + ': ' + p.limits() for p in named)})",
                               named=True, notes=notes)
    wanted = list(candidates) if candidates is not None else None
    if wanted is not None:
        unknown = [n for n in wanted if n not in by_name]
        if unknown:
            raise PartitionError(f"partitions={wanted!r}: no partition {', '.join(unknown)} on this cluster; it has "
                                 f"{', '.join(by_name)}. Fix: list only these (profile key partitions)")
    pool, skipped = [], []
    for p in partitions:
        if wanted is not None and p.name not in wanted:
            continue
        why = refused(p, who)
        if wanted is not None and why in ("hidden", "GPU nodes only"):
            why = None  # listed on purpose
        if why is None:
            pool.append(p)
        else:
            skipped.append(f"{p.name} ({why})")
    if not pool:
        raise PartitionError(f"no partition may take jobs from {who.user if who else 'you'}: "
                             f"{', '.join(skipped) or 'none listed'}. Fix: name one in the profile (key partition) "
                             "or ask the cluster's admins which to use")
    fits = [p for p in pool if not p.too_small(res)]
    if not fits:
        raise _no_fit(res, pool, "no partition" + (" listed in the profile's partitions" if wanted else "") + " can hold")
    best = min(p.size() for p in fits)
    chosen = [p for p in fits if p.size() == best]
    larger = [p for p in fits if p.size() != best]
    smaller = [p for p in pool if p.too_small(res)]
    why = (f"the smallest that holds {_request(res)} ({chosen[0].limits()})"
           + (f"; {len(chosen)} tie" if len(chosen) > 1 else ""))
    notes = []
    if smaller:
        notes.append("too small: " + ", ".join(f"{p.name} ({'; '.join(w for _, w in p.too_small(res))})"
                                               for p in smaller))
    if larger:
        notes.append("larger: " + ", ".join(p.name for p in larger))
    if skipped:
        notes.append("not used: " + ", ".join(skipped))
    return PartitionChoice(",".join(p.name for p in chosen), why, notes=tuple(notes))


def largest(partitions: Sequence[Partition], who: Submitter | None = None,
            candidates: Iterable[str] | None = None) -> tuple[int | None, int | None]:
    """(MaxTime minutes, memory MB) of the largest usable partitions (None: unlimited/unknown).

    The escalation of OUT_OF_MEMORY/TIMEOUT stops there: a resubmission no partition could hold
    would only be refused.
    """
    wanted = set(candidates) if candidates is not None else None
    pool = [p for p in partitions if (p.name in wanted if wanted is not None else refused(p, who) is None)]
    if not pool:
        return None, None
    return _most(p.max_time_min for p in pool), _most(p.mem_mb for p in pool)


class Placement:
    """The partitions of one cluster, read once, and the choice for each resource class (cached).

    Example:
        >>> pl = Placement(read=lambda: parse_partitions(SCONTROL_EXAMPLE, SINFO_EXAMPLE))
        >>> pl.choose(Resources(time_min=20, mem_mb=2048)).partition
        'short'
    """

    def __init__(self, candidates: Iterable[str] | None = None, account: str | None = None, qos: str | None = None,
                 *, read: Callable[[], list[Partition] | None] = read_partitions,
                 who: Callable[[list[Partition]], Submitter | None] | None = None):
        self.candidates = list(candidates) if candidates is not None else None
        self.account, self.qos = account, qos
        self._read, self._who_of = read, who
        self._parts: list[Partition] | None = None
        self._read_done = False
        self.who: Submitter | None = None
        self._cache: dict[Resources, PartitionChoice] = {}

    def partitions(self) -> list[Partition] | None:
        if not self._read_done:
            self._parts = self._read()
            self._read_done = True
            if self._parts is not None:
                self.who = self._who_of(self._parts) if self._who_of else self._default_who(self._parts)
        return self._parts

    def _default_who(self, parts: list[Partition]) -> Submitter:
        by_account = any(p.allow_accounts is not None or p.deny_accounts for p in parts)
        return submitter(self.account, self.qos, default_account=default_account if by_account else None)

    def choose(self, res: Resources) -> PartitionChoice:
        """The choice for ``res`` (see :func:`choose_partition`); raises :class:`PartitionError`."""
        if res not in self._cache:
            self._cache[res] = choose_partition(self.partitions(), res, self.who, candidates=self.candidates)
        return self._cache[res]

    def limits(self) -> tuple[int | None, int | None]:
        """(MaxTime min, MB per node) of the largest usable partition; (None, None) if unknown."""
        parts = self.partitions()
        return (None, None) if not parts else largest(parts, self.who, self.candidates)

    def describe(self) -> str:
        """One line: the partitions read, the default one starred, those not used and why."""
        parts = self.partitions()
        if parts is None:
            return "partitions: could not be read (scontrol); requests go to the partition named, else Slurm's default"
        items = []
        for p in parts:
            why = refused(p, self.who)
            items.append(f"{p.name}{'*' if p.default else ''} ({p.limits()}"
                         + (f", DefaultTime {p.default_time_min} min" if p.default_time_min else "")
                         + (f"; not used unasked: {why}" if why else "") + ")")
        return "partitions (scontrol): " + "; ".join(items)
