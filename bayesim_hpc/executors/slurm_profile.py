"""Slurm profiles and resources: what an array element asks the scheduler for.

A *profile* is a YAML file in ``slurm_templates/`` (or a path) with the cluster's settings:
partition, account, qos, time, memory, CPUs, setup lines, extra sbatch options, and the
planning and escalation knobs (see ``docs/cluster-guide.md``). A :class:`Resources` is one
*resource class*: time, memory and CPUs (plus partition/account/qos) of an element. Elements
with the same resources are submitted together as one array.

Per-cell resources come from ``rules`` in the profile (the first rule whose ``match`` fits a
cell's data/fit spec) or from a ``resources`` function given to the executor
(``resources(data_spec, fit_spec) -> {"mem_gb": 8, "time_min": 120}``); a shard asks for the most
any of its cells needs.

Example:
    >>> base = Resources(time_min=60, mem_mb=2048, cpus_per_task=1)
    >>> base.escalated("OUT_OF_MEMORY", Escalation()).mem_mb
    4096
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from ..deprecation import renamed

__all__ = ["Escalation", "Resources", "ResourceRules", "TEMPLATES_DIR", "load_profile", "mem_mb", "minutes"]

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "slurm_templates"
PROFILE_KEYS = {"partition", "account", "qos", "time_min", "mem_gb", "mem", "cpus_per_task", "setup", "additional",
                "signal_delay_s", "python", "compile_dir", "rules", "escalate", "target_element_min",
                "startup_s", "task_seconds", "pilot_tasks"}
_ESCALATE_KEYS = {"mem_factor", "mem_max_gb", "time_factor", "time_max_min", "max_escalations"}
_RULE_KEYS = {"match", "time_min", "mem_gb", "mem", "cpus_per_task", "partition", "qos"}
#: keys renamed in 0.3 (units in the name): they still work for one release, with a warning
OLD_KEYS = {"time": "time_min", "time_max": "time_max_min"}


def new_keys(d: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``d`` with old keys (``time``, ``time_max``) renamed, warning once for each."""
    out = dict(d)
    for old, new in OLD_KEYS.items():
        if old in out:
            renamed(old, new, where=where, stacklevel=4)
            value = out.pop(old)
            out.setdefault(new, value)
    return out


PROFILE_KEYS |= {"partitions"}  # candidates of the partition choice (slurm_partitions)
PROFILE_KEYS |= {"container", "check_environment"}  # workers in a container, version parity (slurm_container)
PROFILE_KEYS |= {"retry", "clusters", "bad_nodes"}  # slurm_retry, slurm_clusters, slurm_nodes


def _find_profile(profile: str) -> Path:
    p = Path(profile).expanduser()
    if p.is_file():
        return p
    names = [profile] if profile.endswith((".yaml", ".yml")) else [f"{profile}.yaml", f"{profile}.yml"]
    dirs = [Path(d) for d in os.environ.get("BAYESIM_SLURM_TEMPLATES", "").split(os.pathsep) if d]
    dirs += [Path.cwd() / "slurm_templates", TEMPLATES_DIR]
    for d in dirs:
        for n in names:
            if (d / n).is_file():
                return d / n
    known = sorted({q.stem for d in dirs if d.is_dir() for q in d.glob("*.y*ml")})
    raise FileNotFoundError(f"no Slurm profile {profile!r} (looked in {', '.join(map(str, dirs))}); "
                            f"known: {', '.join(known) or 'none'}")


