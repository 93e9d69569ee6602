"""Bad nodes: which nodes a study stops sending its elements to, and why.

A node that loses its elements (``NODE_FAIL``: the node died or lost contact) or on which
elements keep failing the same way while the same study's elements succeed elsewhere (a full
local disk, a broken module, a bad GPU) wastes every element sent there. The study keeps an
*exclusion list* in its manifest (key ``excluded_nodes``: node -> why, when, which jobs) and
passes it as ``--exclude`` to its later submissions: resubmissions, waves, and ``resume``.

* :func:`decide` is the pure rule, over the runs of the study's elements (``sacct -D``).
  A node is excluded after ``node_fail`` NODE_FAIL incidents on it (default 2; the elements a
  node takes down at once, ending within ``INCIDENT_GAP_S`` of each other, are one), or after
  ``same_error`` failed runs on it with the same exit code (default 2) when at least one
  element of the study completed on another node and none completed on it.
* :func:`cap` keeps at least one node of every partition the study uses: a study never
  excludes a whole partition (the rest are not excluded; status says so).
* :func:`update` ties them to the scheduler (one ``sacct`` and one ``sinfo`` call) and the
  manifest; ``bayesim-hpc nodes DIR`` lists the list, ``--clear`` empties it.

Profile key ``bad_nodes: {node_fail: 2, same_error: 2}`` (``false`` turns it off).

Example:
    >>> runs = [Run("1_0", "NODE_FAIL", "n1"), Run("1_0", "NODE_FAIL", "n1"), Run("1_1", "COMPLETED", "n2")]
    >>> sorted(decide(runs))
    ['n1']
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import slurm_query as sq

__all__ = ["BadNodeRules", "Run", "cap", "clear", "decide", "excluded", "exclude_option", "node_history",
           "partition_nodes", "update"]

MANIFEST_KEY = "excluded_nodes"
#: NODE_FAIL runs on one node that ended closer together than this are one incident (one crash)
INCIDENT_GAP_S = 15.0


@dataclass(frozen=True)
class Run:
    """One run of one element: ``sacct -D`` row (a requeued element has several)."""

    job_id: str
    state: str
    node: str
    exit_code: int | None = None
    end: float | None = None  # epoch seconds (None: unknown, each such run is its own incident)


@dataclass(frozen=True)
class BadNodeRules:
    """How many bad runs exclude a node (profile ``bad_nodes``); ``enabled=False``: never."""

    node_fail: int = 2
    same_error: int = 2
    enabled: bool = True

    @classmethod
    def from_profile(cls, value: Any) -> "BadNodeRules":
        if value is False:
            return cls(enabled=False)
        d = dict(value or {})
        bad = set(d) - {"node_fail", "same_error"}
        if bad or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in d.values()):
            raise ValueError(f"profile key bad_nodes: expected false or a mapping like {{node_fail: 2, same_error: 2}} "
                             f"(integers >= 1), got {value!r}")
        return cls(**d)


def decide(runs: Iterable[Run], rules: BadNodeRules = BadNodeRules()) -> dict[str, str]:
    """Nodes to exclude, with why: a pure function of the study's element runs."""
    if not rules.enabled:
        return {}
    runs = [r for r in runs if r.node and r.node not in ("None assigned", "(null)")]
    out: dict[str, str] = {}
    for node in sorted({r.node for r in runs if r.state == "NODE_FAIL"}):
        lost = [r for r in runs if r.node == node and r.state == "NODE_FAIL"]
        n = _incidents(lost)
        if n >= rules.node_fail:
            jobs = sorted({r.job_id for r in lost})
            out[node] = f"NODE_FAIL {n} times ({len(lost)} element run(s) lost: job(s) {', '.join(jobs[:4])}" + \
                (", ...)" if len(jobs) > 4 else ")")
    completed_on = {r.node for r in runs if r.state == "COMPLETED"}
    same = Counter((r.node, r.exit_code) for r in runs if r.state == "FAILED")
    for (node, code), n in sorted(same.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        if node in out or n < rules.same_error or node in completed_on or not (completed_on - {node}):
            continue
        jobs = sorted({r.job_id for r in runs if r.node == node and r.state == "FAILED" and r.exit_code == code})
        out[node] = (f"{n} run(s) FAILED there with exit code {code} (job(s) {', '.join(jobs[:4])}) while elements "
                     f"completed on {', '.join(sorted(completed_on - {node})[:3])}")
    return out


def _incidents(lost: list[Run]) -> int:
    """How many separate crashes: end times more than INCIDENT_GAP_S apart (unknown: one each)."""
    ends = sorted(r.end for r in lost if r.end is not None)
    n = sum(1 for r in lost if r.end is None)
    if ends:
        n += 1 + sum(1 for a, b in zip(ends, ends[1:]) if b - a > INCIDENT_GAP_S)
    return n


def cap(wanted: Mapping[str, str], already: Iterable[str], partitions: Mapping[str, set[str]]) -> tuple[dict[str, str],
                                                                                                      dict[str, str]]:
    """Split ``wanted`` into (excluded now, held back) so every partition keeps a node.

    ``partitions``: partition -> its nodes (only those the study submits to). Nodes are taken
    in name order; one that would leave a partition without a node is held back.
    """
    taken = set(already)
    ok: dict[str, str] = {}
    held: dict[str, str] = {}
    for node in sorted(wanted):
        if node in taken:
            continue
        trial = taken | {node}
        empty = [p for p, nodes in partitions.items() if nodes and node in nodes and not (nodes - trial)]
        if empty:
            held[node] = (f"{wanted[node]}; not excluded: partition {', '.join(sorted(empty))} would have no node "
                          "left")
            continue
        taken = trial
        ok[node] = wanted[node]
    return ok, held


def node_history(job_ids: Iterable[str], *, run: sq.Runner = subprocess.run) -> list[Run]:
    """Every run of the given (array) jobs, from ``sacct -D -X`` (empty without accounting)."""
    ids = [str(j) for j in job_ids]
    if not ids:
        return []
    cmd = ["sacct", "-D", "-X", "-n", "-P", "-j", ",".join(ids), "--format", "JobID,State,NodeList,ExitCode,End"]
    try:
        proc = sq.run_command("query", cmd, run=run)
    except sq.SlurmCommandError:
        return []
    if proc.returncode != 0:
        return []
    out = []
    for line in (proc.stdout or "").splitlines():
        parts = line.strip().split("|")
        if len(parts) < 4 or "." in parts[0]:
            continue
        code = parts[3].split(":")[0]
        out.append(Run(parts[0], sq.normalise_state(parts[1]), parts[2].strip(),
                       int(code) if code.isdigit() else None, _epoch(parts[4]) if len(parts) > 4 else None))
    return out


def _epoch(text: str) -> float | None:
    """sacct's End (``2026-11-30T09:01:36``, local time) as epoch seconds; None for Unknown/None."""
    try:
        return time.mktime(time.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def partition_nodes(partitions: Iterable[str | None], *, run: sq.Runner = subprocess.run) -> dict[str, set[str]]:
    """partition -> its nodes (``sinfo -h -N -o %N|%P``); ``None`` is the default partition."""
    try:
        proc = sq.run_command("config", ["sinfo", "-h", "-N", "-o", "%N|%P"], run=run)
    except sq.SlurmCommandError:
        return {}
    if proc.returncode != 0:
        return {}
    nodes: dict[str, set[str]] = {}
    default = None
    for line in (proc.stdout or "").splitlines():
        node, _, part = line.strip().partition("|")
        if not node or not part:
            continue
        if part.endswith("*"):
            part = part[:-1]
            default = part
        nodes.setdefault(part, set()).add(node)
    wanted = {p if p is not None else default for p in partitions}
    out: dict[str, set[str]] = {}
    for p in wanted:
        for name in (p or "").split(","):
            if name in nodes:
                out[name] = nodes[name]
    return out


def excluded(manifest: Mapping[str, Any]) -> dict[str, dict]:
    """The exclusion list in a manifest: node -> {"why", "since", ...}."""
    return dict(manifest.get(MANIFEST_KEY) or {})


def exclude_option(manifest: Mapping[str, Any]) -> str | None:
    """The ``--exclude`` value for the next submission (None when no node is excluded)."""
    nodes = sorted(excluded(manifest))
    return ",".join(nodes) if nodes else None


def update(manifest: Any, job_ids: Iterable[str], partitions: Iterable[str | None], rules: BadNodeRules, *,
           run: sq.Runner = subprocess.run) -> tuple[dict[str, str], dict[str, str]]:
    """Look at the study's runs; add bad nodes to the manifest's list (within the cap).

    Returns (newly excluded, held back by the cap): node -> why. ``manifest`` is a
    :class:`bayesim_hpc.manifest.Manifest` (its ``update`` is locked and atomic).
    """
    if not rules.enabled:
        return {}, {}
    wanted = decide(node_history(job_ids, run=run), rules)
    have = excluded(manifest.read())
    wanted = {n: w for n, w in wanted.items() if n not in have}
    if not wanted:
        return {}, {}
    ok, held = cap(wanted, have, partition_nodes(partitions, run=run))
    if ok:
        now = time.time()

        def add(d: dict) -> None:
            cur = d.setdefault(MANIFEST_KEY, {})
            for node, why in ok.items():
                cur.setdefault(node, {"why": why, "since": now})
        manifest.update(add)
    return ok, held


def clear(manifest: Any, nodes: Iterable[str] | None = None) -> list[str]:
    """Take ``nodes`` (all when None) off the list; returns those taken off."""
    gone: list[str] = []

    def drop(d: dict) -> None:
        cur = d.get(MANIFEST_KEY) or {}
        for node in list(cur) if nodes is None else list(nodes):
            if node in cur:
                del cur[node]
                gone.append(node)
        d[MANIFEST_KEY] = cur
    manifest.update(drop)
    return gone
