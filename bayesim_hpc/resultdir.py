"""The result directory: paths, the frozen study, and the comparison that guards resume.

::

    <result_path>/
      study.json    frozen study: grids, seeds, retention, shard plan, fingerprint, versions
      study.pkl     the study's code (cloudpickle), so workers and ``resume DIR`` can run it
      manifest.json shard states, attempts, job ids, reasons (under manifest.lock)
      driver.lock   held by the one driver at a time
      shards/       per-shard HDF5 segments: the durable truth
      logs/         worker output per shard and attempt
      summary.h5, cells.csv   the reducer's output

``study.pkl`` is the only pickle beside the retained ``fit`` artifacts: it holds the
generator, fitter and metrics. Read-only commands (status, report, reduce) never load it:
they read study.json. Commands that must run the study's code (run into an existing
directory, resume, replay) first check that the directory belongs to the current user,
or is trusted (:func:`check_trusted`, like git's ``safe.directory``; see the trust model
in docs/cluster-guide.md).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import secrets
import sys
import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import cloudpickle
import pandas as pd

from .config import Study, fingerprint_parts
from .errors import BayesimError, ConfigError, StudyChangedError
from .grid import Shard, TaskSpace, plan_shards
from .storage import _write_failed, atomic_write_text, fsync_path, temp_name

__all__ = ["ResultDir", "FrozenStudy", "package_versions", "UntrustedResultDir", "check_trusted",
           "trusted_dirs", "trust_file", "metric_descriptions"]

#: environment variable: result directories to trust although another user owns them
#: (``os.pathsep``-separated; ``*`` trusts every directory)
TRUST_ENV = "BAYESIM_SAFE_DIRECTORIES"


class UntrustedResultDir(BayesimError):
    """A result directory owned by another user: loading its study.pkl would run their code."""


def trust_file() -> Path:
    """The per-user list of trusted result directories (one absolute path a line)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "bayesim-hpc" / "safe-directories"


def trusted_dirs() -> list[str]:
    """Trusted directories: ``$BAYESIM_SAFE_DIRECTORIES`` and :func:`trust_file` (``*`` = all)."""
    out = [p for p in os.environ.get(TRUST_ENV, "").split(os.pathsep) if p]
    try:
        out += [line.strip() for line in trust_file().read_text().splitlines() if line.strip()]
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        pass
    return out


def check_trusted(path: str | Path) -> None:
    """Refuse a result directory whose study code another user could have written.

    The directory, ``study.pkl`` and ``study.json`` must be owned by the current user (or
    root), unless the directory is listed as trusted (``bayesim-hpc trust DIR``, or
    ``$BAYESIM_SAFE_DIRECTORIES``). Raises :class:`UntrustedResultDir`.
    """
    p = Path(path)
    me = os.geteuid()
    for f in (p, p / "study.pkl", p / "study.json"):
        try:
            owner = f.stat().st_uid
        except FileNotFoundError:
            continue
        if owner in (me, 0):
            continue
        real = str(p.resolve())
        trusted = trusted_dirs()
        if "*" in trusted or real in {str(Path(t).expanduser().resolve()) for t in trusted if t != "*"}:
            return
        try:
            import pwd

            who = pwd.getpwuid(owner).pw_name
        except (KeyError, ImportError):
            who = f"uid {owner}"
        raise UntrustedResultDir(
            f"{f} is owned by {who}, not by you: loading this result directory would run code that {who} "
            f"wrote (study.pkl). If you trust it, run `bayesim-hpc trust {real}` (or set "
            f"{TRUST_ENV}={real}) and try again. Read-only commands (status, report, reduce) work without it.")


def metric_descriptions(metrics: Any) -> list[dict[str, Any]]:
    """What read-only commands need of each metric, as plain JSON: name, kind and scalar settings."""
    out = []
    for m in metrics:
        d: dict[str, Any] = {"name": str(m.name), "kind": str(getattr(m, "kind", "mean"))}
        try:
            fields = vars(m)
        except TypeError:
            fields = {}
        for k, v in fields.items():
            if not k.startswith("_") and k not in d and isinstance(v, (bool, int, float, str)):
                d[k] = v
        out.append(d)
    return out


def _pickle_study(study: Study) -> bytes:
    """cloudpickle the study; if that fails, name the part that cannot be pickled."""
    try:
        return cloudpickle.dumps(study)
    except Exception as exc:
        parts = [("data_generator", study.data_generator), ("fitter", study.fitter)]
        parts += [(f"metrics[{i}] ({getattr(m, 'name', '?')})", m) for i, m in enumerate(study.metrics)]
        for name, obj in parts:
            try:
                cloudpickle.dumps(obj)
            except Exception as inner:
                raise ConfigError(name, obj, f"cannot be pickled ({type(inner).__name__}: {inner}); workers "
                                  "receive the study as a pickle", "keep open files, locks, sockets, threads or "
                                  "live connections out of it: create them inside fit()/the function, or "
                                  "define __getstate__") from inner
        raise ConfigError("study", type(study).__name__, f"cannot be pickled ({type(exc).__name__}: {exc})",
                          "make every part of the study picklable") from exc

FORMAT = 1
_PKGS = ("bayesim-hpc", "numpy", "pandas", "h5py", "pymc", "pytensor", "nutpie", "submitit")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PKGS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


