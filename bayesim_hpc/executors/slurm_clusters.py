"""Several Slurm clusters behind one login node: ``--clusters`` on every scheduler call.

Sites that federate several clusters under one slurmdbd let a user submit to another cluster
with ``sbatch --clusters=NAME`` (``-M``); ``squeue``, ``sacct``, ``scancel``, ``scontrol`` and
``sinfo`` then need the same option to see those jobs. A profile names them with
``clusters: gpu`` (or a list). The driver sets them for its process (:func:`using`) and records
them in each submission record of the manifest, so ``status`` and ``cancel`` ask the same
clusters later. ``slurm_query.run_command`` adds the option to every command that takes it
(:func:`with_clusters`); with it, ``squeue``/``sinfo`` put a ``CLUSTER: name`` line before each
cluster's rows, which :func:`strip_headers` drops before parsing.

Example:
    >>> with using("c1,c2"):
    ...     with_clusters(["squeue", "--name", "x"])
    ['squeue', '--clusters=c1,c2', '--name', 'x']
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Iterator

__all__ = ["TAKES_CLUSTERS", "current", "normalise", "set_clusters", "strip_headers", "using", "with_clusters"]

#: the commands that take ``--clusters`` (sacctmgr filters by ``cluster=`` instead; not needed)
TAKES_CLUSTERS = {"sbatch", "squeue", "sacct", "scancel", "scontrol", "sinfo"}
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_HEADER = re.compile(r"^CLUSTER: \S+\s*$")

_clusters: str | None = None


def normalise(value: Any, *, where: str = "profile key clusters") -> str | None:
    """``"a"``, ``"a,b"``, ``["a", "b"]`` or None -> ``"a,b"`` / None; anything else is an error.

    >>> normalise(["c1", "c2"])
    'c1,c2'
    """
    if value is None or value == "" or value == []:
        return None
    names = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if names is None or not all(isinstance(n, str) and _NAME.match(n.strip()) for n in names):
        raise ValueError(f"{where}: {value!r} is not a cluster name or a list of them; write e.g. `clusters: gpu` "
                         "or `clusters: [cpu, gpu]` with the names `sacctmgr show clusters` lists")
    return ",".join(n.strip() for n in names)


def current() -> str | None:
    """The clusters this process's Slurm calls carry (None: the local cluster only)."""
    return _clusters


def set_clusters(value: Any) -> str | None:
    """Set them for this process; returns the previous setting."""
    global _clusters
    old, _clusters = _clusters, normalise(value)
    return old


@contextmanager
def using(value: Any) -> Iterator[str | None]:
    """``with using("gpu"): ...`` -- every Slurm call in the block carries ``--clusters=gpu``."""
    old = set_clusters(value)
    try:
        yield _clusters
    finally:
        set_clusters(old)


def with_clusters(cmd: list[str], clusters: str | None = None) -> list[str]:
    """``cmd`` with ``--clusters=...`` after the program name, if it takes one and none is set."""
    clusters = clusters if clusters is not None else _clusters
    if not clusters or not cmd or cmd[0] not in TAKES_CLUSTERS:
        return cmd
    if any(a in ("-M", "--clusters") or a.startswith(("--clusters=", "-M")) for a in cmd[1:]):
        return cmd
    if cmd[0] == "scontrol":  # "Only one cluster can be used at a time with scontrol"
        clusters = clusters.split(",")[0]
    return [cmd[0], f"--clusters={clusters}", *cmd[1:]]


def strip_headers(text: str) -> str:
    """Output without the ``CLUSTER: name`` lines ``-M`` adds (and the blank lines around them)."""
    if "CLUSTER:" not in text:
        return text
    return "\n".join(ln for ln in text.splitlines() if not _HEADER.match(ln)) + "\n"
