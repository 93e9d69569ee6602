"""Submitting elements with submitit, the submission records, and adopting live elements.

* **Job name**: every job of a study is named ``bayesim-<12 hex>`` (a digest of the resolved
  result directory and the study fingerprint), so one ``squeue --name`` finds the jobs of
  earlier drivers too.
* **Submission records**: before each ``sbatch`` a record (token, the shards of each array
  index, their attempts, the resource class, the predicted seconds) goes into the manifest;
  the job id is added right after. A driver killed in between leaves a record without a job
  id, which :func:`adopt` completes from the elements' submitit pickles.
* **Adoption**: live elements of this study (PENDING, RUNNING, REQUEUED...) are mapped back to
  their shards and watched, never resubmitted.

Example:
    >>> sub = Submitter(folder, params_of=lambda res, n: {...})   # doctest: +SKIP
    >>> elems = sub.submit(ctx, name, packs, attempts, max_array_size=1001)   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..resultdir import ResultDir
from . import slurm_clusters
from . import slurm_query as sq
from .base import RunContext
from .slurm_job import run_element
from .slurm_limits import LIMIT_REFUSED
from .slurm_sbatch import release, sbatch_via_bayesim

__all__ = ["Elem", "LIVE", "Pack", "Submitter", "adopt", "element_shards", "job_name", "sub_update"]

LIVE = {"PENDING", "RUNNING", "REQUEUED", "SUSPENDED"}


def job_name(rd: ResultDir) -> str:
    """The one job name of all of a study's jobs: ``bayesim-`` + 12 hex of (path, fingerprint)."""
    fp = rd.read_frozen().fingerprint
    text = str(rd.path.resolve()) + "\0" + json.dumps(fp, sort_keys=True)
    return "bayesim-" + hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class Pack:
    """What one element will run: shards in order, their resource class, the predicted seconds."""

    shards: list[int]
    resources: Any = None  # a slurm_profile.Resources
    predicted_s: float | None = None


@dataclass
class Elem:
    """One array element the driver watches."""

    shards: list[int]
    job_id: str  # "123_4", or "123" for a one-element submission
    array_id: str
    base_attempts: dict[int, int]
    submitted: float  # monotonic clock when submitted or adopted
    resources: Any = None
    predicted_s: float | None = None
    state: str = "PENDING"
    reported: str = ""  # the state last written to the manifest
    missing_queries: int = 0
    lost_since: float | None = None
    done_checked: float = 0.0
    progress_time: dict[int, float] = field(default_factory=dict)
    requeue_noted: int = 0
    restarts_noted: int = 0  # in-place restarts whose cause was recorded
    open: list[int] = field(default_factory=list)  # shards not yet complete
    offsets: dict[str, int] = field(default_factory=dict)
    partial: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.open:
            self.open = list(self.shards)


def element_shards(rec: dict) -> list[list[int]]:
    """The shards of each array index of a submission record (old records: one shard each)."""
    if rec.get("elements_shards"):
        return [[int(s) for s in e] for e in rec["elements_shards"]]
    return [[int(s)] for s in rec.get("shards", [])]


def sub_update(d: dict, token: str | None, **fields: Any) -> None:
    for rec in d.get("submissions", []):
        if rec.get("token") == token:
            rec.update(fields)
            return


def pickled_args(folder: Path, element: str) -> tuple | None:
    """The arguments of an element's job function, from its submitit pickle (None if unreadable).

    submitit has no public reader of a submitted pickle; ``DelayedSubmission.load`` and
    ``JobPaths`` are its own helpers (tests/slurm checks adoption through them).
    """
    try:
        from submitit.core.utils import DelayedSubmission, JobPaths

        path = JobPaths(folder, job_id=element).submitted_pickle
        delayed = DelayedSubmission.load(path)
        if getattr(delayed.function, "__name__", "") != run_element.__name__:
            return None
        return tuple(delayed.args)
    except Exception:
        return None


