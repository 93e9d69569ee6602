"""Talking to Slurm through its command-line tools: array limits, job states, polling, cancelling.

Everything here is plain standard library and does not use submitit, so it can be used (and
tested) on its own. Every function that runs a Slurm command takes ``run``: a callable with the
semantics of :func:`subprocess.run` (it is called as ``run(argv, capture_output=True, text=True,
timeout=..., check=False)`` and must return a :class:`subprocess.CompletedProcess`). Unit tests
pass a fake that returns canned output; the default is :func:`subprocess.run`. Slurm clients find
the cluster through ``SLURM_CONF`` in the environment, as usual.

Facts about Slurm (22.05) this module relies on, checked on a real cluster:

* ``MaxArraySize`` caps the highest array *index*: with ``MaxArraySize=11`` the indices 0..10
  can be used, so an array of at most 11 elements that starts at index 0 (``split_array``).
* ``sacct`` knows finished jobs for as long as the accounting database keeps them, but lags: a
  job that ``squeue`` no longer shows can be missing from ``sacct`` for several seconds. Poll it.
* ``sacct --name`` with a start time (``-S``) omits array elements that have never been eligible:
  the pending remainder of a throttled array (``123_[4-9%2]``), held jobs, and elements cancelled
  before they started. Passing the array job ids (``job_ids=``, i.e. ``sacct -j``) brings those
  back as one range row, which is expanded here. An element cancelled on its own while pending
  (``scancel 123_4``) leaves no record at all, in sacct or squeue; so callers must treat an element
  missing from an array whose other elements are all terminal as lost, not as "still pending".
* Without accounting, ``sacct`` prints "Slurm accounting storage is disabled" and exits 1.
  ``squeue -t all`` then still shows finished jobs, but only for ``MinJobAge`` seconds (default
  300) after they end; after that a finished job is simply gone. With the squeue fallback, a
  job missing from the answer may therefore have finished long ago.
* ``sacct`` prints ``CANCELLED by <uid>``; step rows (``123.batch``, ``123.extern``, ``123.0``)
  are skipped; with ``--duplicates`` a requeued job has a ``REQUEUED`` row followed by its later
  rows (the latest row per element wins).

Scheduler calls are counted (:func:`call_counts`) so benchmarks can report how many were made.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from ..errors import BayesimError
from . import slurm_clusters, slurm_retry

__all__ = [
    "LOST_STATES",
    "STATES",
    "TERMINAL_STATES",
    "AccountingDisabledError",
    "CallCounts",
    "JobState",
    "Poller",
    "Runner",
    "SlurmCommandError",
    "SlurmRejectedError",
    "SlurmUnavailableError",
    "SubmitLimitError",
    "array_spec",
    "call_counts",
    "cancel_jobs",
    "expand_array_indices",
    "is_lost",
    "job_history",
    "is_terminal",
    "max_array_size",
    "normalise_state",
    "parse_exit_code",
    "parse_job_id",
    "parse_sacct",
    "parse_squeue",
    "query_jobs",
    "record_submit",
    "reset_backend_cache",
    "requeue_job",
    "reset_call_counts",
    "run_command",
    "split_array",
]

Runner = Callable[..., "subprocess.CompletedProcess[str]"]
"""A function with :func:`subprocess.run` semantics."""

DEFAULT_TIMEOUT_S = 60.0
SACCT_SINCE = "now-30days"
SACCT_FORMAT = "JobID,State,ExitCode,Reason,JobName"  # JobName last: it may contain the delimiter
SQUEUE_FORMAT = "%i|%T|%r|%j"
_DELIM = "|"

# --------------------------------------------------------------------------------------------- errors


class SlurmCommandError(BayesimError, RuntimeError):
    """A Slurm command could not be run or failed. Keeps the command line and its output.

    ``returncode`` is the command's exit status; ``exit_code`` the command line's (1).
    """

    def __init__(self, message: str, *, cmd: Sequence[str] = (), returncode: int | None = None,
                 stdout: str = "", stderr: str = ""):
        self.cmd, self.returncode, self.stdout, self.stderr = list(cmd), returncode, stdout, stderr
        detail = (stderr or stdout).strip()
        super().__init__(f"{message}: {detail}" if detail else message)


class AccountingDisabledError(SlurmCommandError):
    """``sacct`` says the cluster keeps no accounting (no slurmdbd): use ``squeue`` instead."""


class SlurmRejectedError(SlurmCommandError):
    """Slurm refused the request itself (not a passing outage): retrying cannot help.

    ``option`` is the sbatch option to blame (``--account``), ``value`` what was asked, ``fix``
    what to change. Example message: ``sbatch rejected --qos=gold: this QOS is not allowed for
    your account/partition (Slurm: Invalid qos specification). Fix: set `qos:` ...``.
    """

    def __init__(self, what: str, *, option: str, value: object, problem: str, fix: str,
                 cmd: Sequence[str] = (), returncode: int | None = None, stdout: str = "", stderr: str = ""):
        self.option, self.value, self.problem, self.fix = option, value, problem, fix
        said = ((stderr or stdout).strip().splitlines() or [""])[-1]
        shown = f"{option}={value}" if value not in (None, "") else option
        RuntimeError.__init__(self, f"{what} rejected {shown}: {problem} (Slurm: {said}). Fix: {fix}")
        self.cmd, self.returncode, self.stdout, self.stderr = list(cmd), returncode, stdout, stderr


class SubmitLimitError(SlurmRejectedError):
    """sbatch was refused by a submit limit (``AssocMaxSubmitJobLimit``...): not retried; the
    study's waves submit the rest when there is room."""


