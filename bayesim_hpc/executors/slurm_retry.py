"""Transient and permanent Slurm errors: which is which, and retrying the transient ones.

A busy or restarting ``slurmctld`` makes any Slurm command fail for a while ("Socket timed
out on send/recv operation", "Unable to contact slurm controller (connect failure)",
"slurm_load_jobs error: ..."). Such a failure says nothing about the request: the same call
works a minute later. Other failures are the request's fault (an account the user has no
association with, a partition that does not exist, a QOS not allowed) and fail again however
often they are tried.

* :func:`classify` reads a command's output and says ``"transient"``, ``"permanent"`` (with the
  sbatch option to blame and the fix) or ``None`` (an ordinary failure the caller handles).
* :class:`RetryPolicy` is how long to keep trying: jittered exponential back-off, at most
  ``attempts`` calls and ``max_wait_s`` seconds of waiting in all. Profile key ``retry``.
* :func:`run_retrying` runs one command under a policy. ``slurm_query.run_command`` uses it, so
  every ``squeue``, ``sacct``, ``scancel``, ``scontrol``, ``sinfo`` and ``sacctmgr`` call retries;
  ``sbatch`` goes through ``slurm_sbatch``, which first checks whether an ambiguous failure did
  submit the job (so no retry ever submits an element twice).

Example:
    >>> classify("sbatch: error: Batch job submission failed: Socket timed out on send/recv operation").kind
    'transient'
    >>> classify("sbatch: error: Batch job submission failed: Invalid qos specification").option
    '--qos'
"""

from __future__ import annotations

import random
import re
import subprocess
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

__all__ = ["QUICK", "Classified", "RetryPolicy", "classify", "current_policy", "retry_policy", "run_retrying",
           "set_policy"]

#: output of a failed command that means "the scheduler could not answer now": retry
TRANSIENT = re.compile(
    r"Socket timed out|Unable to contact slurm controller|slurm_load_\w+ error|Zero Bytes were transmitted|"
    r"Resource temporarily unavailable|Connection refused|Connection reset by peer|Connection timed out|"
    r"Communication connection failure|Transport endpoint is not connected|Slurm backup controller in standby|"
    r"Nodes busy|Job scheduler busy|controller is busy|Temporary failure in name resolution",
    re.IGNORECASE)

#: "slurm_load_jobs error: Invalid job id specified" and the like are answers, not outages
_NOT_TRANSIENT = re.compile(r"Invalid job id|Invalid user|Invalid partition name|Invalid node name|"
                            r"accounting storage is disabled|"
                            # sacct/sacctmgr without slurmdbd: the callers fall back to squeue at once
                            r"persist(ent)?_?conn|talking to the database|slurmdbd", re.IGNORECASE)

