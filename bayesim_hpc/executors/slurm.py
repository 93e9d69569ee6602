"""SlurmExecutor: shards as Slurm array elements, submitted with submitit, watched with sacct/squeue.

How a run goes:

1. **Adopt** (resume safety). One ``squeue --name`` query lists the study's live elements
   (PENDING, RUNNING, REQUEUED...). Every job of a study has the same name,
   ``bayesim-<12 hex>`` (a digest of the resolved result directory and the study
   fingerprint), so this finds jobs of *earlier* drivers too: a driver that left with
   ``detach=True``, one that was killed, and one killed between ``sbatch`` and writing the job
   id into the manifest. A live element is mapped to its shard through the manifest's
   ``submissions`` records or, for a submission whose job id was never recorded, through the
   element's own submitit pickle (``logs/slurm/<job>/<job>_submitted.pkl`` holds its
   arguments, shard id included). Shards with a live element are watched, never resubmitted.
2. **Submit** the other shards: ``split_array`` by the cluster's ``MaxArraySize`` (it caps the
   highest index), one submitit ``map_array`` (one ``sbatch``) per batch, throttled with
   ``%N`` (``workers``). Before each ``sbatch`` a submission record (token, shard list,
   attempts) goes into the manifest; the job id is added right after. Resources come from a
   profile in ``slurm_templates/`` (explicit arguments win).
3. **Watch** (unless ``detach``): at most one scheduler query per ``poll_min_interval``
   seconds in steady state (``slurm_query.Poller``: back-off plus a token bucket), sacct with
   the squeue fallback when the cluster keeps no accounting. Between queries only files are
   read: each element's ``progress.json`` (progress line, and early completion: a shard whose
   tasks are all in segments is done, whatever the scheduler says yet) and new lines of its
   stdout/stderr logs (relayed to ``ctx.emit``, tagged). An element that ended otherwise
   than COMPLETED with tasks missing is resubmitted (a new array for all such shards of one
   poll) while the shard has had fewer than ``max_attempts`` submissions in this run;
   CANCELLED is never resubmitted (a user's ``scancel`` means stop; ``resume`` runs the rest).
   PREEMPTED and NODE_FAIL are resubmitted only after they stayed so for ``settle_s`` and
   squeue does not show the element alive again (with ``--requeue`` Slurm may bring it back
   by itself). When a worker exits with the error-budget code, or the failures reported in
   ``progress.json`` exceed ``max_errors``, the study's remaining elements are cancelled.

Graceful stop and requeue -- what is done and why (checked on the local test cluster):

* The job function (:func:`_run_element`) runs :func:`bayesim_hpc.worker.run_shard` with
  ``handle_signals=True`` and attempt = base attempt + ``SLURM_RESTART_COUNT``. On SIGUSR2,
  SIGTERM or SIGINT the fit in progress is abandoned, finished tasks are flushed, and the
  function decides what happens next:
* **SIGUSR2** (``--signal=USR2@N`` before the time limit, or ``scancel --signal=USR2`` as a
  preemption notice): nobody else will requeue the job, so the element requeues *itself*
  with ``scontrol requeue <array>_<index>`` after flushing (jobs are submitted with
  ``--requeue``). It comes back PENDING, runs again with ``SLURM_RESTART_COUNT`` + 1, skips
  the flushed tasks. It does so while each allocation makes progress (at most
  :data:`MAX_SELF_REQUEUES` times); an allocation that ran nothing requeues only while
  restarts < ``max_attempts``.
* **SIGTERM** (``scontrol requeue``, preemption with requeue, ``scancel``, the time limit
  itself): Slurm has already decided the element's fate, so it only flushes and exits with
  code 3. A requeue/preemption comes back by itself; CANCELLED stays so; TIMEOUT is
  resubmitted by the driver (or left to ``resume``).
* Why not submitit's ``Checkpointable`` requeue: submitit ignores SIGTERM (it only logs
  it), and with ``timeout_min < 50`` it counts every USR2 as a timeout against
  ``max_num_timeout`` -- short test allocations were requeued at once and then gave up. The
  worker's state is already durable (segments), so no checkpoint pickle is needed: the
  requeued element re-runs the same submitted pickle and skips what is done. Our handlers
  replace submitit's for the life of the job function; only a signal in submitit's own
  start-up (< 1 s) reaches submitit's handler, which fails the element (the driver resubmits).
* Exit codes: 0 = done, 3 = stopped after flushing (not requeued), 4 = error budget
  exceeded (not resubmitted). A submitit "success" result pickle is written only for 0.
* A driver killed between ``sbatch`` and the pickle move inside submitit (milliseconds)
  leaves elements that cannot find their pickle; they fail after 60 s and resume resubmits
  their shards. Killed after that (the usual case), the next driver adopts them.

Example:
    >>> run_simulation(config, executor="slurm", workers=64, profile="example-cluster")   # doctest: +SKIP
    >>> run_simulation(config, executor="slurm", time=30, mem=4, detach=True)            # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..manifest import Manifest, scan_progress, set_shard
from ..resultdir import ResultDir
from . import slurm_query as sq
from .base import RunContext, RunOutcome

__all__ = ["SlurmExecutor", "job_name", "load_profile", "MAX_SELF_REQUEUES", "TEMPLATES_DIR"]

EXIT_DONE, EXIT_STOPPED, EXIT_BUDGET = 0, 3, 4  # the worker's exit codes (bayesim_hpc.worker)
MAX_SELF_REQUEUES = 20
TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "slurm_templates"
_PROFILE_KEYS = {"partition", "account", "qos", "time", "mem_gb", "mem", "cpus_per_task", "setup", "additional",
                 "signal_delay_s", "python", "compile_dir"}
_LIVE = {"PENDING", "RUNNING", "REQUEUED", "SUSPENDED"}
_SETTLE_STATES = {"PREEMPTED", "NODE_FAIL"}
_SUBMITIT_LINE = re.compile(r"^submitit (INFO|DEBUG|WARNING|ERROR|CRITICAL) ")


# ----------------------------------------------------------------------------------------- helpers


def job_name(rd: ResultDir) -> str:
    """The one job name of all of a study's jobs: ``bayesim-`` + 12 hex of (path, fingerprint)."""
    fp = rd.read_frozen().fingerprint
    text = str(rd.path.resolve()) + "\0" + json.dumps(fp, sort_keys=True)
    return "bayesim-" + hashlib.sha256(text.encode()).hexdigest()[:12]


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
    """Read a cluster profile (YAML): partition, account, qos, time (minutes), mem_gb,
    cpus_per_task, setup (shell lines), additional (extra sbatch options), and optionally
    signal_delay_s, python, compile_dir. ``None`` -> ``{}``."""
    if profile is None:
        return {}
    path = _find_profile(str(profile))
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - pyyaml is a dependency
        raise ImportError("reading Slurm profiles needs PyYAML: pip install pyyaml") from e
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a profile must be a mapping of keys to values")
    unknown = set(data) - _PROFILE_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown profile key(s) {sorted(unknown)}; known: {sorted(_PROFILE_KEYS)}")
    if data.get("setup") is not None and not isinstance(data["setup"], list):
        raise ValueError(f"{path}: 'setup' must be a list of shell lines")
    if data.get("additional") is not None and not isinstance(data["additional"], dict):
        raise ValueError(f"{path}: 'additional' must be a mapping of sbatch options to values")
    return data