class SlurmUnavailableError(SlurmCommandError):
    """A Slurm command kept failing transiently (controller unreachable) past the retry policy."""


# --------------------------------------------------------------------------------------------- states
# (names, array ids, exit codes and the parsers of sacct/squeue output live in slurm_states)
from .slurm_states import (  # noqa: E402,F401  (re-exported: sq.parse_sacct, sq.JobState, ...)
    STATES,
    LOST_STATES,
    TERMINAL_STATES,
    _STATE_ALIASES,
    normalise_state,
    is_terminal,
    is_lost,
    JobState,
    parse_exit_code,
    expand_array_indices,
    _JOB_ID_RE,
    parse_job_id,
    _collect,
    _split_rows,
    _STEP_RE,
    parse_sacct,
    parse_squeue,
)
from .slurm_poller import Poller  # noqa: E402,F401  (re-exported: sq.Poller)

# --------------------------------------------------------------------------------------------- counting


@dataclass
class CallCounts:
    """How many scheduler commands were run, by kind."""

    submit: int = 0
    query: int = 0
    cancel: int = 0
    config: int = 0
    requeue: int = 0
    retries: int = 0  # calls repeated after a transient failure (included in the counts above)

    @property
    def total(self) -> int:
        return self.submit + self.query + self.cancel + self.config + self.requeue


_counts = CallCounts()
_counts_lock = threading.Lock()


def _count(kind: str, n: int = 1) -> None:
    with _counts_lock:
        setattr(_counts, kind, getattr(_counts, kind) + n)


def call_counts() -> CallCounts:
    """A snapshot of the scheduler calls made so far in this process."""
    with _counts_lock:
        return replace(_counts)


def reset_call_counts() -> None:
    """Set all counters back to zero (e.g. at the start of a benchmark)."""
    global _counts
    with _counts_lock:
        _counts = CallCounts()


def record_submit(n: int = 1) -> None:
    """Count ``n`` submissions made elsewhere (e.g. one ``sbatch`` per submitit array)."""
    _count("submit", n)


