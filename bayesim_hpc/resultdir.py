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
generator, fitter and metrics. Read-only commands (status, report, reduce) never load it:
they read study.json. Commands that must run the study's code (run into an existing
directory, resume, replay) first check that the directory belongs to the current user,
or is trusted (:func:`check_trusted`, like git's ``safe.directory``; see the trust model
in docs/cluster-guide.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
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

from .config import Study
from .errors import BayesimError, ConfigError, StudyChangedError
from .fingerprint import CODE_PARTS, code_descriptions, code_diff, fingerprint_parts, legacy_fingerprint_parts
from .grid import Shard, TaskSpace, plan_shards, space_from_raw
from .storage import _write_failed, atomic_write_text, fsync_path, temp_name

__all__ = ["ResultDir", "FrozenStudy", "package_versions", "UntrustedResultDir", "check_trusted",
           "trusted_dirs", "trust_file", "metric_descriptions", "runtime_settings",
           "runtime_tasks_per_segment"]

#: environment variable: result directories to trust although another user owns them
#: (``os.pathsep``-separated; ``*`` trusts every directory)
TRUST_ENV = "BAYESIM_SAFE_DIRECTORIES"


class UntrustedResultDir(BayesimError):
    """A result directory owned by another user: loading its study.pkl would run their code."""

    exit_code = 7


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
        """The task space, from the layout in study.json (older files: the grids); no study code is loaded."""
        if self.raw.get("layout"):
            return space_from_raw(self.raw)
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


def runtime_settings(study: Study, keep_going: bool = False) -> dict[str, Any]:
    """The settings a run may change without changing the study (workers read them from study.json).

    ``retain`` is recorded here too, but a retention change also rewrites the frozen study
    (it applies to the tasks run from then on; the history says when it changed).
    """
    return {"max_errors": study.max_errors,
            "stop_on_systematic_failure": None if keep_going else study.stop_on_systematic_failure,
            "tasks_per_segment": study.tasks_per_segment, "retain": list(study.retain)}


def runtime_tasks_per_segment(runtime: dict[str, Any], default: int) -> int:
    """Tasks per segment from a study.json ``runtime`` dict; before 0.3 it held ``chunk_size``
    and ``checkpoint_every`` and a worker flushed after the smaller of the two."""
    if runtime.get("tasks_per_segment") is not None:
        return int(runtime["tasks_per_segment"])
    old = [int(runtime[k]) for k in ("chunk_size", "checkpoint_every") if runtime.get(k) is not None]
    return min(old) if old else int(default)


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
        first refuses a directory of another user (:func:`check_trusted`). The study comes
        back marked as read from this directory (``Study.frozen_in``): it *is* the frozen
        study, so :meth:`check_same_study` does not compare its code again.
        """
        if check_trust:
            check_trusted(self.path)
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
        """Pickle the study (with its task layout) durably to ``name`` in the directory."""
        blob = _pickle_study(dataclasses.replace(study, frozen_in=None, layout=study.space.to_layout()))
        tmp = temp_name(self.path / name)
        try:
            with open(tmp, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())  # durable before study.json says the study is ready
            tmp.replace(self.path / name)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _write_failed(exc, self.path) from exc
        return blob

    def freeze(self, study: Study, shard_size: int, shards: list[Shard] | None = None) -> FrozenStudy:
        """Write study.pkl and study.json for a new study (study.json last: it marks 'ready').

        ``shards``: a shard plan made elsewhere (e.g. sized by cost); default ``plan_shards``.
        """
        from .extend import history_entry, metric_code

        self.path.mkdir(parents=True, exist_ok=True)
        self.shards_dir.mkdir(exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        blob = self._write_pkl(study, "study.pkl")
        fsync_path(self.path)
        shards = shards if shards is not None else plan_shards(study.space, shard_size)
        code = code_descriptions(study)
        raw = {
            "format": FORMAT,
            "generation": uuid.uuid4().hex,
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
            "metrics": metric_descriptions(study.metrics),
            "data_grid": study.data_grid.to_dict("list"),
            "fit_grid": study.fit_grid.to_dict("list"),
            "task_grid": None if study.task_grid is None else study.task_grid.to_dict("list"),
            "shard_size": shard_size,
            "shards": [[s.start, s.stop] for s in shards],
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
            retain=list(study.retain), metric_kinds=study.metric_kinds(), metrics=metric_descriptions(study.metrics),
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
