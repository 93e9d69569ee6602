"""Running ``sbatch`` for submitit: transient failures retried, never a job submitted twice.

submitit runs ``sbatch FILE`` itself (``utils.CommandFunction`` on the list returned by the
executor's ``_make_submission_command``) and has no retry. The one hook used here is that
method: while :func:`sbatch_via_bayesim` is active, submitit's SlurmExecutor (also the copy
it makes for arrays) gets back ``["echo", "Submitted batch job N"]`` from our own sbatch call,
made by :func:`submit_script` through ``slurm_query.run_command`` (counted, ``--clusters``,
retried). ``_make_submission_command`` is an abstract method every submitit executor
implements; ``tests/test_slurm_retry.py`` fails if submitit stops calling it.

**No duplicates.** Each submission carries a token in ``--comment`` (``bayesim:<token>``,
given on sbatch's command line so the script stays what ``--dry-run`` prints; the token is
the manifest record's). A transient failure of sbatch is *ambiguous*: "Socket
timed out" may come after slurmctld accepted the job. Before every retry one ``squeue --name
<study job name> -t all`` looks for the token; if the job is there, that is the answer and
sbatch is not run again. If squeue cannot answer either, the submission stops with an error
rather than risk a second copy.

**Held until ready.** sbatch gets ``--hold``; once the job id is known, the elements' log
folders (``logs/slurm/<id>``, which Slurm needs at start for ``--output``) are made and the job is
released (``scontrol release``). Without the hold, an element that starts within milliseconds
of submission -- or while an ambiguous failure is looked into -- dies at once ("Could not open
stdout file"). A driver killed in between leaves the job held; ``adopt`` (``resume``) releases it.

**Permanent errors** (invalid account, partition, QOS, time or memory beyond the limits) are
not retried: :class:`slurm_query.SlurmRejectedError` names the option, the value asked for and
the fix; a submit limit is :class:`slurm_query.SubmitLimitError` (the study waits for room).

Example:
    >>> with sbatch_via_bayesim(name="bayesim-0123456789ab", token="f00d", values={"--qos": "gold"}):  # doctest: +SKIP
    ...     jobs = executor.map_array(fn, args)
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import slurm_query as sq
from . import slurm_retry

__all__ = ["COMMENT_PREFIX", "find_submitted", "release", "sbatch_via_bayesim", "submit_script"]

COMMENT_PREFIX = "bayesim:"
_lock = threading.Lock()


def find_submitted(name: str, token: str, *, run: sq.Runner = subprocess.run) -> str | None:
    """The (array) job id submitted under job name ``name`` with ``--comment=bayesim:<token>``, or None.

    One ``squeue --name NAME -h -t all -o %F|%k`` (queued, running, and ended within MinJobAge:
    an ambiguous sbatch failure is looked into seconds after it). Raises SlurmCommandError if
    squeue cannot answer.
    """
    cmd = ["squeue", "--name", name, "-h", "-t", "all", "-o", "%F|%k"]
    proc = sq.run_command("query", cmd, run=run)
    if proc.returncode != 0:
        raise sq.SlurmCommandError(f"squeue failed (exit {proc.returncode})", cmd=cmd, returncode=proc.returncode,
                                   stdout=proc.stdout or "", stderr=proc.stderr or "")
    want = COMMENT_PREFIX + token
    for line in (proc.stdout or "").splitlines():
        jid, comment = (line.strip().split("|") + [""])[:2]
        if comment.strip() == want and jid.strip().isdigit():
            return jid.strip()
    return None


def submit_script(path: str | Path, *, name: str, token: str, values: Mapping[str, Any] | None = None,
                  run: sq.Runner = subprocess.run) -> str:
    """``sbatch PATH`` with retries; returns sbatch's answer (``Submitted batch job N ...``).

    ``values``: what was asked per option (``{"--account": "proj1"}``), to name it in errors.
    The script must set ``--job-name=<name>``; ``--comment=bayesim:<token>`` and ``--hold`` are
    added here (:func:`release` lets the job start).
    """
    cmd = ["sbatch", "--hold", f"--comment={COMMENT_PREFIX}{token}", str(path)]
    found: list[str] = []

    def already() -> subprocess.CompletedProcess[str] | None:
        try:
            jid = find_submitted(name, token, run=run)
        except sq.SlurmCommandError as exc:
            raise sq.SlurmUnavailableError(
                f"sbatch failed ambiguously and squeue cannot say whether job {name} (token {token}) was "
                f"submitted ({exc}); not retrying, so nothing is submitted twice. `bayesim-hpc resume` adopts it if "
                "it was", cmd=cmd) from exc
        if jid is None:
            return None
        found.append(jid)
        return subprocess.CompletedProcess(cmd, 0, f"Submitted batch job {jid}\n", "")

    try:
        proc = sq.run_command("submit", cmd, run=run, before_retry=already)
    except sq.SlurmUnavailableError:
        last = already()  # the last try may have submitted it after all
        if last is not None:
            return last.stdout
        raise
    if proc.returncode == 0:
        return proc.stdout or ""
    text = f"{proc.stderr or ''}\n{proc.stdout or ''}"
    verdict = slurm_retry.classify(text)
    args = dict(cmd=proc.args if isinstance(proc.args, list) else cmd, returncode=proc.returncode,
                stdout=proc.stdout or "", stderr=proc.stderr or "")
    if verdict.kind in ("permanent", "limit"):
        err = sq.SubmitLimitError if verdict.kind == "limit" else sq.SlurmRejectedError
        value = (values or {}).get(verdict.option)
        raise err("sbatch", option=verdict.option or "(submit limit)", value=value, problem=verdict.problem,
                  fix=verdict.fix, **args)
    raise sq.SlurmCommandError(f"sbatch failed (exit {proc.returncode})", **args)


def release(job_id: str, *, run: sq.Runner = subprocess.run) -> None:
    """``scontrol release JOB``: let a job submitted with ``--hold`` start. Raises SlurmCommandError."""
    cmd = ["scontrol", "release", str(job_id)]
    proc = sq.run_command("requeue", cmd, run=run)
    if proc.returncode != 0:
        raise sq.SlurmCommandError(f"scontrol release {job_id} failed (exit {proc.returncode}); the job stays held "
                                   "until `bayesim-hpc resume` releases it", cmd=cmd, returncode=proc.returncode,
                                   stdout=proc.stdout or "", stderr=proc.stderr or "")


def _make_log_folders(executor: Any, job_id: str) -> None:
    """The folders submitit's ``--output``/``--error`` paths point into, for a job and its elements."""
    from submitit.core.utils import JobPaths

    n = int(executor.parameters.get("map_count") or 0)
    for jid in [job_id] + [f"{job_id}_{i}" for i in range(n)]:
        JobPaths(executor.folder, job_id=jid).folder.mkdir(parents=True, exist_ok=True)