@dataclass
class FrozenStudy:
    """What study.json holds, as read back."""

    raw: dict[str, Any]

    @property
    def shards(self) -> list[Shard]:
        return [Shard(i, a, b) for i, (a, b) in enumerate(self.raw["shards"])]

    @property
    def n_tasks(self) -> int:
        return int(self.raw["n_tasks"])

    @property
    def fingerprint(self) -> dict[str, str]:
        return dict(self.raw["fingerprint"])

    @cached_property
    def space(self) -> TaskSpace:
        """The task space, rebuilt from the grids in study.json (no study code is loaded)."""
        tg = self.raw.get("task_grid")
        return TaskSpace.from_grids(pd.DataFrame(self.raw["data_grid"]), pd.DataFrame(self.raw["fit_grid"]),
                                    int(self.raw["n_replicates"]), None if not tg else pd.DataFrame(tg))

    def data_spec(self, d: int) -> dict[str, Any]:
        """Row ``d`` of the data grid as stored in study.json."""
        return {k: v[d] for k, v in self.raw["data_grid"].items()}

    def fit_spec(self, f: int) -> dict[str, Any]:
        return {k: v[f] for k, v in self.raw["fit_grid"].items()}

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """Name, kind and scalar settings of each metric (from study.json; older files: kinds only)."""
        if self.raw.get("metrics"):
            return [dict(m) for m in self.raw["metrics"]]
        return [{"name": k, "kind": v} for k, v in self.raw.get("metric_kinds", {}).items()]

    @property
    def generation(self) -> str:
        """Which freeze of the directory this is; new on every fresh start (and ``--force``)."""
        return str(self.raw.get("generation") or "")


class ResultDir:
    """Paths and frozen-study I/O for one result directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    study_json = property(lambda self: self.path / "study.json")
    study_pkl = property(lambda self: self.path / "study.pkl")
    manifest = property(lambda self: self.path / "manifest.json")
    manifest_lock = property(lambda self: self.path / "manifest.lock")
    driver_lock = property(lambda self: self.path / "driver.lock")
    shards_dir = property(lambda self: self.path / "shards")
    logs = property(lambda self: self.path / "logs")
    summary = property(lambda self: self.path / "summary.h5")
    cells = property(lambda self: self.path / "cells.csv")

    def exists(self) -> bool:
        return self.study_json.exists()

    def read_frozen(self) -> FrozenStudy:
        return FrozenStudy(json.loads(self.study_json.read_text()))

    def load_study(self, check_trust: bool = True) -> Study:
        """The frozen study; the study file's folder is importable, as it was at ``run``.

        This runs code from the directory (unpickling): unless ``check_trust`` is False it
        first refuses a directory of another user (:func:`check_trusted`).
        """
        if check_trust:
            check_trusted(self.path)
        try:
            folder = json.loads(self.study_json.read_text()).get("study_file")
        except (FileNotFoundError, json.JSONDecodeError):
            folder = None
        if folder and str(Path(folder).parent) not in sys.path:
            sys.path.insert(0, str(Path(folder).parent))
        with open(self.study_pkl, "rb") as fh:
            return cloudpickle.load(fh)

    def freeze(self, study: Study, shard_size: int) -> FrozenStudy:
        """Write study.pkl and study.json for a new study (study.json last: it marks 'ready')."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.shards_dir.mkdir(exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        data = _pickle_study(study)
        tmp = temp_name(self.study_pkl)
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())  # durable before study.json says the study is ready
            tmp.replace(self.study_pkl)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _write_failed(exc, self.path) from exc
        fsync_path(self.path)
        shards = plan_shards(study.space, shard_size)
        raw = {
            "format": FORMAT,
            "generation": uuid.uuid4().hex,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "fingerprint": fingerprint_parts(study),
            "n_tasks": study.n_tasks,
            "n_data": study.space.n_data,
            "n_fit": study.space.n_fit,
            "n_replicates": study.n_replicates,
            "seed": study.seed,
            "retain": list(study.retain),
            "metric_kinds": study.metric_kinds(),
            "metrics": metric_descriptions(study.metrics),
            "data_grid": study.data_grid.to_dict("list"),
            "fit_grid": study.fit_grid.to_dict("list"),
            "task_grid": None if study.task_grid is None else study.task_grid.to_dict("list"),
            "shard_size": shard_size,
            "shards": [[s.start, s.stop] for s in shards],
            "chunk_size": study.chunk_size,
            "checkpoint_every": study.checkpoint_every,
            "max_errors": study.max_errors,
            "study_file": study.study_file,
            "versions": package_versions(),
        }
        atomic_write_text(self.study_json, json.dumps(raw, indent=1, default=str))
        return FrozenStudy(raw)

    def check_same_study(self, study: Study) -> FrozenStudy:
        """Raise :class:`StudyChangedError` naming what differs from the frozen study."""
        frozen = self.read_frozen()
        now = fingerprint_parts(study)
        changed = [k for k, v in frozen.fingerprint.items() if now.get(k) != v]
        if changed:
            raise StudyChangedError(
                f"the study in {self.path} was defined differently: {', '.join(changed)} changed since "
                f"{frozen.raw.get('created', 'it was created')}. Resume needs the same study; use a new "
                "result_path for the changed study, or force=True (--force) to move the old results "
                "aside into shards.discarded-<time>/ and start again."
            )
        return frozen

    def discard_results(self) -> Path:
        """Move shards/ aside (for force=True) and forget the frozen study.

        The folder is ``shards.discarded-<time>-<random>``: two discards in one second never
        collide (and never move one discarded folder into another)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        while True:
            target = self.path / f"shards.discarded-{stamp}-{secrets.token_hex(3)}"
            if not target.exists():
                break
        if self.shards_dir.exists():
            self.shards_dir.rename(target)
            fsync_path(self.path)
        for p in (self.study_json, self.manifest, self.summary, self.cells):
            p.unlink(missing_ok=True)
        return target