def load_profile(profile: str | os.PathLike | None) -> dict[str, Any]:
    """Read a cluster profile (YAML) and check its keys. ``None`` -> ``{}``.

    Keys: partition, account, qos, time_min (minutes; "H:MM:SS" too), mem_gb (or mem), cpus_per_task, setup
    (shell lines), additional (extra sbatch options), signal_delay_s, python, compile_dir,
    rules (per-cell resources), escalate (OOM/TIMEOUT factors and caps), target_element_min,
    startup_s, task_seconds, pilot_tasks (planning), partitions (the ones to choose from),
    container and check_environment (``slurm_container``), retry (transient scheduler errors:
    ``slurm_retry.RetryPolicy``), clusters (``--clusters``), bad_nodes (``slurm_nodes``).
    """
    if profile is None:
        return {}
    path = _find_profile(str(profile))
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a profile must be a mapping of keys to values")
    data = new_keys(data, f"profile {path.name}")
    if isinstance(data.get("escalate"), dict):
        data["escalate"] = new_keys(data["escalate"], f"profile {path.name}: escalate")
    if isinstance(data.get("rules"), list):
        data["rules"] = [new_keys(r, f"profile {path.name}: rules") if isinstance(r, dict) else r
                         for r in data["rules"]]
    unknown = set(data) - PROFILE_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown profile key(s) {sorted(unknown)}; known: {sorted(PROFILE_KEYS)}")
    if data.get("setup") is not None and not isinstance(data["setup"], list):
        raise ValueError(f"{path}: 'setup' must be a list of shell lines")
    if data.get("additional") is not None and not isinstance(data["additional"], dict):
        raise ValueError(f"{path}: 'additional' must be a mapping of sbatch options to values")
    parts = data.get("partitions")
    if parts is not None and (not isinstance(parts, list) or not all(isinstance(p, str) for p in parts)):
        raise ValueError(f"{path}: 'partitions' must be a list of partition names to choose from, like [short, long]")
    if data.get("container") is not None:
        from .slurm_container import Container

        Container.from_profile(data["container"], str(path))
    if not isinstance(data.get("check_environment", True), bool):
        raise ValueError(f"{path}: 'check_environment' must be true or false")
    esc = data.get("escalate")
    if esc is not None and (not isinstance(esc, dict) or set(esc) - _ESCALATE_KEYS):
        raise ValueError(f"{path}: 'escalate' must be a mapping with keys from {sorted(_ESCALATE_KEYS)}")
    if data.get("retry") is not None and not isinstance(data["retry"], dict):
        raise ValueError(f"{path}: 'retry' must be a mapping like {{attempts: 8, max_wait_s: 300}}")
    if data.get("bad_nodes") not in (None, False) and not isinstance(data["bad_nodes"], dict):
        raise ValueError(f"{path}: 'bad_nodes' must be false or a mapping like {{node_fail: 2, same_error: 2}}")
    rules = data.get("rules")
    if rules is not None:
        if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
            raise ValueError(f"{path}: 'rules' must be a list of mappings like "
                             "{match: {model: big}, mem_gb: 8, time_min: 120}")
        for i, r in enumerate(rules):
            bad = set(r) - _RULE_KEYS
            if bad or not isinstance(r.get("match", {}), dict):
                raise ValueError(f"{path}: rule {i + 1}: keys must be from {sorted(_RULE_KEYS)} and 'match' a "
                                 f"mapping of grid column to value(s); got {sorted(r)}")
    return data