# (pattern, option, problem, fix); {value} is filled in by the caller where it knows it
_PERMANENT: list[tuple[re.Pattern[str], str, str, str]] = [
    (re.compile(r"Invalid account or account/partition combination|Invalid account specified|"
                r"Invalid account", re.I), "--account",
     "the scheduler does not know this account for you (or not with this partition)",
     "set `account:` in the profile (or --account) to one `sacctmgr show assoc user=$USER` lists"),
    (re.compile(r"invalid partition specified|Invalid partition name", re.I), "--partition",
     "no such partition", "set `partition:` to one `sinfo -s` lists"),
    (re.compile(r"User's group not permitted to use this partition|Access/permission denied|"
                r"Account not permitted to use this partition", re.I), "--partition",
     "you may not submit to this partition", "choose a partition your account may use (`sinfo -s`)"),
    (re.compile(r"Invalid qos specification|QOS.*not permitted|Invalid QOS|Job has invalid qos", re.I), "--qos",
     "this QOS is not allowed for your account/partition",
     "set `qos:` to one `sacctmgr show assoc user=$USER format=qos` lists, or remove it"),
    (re.compile(r"Requested time limit is invalid|time limit.*exceeds|QOSMaxWallDuration", re.I), "--time",
     "the time limit exceeds what the partition or QOS allows",
     "lower `time_min:` (or --time) (see `sinfo -o '%P %l'` for each partition's limit)"),
    (re.compile(r"Memory specification can not be satisfied|MaxMemPer", re.I), "--mem",
     "no node of the partition has this much memory", "lower `mem_gb:` (see `sinfo -o '%P %m'`)"),
    (re.compile(r"Requested node configuration is not available|More processors requested than permitted|"
                r"CPU count per node can not be satisfied", re.I), "--cpus-per-task",
     "no node of the partition has this many CPUs (or this much memory)",
     "lower `cpus_per_task:` or `mem_gb:` (see `sinfo -o '%P %c %m'`)"),
    (re.compile(r"Invalid wckey specification", re.I), "--wckey", "the cluster does not know this wckey",
     "set `additional: {wckey: ...}` to one your site gives you"),
    (re.compile(r"Invalid job array specification|MaxArraySize", re.I), "--array",
     "the array is larger than MaxArraySize allows", "this is a bug in bayesim-hpc's splitting: please report it"),
    (re.compile(r"Invalid feature specification|Invalid generic resource", re.I), "--constraint/--gres",
     "the cluster does not know this feature or resource", "fix `additional:` in the profile"),
]

#: a submit limit (the study waits for room; see slurm_limits.LIMIT_REFUSED)
_LIMIT = re.compile(r"MaxSubmitJob|MaxSubmitJobPerUser|Job violates accounting/QOS policy|MaxJobCount|"
                    r"Slurm temporarily unable to accept job", re.IGNORECASE)


@dataclass(frozen=True)
class Classified:
    """What a failure means: ``kind`` is "transient", "permanent", "limit" or None."""

    kind: str | None
    option: str = ""
    problem: str = ""
    fix: str = ""


def classify(text: str, *, timed_out: bool = False) -> Classified:
    """Sort a failed command's output (stderr and stdout): retry it, give up, or neither.

    >>> classify("squeue: error: slurm_load_jobs error: Invalid job id specified").kind is None
    True
    """
    if timed_out:
        return Classified("transient")
    for pattern, option, problem, fix in _PERMANENT:
        if pattern.search(text):
            return Classified("permanent", option, problem, fix)
    if _LIMIT.search(text):
        return Classified("limit", "", "a submit limit of your association or QOS is reached",
                          "wait: the study submits the rest when earlier elements end")
    if TRANSIENT.search(text) and not _NOT_TRANSIENT.search(text):
        return Classified("transient")
    return Classified(None)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a transient failure is retried (profile key ``retry``).

    The k-th wait (k = 0, 1, ...) is ``min(max_delay_s, initial_s * factor**k)`` times a random
    factor in [0.5, 1] (jitter, so that many drivers do not hammer a recovering controller in
    step); at most ``attempts`` calls and ``max_wait_s`` seconds of waiting in all.

    >>> RetryPolicy.from_profile({"attempts": 3, "max_wait_s": 20}).attempts
    3
    """

    attempts: int = 8
    max_wait_s: float = 300.0
    initial_s: float = 2.0
    max_delay_s: float = 60.0
    factor: float = 2.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)
    notify: Callable[[str], None] | None = field(default=None, compare=False, repr=False)

    KEYS = ("attempts", "max_wait_s", "initial_s", "max_delay_s", "factor")

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.max_wait_s < 0 or self.initial_s < 0 or self.max_delay_s < 0 or self.factor < 1:
            raise ValueError(f"retry: need attempts >= 1, max_wait_s/initial_s/max_delay_s >= 0 and factor >= 1; "
                             f"got {self.attempts=}, {self.max_wait_s=}, {self.initial_s=}, {self.max_delay_s=}, "
                             f"{self.factor=}")

    @classmethod
    def from_profile(cls, data: Mapping[str, Any] | None) -> "RetryPolicy":
        """From the profile's ``retry:`` mapping (unknown keys are an error naming the known ones)."""
        d = dict(data or {})
        bad = set(d) - set(cls.KEYS)
        if bad:
            raise ValueError(f"profile key retry: unknown key(s) {sorted(bad)}; known: {list(cls.KEYS)}")
        return cls(**{k: (int(v) if k == "attempts" else float(v)) for k, v in d.items()})

    def delays(self) -> Iterator[float]:
        """The waits before the 2nd, 3rd, ... call (jittered), within ``attempts`` and ``max_wait_s``."""
        spent = 0.0
        for k in range(self.attempts - 1):
            left = self.max_wait_s - spent
            if left <= 0:
                return
            d = min(left, min(self.max_delay_s, self.initial_s * self.factor ** k) * self.rng.uniform(0.5, 1.0))
            spent += d
            yield d


