"""SlurmExecutor: shards packed into Slurm array elements by cost, submitted with submitit, watched.

How a run goes (each step lives in its own module):

1. **Adopt** (``slurm_submit.adopt``): one ``squeue --name`` lists the study's live elements,
   also those of earlier drivers; their shards are watched, never resubmitted.
2. **Figures** (``bayesim_hpc.planning``): per cell, seconds per task and the first-fit extra,
   from earlier segments, else a short pilot run here (its results are kept), else the user's
   ``task_seconds`` hint; the element start-up from ``startup_s`` (default 5 s).
3. **Plan**: pack shards into elements of about ``target_element_min`` (default 25 min, at most
   half the time limit) -- or less when the study is small, about one element per parallel
   slot -- grouped by resource class (``slurm_profile``: profile ``rules`` or a ``resources``
   function). ``plan="shards"`` keeps one shard per element.
4. **Submit in waves** (``slurm_submit.Submitter``, ``slurm_limits``): one ``sbatch`` per class
   and ``MaxArraySize`` batch, never more elements queued than the user's submit limit allows.
5. **Watch** (``slurm_watch.Monitor``): states, progress, logs, resubmission, OOM/TIMEOUT
   escalation, the waves still waiting. What runs inside each element is ``slurm_job``.

Example:
    >>> run_simulation(config, executor="slurm", max_running=64, profile="example-cluster")   # doctest: +SKIP
    >>> run_simulation(config, executor="slurm", time_min=30, mem=4, detach=True)            # doctest: +SKIP
"""

from __future__ import annotations

import getpass
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import planning
from ..deprecation import renamed
from ..manifest import Manifest, scan_progress
from ..records import TaskState
from ..resultdir import ResultDir
from . import slurm_clusters, slurm_limits, slurm_nodes, slurm_retry
from . import slurm_query as sq
from .base import RunContext, RunOutcome
from .slurm_container import Container, Parity, check_environment, require_parity, study_paths
from .slurm_dry_run import _DryRun
from .slurm_job import MAX_SELF_REQUEUES, read_done_record, run_element
from .slurm_partitions import Placement
from .slurm_study_jobs import _StudyJobs
from .slurm_profile import TEMPLATES_DIR, Escalation, ResourceRules, Resources, load_profile, mem_mb, minutes
from .slurm_submit import Elem, Pack, Submitter, adopt, job_name
from .slurm_watch import Monitor, MonitorSettings

__all__ = ["SlurmExecutor", "job_name", "load_profile", "MAX_SELF_REQUEUES", "TEMPLATES_DIR"]


#: memory per element when neither an option nor the profile asks (GB)
DEFAULT_MEM_GB = 2


def _flags(additional: dict[str, Any]) -> dict[str, Any]:
    """Extra sbatch options: ``True`` is a bare flag, ``False`` leaves it out (``requeue: false``
    becomes ``--no-requeue``, since clusters may requeue by default)."""
    out = {k: v for k, v in additional.items() if v is not False}
    if additional.get("requeue") is False:
        out["no_requeue"] = True
    return out