class Submitter:
    """Submits packs as submitit arrays (one ``sbatch`` per resource class and MaxArraySize batch).

    ``params_of(resources, n)`` gives submitit's parameters for an array of ``n`` elements.
    """

    def __init__(self, folder: Path, params_of: Callable[[Any, int], dict[str, Any]], python: str | None,
                 max_attempts: int):
        self.folder, self.params_of, self.python, self.max_attempts = folder, params_of, python, max_attempts
        self.submissions: list[dict] = []  # what was submitted (for tests and benchmarks)
        self.paths_filter: Callable[[list[str]], list[str]] | None = None

    def render_script(self, name: str, resources: Any, n: int) -> str:
        """The exact sbatch script submitit writes for an array of ``n`` elements.

        Uses submitit's ``_make_sbatch_string`` (no public route prints the script without
        submitting); the real-cluster test compares its output with the submitted script.
        """
        from submitit.slurm.slurm import _make_sbatch_string

        python = self.python or shlex.quote(sys.executable)
        command = " ".join([python, "-u -m submitit.core._submit", shlex.quote(str(self.folder))])
        return _make_sbatch_string(command=command, folder=self.folder, map_count=n if n > 1 else None,
                                   **self.params_of(resources, n))

    def submit(self, ctx: RunContext, name: str, packs: list[Pack], attempts: dict[int, int],
               max_array_size: int) -> list[Elem]:
        """Submit ``packs`` (grouped by resource class); returns the new elements."""
        import submitit

        if not packs:
            return []
        extra = [p for p in dict.fromkeys([os.getcwd(), *sys.path]) if p and os.path.isdir(p)]
        if self.paths_filter is not None:  # e.g. workers in a container import packages from the image only
            extra = self.paths_filter(extra)
        classes: dict[Any, list[Pack]] = {}
        for p in packs:
            classes.setdefault(p.resources, []).append(p)
        elems: list[Elem] = []
        for res, group in classes.items():
            for batch in sq.split_array(list(range(len(group))), max_array_size):
                chosen = [group[i] for i in batch]
                n = len(chosen)
                token = uuid.uuid4().hex[:12]
                flat = [s for p in chosen for s in p.shards]
                rec = {"executor": "slurm", "run_id": ctx.run_id, "token": token, "name": name, "job_id": None,
                       "shards": flat, "elements_shards": [p.shards for p in chosen],
                       "attempts": [attempts[s] for s in flat],
                       "resources": getattr(res, "label", lambda: None)(),
                       "resources_raw": _res_dict(res),
                       "predicted_s": [p.predicted_s for p in chosen], "time": time.time()}
                if slurm_clusters.current():
                    rec["clusters"] = slurm_clusters.current()  # status and cancel ask the same clusters
                ctx.manifest.update(lambda d, r=rec: d.setdefault("submissions", []).append(r))
                ex = submitit.SlurmExecutor(folder=self.folder, max_num_timeout=0, python=self.python)
                params = self.params_of(res, n)
                ex.update_parameters(**params)
                try:
                    with sbatch_via_bayesim(name=name, token=token, values=_option_values(params)):
                        jobs = ex.map_array(run_element, [str(ctx.rd.path.resolve())] * n,
                                            [p.shards for p in chosen],
                                            [[attempts[s] for s in p.shards] for p in chosen],
                                            [ctx.retry_failed] * n, [self.max_attempts] * n, [extra] * n)
                except sq.SlurmRejectedError as exc:
                    err = str(exc)[:2000]
                    ctx.manifest.update(lambda d, t=token, m=err: sub_update(d, t, error=m))
                    if isinstance(exc, sq.SubmitLimitError):  # the rest waits for room
                        said = ((exc.stderr or str(exc)).strip().splitlines() or [""])[-1]
                        ctx.emit(f"slurm: sbatch refused by a submit limit ({said}); {len(flat)} shard(s) wait")
                        return elems
                    raise
                except Exception as exc:
                    err = str(exc)[:2000]
                    ctx.manifest.update(lambda d, t=token, m=err: sub_update(d, t, error=m))
                    if LIMIT_REFUSED.search(err):  # a submit limit after all: the rest waits for room
                        ctx.emit(f"slurm: sbatch refused by a submit limit ({err.strip().splitlines()[-1]}); "
                                 f"{len(flat)} shard(s) wait")
                        return elems
                    raise sq.SlurmCommandError(f"sbatch failed for shards {flat[0]}..{flat[-1]}: {exc}") from exc
                element_ids = [j.job_id for j in jobs]
                array_id = element_ids[0].split("_")[0]
                self.record_submitted(ctx, token, array_id, element_ids)
                self.submissions.append({"job_id": array_id, "shards": flat, "elements": [p.shards for p in chosen]})
                now = time.monotonic()
                new = [Elem(list(p.shards), e, array_id, {s: attempts[s] for s in p.shards}, now, resources=res,
                            predicted_s=p.predicted_s) for p, e in zip(chosen, element_ids)]
                ctx.mark_many({s: {"state": "PENDING", "attempts": el.base_attempts[s], "job_id": el.job_id,
                                   "reason": "", "submitted": time.time()} for el in new for s in el.shards})
                elems += new
        return elems

    def record_submitted(self, ctx: RunContext, token: str, array_id: str, element_ids: list[str]) -> None:
        """Right after sbatch: put the job id into the submission record (the crash test breaks this)."""
        ctx.manifest.update(lambda d: sub_update(d, token, job_id=array_id, elements=element_ids,
                                                 submitted=time.time()))


def _option_values(params: dict[str, Any]) -> dict[str, Any]:
    """sbatch option -> value asked, from submitit's parameters (to name them in errors)."""
    names = {"account": "--account", "partition": "--partition", "qos": "--qos", "time": "--time", "mem": "--mem",
             "cpus_per_task": "--cpus-per-task", "exclude": "--exclude"}
    out = {opt: params[k] for k, opt in names.items() if params.get(k) is not None}
    for k, v in (params.get("additional_parameters") or {}).items():
        out["--" + k.replace("_", "-")] = v
    return out


