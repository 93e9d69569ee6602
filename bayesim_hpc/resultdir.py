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
generator, fitter and metrics. Load result directories you trust.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle

from .config import Study, fingerprint_parts
from .errors import StudyChangedError
from .grid import Shard, plan_shards
from .storage import atomic_write_text

__all__ = ["ResultDir", "FrozenStudy", "package_versions"]

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

    def load_study(self) -> Study:
        """The frozen study; the study file's folder is importable, as it was at ``run``."""
        try:
            folder = json.loads(self.study_json.read_text()).get("study_file")
        except (FileNotFoundError, json.JSONDecodeError):
            folder = None
        if folder and str(Path(folder).parent) not in sys.path:
            sys.path.insert(0, str(Path(folder).parent))
        with open(self.study_pkl, "rb") as fh:
            return cloudpickle.load(fh)

    def freeze(self, study: Study, shard_size: int, shards: list[Shard] | None = None) -> FrozenStudy:
        """Write study.pkl and study.json for a new study (study.json last: it marks 'ready').

        ``shards``: a shard plan made elsewhere (e.g. sized by cost); default ``plan_shards``.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        self.shards_dir.mkdir(exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        tmp = self.path / ".study.pkl.tmp"
        with open(tmp, "wb") as fh:
            cloudpickle.dump(study, fh)
        tmp.replace(self.study_pkl)
        shards = shards if shards is not None else plan_shards(study.space, shard_size)
        raw = {
            "format": FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "fingerprint": fingerprint_parts(study),
            "n_tasks": study.n_tasks,
            "n_data": study.space.n_data,
            "n_fit": study.space.n_fit,
            "n_replicates": study.n_replicates,
            "seed": study.seed,
            "retain": list(study.retain),
            "metric_kinds": study.metric_kinds(),
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
        """Move shards/ aside (for force=True) and forget the frozen study."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path / f"shards.discarded-{stamp}"
        if self.shards_dir.exists():
            self.shards_dir.rename(target)
        for p in (self.study_json, self.manifest, self.summary, self.cells):
            p.unlink(missing_ok=True)
        return target