def _run(kind: str, cmd: list[str], run: Runner, timeout: float | None,
         before_retry: Callable[[], subprocess.CompletedProcess[str] | None] | None = None,
         ) -> subprocess.CompletedProcess[str]:
    """Run one Slurm command, counting it, retrying transient failures (``slurm_retry``).

    The command gets ``--clusters`` when the process has them set (``slurm_clusters``), and the
    ``CLUSTER: name`` lines that adds are taken out of its output. Raises SlurmCommandError if
    it cannot be started, SlurmUnavailableError if it still times out (or fails transiently)
    after the retry policy's cap.
    """
    calls = 0
    cmd = slurm_clusters.with_clusters(cmd)

    def once() -> subprocess.CompletedProcess[str]:
        nonlocal calls
        calls += 1
        _count(kind)
        if calls > 1:
            _count("retries")
        return run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    try:
        proc = slurm_retry.run_retrying(once, what=" ".join(cmd[:2]), before_retry=before_retry)
    except FileNotFoundError as e:
        raise SlurmCommandError(f"{cmd[0]} not found (is Slurm installed and on PATH?)", cmd=cmd) from e
    except subprocess.TimeoutExpired as e:
        raise SlurmUnavailableError(f"{cmd[0]} did not answer within {timeout} s ({calls} call(s))", cmd=cmd) from e
    if proc.returncode != 0 and slurm_retry.classify(f"{proc.stderr}\n{proc.stdout}").kind == "transient":
        raise SlurmUnavailableError(f"{cmd[0]} kept failing ({calls} call(s); see the profile's retry:)", cmd=cmd,
                                    returncode=proc.returncode, stdout=proc.stdout or "", stderr=proc.stderr or "")
    if slurm_clusters.current() and proc.stdout and "CLUSTER:" in proc.stdout:
        proc = subprocess.CompletedProcess(proc.args, proc.returncode, slurm_clusters.strip_headers(proc.stdout),
                                           proc.stderr)
    return proc


def run_command(kind: str, cmd: list[str], *, run: Runner = subprocess.run,
                timeout: float | None = DEFAULT_TIMEOUT_S,
                before_retry: Callable[[], subprocess.CompletedProcess[str] | None] | None = None,
                ) -> subprocess.CompletedProcess[str]:
    """Run one Slurm command counted under ``kind`` (submit/query/cancel/config/requeue).

    Transient failures are retried (``slurm_retry``; ``before_retry()`` may end the retrying
    with a result of its own). Raises :class:`SlurmCommandError` if it cannot be started,
    :class:`SlurmUnavailableError` if it does not answer in time even so; any other non-zero
    exit status is left to the caller.
    """
    return _run(kind, cmd, run, timeout, before_retry)


def _failed(proc: subprocess.CompletedProcess[str], cmd: list[str], what: str) -> SlurmCommandError:
    return SlurmCommandError(f"{what} failed (exit {proc.returncode})", cmd=cmd, returncode=proc.returncode,
                             stdout=proc.stdout or "", stderr=proc.stderr or "")


# --------------------------------------------------------------------------------------------- arrays


def max_array_size(*, run: Runner = subprocess.run, timeout: float | None = DEFAULT_TIMEOUT_S) -> int:
    """The cluster's ``MaxArraySize`` from ``scontrol show config``.

    It caps the highest array *index*: the largest usable index is ``MaxArraySize - 1``, so an
    array indexed from 0 may have at most ``MaxArraySize`` elements.
    """
    cmd = ["scontrol", "show", "config"]
    proc = _run("config", cmd, run, timeout)
    if proc.returncode != 0:
        raise _failed(proc, cmd, "scontrol show config")
    m = re.search(r"^\s*MaxArraySize\s*=\s*(\d+)\s*$", proc.stdout or "", re.MULTILINE)
    if not m:
        raise SlurmCommandError("no MaxArraySize in `scontrol show config`", cmd=cmd, stdout=proc.stdout or "")
    return int(m.group(1))


def split_array(indices: Sequence[int], max_array_size: int) -> list[list[int]]:
    """Split shard ids into batches that can each be submitted as one array indexed 0..len-1.

    Order is kept; every batch but the last has exactly ``max_array_size`` elements (30 shards
    with MaxArraySize 11 -> 11, 11, 8). Array index ``i`` of a batch runs shard ``batch[i]``.
    """
    if isinstance(max_array_size, bool) or not isinstance(max_array_size, int) or max_array_size < 1:
        raise ValueError(f"max_array_size must be an integer >= 1, got {max_array_size!r}")
    items = list(indices)
    if len(set(items)) != len(items):
        raise ValueError("shard ids must be unique")
    return [items[i:i + max_array_size] for i in range(0, len(items), max_array_size)]