def _minutes(value: Any) -> int:
    """Minutes from 90, "90", "1:30:00", "2-00:00:00", "30:00" (MM:SS)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return max(1, int(np.ceil(value)))
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


def _mem(value: Any) -> str | None:
    """A number is GB (submitit's rendering: 4 -> "4GB", 0.5 -> "512MB"); a string is passed as is."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{int(value)}GB" if value == int(value) else f"{int(value * 1024)}MB"
    text = str(value).strip()
    return f"{text}GB" if re.fullmatch(r"\d+", text) else text


def _element_id(state: sq.JobState) -> str:
    return state.job_id


def _logs_of(folder: Path, element: str) -> list[Path]:
    """stdout and stderr of an element (``folder`` is submitit's ``.../logs/slurm/%j``)."""
    d = folder.parent / element
    return [d / f"{element}_0_log.out", d / f"{element}_0_log.err"]


# ----------------------------------------------------------------------------------------- the job


def _run_element(result_dir: str, shard_id: int, base_attempt: int, retry_failed: bool, max_attempts: int,
                 extra_paths: list[str] | None = None) -> dict:
    """Runs inside an array element (called by submitit): one shard; see the module docstring."""
    from .. import worker

    def early(signum: int, frame: object) -> None:  # until run_shard installs its handlers
        worker._EARLY_STOP.append(signum)

    for sig in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
        signal.signal(sig, early)
    signal.signal(signal.SIGCONT, signal.SIG_DFL)  # submitit only logs it; Slurm sends it with every TERM
    for p in extra_paths or []:  # the driver's import path: the study's own modules
        if p not in sys.path and os.path.isdir(p):
            sys.path.append(p)
    os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    attempt = int(base_attempt) + restarts
    def emit(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    out = worker.run_shard(result_dir, int(shard_id), attempt, bool(retry_failed), emit=emit, handle_signals=True)
    for sig in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)  # from here on nothing may interrupt us
    print(json.dumps({"shard_done": out.shard_id, "exit": out.exit_code, "run": out.n_run, "success": out.n_success,
                      "failed": out.n_failed, "attempt": attempt}), flush=True)
    if out.budget_exceeded:
        raise SystemExit(EXIT_BUDGET)
    if not out.stopped:
        return {"shard": out.shard_id, "attempt": attempt, "run": out.n_run}
    sig = out.stop_signal  # set by run_shard whenever it stopped, also for a signal during start-up
    if sig == "SIGUSR2":
        may = restarts < MAX_SELF_REQUEUES if out.n_run > 0 else restarts + 1 < max_attempts
        array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        me = f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID", "")
        if may and me:
            proc = subprocess.run(["scontrol", "requeue", me], capture_output=True, text=True, timeout=60,
                                  check=False)
            if proc.returncode == 0:
                print(f"[shard {shard_id}] requeued job {me} after flushing (restart {restarts + 1})",
                      file=sys.stderr, flush=True)
            else:
                print(f"[shard {shard_id}] scontrol requeue {me} failed: {(proc.stderr or proc.stdout).strip()}",
                      file=sys.stderr, flush=True)
        elif me:
            print(f"[shard {shard_id}] not requeued ({restarts} restarts, {out.n_run} task(s) run this time)",
                  file=sys.stderr, flush=True)
    raise SystemExit(EXIT_STOPPED)


# ----------------------------------------------------------------------------------------- the driver side


@dataclass
class _Elem:
    """One array element the driver watches (the latest one of its shard)."""

    shard: int
    job_id: str  # "123_4", or "123" for a one-element submission
    array_id: str
    base_attempt: int
    submitted: float  # time.monotonic() when submitted or adopted
    state: str = "PENDING"
    reported: str = ""  # the state last written to the manifest
    missing_queries: int = 0
    lost_since: float | None = None
    done_checked: float = 0.0
    progress_time: float = 0.0  # progress.json's "time" when last read
    requeue_noted: int = 0  # the attempt whose requeue was last reported
    offsets: dict[str, int] = field(default_factory=dict)
    partial: dict[str, str] = field(default_factory=dict)
    closed: bool = False  # its final line ({"shard_done": ...}) was seen in its log


class SlurmExecutor:
    """Shards as Slurm array elements via submitit; see the module docstring.

    Args:
        workers: the array throttle ``%N`` (elements of one array running at once; default 32).
        max_attempts: submissions of a shard per run (first + resubmissions after failures).
        profile: a YAML file name in ``slurm_templates/`` (or a path); the arguments below
            override it.
        partition, account, qos: as in sbatch. time: minutes per element (or "H:MM:SS").
        mem: per element; a number is GB, a string like "500M"/"4G" goes to sbatch as is.
        cpus_per_task: default 1. setup: extra shell lines run before the job (after the profile's).
        detach: submit, record, return at once. dry_run: print the plan and scripts, submit nothing.
        signal_delay_s: ``--signal=USR2@N``: how long before the time limit the worker is told to
            flush and requeue (default 90 s; a tenth of the time, at least 5 s, under 15 minutes).
            It should exceed one fit: a fit inside compiled code sees the signal when it returns.
        poll_min_interval: at most one scheduler query per this many seconds in steady state.
        compile_dir: node-local PyTensor compile cache; ``$SLURM_JOB_ID`` is appended.
        settle_s: how long PREEMPTED/NODE_FAIL must last before resubmitting (default
            ``max(30, 2 * poll_min_interval)``). tick: seconds between file checks (progress, logs).
    """

    name = "slurm"

    def __init__(self, workers: int | None = None, max_attempts: int = 3, *, profile: str | None = None,
                 partition: str | None = None, time: int | str | None = None, mem: float | str | None = None,
                 cpus_per_task: int | None = None, account: str | None = None, qos: str | None = None,
                 setup: list[str] | None = None, detach: bool = False, dry_run: bool = False,
                 signal_delay_s: int | None = None, poll_min_interval: float = 10.0,
                 compile_dir: str | None = None, additional: dict[str, Any] | None = None,
                 settle_s: float | None = None, tick: float = 1.0):
        self.parallelism = int(workers or 32)
        if self.parallelism < 1:
            raise ValueError("workers must be >= 1")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.max_attempts = int(max_attempts)
        prof = load_profile(profile)
        self.profile = profile
        pick = lambda arg, key, default=None: arg if arg is not None else prof.get(key, default)  # noqa: E731
        self.partition = pick(partition, "partition")
        self.account = pick(account, "account")
        self.qos = pick(qos, "qos")
        self.time_min = _minutes(pick(time, "time", 60))
        self.mem = _mem(mem if mem is not None else prof.get("mem", prof.get("mem_gb")))
        self.cpus_per_task = int(pick(cpus_per_task, "cpus_per_task", 1))
        self.setup = list(prof.get("setup") or []) + list(setup or [])
        self.additional = {"requeue": True, **(prof.get("additional") or {}), **(additional or {})}
        self.compile_dir = pick(compile_dir, "compile_dir")
        self.python = prof.get("python")
        delay = pick(signal_delay_s, "signal_delay_s")
        if delay is None:
            # submitit's 90 s; short allocations get a tenth of their time (Slurm sends the
            # signal up to ~30 s earlier than asked: it checks time limits every 30 s)
            delay = 90 if self.time_min >= 15 else max(5, int(self.time_min * 6))
        self.signal_delay_s = int(delay)
        self.detach, self.dry_run = bool(detach), bool(dry_run)
        self.poll_min_interval = float(poll_min_interval)
        self.settle_s = float(settle_s) if settle_s is not None else max(30.0, 2 * self.poll_min_interval)
        self.tick = float(tick)
        self.submissions: list[dict] = []  # what this object submitted (for tests and benchmarks)

    # ----------------------------------------------------------------------------- sbatch parameters
    def sbatch_parameters(self, name: str, n: int) -> dict[str, Any]:
        """submitit's SlurmExecutor parameters for an array of ``n`` elements (native names)."""
        setup = ["export HDF5_USE_FILE_LOCKING=${HDF5_USE_FILE_LOCKING:-FALSE}", "export PYTHONUNBUFFERED=1"]
        setup += list(self.setup)
        if self.compile_dir:
            d = f"{str(self.compile_dir).rstrip('/')}/$SLURM_JOB_ID"
            setup += [f'mkdir -p "{d}"',
                      f'export PYTENSOR_FLAGS="${{PYTENSOR_FLAGS:+$PYTENSOR_FLAGS,}}base_compiledir={d}"']
        params: dict[str, Any] = {
            "job_name": name, "time": self.time_min, "cpus_per_task": self.cpus_per_task,
            "signal_delay_s": self.signal_delay_s, "array_parallelism": min(self.parallelism, max(1, n)),
            "setup": setup, "additional_parameters": dict(self.additional),
        }
        for key, value in (("partition", self.partition), ("account", self.account), ("qos", self.qos),
                           ("mem", self.mem)):
            if value is not None:
                params[key] = value
        return params

    def _folder(self, rd: ResultDir) -> Path:
        return rd.path.resolve() / "logs" / "slurm" / "%j"

    def _python(self) -> str:
        return self.python or shlex.quote(sys.executable)

    def render_script(self, rd: ResultDir, name: str, n: int) -> str:
        """The exact sbatch script submitit writes for an array of ``n`` elements."""
        from submitit.slurm.slurm import _make_sbatch_string

        folder = self._folder(rd)
        command = " ".join([self._python(), "-u -m submitit.core._submit", shlex.quote(str(folder))])
        return _make_sbatch_string(command=command, folder=folder, map_count=n if n > 1 else None,
                                   **self.sbatch_parameters(name, n))

    def _max_array_size(self, dry: bool = False) -> int:
        try:
            return sq.max_array_size()
        except sq.SlurmCommandError:
            if dry:
                return 0  # unknown: the dry run assumes Slurm's default, 1001
            raise

    # ----------------------------------------------------------------------------- submission
    def _submit(self, ctx: RunContext, name: str, shards: list[int], attempts: dict[int, int],
                mas: int) -> list[_Elem]:
        import submitit

        if not shards:
            return []
        folder = self._folder(ctx.rd)
        extra = [p for p in dict.fromkeys([os.getcwd(), *sys.path]) if p and os.path.isdir(p)]
        elems: list[_Elem] = []
        for batch in sq.split_array(shards, mas):
            n = len(batch)
            token = uuid.uuid4().hex[:12]
            rec = {"executor": "slurm", "run_id": ctx.run_id, "token": token, "name": name, "job_id": None,
                   "shards": batch, "attempts": [attempts[s] for s in batch], "time": time.time()}
            ctx.manifest.update(lambda d, r=rec: d.setdefault("submissions", []).append(r))
            ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=0,
                                        python=self.python)  # (requeue is ours, not submitit's)
            ex.update_parameters(**self.sbatch_parameters(name, n))
            try:
                jobs = ex.map_array(_run_element, [str(ctx.rd.path.resolve())] * n, batch,
                                    [attempts[s] for s in batch], [ctx.retry_failed] * n,
                                    [self.max_attempts] * n, [extra] * n)
            except Exception as exc:
                err = str(exc)[:2000]
                ctx.manifest.update(lambda d, t=token, m=err: _sub_update(d, t, error=m))
                raise RuntimeError(f"sbatch failed for shards {batch[0]}..{batch[-1]}: {exc}") from exc
            finally:
                sq.record_submit()
            element_ids = [j.job_id for j in jobs]
            array_id = element_ids[0].split("_")[0]
            self._record_submitted(ctx, token, array_id, element_ids)
            self.submissions.append({"job_id": array_id, "shards": batch})
            now = time.monotonic()
            new = [_Elem(s, e, array_id, attempts[s], now) for s, e in zip(batch, element_ids)]
            ctx.mark_many({el.shard: {"state": "PENDING", "attempts": el.base_attempt, "job_id": el.job_id,
                                      "reason": "", "submitted": time.time()} for el in new})
            elems += new
        return elems

    def _record_submitted(self, ctx: RunContext, token: str, array_id: str, element_ids: list[str]) -> None:
        """Right after sbatch: put the job id into the submission record (the crash test breaks this)."""
        ctx.manifest.update(lambda d: _sub_update(d, token, job_id=array_id, elements=element_ids,
                                                  submitted=time.time()))

    # ----------------------------------------------------------------------------- adoption
    def _adopt(self, ctx: RunContext, name: str, wanted: set[int]) -> list[_Elem]:
        """Live elements of this study (any driver's) for the shards in ``wanted``."""
        subs = [s for s in ctx.manifest.read().get("submissions", []) if s.get("executor") == "slurm"]
        deadline = time.monotonic() + 90.0
        waited = False
        while True:
            try:
                states = sq.query_jobs(name, use_sacct=False)
            except sq.SlurmCommandError as e:
                raise RuntimeError(f"cannot ask Slurm which jobs of {name} are still alive ({e}); refusing to "
                                   "submit what might duplicate them") from e
            live = [s for s in states if s.state in _LIVE]
            # elements that are ending (e.g. cancelled just before this resume) are neither adopted
            # nor resubmitted under them: wait until they are gone
            ending = [s for s in live if s.raw_state.upper() in ("COMPLETING", "CG")]
            if not ending or time.monotonic() > deadline:
                break
            if not waited:
                ctx.emit(f"slurm: waiting for {len(ending)} ending element(s) ({ending[0].job_id}, ...) to finish")
            waited = True
            time.sleep(2.0)
        if not live:
            return []
        by_array = {str(s["job_id"]): s for s in subs if s.get("job_id")}
        unrecorded = [s for s in subs if not s.get("job_id")]
        folder = self._folder(ctx.rd)
        found: dict[int, _Elem] = {}
        now = time.monotonic()
        newly: dict[str, dict] = {}
        for st in live:
            base = st.array_job_id or st.job_id
            idx = st.array_task_id if st.array_task_id is not None else 0
            sub = by_array.get(base)
            shard = attempt = None
            if sub is not None and idx < len(sub["shards"]):
                shard, attempt = int(sub["shards"][idx]), int(sub.get("attempts", [1] * len(sub["shards"]))[idx])
            else:
                args = _pickled_args(folder, st.job_id)
                if args is not None:
                    shard, attempt = int(args[1]), int(args[2])
                    newly.setdefault(base, {"shards": {}, "n": 0})["shards"][idx] = shard
            if shard is None:
                ctx.emit(f"slurm: live job {st.job_id} named {name} is not in the manifest and has no readable "
                         "submitit pickle; leaving it alone")
                continue
            if shard in wanted and (shard not in found or int(base) >= int(found[shard].array_id)):
                found[shard] = _Elem(shard, st.job_id, base, attempt, now, state=st.state)
        # fill in job ids the killed driver could not record (matched by shard list)
        for base, info in newly.items():
            shards_seen = set(info["shards"].values())
            for rec in unrecorded:
                if shards_seen <= set(rec["shards"]):
                    n = len(rec["shards"])
                    elements = [f"{base}_{i}" for i in range(n)] if n > 1 else [base]
                    ctx.manifest.update(lambda d, t=rec.get("token"), b=base, el=elements: _sub_update(
                        d, t, job_id=b, elements=el, adopted=time.time()))
                    unrecorded.remove(rec)
                    break
        if found:
            ids = sorted({e.array_id for e in found.values()})
            ctx.emit(f"slurm: adopting {len(found)} live element(s) of job(s) {', '.join(ids)}; their shards are "
                     "not resubmitted")
            ctx.mark_many({e.shard: {"state": e.state, "job_id": e.job_id, "reason": "adopted from an earlier driver",
                                     "attempts": e.base_attempt} for e in found.values()})
        return list(found.values())

    # ----------------------------------------------------------------------------- run
    def run(self, ctx: RunContext) -> RunOutcome:
        rd = ctx.rd
        name = job_name(rd)
        manifest = ctx.manifest.read()
        attempts = {}
        for sid in ctx.shard_ids:
            entry = manifest.get("shards", {}).get(str(sid), {})
            prog = int(ctx.shard_progress(sid).get("attempt", 0) or 0)
            attempts[sid] = max(int(entry.get("attempts", 0) or 0), prog) + 1
        if self.dry_run:
            return self._dry_run(ctx, name, attempts)
        adopted = self._adopt(ctx, name, set(ctx.shard_ids))
        taken = {e.shard for e in adopted}
        todo = [s for s in ctx.shard_ids if s not in taken]
        mas = self._max_array_size() if todo else 0
        elems = adopted
        if todo:
            new = self._submit(ctx, name, todo, attempts, mas)
            elems = elems + new
            arrays = sorted({e.array_id for e in new}, key=int)
            ctx.emit(f"slurm: {len(todo)} element(s) in {len(arrays)} array(s) (MaxArraySize {mas}, "
                     f"%{self.parallelism}), job name {name}: job(s) {', '.join(arrays)}")
        if self.detach:
            return RunOutcome(detached=True)
        return _Watch(self, ctx, name, elems, mas).loop()

    def _dry_run(self, ctx: RunContext, name: str, attempts: dict[int, int]) -> RunOutcome:
        mas = self._max_array_size(dry=True)
        known = f"MaxArraySize {mas}" if mas else "MaxArraySize unknown (scontrol not reachable), assumed 1001"
        batches = sq.split_array(list(ctx.shard_ids), mas or 1001)
        frozen = ctx.rd.read_frozen().shards
        ctx.emit(f"slurm dry run: {len(ctx.shard_ids)} shard(s) to run in {len(batches)} array(s) "
                 f"({known}, throttle %{self.parallelism}), job name {name}; nothing is submitted")
        for k, batch in enumerate(batches, 1):
            n_tasks = sum(frozen[s].n_tasks for s in batch)
            n = len(batch)
            spec = f"--array=0-{n - 1}%{min(self.parallelism, n)}" if n > 1 else "(a single job, no array)"
            ctx.emit(f"array {k}: {spec} ({n} element(s), {n_tasks} task(s)); index i runs shard batch[i]:")
            for i, s in enumerate(batch):
                ctx.emit(f"  [{i}] shard {s}: tasks {frozen[s].start}..{frozen[s].stop - 1} "
                         f"({frozen[s].n_tasks}), attempt {attempts[s]}")
            ctx.emit(f"--- sbatch script of array {k} (submitit) ---")
            for line in self.render_script(ctx.rd, name, len(batch)).splitlines():
                ctx.emit(line)
            ctx.emit("--- end ---")
        return RunOutcome(detached=True, dry_run=True)

    # ----------------------------------------------------------------------------- status / cancel
    def live_states(self, rd: ResultDir | str | Path) -> dict[int, dict]:
        """shard -> {"state", "reason", "job_id"} of each shard's latest element, in one scheduler query."""
        rd = rd if isinstance(rd, ResultDir) else ResultDir(rd)
        subs = [s for s in Manifest(rd).read().get("submissions", []) if s.get("executor") == "slurm" and s.get("job_id")]
        if not subs:
            return {}
        states = sq.query_jobs(job_name(rd), job_ids=sorted({str(s["job_id"]) for s in subs}, key=int))
        by_id = {s.job_id: s for s in states}
        out: dict[int, dict] = {}
        for sub in sorted(subs, key=lambda s: int(s["job_id"])):
            n = len(sub["shards"])
            for i, shard in enumerate(sub["shards"]):
                eid = f"{sub['job_id']}_{i}" if n > 1 else str(sub["job_id"])
                st = by_id.get(eid) or by_id.get(f"{sub['job_id']}_{i}")
                if st is not None:
                    out[int(shard)] = {"state": st.state, "reason": _reason(st), "job_id": eid}
        return out

    def cancel(self, rd: ResultDir | str | Path) -> list[str]:
        """Cancel every job of the study (recorded or not); returns the job ids scancel was given."""
        rd = rd if isinstance(rd, ResultDir) else ResultDir(rd)
        name = job_name(rd)
        ids = {str(s["job_id"]) for s in Manifest(rd).read().get("submissions", [])
               if s.get("executor") == "slurm" and s.get("job_id")}
        try:
            live = [s for s in sq.query_jobs(name, use_sacct=False) if s.state in _LIVE]
        except sq.SlurmCommandError:
            live = []
        ids |= {s.array_job_id or s.job_id for s in live}
        if not ids:
            return []
        ordered = sorted(ids, key=int)
        sq.cancel_jobs(ordered)
        shards = self._shards_of(rd, live)
        if shards:
            Manifest(rd).update(lambda d: [set_shard(d, s, state="CANCELLED", reason="cancelled by bayesim-hpc cancel")
                                           for s in shards])
        return ordered

    def _shards_of(self, rd: ResultDir, states: list[sq.JobState]) -> list[int]:
        subs = {str(s["job_id"]): s for s in Manifest(rd).read().get("submissions", []) if s.get("job_id")}
        out = []
        for st in states:
            sub = subs.get(st.array_job_id or st.job_id)
            idx = st.array_task_id or 0
            if sub and idx < len(sub["shards"]):
                out.append(int(sub["shards"][idx]))
        return out