class SlurmExecutor(_DryRun, _StudyJobs):
    """Shards as Slurm array elements via submitit; see the module docstring.

    Args:
        max_running: the array throttle ``%N`` (elements of one array running at once; default
            32). ``workers`` is its old name (it warns).
        max_attempts: submissions of a shard per run (first + resubmissions after failures).
        profile: a YAML file name in ``slurm_templates/`` (or a path); the arguments below win.
        partition, account, qos: as in sbatch. time_min: minutes per element (or "H:MM:SS"; ``time``
            is its old name and warns).
        mem: per element; a number is GB, a string like "500M"/"4G". cpus_per_task: default 1.
        setup: extra shell lines run before the job (after the profile's).
        resources: ``f(data_spec, fit_spec) -> {"mem_gb": .., "time_min": .., "cpus_per_task": ..}``
            per cell (besides the profile's ``rules``).
        plan: ``"time"`` (pack shards by cost, the default) or ``"shards"`` (one shard per element).
        target_element_min: minutes of work per element (default 25; at most half the time limit). task_seconds: a hint, seconds per task (number or ``{fit value: seconds}``).
        startup_s: an element's fixed start-up. pilot_tasks: tasks per cell the pilot times when
            nothing is known yet (default 2; 0 = no pilot).
        detach: submit, record, return at once. dry_run: print the plan and scripts, submit nothing.
        signal_delay_s: ``--signal=USR2@N`` before the time limit (default 90 s; a tenth of the
            time, at least 5 s, under 15 minutes). It should exceed one fit.
        poll_min_interval: at most one scheduler query per this many seconds in steady state.
        compile_dir: node-local PyTensor compile cache; ``$SLURM_JOB_ID`` is appended.
        settle_s: how long PREEMPTED/NODE_FAIL must last before resubmitting (default
            ``max(30, 2 * poll_min_interval)``). tick: seconds between file checks.
        clusters: ``--clusters`` for every Slurm call (profile ``clusters``; ``slurm_clusters``).
        retry: how transient scheduler errors are retried (profile ``retry``; ``slurm_retry``).
        bad_nodes: when a node is excluded (profile ``bad_nodes``; ``slurm_nodes``).
    """

    name = "slurm"

    def __init__(self, workers: int | None = None, max_attempts: int = 3, *, profile: str | None = None,
                 partition: str | None = None, time: int | str | None = None, mem: float | str | None = None,
                 cpus_per_task: int | None = None, account: str | None = None, qos: str | None = None,
                 setup: list[str] | None = None, detach: bool = False, dry_run: bool = False,
                 signal_delay_s: int | None = None, poll_min_interval: float = 10.0,
                 compile_dir: str | None = None, additional: dict[str, Any] | None = None,
                 settle_s: float | None = None, tick: float = 1.0,
                 resources: Callable[[dict, dict], dict | None] | None = None, plan: str = "time",
                 target_element_min: float | None = None, task_seconds: Any = None, startup_s: float | None = None,
                 pilot_tasks: int | None = None, escalate: dict[str, Any] | None = None,
                 max_running: int | None = None, time_min: int | str | None = None,
                 clusters: str | list[str] | None = None, retry: dict[str, Any] | None = None,
                 bad_nodes: dict[str, Any] | bool | None = None):
        if time is not None:
            renamed("time", "time_min", where="SlurmExecutor (minutes per array element)")
            if time_min is not None and time_min != time:
                raise ValueError(f"pass only time_min, got time_min={time_min!r} and time={time!r}")
            time_min = time
        if workers is not None:
            renamed("workers", "max_running", where="SlurmExecutor (the array throttle; --max-running on the "
                    "command line)")
            if max_running is not None and max_running != workers:
                raise ValueError(f"pass only max_running, got max_running={max_running} and workers={workers}")
            max_running = workers
        self.parallelism = int(max_running or 32)
        if self.parallelism < 1:
            raise ValueError("max_running must be >= 1")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if plan not in ("time", "shards"):
            raise ValueError(f"plan must be 'time' or 'shards', got {plan!r}")
        self.max_attempts = int(max_attempts)
        prof = load_profile(profile)
        self.profile = profile
        pick = lambda arg, key, default=None: arg if arg is not None else prof.get(key, default)  # noqa: E731
        where = f"profile {profile}" if profile is not None else "profile"
        # where each request comes from, for --dry-run: the option, the profile, or our default
        self.sources = {key: "option" if arg is not None else where if any(k in prof for k in keys) else "default"
                        for key, arg, keys in (("time", time_min, ("time_min",)), ("mem", mem, ("mem", "mem_gb")),
                                               ("cpus", cpus_per_task, ("cpus_per_task",)))}
        mem_given = mem if mem is not None else prof.get("mem", prof.get("mem_gb"))
        self.base = Resources(time_min=minutes(pick(time_min, "time_min", 60)),
                              # without a request, many clusters give a job a small DefMemPerCPU: ask for
                              # what a PyMC worker needs (~0.6 GB resident) with room to spare
                              mem_mb=mem_mb(mem_given if mem_given is not None else DEFAULT_MEM_GB),
                              cpus_per_task=int(pick(cpus_per_task, "cpus_per_task", 1)),
                              partition=pick(partition, "partition"), account=pick(account, "account"),
                              qos=pick(qos, "qos"))
        self.rules = ResourceRules(self.base, prof.get("rules"), resources)
        # partition choice per resource class (slurm_partitions); profile key partitions: candidates
        self.placement = Placement(prof.get("partitions"), self.base.account, self.base.qos)
        self.escalation = Escalation.from_profile({**(prof.get("escalate") or {}), **(escalate or {})})
        self.time_min = self.base.time_min
        self.setup = list(prof.get("setup") or []) + list(setup or [])
        self.additional = {"requeue": True, **(prof.get("additional") or {}), **(additional or {})}
        self.compile_dir = pick(compile_dir, "compile_dir")
        self.python = prof.get("python")
        # workers in a container (slurm_container) and the check of their versions before submitting
        self.container = Container.from_profile(prof.get("container"), where)
        self.check_env = bool(prof.get("check_environment", True))
        self._parity: Parity | None = None
        self._study_file: str | None = None
        self.signal_delay_s = pick(signal_delay_s, "signal_delay_s")
        self.plan = plan
        self.target_element_min = float(pick(target_element_min, "target_element_min", 25.0))
        self.task_seconds = pick(task_seconds, "task_seconds")
        self.startup_s = pick(startup_s, "startup_s")
        self.pilot_tasks = int(pick(pilot_tasks, "pilot_tasks", 2))
        self.detach, self.dry_run = bool(detach), bool(dry_run)
        self.poll_min_interval = float(poll_min_interval)
        self.settle_s = float(settle_s) if settle_s is not None else max(30.0, 2 * self.poll_min_interval)
        self.tick = float(tick)
        self.clusters = slurm_clusters.normalise(pick(clusters, "clusters"))
        self.retry = slurm_retry.RetryPolicy.from_profile({**(prof.get("retry") or {}), **(retry or {})})
        self.bad_nodes = slurm_nodes.BadNodeRules.from_profile(pick(bad_nodes, "bad_nodes"))
        self.submitter: Submitter | None = None
        self._pilot_cache: tuple | None = None

    @property
    def submissions(self) -> list[dict]:
        """What this object submitted (for tests and benchmarks)."""
        return self.submitter.submissions if self.submitter else []

    # ----------------------------------------------------------------------------- sbatch parameters
    def signal_delay(self, res: Resources) -> int:
        if self.signal_delay_s is not None:
            return int(self.signal_delay_s)
        # submitit's 90 s; short allocations get a tenth of their time (Slurm sends the signal up
        # to ~30 s earlier than asked: it checks time limits every 30 s)
        return 90 if res.time_min >= 15 else max(5, int(res.time_min * 6))

    def sbatch_parameters(self, name: str, n: int, res: Resources | None = None,
                          exclude: str | None = None) -> dict[str, Any]:
        """submitit's SlurmExecutor parameters for an array of ``n`` elements (native names).

        ``exclude``: the study's bad nodes (``--exclude``), from the manifest (``slurm_nodes``).
        """
        res = res or self.base
        setup = ["export HDF5_USE_FILE_LOCKING=${HDF5_USE_FILE_LOCKING:-FALSE}", "export PYTHONUNBUFFERED=1"]
        setup += list(self.setup)
        if self.compile_dir:
            d = f"{str(self.compile_dir).rstrip('/')}/$SLURM_JOB_ID"
            setup += [f'mkdir -p "{d}"',
                      f'export PYTENSOR_FLAGS="${{PYTENSOR_FLAGS:+$PYTENSOR_FLAGS,}}base_compiledir={d}"']
        # the script says what it runs: the element's payload is a submitit pickle otherwise
        setup = [f"# bayesim-hpc: element $SLURM_ARRAY_TASK_ID runs {run_element.__module__}.{run_element.__name__} "
                 "on the shards listed by `bayesim-hpc run --dry-run` (and in manifest.json submissions)"] + setup
        params: dict[str, Any] = {
            "job_name": name, "time": res.time_min, "cpus_per_task": res.cpus_per_task,
            "wckey": None,  # submitit would send --wckey=submitit, which clusters that bill by wckey reject
            "signal_delay_s": self.signal_delay(res), "array_parallelism": min(self.parallelism, max(1, n)),
            "setup": setup, "additional_parameters": _flags(self.additional),
        }
        if self.container is not None and self.container.srun_args():
            params["srun_args"] = self.container.srun_args()
        partition = self.placement.choose(res).partition  # the profile's, or the smallest that holds res
        for key, value in (("partition", partition), ("account", res.account), ("qos", res.qos), ("mem", res.mem),
                           ("exclude", exclude)):
            if value is not None:
                params[key] = value
        return params

    def _folder(self, rd: ResultDir) -> Path:
        return rd.path.resolve() / "logs" / "slurm" / "%j"

    def _submitter(self, rd: ResultDir, name: str) -> Submitter:
        if self.submitter is None or self.submitter.folder != self._folder(rd):
            manifest = Manifest(rd)
            self.submitter = Submitter(self._folder(rd), lambda res, n: self.sbatch_parameters(
                name, n, res, exclude=slurm_nodes.exclude_option(manifest.read())), self.worker_python(rd),
                self.max_attempts)
            if self.container is not None:
                self.submitter.paths_filter = study_paths
        return self.submitter

    def worker_python(self, rd: ResultDir) -> str | None:
        """The element's interpreter command: the container's wrapper, the profile's python, or None
        (submitit's default: this very interpreter)."""
        if self.container is not None:
            return self.container.python_command(rd.path.resolve(), self._study_file)
        return self.python

    def environment(self, rd: ResultDir) -> Parity:
        """The workers' versions against the driver's, checked once per executor (slurm_container)."""
        if self._parity is None:
            self._parity = check_environment(self.worker_python(rd), enabled=self.check_env, container=self.container)
        return self._parity

    def render_script(self, rd: ResultDir, name: str, n: int, res: Resources | None = None) -> str:
        """The exact sbatch script submitit writes for an array of ``n`` elements."""
        return self._submitter(rd, name).render_script(name, res or self.base, n)

    # ----------------------------------------------------------------------------- planning
    def shard_resources(self, ctx: RunContext) -> Callable[[int], Resources]:
        """shard id -> its resource class (the most any of its cells needs)."""
        space, frozen = ctx.study.space, ctx.rd.read_frozen().shards
        cache: dict[int, Resources] = {}

        def of(sid: int) -> Resources:
            if self.rules.trivial:
                return self.base
            if sid not in cache:
                cells, _ = space.cell_and_rep(space.shard_indices(frozen[sid]))
                ks = sorted({int(k) for k in cells})
                specs = [(ctx.study.data_spec(int(space.cells[k, 0])), ctx.study.fit_spec(int(space.cells[k, 1])))
                         for k in ks]
                cache[sid] = self.rules.for_cells(specs)
            return cache[sid]
        return of

    def target_s(self, res: Resources) -> float:
        """Seconds of work per element: the target, at most half the time limit less the signal delay
        (an element may get up to one shard -- half a target -- more than its target)."""
        limit = res.time_min * 60 - self.signal_delay(res)
        return max(1.0, min(self.target_element_min * 60, 0.5 * limit))

    def _pilot(self, study: Any, emit: Callable[[str], None] | None = None) -> tuple[dict, list]:
        """Run the pilot once per study object; keep its figures and task records for later."""
        key = id(study)
        if self._pilot_cache is None or self._pilot_cache[0] != key:
            records: list = []
            t0 = time.monotonic()
            costs = planning.run_pilot(study, planning.pilot_cells(study.space, max_cells=8), self.pilot_tasks,
                                       records.extend)
            self._pilot_cache = (key, costs, records, time.monotonic() - t0)
        _, costs, records, took = self._pilot_cache
        if emit:
            emit(f"slurm: pilot ran {sum(c.n for c in costs.values())} task(s) of {len(costs)} cell(s) here in "
                 f"{took:.1f} s")
        return costs, records

    def initial_shards(self, study: Any, size: int) -> list | None:
        """A new study's shards, sized so that a heavy cell's shard is at most half an element's target
        (from the hint or the pilot). None: the count-based default."""
        if self.plan != "time":
            return None
        space = study.space
        hint = planning.hinted(space, [study.fit_spec(f) for f in range(space.n_fit)], self.task_seconds)
        costs = hint or (self._pilot(study)[0] if self.pilot_tasks > 0 else {})
        if not costs:
            return None
        model = planning.cost_model(space, pilot=costs)
        return planning.plan_shards_by_cost(space, model.task_seconds(len(space.cells)),
                                            0.5 * self.target_s(self.base), size)

    def figures(self, ctx: RunContext, attempts: dict[int, int], write: bool) -> planning.CostModel:
        """The cost model: segments, else a pilot (kept when ``write``), else the hint."""
        study, space = ctx.study, ctx.study.space
        measured = planning.measure_segments(ctx.rd.path, space)
        hint = planning.hinted(space, [study.fit_spec(f) for f in range(space.n_fit)], self.task_seconds)
        pilot: dict[int, planning.CellCost] = {}
        if not measured and not hint and self.pilot_tasks > 0 and self.plan == "time" and len(space.blocks) == 1:
            frozen = ctx.rd.read_frozen().shards
            todo = set(ctx.shard_ids)
            starts = np.array([s.start for s in frozen])

            def keep(records: list) -> None:
                from ..storage import write_segment

                rank = np.empty(len(space.cells), dtype=np.int64)
                rank[space.shard_cell_order] = np.arange(len(space.cells))
                by_shard: dict[int, list] = {}
                for rec in records:
                    k, r = divmod(rec.index, space.n_rep)
                    sid = int(np.searchsorted(starts, rank[k] * space.n_rep + r, side="right") - 1)
                    if sid in todo:
                        rec.attempt = attempts[sid]
                        by_shard.setdefault(sid, []).append(rec)
                for sid, recs in by_shard.items():
                    write_segment(ctx.rd.path, sid, attempts[sid], 0, recs, draws_dtype=study.draws_dtype,
                                  compression=study.compression)

            pilot, records = self._pilot(study, ctx.emit)
            if write:
                keep(records)  # the same tasks, seeds and results as in an element: not run again
        return planning.cost_model(space, measured=measured, pilot=pilot, hint=hint, startup_s=self.startup_s,
                                   startup_source="given")

    def make_plan(self, ctx: RunContext, shards: list[int], model: planning.CostModel | None,
                  overrides: dict[int, Any] | None = None, slots: int | None = None) -> list[Pack]:
        """Packs for ``shards``: by cost (``plan="time"``) or one shard each."""
        res_of = self.shard_resources(ctx)
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        cls = lambda sid: overrides.get(sid) or res_of(sid)  # noqa: E731
        if self.plan == "shards" or model is None:
            return [Pack([s], cls(s)) for s in shards]
        frozen = ctx.rd.read_frozen().shards
        chosen = [frozen[s] for s in shards]
        target = min(self.target_s(cls(s)) for s in shards) if shards else 1.0
        plan = planning.plan_elements(ctx.study.space, chosen, model, slots=slots or self.parallelism,
                                      target_s=target, resources_of=lambda sh: cls(sh.shard_id))
        return [Pack(e.shards, e.resources, round(e.predicted_s, 1)) for e in plan]

    def slots(self) -> int:
        cpus = slurm_limits.cluster_slots(self.placement.choose(self.base).partition)
        slots = self.parallelism if cpus is None else min(self.parallelism, max(1, cpus // self.base.cpus_per_task))
        return slots

    # ----------------------------------------------------------------------------- run
    def _attempts(self, ctx: RunContext) -> dict[int, int]:
        manifest = ctx.manifest.read()
        out = {}
        for sid in ctx.shard_ids:
            entry = manifest.get("shards", {}).get(str(sid), {})
            prog = int(ctx.shard_progress(sid).get("attempt", 0) or 0)
            out[sid] = max(int(entry.get("attempts", 0) or 0), prog) + 1
        return out

    def run(self, ctx: RunContext) -> RunOutcome:
        """Run (or dry-run) the study, every Slurm call with the profile's clusters and retry policy."""
        # a dry run answers at once (a person waits for it); the driver keeps trying
        policy = replace(slurm_retry.QUICK if self.dry_run else self.retry, notify=ctx.emit)
        with slurm_clusters.using(self.clusters), slurm_retry.retry_policy(policy):
            return self._run(ctx)

    def _run(self, ctx: RunContext) -> RunOutcome:
        rd = ctx.rd
        self._study_file = getattr(ctx.study, "study_file", None)
        name = job_name(rd)
        attempts = self._attempts(ctx)
        if self.dry_run:
            return self._dry_run(ctx, name, attempts)
        submitter = self._submitter(rd, name)
        folder = self._folder(rd)
        adopted = adopt(ctx, name, folder, set(ctx.shard_ids))
        taken = {s for e in adopted for s in e.open}
        todo = [s for s in ctx.shard_ids if s not in taken]
        # a request no partition holds is refused before anything is submitted (and escalation is capped)
        self.check_partitions(ctx, todo)
        if todo:
            parity = self.environment(rd)
            if parity.checked or self.container is not None:
                ctx.emit(parity.line)
            require_parity(parity, self.worker_python(rd))  # other versions in the workers: refused too
        limits = slurm_limits.read_limits(account=self.base.account, qos=self.base.qos) if todo else None
        mas = (limits.max_array_size if limits else None) or sq.max_array_size()
        slots = self.slots()
        if limits and limits.max_running:
            slots = min(slots, limits.max_running)
        model = self.figures(ctx, attempts, write=True) if todo and self.plan == "time" else None
        todo = [s for s in todo if self._missing(ctx, s) > 0]  # the pilot may have finished whole shards
        user = getpass.getuser()

        def room() -> int | None:
            if limits is None or limits.room(0) is None:
                return None
            try:
                return limits.room(slurm_limits.queued_jobs(user))
            except sq.SlurmCommandError:
                return 0

        def plan(shards: list[int], overrides: dict[int, Any]) -> list[Pack]:
            m = model
            if m is not None and self.plan == "time":  # re-plan with what was measured meanwhile
                measured = planning.measure_segments(rd.path, ctx.study.space)
                if measured:
                    m = planning.cost_model(ctx.study.space, measured=measured, pilot=m.cells,
                                            startup_s=m.startup_s, startup_source=m.startup_source)
            return self.make_plan(ctx, shards, m, overrides, slots)

        sent: set[int] = set()

        def submit(packs: list[Pack]) -> list[Elem]:
            # first submission in this run: the attempt planned above (the pilot wrote under it);
            # a resubmission: one more than any attempt seen
            new_att = {s: attempts[s] if s not in sent else self._seen_attempt(ctx, s) + 1
                       for p in packs for s in p.shards}
            sent.update(new_att)
            elems = submitter.submit(ctx, name, packs, new_att, mas)
            if elems:
                arrays = sorted({e.array_id for e in elems}, key=int)
                n_tasks = sum(ctx.rd.read_frozen().shards[s].n_tasks for e in elems for s in e.shards)
                ctx.emit(f"slurm: {len(elems)} element(s) ({n_tasks} tasks) in {len(arrays)} array(s) "
                         f"(MaxArraySize {mas}, %{self.parallelism}), job name {name}: job(s) {', '.join(arrays)}")
            return elems

        settings = MonitorSettings(max_attempts=self.max_attempts, poll_min_interval=self.poll_min_interval,
                                   settle_s=self.settle_s, tick=self.tick, escalation=self.escalation,
                                   max_errors=ctx.study.max_errors)
        def check_nodes() -> None:
            ids = sorted({str(s["job_id"]) for s in ctx.manifest.read().get("submissions", [])
                          if s.get("executor") == "slurm" and s.get("job_id")}, key=int)
            parts = self.partitions_used([self.base, *(r for r in mon.resources.values() if r is not None)])
            new, held = slurm_nodes.update(ctx.manifest, ids, parts, self.bad_nodes)
            for node, why in new.items():
                ctx.emit(f"slurm: excluding node {node} from this study's later submissions: {why} "
                         f"(`bayesim-hpc nodes {rd.path} --clear` takes it off)")
            for node, why in held.items():
                ctx.emit(f"slurm: node {node} looks bad ({why})")

        mon = Monitor(ctx, name, adopted, settings, folder=folder, waiting=todo, submit=submit, plan=plan,
                      room=room, missing=lambda sid: self._missing(ctx, sid),
                      check_nodes=check_nodes if self.bad_nodes.enabled else None,
                      done_record=lambda job_id: read_done_record(rd.path.resolve(), job_id),
                      record_failed=lambda sid, cause, why: self._record_failed(ctx, sid, cause, why))
        if self.detach:
            mon.submit_waiting({})
            if mon.waiting:
                ctx.emit(f"slurm: {len(mon.waiting)} shard(s) were not submitted (submit limit); "
                         f"`bayesim-hpc resume {rd.path}` submits them")
            return RunOutcome(detached=True)
        return mon.loop()

    def partitions_used(self, classes: list[Resources]) -> set[str | None]:
        """The partitions these resource classes are submitted to: the chosen ones, as in
        :meth:`sbatch_parameters` (``None``: Slurm's default), e.g. ``{"short", "debug,other"}``."""
        return {self.placement.choose(r).partition for r in classes}

    def check_partitions(self, ctx: RunContext, shards: list[int]) -> list[tuple[Resources, Any]]:
        """The partition choice of every resource class of ``shards`` (raises ``PartitionError``), and
        the OUT_OF_MEMORY/TIMEOUT escalation capped at the largest usable partition."""
        res_of = self.shard_resources(ctx)
        classes = list(dict.fromkeys([self.base] + [res_of(s) for s in shards]))
        out = [(res, self.placement.choose(res)) for res in classes]
        top_time, top_mem = self.placement.limits()
        esc = self.escalation
        if top_time is not None and top_time < esc.time_max_min:
            esc = replace(esc, time_max_min=top_time)
        if top_mem is not None and top_mem / 1024 < esc.mem_max_gb:
            esc = replace(esc, mem_max_gb=top_mem / 1024)
        self.escalation = esc
        return out

    def _seen_attempt(self, ctx: RunContext, sid: int) -> int:
        entry = ctx.manifest.read().get("shards", {}).get(str(sid), {})
        return max(int(entry.get("attempts", 0) or 0), int(ctx.shard_progress(sid).get("attempt", 0) or 0))

    def _missing(self, ctx: RunContext, sid: int) -> int:
        idx = ctx.study.space.shard_indices(ctx.rd.read_frozen().shards[sid])
        prog = scan_progress(ctx.rd, ctx.study.n_tasks, sid)
        st = prog.state[idx]
        return int(np.count_nonzero(st == TaskState.MISSING))

    def _record_failed(self, ctx: RunContext, sid: int, cause: str, why: str) -> bool:
        """Record the first missing task of a shard (the one its element was running) as failed."""
        from ..storage import write_segment
        from ..task import TaskRecord

        space = ctx.study.space
        idx = space.shard_indices(ctx.rd.read_frozen().shards[sid])
        state = scan_progress(ctx.rd, ctx.study.n_tasks, sid).state[idx]
        gone = np.flatnonzero(state == TaskState.MISSING)
        if not gone.size:
            return False
        task = int(idx[gone[0]])
        attempt = max(1, int(ctx.shard_progress(sid).get("attempt", 1) or 1))
        rec = TaskRecord(index=task, task_id=space.task_id(task), status="failed", attempt=attempt,
                         error_type=cause, error_stage="slurm",
                         error_message=f"the element running this task ended {cause}: {why}")
        write_segment(ctx.rd.path, sid, attempt, 90000, [rec], draws_dtype=ctx.study.draws_dtype,
                      compression=ctx.study.compression)
        return True
