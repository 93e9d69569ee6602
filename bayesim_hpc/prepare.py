"""The result directory before a run: freeze a new study, or check (and extend) a frozen one;
refuse ``force`` while old work still writes into it; list the shards with missing tasks.

:func:`prepare_result_dir` is what ``run_simulation`` does first (the driver lock is held);
``run --force`` on a changed study first asks :func:`live_work` whether any worker or Slurm
job of the old study may still write.

Example:
    >>> is_new, study = prepare_result_dir(study, ResultDir("results/s"), "auto", False, 100)  # doctest: +SKIP
    >>> shard_ids, progress = missing_shards(ResultDir("results/s"), study, retry_failed=False)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import Study
from .errors import BayesimError, ConfigError, StudyChangedError
from .manifest import Manifest, scan_progress
from .records import TaskState
from .resultdir import ResultDir

__all__ = ["prepare_result_dir", "missing_shards", "live_work", "size_warnings"]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _works_on(pid: int, rd: ResultDir) -> bool:
    """Whether process ``pid`` (of this host) is a bayesim-hpc worker of this result directory."""
    import psutil

    try:
        proc = psutil.Process(pid)
        cmd, cwd = proc.cmdline(), proc.cwd()
    except (psutil.Error, ValueError, OSError):
        return False
    if any("submitit" in c for c in cmd):  # a Slurm element on this node: its shard folder says whose it is
        return True
    if "bayesim_hpc.worker" not in cmd:
        return False
    target = rd.path.resolve()
    return any(Path(cwd, a).resolve() == target for a in cmd[cmd.index("bayesim_hpc.worker") + 1:] if a
               and not a.startswith("-"))


def live_work(rd: ResultDir) -> list[str]:
    """Workers or jobs of this result directory that may still write into it (descriptions)."""
    out: list[str] = []
    me = socket.gethostname()
    if rd.shards_dir.is_dir():
        for pf in sorted(rd.shards_dir.glob("s*/progress.json")):
            try:
                pr = json.loads(pf.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            pid, host = int(pr.get("pid", 0) or 0), pr.get("host")
            if host == me:
                if _works_on(pid, rd):
                    out.append(f"worker pid {pid} ({pf.parent.name})")
            elif host and time.time() - float(pr.get("time", 0)) < 600:
                out.append(f"worker pid {pid} on host {host} ({pf.parent.name}, active in the last 10 minutes)")
    runs = Manifest(rd).read().get("runs", [])
    if runs and runs[-1].get("executor") == "slurm":
        try:
            from .executors.slurm import SlurmExecutor

            for sid, st in sorted(SlurmExecutor().live_states(rd).items()):
                if st.get("state") in ("PENDING", "RUNNING", "REQUEUED", "SUSPENDED", "CONFIGURING", "COMPLETING"):
                    out.append(f"Slurm job {st.get('job_id')} (shard {sid}, {st.get('state')})")
        except Exception as exc:  # the scheduler may be gone; the generation stamp still protects results
            _stderr(f"warning: could not ask Slurm whether old jobs of {rd.path} still run ({exc})")
    return out


#: sizes beyond which a study is probably a mistake (a grid expanded by accident)
MAX_SENSIBLE_CELLS = 100_000
MAX_SENSIBLE_TASKS = 20_000_000


def size_warnings(study: Study) -> list[str]:
    """Warnings for absurdly large studies (every cell is listed in study.json and status)."""
    n_cells = len(study.space.cells)
    out = []
    if n_cells > MAX_SENSIBLE_CELLS:
        out.append(f"warning: {n_cells:,} cells ({len(study.data_grid):,} data x {len(study.fit_grid):,} fit "
                   f"configurations): study.json stores both grids and status lists every cell. Did a dict of "
                   f"lists expand into all combinations by accident? Pass a DataFrame of the rows you mean.")
    if study.n_tasks > MAX_SENSIBLE_TASKS:
        out.append(f"warning: {study.n_tasks:,} tasks; the reducer keeps ~40 bytes per task in memory and the "
                   "summary holds one row per task. Consider fewer replicates per cell.")
    return out


def prepare_result_dir(study: Study, rd: ResultDir, resume: str, force: bool, shard_size: int,
                       emit: Callable[[str], None] | None = None,
                       shards_for: Callable[[], Any] | None = None) -> tuple[bool, Study]:
    """Freeze a new study, or check an existing one and freeze what it adds (an extension).

    Returns (whether the directory was new, the study to run: the frozen one, as extended).
    ``shards_for()``: the executor's own shard plan for a new study (None: by ``shard_size``).
    """
    emit = emit or _stderr
    if resume not in ("auto", "never", "must"):
        raise ConfigError("resume", resume, "is not a resume mode", "use 'auto', 'never' or 'must'")
    if rd.exists():
        if force:
            try:
                grown = _extend_or_check(study, rd, shard_size, emit)
                emit("force: the study is unchanged (or only grew), so its results are kept; running only what "
                     "is missing")
                return False, grown
            except StudyChangedError:
                pass
            busy = live_work(rd)
            if busy:
                raise BayesimError(
                    f"force: {rd.path} still has live work of the old study: {'; '.join(busy[:5])}. Its results "
                    f"would mix with the new study's. Stop it first (bayesim-hpc cancel {rd.path}), then run again.")
            moved = rd.discard_results()
            emit(f"force: previous results moved to {moved}; starting the study afresh")
        elif resume == "never":
            raise BayesimError(
                f"{rd.path} already holds results. Use resume='auto' to finish them, a new result_path, "
                "or force=True to move them aside and start again."
            )
        else:
            return False, _extend_or_check(study, rd, shard_size, emit)
    elif resume == "must":
        raise BayesimError(f"nothing to resume: {rd.path} holds no study (no study.json)")
    rd.freeze(study, shard_size, shards_for() if shards_for is not None else None)
    return True, study


def _extend_or_check(study: Study, rd: ResultDir, shard_size: int, emit: Callable[[str], None]) -> Study:
    """The frozen study, grown by what ``study`` adds; refuses a changed study (:mod:`.extend`)."""
    from .extend import plan_extension

    frozen = rd.read_frozen()
    if study.frozen_in is not None and study.frozen_in == str(rd.path.resolve()):
        return study  # read back from this directory: it is the frozen study
    if frozen.raw.get("code") is None:  # made by bayesim-hpc 0.1: no extension, only the old comparison
        rd.check_same_study(study)
        return study
    loaded = rd.load_study()
    ext = plan_extension(frozen.raw, loaded, study, str(rd.path))
    if ext.empty:
        return dataclasses.replace(ext.study, result_path=study.result_path)
    rd.apply_extension(ext, shard_size)
    emit(f"bayesim-hpc: the study grew: {'; '.join(ext.what)}")
    return dataclasses.replace(ext.study, result_path=study.result_path)


def missing_shards(rd: ResultDir, study: Study, retry_failed: bool) -> tuple[list[int], Any]:
    """Shards that have tasks without a row (or, with ``retry_failed``, with a failed row)."""
    prog = scan_progress(rd, study.n_tasks)
    out = []
    active = study.space.active_mask()
    for shard in rd.read_frozen().shards:
        idx = study.space.shard_indices(shard)
        st = prog.state[idx[active[idx]]]
        if np.any(st == TaskState.MISSING) or (retry_failed and np.any(st == TaskState.FAILED)):
            out.append(shard.shard_id)
    return out, prog