def _sub_update(d: dict, token: str | None, **fields: Any) -> None:
    for rec in d.get("submissions", []):
        if rec.get("token") == token:
            rec.update(fields)
            return


def _pickled_args(folder: Path, element: str) -> tuple | None:
    """The arguments of an element's job function, from its submitit pickle (None if unreadable)."""
    try:
        from submitit.core.utils import DelayedSubmission, JobPaths

        path = JobPaths(folder, job_id=element).submitted_pickle
        delayed = DelayedSubmission.load(path)
        if getattr(delayed.function, "__name__", "") != _run_element.__name__:
            return None
        return tuple(delayed.args)
    except Exception:
        return None


def _reason(st: sq.JobState) -> str:
    """A readable reason for a job state: ``"timeout (exit code 0, signal SIGTERM); job 12_3"``."""
    what = (st.raw_state or st.state).lower().replace("_", " ")
    extra = []
    if st.exit_code:
        extra.append(f"exit code {st.exit_code}")
    if st.signal:
        try:
            extra.append(f"signal {signal.Signals(st.signal).name}")
        except ValueError:
            extra.append(f"signal {st.signal}")
    if st.reason:
        extra.append(st.reason)
    return what + (f" ({', '.join(extra)})" if extra else "") + f"; job {st.job_id}"