@contextmanager
def sbatch_via_bayesim(*, name: str, token: str, values: Mapping[str, Any] | None = None,
                       run: sq.Runner = subprocess.run) -> Iterator[None]:
    """Within the block, submitit's SlurmExecutor submits through :func:`submit_script`.

    It replaces ``submitit.slurm.slurm.SlurmExecutor._make_submission_command`` (submitit's
    private extension point; the only place this package touches it) and puts it back after.
    A lock keeps two threads from overlapping.
    """
    from submitit.slurm import slurm as submitit_slurm

    def make(self: Any, submission_file_path: Path) -> list[str]:
        answer = submit_script(submission_file_path, name=name, token=token, values=values, run=run)
        m = re.search(r"job (\d+)", answer)
        if m is None:
            raise sq.SlurmCommandError(f"cannot read a job id from sbatch's answer {answer.strip()!r}")
        _make_log_folders(self, m.group(1))
        release(m.group(1), run=run)
        return ["echo", answer.strip()]

    with _lock:
        original = submitit_slurm.SlurmExecutor._make_submission_command
        submitit_slurm.SlurmExecutor._make_submission_command = make  # type: ignore[method-assign]
        try:
            yield
        finally:
            submitit_slurm.SlurmExecutor._make_submission_command = original  # type: ignore[method-assign]