def array_spec(n: int, throttle: int | None = None) -> str:
    """The ``--array`` value for ``n`` elements indexed from 0: ``array_spec(30, 4) == "0-29%4"``.

    ``throttle`` (at most that many elements run at once) is left out when it is None or not
    smaller than ``n``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"an array needs at least 1 element, got {n!r}")
    if throttle is not None and (isinstance(throttle, bool) or not isinstance(throttle, int) or throttle < 1):
        raise ValueError(f"throttle must be None or an integer >= 1, got {throttle!r}")
    spec = "0" if n == 1 else f"0-{n - 1}"
    if throttle is not None and throttle < n:
        spec += f"%{throttle}"
    return spec


# --------------------------------------------------------------------------------------------- queries

# Which query tool works, per cluster configuration: {(SLURM_CONF, its mtime): sacct works?}.
# Keyed on the config file's mtime so that a cluster reconfigured (accounting turned on/off)
# is probed again.
_backend_cache: dict[tuple[str, int], bool] = {}
_ACCOUNTING_DISABLED = re.compile(r"accounting storage is disabled", re.IGNORECASE)


def _config_key() -> tuple[str, int]:
    conf = os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")
    try:
        return conf, os.stat(conf).st_mtime_ns
    except OSError:
        return conf, 0


def reset_backend_cache() -> None:
    """Forget which query tool (sacct or squeue) worked."""
    _backend_cache.clear()


def _check_name(name: str) -> None:
    if not name or "," in name or _DELIM in name or name != name.strip():
        raise ValueError(f"job name must be non-empty, without ',' or '|' or surrounding blanks: {name!r}")


def _query_sacct(name: str, job_ids: Sequence[str] | None, since: str, run: Runner,
                 timeout: float | None) -> list[JobState]:
    # no -X: the step rows tell an out-of-memory step (see parse_sacct)
    cmd = ["sacct", "--name", name, "-P", "-n", "-S", since, "--format", SACCT_FORMAT]
    if job_ids:
        cmd += ["-j", ",".join(job_ids)]
    proc = _run("query", cmd, run, timeout)
    if proc.returncode != 0:
        text = f"{proc.stderr or ''}\n{proc.stdout or ''}"
        err = AccountingDisabledError if _ACCOUNTING_DISABLED.search(text) else SlurmCommandError
        raise err(f"sacct failed (exit {proc.returncode})", cmd=cmd, returncode=proc.returncode,
                  stdout=proc.stdout or "", stderr=proc.stderr or "")
    return parse_sacct(proc.stdout or "")


def _query_squeue(name: str, job_ids: Sequence[str] | None, run: Runner, timeout: float | None) -> list[JobState]:
    # -t all: also jobs that ended less than MinJobAge ago; -r: one line per array element.
    # No -j: squeue rejects the whole call if one id has already been purged.
    cmd = ["squeue", "--name", name, "-h", "-r", "-t", "all", "-o", SQUEUE_FORMAT]
    proc = _run("query", cmd, run, timeout)
    if proc.returncode != 0:
        raise _failed(proc, cmd, "squeue")
    states = parse_squeue(proc.stdout or "")
    if job_ids:
        wanted = {str(j) for j in job_ids}
        states = [s for s in states if s.job_id in wanted or s.array_job_id in wanted]
    return states


def query_jobs(name: str, *, job_ids: Iterable[str | int] | None = None, use_sacct: bool | None = None,
               since: str = SACCT_SINCE, run: Runner = subprocess.run,
               timeout: float | None = DEFAULT_TIMEOUT_S) -> list[JobState]:
    """All jobs (one entry per array element) with job name ``name``, in one scheduler call.

    ``use_sacct=None`` (default) asks ``sacct`` (``sacct --name NAME -P -n -S since``) and falls
    back to ``squeue --name NAME -h -r -t all`` when sacct fails; when it failed because the
    cluster has no accounting, squeue is used directly from then on (until the cluster's
    ``SLURM_CONF`` file changes). ``True`` forces sacct (raising :class:`AccountingDisabledError`
    if there is none), ``False`` forces squeue.

    ``job_ids``: the (array) job ids you submitted under this name. With sacct they are passed as
    ``-j``, which is the only way sacct reports array elements that have not been eligible yet
    (the pending part of a throttled array, held jobs) or were cancelled before they started.
    With squeue the answer is filtered to them.

    Caveats: sacct lags a few seconds behind the scheduler; squeue forgets a finished job
    ``MinJobAge`` seconds (300 by default) after it ended, so with the fallback a missing job
    may have finished long ago. Entries are ordered by job id and array index.
    """
    _check_name(name)
    ids = [str(j) for j in job_ids] if job_ids is not None else None
    if use_sacct is False:
        return _query_squeue(name, ids, run, timeout)
    if use_sacct is True:
        return _query_sacct(name, ids, since, run, timeout)
    key = _config_key()
    if _backend_cache.get(key) is False:
        return _query_squeue(name, ids, run, timeout)
    try:
        states = _query_sacct(name, ids, since, run, timeout)
    except AccountingDisabledError:
        _backend_cache[key] = False
        return _query_squeue(name, ids, run, timeout)
    except SlurmCommandError:
        # e.g. slurmdbd briefly unreachable, or no sacct binary: answer from squeue this time
        return _query_squeue(name, ids, run, timeout)
    _backend_cache[key] = True
    return states


def job_history(job_ids: Iterable[str | int], *, run: Runner = subprocess.run,
                timeout: float | None = DEFAULT_TIMEOUT_S) -> dict[str, list[tuple[str, str]]]:
    """Every run of each job, oldest first: ``{"123_4": [("NODE_FAIL", "n1"), ("RUNNING", "n2")]}``.

    ``sacct -D`` keeps the records of runs that Slurm requeued by itself (NODE_FAIL, PREEMPTED)
    or was told to requeue (REQUEUED). Empty where there is no accounting.
    """
    ids = [str(j) for j in job_ids]
    if not ids:
        return {}
    cmd = ["sacct", "-D", "-X", "-n", "-P", "-j", ",".join(ids), "--format", "JobID,State,NodeList"]
    proc = _run("query", cmd, run, timeout)
    out: dict[str, list[tuple[str, str]]] = {}
    if proc.returncode != 0:
        return out
    for jid, state, nodes in _split_rows(proc.stdout or "", 3):
        out.setdefault(jid.strip(), []).append((normalise_state(state), nodes.strip()))
    return out


# --------------------------------------------------------------------------------------------- cancel

_HARMLESS_SCANCEL = re.compile(r"already completing or completed|invalid job id specified", re.IGNORECASE)


def cancel_jobs(job_ids: Iterable[str | int], *, signal: str | None = None, run: Runner = subprocess.run,
                timeout: float | None = DEFAULT_TIMEOUT_S, chunk: int = 500) -> int:
    """Cancel jobs or array elements (``"123"``, ``"123_4"``) with ``scancel``; returns the calls made.

    One call per ``chunk`` ids (one call for any usual number). ``signal`` (e.g. ``"USR2"``)
    sends that signal instead of cancelling. Ids that have already ended are not an error.
    """
    ids = [str(j) for j in job_ids]
    calls = 0
    for i in range(0, len(ids), max(1, chunk)):
        cmd = ["scancel", *([f"--signal={signal}"] if signal else []), *ids[i:i + max(1, chunk)]]
        proc = _run("cancel", cmd, run, timeout)
        calls += 1
        if proc.returncode != 0:
            errors = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
            if not errors or not all(_HARMLESS_SCANCEL.search(ln) for ln in errors):
                raise _failed(proc, cmd, "scancel")
    return calls


def requeue_job(job_id: str | int, *, run: Runner = subprocess.run, timeout: float | None = DEFAULT_TIMEOUT_S) -> None:
    """``scontrol requeue JOB`` (e.g. ``"123_4"``, an element requeueing itself). Raises on failure."""
    cmd = ["scontrol", "requeue", str(job_id)]
    proc = _run("requeue", cmd, run, timeout)
    if proc.returncode != 0:
        raise _failed(proc, cmd, "scontrol requeue")


# --------------------------------------------------------------------------------------------- polling
