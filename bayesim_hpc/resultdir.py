"""The result directory: paths, the frozen study, and the comparison that guards resume.

::

    <result_path>/
      study.json    frozen study: grids, seeds, retention, task layout (blocks, id widths), shard
                    plan, fingerprint, code text, history, runtime settings, versions
      study.pkl     the study's code (cloudpickle), so workers and ``resume DIR`` can run it
                    (``.study.pkl.next`` while a grown study is frozen: ResultDir.apply_extension)
      manifest.json shard states, attempts, job ids, reasons (under manifest.lock)
      driver.lock   held by the one driver at a time
      shards/       per-shard HDF5 segments: the durable truth
      logs/         worker output per shard and attempt
      summary.h5, cells.csv   the reducer's output

``study.pkl`` is the only pickle beside the retained ``fit`` artifacts: it holds the
generator, fitter and metrics. Load result directories you trust.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle

from .config import Study
from .errors import BayesimError, StudyChangedError
from .fingerprint import CODE_PARTS, code_descriptions, code_diff, fingerprint_parts, legacy_fingerprint_parts
from .grid import Shard, plan_shards
from .storage import atomic_write_text, fsync_path

__all__ = ["ResultDir", "FrozenStudy", "package_versions", "runtime_settings"]

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


def runtime_settings(study: Study, keep_going: bool = False) -> dict[str, Any]:
    """The settings a run may change without changing the study (workers read them from study.json).

    ``retain`` is recorded here too, but a retention change also rewrites the frozen study
    (it applies to the tasks run from then on; the history says when it changed).
    """
    return {"max_errors": study.max_errors,
            "stop_on_systematic_failure": None if keep_going else study.stop_on_systematic_failure,
            "checkpoint_every": study.checkpoint_every, "chunk_size": study.chunk_size,
            "retain": list(study.retain)}


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
        """The frozen study; the study file's folder is importable, as it was at ``run``.

        The study comes back marked as read from this directory (``Study.frozen_in``): it *is*
        the frozen study, so :meth:`check_same_study` does not compare its code again.
        """
        try:
            raw = json.loads(self.study_json.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            raw = {}
        folder = raw.get("study_file")
        if folder and str(Path(folder).parent) not in sys.path:
            sys.path.insert(0, str(Path(folder).parent))
        blob = self.study_pkl.read_bytes()
        want = raw.get("study_pkl_sha256")
        if want and hashlib.sha256(blob).hexdigest() != want and self._next_pkl.exists():
            # an extension was interrupted after study.json was written: its study is the next pickle
            nxt = self._next_pkl.read_bytes()
            if hashlib.sha256(nxt).hexdigest() == want:
                blob = nxt
        if want and hashlib.sha256(blob).hexdigest() != want:
            raise BayesimError(
                f"{self.study_pkl} does not match the checksum in {self.study_json.name}: it was changed or "
                "damaged after the study was frozen. Restore it from a backup, or run the study file again "
                "into a new result directory.")
        study = cloudpickle.loads(blob)
        object.__setattr__(study, "frozen_in", str(self.path.resolve()))
        return study

    _next_pkl = property(lambda self: self.path / ".study.pkl.next")

    def _write_pkl(self, study: Study, name: str) -> bytes:
        tmp = self.path / f".{name}.tmp"
        blob = cloudpickle.dumps(dataclasses.replace(study, frozen_in=None, layout=study.space.to_layout()))
        with open(tmp, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.path / name)
        return blob

    def freeze(self, study: Study, shard_size: int) -> FrozenStudy:
        """Write study.pkl and study.json for a new study (study.json last: it marks 'ready')."""
        from .extend import history_entry, metric_code

        self.path.mkdir(parents=True, exist_ok=True)
        self.shards_dir.mkdir(exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        blob = self._write_pkl(study, "study.pkl")
        shards = plan_shards(study.space, shard_size)
        code = code_descriptions(study)
        raw = {
            "format": FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "fingerprint": fingerprint_parts(study, code),
            "code": code,
            "study_pkl_sha256": hashlib.sha256(blob).hexdigest(),
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
            "runtime": runtime_settings(study),
            "study_file": study.study_file,
            "versions": package_versions(),
            "layout": study.space.to_layout(),
            "metric_code": metric_code(study),
            "history": [history_entry([f"created: {study.n_tasks} tasks ({len(study.data_grid)} data x "
                                       f"{len(study.fit_grid)} fit rows x {study.n_replicates} replicates)"],
                                      tasks=[0, study.n_tasks], shards=[0, len(shards)])],
        }
        atomic_write_text(self.study_json, json.dumps(raw, indent=1, default=str))
        return FrozenStudy(raw)

    def apply_extension(self, ext: Any, shard_size: int, extra_history: dict[str, Any] | None = None) -> FrozenStudy:
        """Freeze an extended study (see :mod:`bayesim_hpc.extend`): new tasks get new shards.

        Crash-safe: the new pickle is written as ``.study.pkl.next``, then study.json (with its
        checksum), then the pickle is renamed into place; :meth:`load_study` finishes an
        interrupted rename. Existing shards, tasks and segments are not touched.
        """
        from .extend import history_entry, metric_code

        study = ext.study
        raw = json.loads(self.study_json.read_text())
        blob = self._write_pkl(study, ".study.pkl.next")
        n_old_shards = len(raw["shards"])
        n_old_tasks = int(raw["n_tasks"])
        n_old_blocks = len(raw["layout"]["blocks"]) if raw.get("layout") else 1
        new_shards = plan_shards(ext.space, shard_size, first_block=n_old_blocks, first_id=n_old_shards)
        code = code_descriptions(study)
        raw.update(
            fingerprint=fingerprint_parts(study, code), code=code, metric_code=metric_code(study),
            study_pkl_sha256=hashlib.sha256(blob).hexdigest(), n_tasks=ext.space.n_tasks,
            n_data=ext.space.n_data, n_fit=ext.space.n_fit, n_replicates=study.n_replicates,
            retain=list(study.retain), metric_kinds=study.metric_kinds(),
            data_grid=study.data_grid.to_dict("list"), fit_grid=study.fit_grid.to_dict("list"), task_grid=None,
            layout=ext.space.to_layout(), shards=raw["shards"] + [[s.start, s.stop] for s in new_shards],
        )
        raw.setdefault("history", []).append(history_entry(
            ext.what, tasks=[n_old_tasks, ext.space.n_tasks], shards=[n_old_shards, n_old_shards + len(new_shards)],
            **(extra_history or {})))
        atomic_write_text(self.study_json, json.dumps(raw, indent=1, default=str))
        self._next_pkl.replace(self.study_pkl)
        fsync_path(self.path)
        return FrozenStudy(raw)

    def set_runtime(self, settings: dict[str, Any]) -> None:
        """Record this run's runtime settings in study.json; workers read them from there.

        Only the driver (holding the driver lock) calls this; the rewrite is atomic.
        """
        raw = json.loads(self.study_json.read_text())
        if raw.get("runtime") != settings:
            raw["runtime"] = settings
            atomic_write_text(self.study_json, json.dumps(raw, indent=1, default=str))

    def check_same_study(self, study: Study) -> FrozenStudy:
        """Raise :class:`StudyChangedError` naming what differs from the frozen study.

        A study read back from this directory (``resume DIR``) is the frozen study itself and
        passes. A study from the study file is compared with the code text frozen at ``run``:
        comments, docstrings and formatting do not count (see :mod:`bayesim_hpc.fingerprint`).
        """
        frozen = self.read_frozen()
        if study.frozen_in is not None and study.frozen_in == str(self.path.resolve()):
            return frozen
        code_then = frozen.raw.get("code")
        if code_then is None:  # made by bayesim-hpc 0.1: its digests hashed the raw source text
            code_now, now = None, legacy_fingerprint_parts(study)
        else:
            code_now = code_descriptions(study)
            now = fingerprint_parts(study, code_now)
        changed = [k for k, v in frozen.fingerprint.items() if now.get(k) != v and k != "retain"]
        if changed:
            diffs = [code_diff(code_then[p], code_now[p], p) for p in changed
                     if p in CODE_PARTS and code_then is not None and code_now is not None and p in code_then]
            raise StudyChangedError(
                f"the study in {self.path} was defined differently: {', '.join(changed)} changed since "
                f"{frozen.raw.get('created', 'it was created')}."
                + "".join(f"\n{d}" for d in diffs if d)
                + f"\nWhat you can do: run the changed study into a new result directory; or finish the study "
                f"as it was frozen with `bayesim-hpc resume {self.path}` (Python: resume_simulation(path)); or "
                "--force (force=True) to move the old results aside into shards.discarded-<time>/ and start again."
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