def _res_dict(res: Any) -> dict | None:
    if res is None:
        return None
    from dataclasses import asdict, is_dataclass

    return asdict(res) if is_dataclass(res) else None


def adopt(ctx: RunContext, name: str, folder: Path, wanted: set[int], *,
          query: Callable[..., list[sq.JobState]] = sq.query_jobs,
          sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> list[Elem]:
    """Live elements of this study (any driver's) that run shards in ``wanted``."""
    from .slurm_profile import Resources

    subs = [s for s in ctx.manifest.read().get("submissions", []) if s.get("executor") == "slurm"]
    deadline = clock() + 90.0
    waited = False
    while True:
        try:
            states = query(name, use_sacct=False)
        except sq.SlurmCommandError as e:
            raise sq.SlurmCommandError(f"cannot ask Slurm which jobs of {name} are still alive ({e}); refusing to "
                                       "submit what might duplicate them") from e
        live = [s for s in states if s.state in LIVE]
        # elements that are ending (e.g. cancelled just before this resume) are neither adopted
        # nor resubmitted under them: wait until they are gone
        ending = [s for s in live if s.raw_state.upper() in ("COMPLETING", "CG")]
        if not ending or clock() > deadline:
            break
        if not waited:
            ctx.emit(f"slurm: waiting for {len(ending)} ending element(s) ({ending[0].job_id}, ...) to finish")
        waited = True
        sleep(2.0)
    if not live:
        return []
    held = sorted({s.array_job_id or s.job_id for s in live if s.reason == "JobHeldUser"}, key=int)
    if held:  # submitted with --hold by a driver that died before releasing them (slurm_sbatch)
        ctx.emit(f"slurm: releasing job(s) {', '.join(held)} left held by an earlier driver")
        for jid in held:
            try:
                release(jid)
            except sq.SlurmCommandError as e:
                ctx.emit(f"slurm: {e}")
    by_array = {str(s["job_id"]): s for s in subs if s.get("job_id")}
    unrecorded = [s for s in subs if not s.get("job_id")]
    found: dict[str, Elem] = {}
    now = clock()
    newly: dict[str, set[int]] = {}
    for st in live:
        base = st.array_job_id or st.job_id
        idx = st.array_task_id if st.array_task_id is not None else 0
        sub = by_array.get(base)
        shards: list[int] | None = None
        attempts: dict[int, int] = {}
        res = None
        if sub is not None and idx < len(element_shards(sub)):
            shards = element_shards(sub)[idx]
            att = dict(zip(sub["shards"], sub.get("attempts", [1] * len(sub["shards"]))))
            attempts = {s: int(att.get(s, 1)) for s in shards}
            if sub.get("resources_raw"):
                res = Resources(**sub["resources_raw"])
        else:
            args = pickled_args(folder, st.job_id)
            if args is not None:
                shards = [int(args[1])] if isinstance(args[1], int) else [int(s) for s in args[1]]
                atts = [int(args[2])] * len(shards) if isinstance(args[2], int) else [int(a) for a in args[2]]
                attempts = dict(zip(shards, atts))
                newly.setdefault(base, set()).update(shards)
        if shards is None:
            ctx.emit(f"slurm: live job {st.job_id} named {name} is not in the manifest and has no readable "
                     "submitit pickle; leaving it alone")
            continue
        mine = [s for s in shards if s in wanted]
        if mine:
            found[st.job_id] = Elem(shards, st.job_id, base, attempts, now, resources=res, state=st.state,
                                    open=mine)
    # fill in job ids the killed driver could not record (matched by shard list)
    for base, seen in newly.items():
        for rec in unrecorded:
            if seen <= set(rec["shards"]):
                n = len(element_shards(rec))
                elements = [f"{base}_{i}" for i in range(n)] if n > 1 else [base]
                ctx.manifest.update(lambda d, t=rec.get("token"), b=base, el=elements: sub_update(
                    d, t, job_id=b, elements=el, adopted=time.time()))
                unrecorded.remove(rec)
                break
    # a shard can be in two live elements only if a killed driver resubmitted it: keep the newest
    owner: dict[int, Elem] = {}
    for e in sorted(found.values(), key=lambda e: (int(e.array_id), e.job_id)):
        for s in e.open:
            owner[s] = e
    elems = [e for e in found.values() if any(owner[s] is e for s in e.open)]
    for e in elems:
        e.open = [s for s in e.open if owner[s] is e]
    if elems:
        ids = sorted({e.array_id for e in elems})
        ctx.emit(f"slurm: adopting {len(elems)} live element(s) of job(s) {', '.join(ids)}; their shards are "
                 "not resubmitted")
        ctx.mark_many({s: {"state": e.state, "job_id": e.job_id, "reason": "adopted from an earlier driver",
                           "attempts": e.base_attempts.get(s, 1)} for e in elems for s in e.open})
    return elems