# ----------------------------------------------------------------------------------------- watching


class _Watch:
    """The monitoring loop of one run."""

    def __init__(self, ex: SlurmExecutor, ctx: RunContext, name: str, elems: list[_Elem], mas: int):
        self.ex, self.ctx, self.name, self.mas = ex, ctx, name, mas
        self.active: dict[int, _Elem] = {e.shard: e for e in elems}
        self.submits: dict[int, int] = {e.shard: 1 for e in elems}
        self.out = RunOutcome()
        self.folder = ex._folder(ctx.rd)
        self.frozen = ctx.rd.read_frozen()
        self.ran: dict[int, dict[int, tuple[int, int]]] = {}  # shard -> attempt -> (n_run, n_failed)
        self.done_base = ctx.progress.done
        self.poller = sq.Poller(initial_delay=min(2.0, max(0.5, ex.poll_min_interval)),
                                max_delay=max(10.0, 3 * ex.poll_min_interval), min_interval=ex.poll_min_interval)
        self.query_errors = 0
        self.finished: list[_Elem] = []  # ended elements whose logs are drained once more
        self.done_elems: list[_Elem] = []  # elements of completed shards (their last lines come late)

    # -- helpers
    def shard_missing(self, sid: int) -> int:
        idx = self.ctx.study.space.shard_indices(self.frozen.shards[sid])
        prog = scan_progress(self.ctx.rd, self.frozen.n_tasks, sid)
        st = prog.state[idx]
        return int(np.count_nonzero(st == 0))

    def attempt_seen(self, e: _Elem) -> int:
        pr = self.ctx.shard_progress(e.shard)
        return max(e.base_attempt, int(pr.get("attempt", 0) or 0))

    # -- files
    def read_progress(self, changes: dict[int, dict]) -> None:
        now = time.monotonic()
        for sid, e in list(self.active.items()):
            if e.state == "PENDING" and e.reported == "PENDING":
                continue  # the scheduler says it waits (files are read once it says RUNNING)
            pr = self.ctx.shard_progress(sid)
            att = int(pr.get("attempt", 0) or 0)
            if att < e.base_attempt:
                continue
            self.ran.setdefault(sid, {})[att] = (int(pr.get("n_run", 0)), int(pr.get("n_failed", 0)))
            fresh = float(pr.get("time", 0) or 0) > e.progress_time
            e.progress_time = max(e.progress_time, float(pr.get("time", 0) or 0))
            if fresh and e.state in ("PENDING", "REQUEUED") and e.progress_time > 0:
                # running before the scheduler says so (we poll it seldom)
                e.state = e.reported = "RUNNING"
                changes.setdefault(sid, {}).update(state="RUNNING", attempts=att, reason="", started=pr.get("time"))
            n_tasks = int(pr.get("n_tasks", 0) or 0)
            through = int(pr.get("n_run", 0)) + int(pr.get("n_skipped", 0))
            if n_tasks and through >= n_tasks and now - e.done_checked >= 2.0:
                e.done_checked = now
                if self.shard_missing(sid) == 0:
                    self.finish_done(e, changes, att, "")

    def relay_logs(self, elems: list[_Elem]) -> bool:
        """New complete lines of the elements' logs -> ctx.emit. Returns True if one looks like trouble."""
        trouble = False
        for e in elems:
            for path in _logs_of(self.folder, e.job_id):
                key = str(path)
                try:
                    with open(path, "rb") as fh:
                        fh.seek(e.offsets.get(key, 0))
                        data = fh.read(1 << 20)
                except OSError:
                    continue
                if not data:
                    continue
                e.offsets[key] = e.offsets.get(key, 0) + len(data)
                text = e.partial.get(key, "") + data.decode("utf-8", "replace")
                lines = text.split("\n")
                e.partial[key] = lines.pop()
                for line in lines:
                    line = line.rstrip("\r")
                    if line.startswith('{"shard_done"'):
                        e.closed = True
                        continue
                    if not line.strip():
                        continue
                    m = _SUBMITIT_LINE.match(line)
                    if m and m.group(1) in ("INFO", "DEBUG"):
                        continue
                    if "received SIG" in line or "srun: error" in line or "Traceback" in line or "Killed" in line:
                        trouble = True
                    self.ctx.emit(line if line.startswith("[") else f"[shard {e.shard} job {e.job_id}] {line}")
        return trouble

    # -- state changes
    def finish_done(self, e: _Elem, changes: dict[int, dict], attempt: int, note: str) -> None:
        self.active.pop(e.shard, None)
        self.finished.append(e)
        self.done_elems.append(e)
        self.out.completed.append(e.shard)
        changes[e.shard] = {"state": "COMPLETED", "reason": note, "attempts": attempt, "ended": time.time()}

    def apply(self, states: list[sq.JobState], changes: dict[int, dict], resubmit: list[int]) -> None:
        by_id = {_element_id(s): s for s in states}
        arrays: dict[str, list[sq.JobState]] = {}
        for s in states:
            arrays.setdefault(s.array_job_id or s.job_id, []).append(s)
        now = time.monotonic()
        for sid, e in list(self.active.items()):
            st = by_id.get(e.job_id)
            if st is None:
                e.missing_queries += 1
                others = arrays.get(e.array_id, [])
                if e.missing_queries >= 3 and now - e.submitted >= 30 and all(o.terminal for o in others):
                    if self.shard_missing(sid) == 0:
                        self.finish_done(e, changes, self.attempt_seen(e), "all tasks flushed; job gone from the scheduler")
                        continue
                    why = (f"job {e.job_id} vanished from the scheduler (cancelled while pending, or ended longer "
                           "ago than squeue remembers)")
                    self.lost(e, "CANCELLED", why, changes, resubmit, exit_code=None)
                continue
            e.missing_queries = 0
            if not st.terminal:
                e.lost_since = None
                if st.state != e.state or e.reported != st.state:
                    e.state = st.state
                    reason = "" if st.state == "RUNNING" else _reason(st)
                    if e.reported != st.state:
                        changes.setdefault(sid, {}).update(state=st.state, reason=reason)
                        e.reported = st.state
                        att = self.attempt_seen(e)
                        if (st.state == "REQUEUED" or (st.state == "PENDING" and st.reason == "BeginTime")) \
                                and e.requeue_noted != att:
                            e.requeue_noted = att
                            self.ctx.emit(f"[shard {sid}] job {e.job_id} requeued after attempt {att}; it runs "
                                          "again in place and skips the flushed tasks")
                continue
            e.state = st.state
            if self.shard_missing(sid) == 0:
                note = "" if st.state == "COMPLETED" else f"all tasks flushed before the job ended {st.state}"
                self.finish_done(e, changes, self.attempt_seen(e), note)
                continue
            if st.state == "COMPLETED":
                self.lost(e, "FAILED", f"job {e.job_id} completed but tasks are missing", changes, resubmit, 0)
                continue
            if st.state in _SETTLE_STATES:
                if e.lost_since is None:
                    e.lost_since = now
                    self.poller.reset()
                    continue
                if now - e.lost_since < self.ex.settle_s:
                    continue
                again = self.still_alive(e)
                if again is not None:  # Slurm requeued it by itself; accounting had not caught up
                    e.state, e.lost_since = again.state, None
                    continue
            self.lost(e, st.state, _reason(st), changes, resubmit, st.exit_code)

    def still_alive(self, e: _Elem) -> sq.JobState | None:
        """squeue's view of one element (for PREEMPTED/NODE_FAIL: did Slurm requeue it itself?)."""
        try:
            for st in sq.query_jobs(self.name, job_ids=[e.array_id], use_sacct=False):
                if st.job_id == e.job_id and st.state in _LIVE:
                    return st
        except sq.SlurmCommandError:
            pass
        return None

    def lost(self, e: _Elem, state: str, reason: str, changes: dict[int, dict], resubmit: list[int],
             exit_code: int | None) -> None:
        sid = e.shard
        self.active.pop(sid, None)
        self.finished.append(e)
        attempt = self.attempt_seen(e)
        entry = {"state": state, "reason": reason, "attempts": attempt, "ended": time.time()}
        if exit_code is not None:
            entry["exit_code"] = exit_code
        if exit_code == EXIT_BUDGET:
            self.out.budget_exceeded = True
            entry["reason"] = f"error budget exceeded ({reason})"
            self.out.unfinished[sid] = entry["reason"]
            self.ctx.emit(f"[shard {sid}] {entry['reason']}; stopping")
        elif state == "CANCELLED":
            self.out.unfinished[sid] = reason
            self.ctx.emit(f"[shard {sid}] {reason}: not resubmitted (resume will run its missing tasks)")
        elif self.submits.get(sid, 1) < self.ex.max_attempts and not self.out.budget_exceeded:
            resubmit.append(sid)
            entry["state"] = state
            self.ctx.emit(f"[shard {sid}] {reason}; resubmitting (submission {self.submits.get(sid, 1) + 1} "
                          f"of {self.ex.max_attempts})")
        else:
            self.out.unfinished[sid] = reason
            self.ctx.emit(f"[shard {sid}] {reason}; not resubmitted after {self.submits.get(sid, 1)} submission(s) "
                          "(resume will run its missing tasks)")
        changes[sid] = entry

    def resubmit(self, shards: list[int], changes: dict[int, dict]) -> None:
        if changes:
            self.ctx.mark_many(changes)
            changes.clear()
        man = self.ctx.manifest.read().get("shards", {})
        attempts = {}
        for sid in shards:
            seen = max(int(man.get(str(sid), {}).get("attempts", 0) or 0),
                       int(self.ctx.shard_progress(sid).get("attempt", 0) or 0))
            attempts[sid] = seen + 1
        if not self.mas:
            self.mas = self.ex._max_array_size()
        for e in self.ex._submit(self.ctx, self.name, shards, attempts, self.mas):
            self.active[e.shard] = e
            self.submits[e.shard] = self.submits.get(e.shard, 1) + 1
        self.poller.reset()

    def progress(self) -> int:
        done = failed = 0
        for per in self.ran.values():
            for n_run, n_failed in per.values():
                done += n_run
                failed += n_failed
        self.ctx.progress.update(self.done_base + done, self.ctx.failed_before + failed)
        return failed

    def budget_check(self, failed: int) -> None:
        max_errors = self.ctx.study.max_errors
        if max_errors is not None and self.ctx.failed_before + failed > max_errors:
            self.out.budget_exceeded = True
        if self.out.budget_exceeded and self.active:
            ids = sorted({e.array_id for e in self.active.values()}, key=int)
            self.ctx.emit(f"slurm: more than max_errors={max_errors} tasks failed; cancelling the rest of "
                          f"job(s) {', '.join(ids)}")
            sq.cancel_jobs([e.job_id for e in self.active.values()])
            self.ctx.mark_many({sid: {"state": "CANCELLED", "reason": "cancelled: error budget exceeded"}
                                for sid in self.active})
            for sid in self.active:
                self.out.unfinished[sid] = "cancelled: error budget exceeded"
            self.finished += list(self.active.values())
            self.active.clear()

    # -- the loop
    def loop(self) -> RunOutcome:
        ctx = self.ctx
        try:
            while self.active:
                changes: dict[int, dict] = {}
                resubmit: list[int] = []
                if self.poller.remaining() <= 0:
                    ids = sorted({e.array_id for e in self.active.values()}, key=int)
                    try:
                        states = sq.query_jobs(self.name, job_ids=ids)
                        self.query_errors = 0
                    except sq.SlurmCommandError as exc:
                        self.query_errors += 1
                        if self.query_errors >= 10:
                            raise
                        ctx.emit(f"slurm: scheduler query failed ({exc}); trying again")
                        self.poller.record(False)
                        states = None
                    if states is not None:
                        self.poller.observe(states)
                        self.apply(states, changes, resubmit)
                self.read_progress(changes)
                running = [e for e in self.active.values() if e.reported != "PENDING"]
                trouble = self.relay_logs(running + self.finished)
                self.finished = []
                if trouble:
                    self.poller.reset()
                if resubmit:
                    self.resubmit(resubmit, changes)
                if changes:
                    ctx.mark_many(changes)
                self.budget_check(self.progress())
                if self.active:
                    time.sleep(min(self.ex.tick, max(0.05, self.poller.remaining())))
        except KeyboardInterrupt:
            ctx.emit(f"slurm: driver interrupted; the jobs keep running. Re-attach with `bayesim-hpc resume "
                     f"{ctx.rd.path}`, stop them with `bayesim-hpc cancel {ctx.rd.path}`")
            raise
        # the last lines of elements that completed while we watched are often written after the
        # segments: wait a moment for each one's final line
        deadline = time.monotonic() + 3.0
        while True:
            self.relay_logs(self.finished + self.done_elems)
            self.finished = []
            if all(e.closed for e in self.done_elems) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.out.n_failed_tasks = sum(f for per in self.ran.values() for _, f in per.values())
        return self.out