def minutes(value: Any) -> int:
    """Minutes from 90, "90", "1:30:00", "2-00:00:00", "30:00" (MM:SS).

    >>> minutes("1:30:00"), minutes("2-00:00:00"), minutes(7.5)
    (90, 2880, 8)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return max(1, int(math.ceil(value)))
    text = str(value).strip()
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
    parts = [int(p) for p in text.split(":")]
    if len(parts) == 1:
        h, m, s = 0, parts[0], 0
    elif len(parts) == 2:
        h, m, s = 0, parts[0], parts[1]
    else:
        h, m, s = parts[-3:]
    return max(1, days * 1440 + h * 60 + m + (1 if s else 0))


def mem_mb(value: Any) -> int | None:
    """Megabytes from a number of GB (4 -> 4096, 0.5 -> 512) or a string ("500M", "4G", "4GB", "8000").

    >>> mem_mb(4), mem_mb("500M"), mem_mb("2G"), mem_mb(None)
    (4096, 500, 2048, None)
    """
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(round(value * 1024))
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", str(value).upper())
    if not m:
        raise ValueError(f"cannot read a memory size from {value!r}; use e.g. 4 (GB), '500M' or '4G'")
    num, unit = float(m.group(1)), m.group(2)
    if unit == "" and re.fullmatch(r"\s*\d+\s*", str(value)):
        unit = "G"  # a bare number is GB, as mem_gb
    factor = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[unit]
    return max(1, int(round(num * factor)))


@dataclass(frozen=True)
class Escalation:
    """How an element that ran out of memory or time is resubmitted.

    OUT_OF_MEMORY: memory times ``mem_factor``, at most ``mem_max_gb``. TIMEOUT: time times
    ``time_factor``, at most ``time_max_min`` minutes. A shard whose element fails so at the cap
    (or after ``max_escalations``) has the task it was running recorded as failed with that cause.
    """

    mem_factor: float = 2.0
    mem_max_gb: float = 64.0
    time_factor: float = 2.0
    time_max_min: int = 2880
    max_escalations: int = 4

    @classmethod
    def from_profile(cls, data: Mapping[str, Any] | None) -> "Escalation":
        d = new_keys(data or {}, "escalate")
        if "time_max_min" in d:
            d["time_max_min"] = minutes(d["time_max_min"])
        out = cls(**d)
        if out.mem_factor <= 1 or out.time_factor <= 1:
            raise ValueError("escalate: mem_factor and time_factor must be > 1")
        return out


@dataclass(frozen=True)
class Resources:
    """One resource class: what each element of an array asks for."""

    time_min: int = 60
    mem_mb: int | None = None
    cpus_per_task: int = 1
    partition: str | None = None
    account: str | None = None
    qos: str | None = None

    @property
    def mem(self) -> str | None:
        """``--mem`` as sbatch gets it: "4GB" or "500MB"."""
        if self.mem_mb is None:
            return None
        return f"{self.mem_mb // 1024}GB" if self.mem_mb % 1024 == 0 else f"{self.mem_mb}MB"

    def label(self) -> str:
        """A short name for dry runs and status: ``"60min/2GB/1cpu"``."""
        parts = [f"{self.time_min}min", self.mem or "mem default", f"{self.cpus_per_task}cpu"]
        parts += [f"{k}={v}" for k, v in (("partition", self.partition), ("qos", self.qos)) if v]
        return "/".join(parts)

    def escalated(self, cause: str, esc: Escalation) -> "Resources":
        """More memory (OUT_OF_MEMORY) or time (TIMEOUT), within the caps; ``self`` if at the cap."""
        if cause == "OUT_OF_MEMORY":
            cap = int(esc.mem_max_gb * 1024)
            base = self.mem_mb or 1024
            return replace(self, mem_mb=min(cap, max(base + 1, int(math.ceil(base * esc.mem_factor)))))
        if cause == "TIMEOUT":
            return replace(self, time_min=min(esc.time_max_min, int(math.ceil(self.time_min * esc.time_factor))))
        return self

    def at_cap(self, cause: str, esc: Escalation) -> bool:
        return self.escalated(cause, esc) == self


class ResourceRules:
    """Per-cell resources: profile ``rules`` and/or a ``resources(data_spec, fit_spec)`` function.

    ``for_cells(specs)`` gives the resources for a shard with those (data_spec, fit_spec) cells:
    each cell's resources, then the most of each (time, memory, CPUs) over the cells.
    """

    def __init__(self, base: Resources, rules: list[dict] | None = None,
                 fn: Callable[[dict, dict], Mapping[str, Any] | None] | None = None):
        self.base, self.rules, self.fn = base, list(rules or []), fn

    @property
    def trivial(self) -> bool:
        return not self.rules and self.fn is None

    def for_cell(self, data_spec: dict, fit_spec: dict) -> Resources:
        res = self.base
        both = {**data_spec, **fit_spec}
        for rule in self.rules:
            if all(_matches(both.get(k), v) for k, v in (rule.get("match") or {}).items()):
                res = _apply(res, rule, "profile rule")
                break
        if self.fn is not None:
            extra = self.fn(dict(data_spec), dict(fit_spec))
            if extra:
                res = _apply(res, dict(extra), "resources function")
        return res

    def for_cells(self, specs: list[tuple[dict, dict]]) -> Resources:
        out = [self.for_cell(d, f) for d, f in specs] or [self.base]
        first = out[0]
        mems = [r.mem_mb for r in out if r.mem_mb is not None]
        return replace(first, time_min=max(r.time_min for r in out), cpus_per_task=max(r.cpus_per_task for r in out),
                       mem_mb=max(mems) if mems else None)


def _matches(value: Any, want: Any) -> bool:
    if isinstance(want, (list, tuple)):
        return any(_matches(value, w) for w in want)
    return value == want or str(value) == str(want)


def _apply(res: Resources, spec: Mapping[str, Any], what: str) -> Resources:
    known = {"time_min", "mem_gb", "mem", "cpus_per_task", "partition", "qos", "match"}
    spec = new_keys(spec, what)
    bad = set(spec) - known
    if bad:
        raise ValueError(f"{what}: unknown key(s) {sorted(bad)}; use time_min, mem_gb (or mem), cpus_per_task, "
                         "partition, qos")
    changes: dict[str, Any] = {}
    if spec.get("time_min") is not None:
        changes["time_min"] = minutes(spec["time_min"])
    if spec.get("mem_gb") is not None or spec.get("mem") is not None:
        changes["mem_mb"] = mem_mb(spec.get("mem", spec.get("mem_gb")))
    if spec.get("cpus_per_task") is not None:
        changes["cpus_per_task"] = int(spec["cpus_per_task"])
    for k in ("partition", "qos"):
        if spec.get(k) is not None:
            changes[k] = str(spec[k])
    return replace(res, **changes)