_policy = RetryPolicy()

#: for answers a person waits for (status, dry runs) and for an element about to hit its time limit
QUICK = RetryPolicy(attempts=3, max_wait_s=8.0, initial_s=1.0, max_delay_s=5.0)


def current_policy() -> RetryPolicy:
    """The policy Slurm commands of this process are retried under."""
    return _policy


def set_policy(policy: RetryPolicy) -> RetryPolicy:
    """Use ``policy`` from now on (the Slurm executor sets its profile's); returns the old one."""
    global _policy
    old, _policy = _policy, policy
    return old


@contextmanager
def retry_policy(policy: RetryPolicy) -> Iterator[RetryPolicy]:
    """``with retry_policy(RetryPolicy(attempts=1)):`` -- a policy for a block (tests use it)."""
    old = set_policy(policy)
    try:
        yield policy
    finally:
        set_policy(old)


Call = Callable[[], "subprocess.CompletedProcess[str]"]


def run_retrying(call: Call, *, what: str, policy: RetryPolicy | None = None,
                 before_retry: Callable[[], "subprocess.CompletedProcess[str] | None"] | None = None,
                 on_retry: Callable[[str, float], None] | None = None) -> "subprocess.CompletedProcess[str]":
    """Call ``call()`` until it succeeds, fails for good, or the policy's cap is reached.

    ``call`` returns a CompletedProcess or raises ``subprocess.TimeoutExpired`` (both transient
    when the output says so, see :func:`classify`). The last result is returned (a non-zero exit
    that is not transient is the caller's to judge); a timeout that outlasts the policy is
    re-raised. ``before_retry()`` runs before each retry and may return a result that ends the
    retrying (sbatch: "the job was submitted after all"). ``on_retry(message, delay)`` is told
    about each retry.
    """
    policy = policy or _policy
    delays = policy.delays()
    while True:
        try:
            proc = call()
            failure: str | None = None
            if proc.returncode != 0 and classify(f"{proc.stderr or ''}\n{proc.stdout or ''}").kind == "transient":
                failure = ((proc.stderr or proc.stdout or "").strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        except subprocess.TimeoutExpired as exc:
            proc, failure = None, f"no answer within {exc.timeout} s"
            last_exc: subprocess.TimeoutExpired = exc
        if failure is None:
            return proc  # type: ignore[return-value]
        delay = next(delays, None)
        if delay is None:
            if proc is None:
                raise last_exc
            return proc
        message = f"slurm: {what}: {failure}; trying again in {delay:.1f} s"
        if on_retry is not None:
            on_retry(message, delay)
        if policy.notify is not None:
            policy.notify(message)
        policy.sleep(delay)
        if before_retry is not None:
            found = before_retry()
            if found is not None:
                return found


def with_sleep(policy: RetryPolicy, sleep: Callable[[float], None]) -> RetryPolicy:
    """The same policy with another sleep (tests)."""
    return replace(policy, sleep=sleep)
