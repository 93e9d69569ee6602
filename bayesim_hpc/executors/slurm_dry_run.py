"""``--dry-run`` on Slurm: the plan, the requests and every sbatch script, nothing submitted.

Mixed into :class:`~bayesim_hpc.executors.slurm.SlurmExecutor` (it uses the executor's
planning, limits and script rendering), so a dry run prints exactly what ``run`` would submit.

Example:
    >>> run_simulation(config, executor="slurm", dry_run=True)   # doctest: +SKIP
"""

from __future__ import annotations

import sys
from typing import Any

from .. import planning
from ..errors import WorkerEnvironmentError
from . import slurm_limits, slurm_nodes
from . import slurm_query as sq
from .base import RunContext, RunOutcome
from .slurm_submit import Pack

__all__: list[str] = []


class _DryRun:
    """SlurmExecutor's dry run (see the module docstring)."""

    def _describe_resilience(self, ctx: RunContext) -> None:
        """Clusters, the study's excluded nodes and the retry policy (issue 19 items 1, 2, 4)."""
        if self.clusters:
            ctx.emit(f"clusters: every Slurm call carries --clusters={self.clusters} (profile key clusters)")
        bad = slurm_nodes.excluded(ctx.manifest.read())
        if bad:
            ctx.emit(f"excluded nodes (--exclude={','.join(sorted(bad))}; `bayesim-hpc nodes {ctx.rd.path} --clear` "
                     "takes them off):")
            for node, info in sorted(bad.items()):
                ctx.emit(f"  {node}: {info.get('why', '')}")
        ctx.emit(f"transient scheduler errors: up to {self.retry.attempts} calls within {self.retry.max_wait_s:.0f} s "
                 "(profile key retry); sbatch gets --hold --comment=bayesim:<token> (found again after an ambiguous "
                 "failure, released once its log folders exist)")

    def _dry_run(self, ctx: RunContext, name: str, attempts: dict[int, int]) -> RunOutcome:
        try:
            mas = sq.max_array_size()
            known = f"MaxArraySize {mas}"
        except sq.SlurmCommandError:
            mas, known = 1001, "MaxArraySize unknown (scontrol not reachable), assumed 1001"
        ctx.emit(self.placement.describe())
        self.check_partitions(ctx, list(ctx.shard_ids))  # PartitionError: shown as the dry run's error
        if self.container is not None:
            ctx.emit(self.container.describe())
        try:
            parity = self.environment(ctx.rd)
            ctx.emit(parity.line + ("" if parity.ok else " (a real run stops here, exit 9)"))
        except WorkerEnvironmentError as exc:  # the interpreter did not run: shown, the dry run goes on
            ctx.emit(f"environment check: FAILED: {exc} (a real run stops here, exit 9)")
        try:
            slots = self.slots()
            limits = slurm_limits.read_limits(account=self.base.account, qos=self.base.qos)
        except sq.SlurmCommandError:
            slots, limits = self.parallelism, None
        model = self.figures(ctx, attempts, write=False) if self.plan == "time" else None
        packs = self.make_plan(ctx, list(ctx.shard_ids), model, None, slots)
        frozen = ctx.rd.read_frozen().shards
        space = ctx.study.space
        if model is not None:
            pe = [planning.PlannedElement(p.shards, sum(frozen[s].n_tasks for s in p.shards), p.predicted_s or 0,
                                          p.resources) for p in packs]
            specs = lambda k: f"{ctx.study.data_spec(int(space.cells[k, 0]))} {ctx.study.fit_spec(int(space.cells[k, 1]))}"  # noqa: E501,E731
            for line in planning.describe_plan(space, model, pe, slots=slots,
                                               target_s=min(self.target_s(p.resources) for p in packs),
                                               label=lambda r: r.label(), specs=specs):
                ctx.emit(line)
        if limits is not None:
            ctx.emit(f"scheduler limits: {limits.describe()}")
        self._describe_resilience(ctx)
        classes: dict[Any, list[Pack]] = {}
        for p in packs:
            classes.setdefault(p.resources, []).append(p)
        n_arrays = sum(len(sq.split_array(list(range(len(g))), mas)) for g in classes.values())
        src = self.sources
        ctx.emit(f"requests per element: time {self.base.time_min} min ({src['time']}), memory "
                 f"{self.base.mem} ({src['mem']}), {self.base.cpus_per_task} cpu(s) ({src['cpus']}); per-cell rules "
                 f"and escalation may raise them")
        ctx.emit(f"slurm dry run: {len(ctx.shard_ids)} shard(s) in {len(packs)} element(s), {len(classes)} resource "
                 f"class(es), {n_arrays} array(s) ({known}, throttle %{self.parallelism}), job name {name}; "
                 "nothing is submitted")
        k = 0
        for res, group in classes.items():
            for batch in sq.split_array(list(range(len(group))), mas):
                k += 1
                n = len(batch)
                spec = f"--array=0-{n - 1}%{min(self.parallelism, n)}" if n > 1 else "(a single job, no array)"
                n_tasks = sum(frozen[s].n_tasks for i in batch for s in group[i].shards)
                ctx.emit(f"array {k} [{res.label()}]: {spec} ({n} element(s), {n_tasks} task(s)); index i runs:")
                choice = self.placement.choose(res)
                ctx.emit(f"  partition {choice.partition or '(Slurm default)'}: {choice.why}"
                         + "".join(f"; {note}" for note in choice.notes))
                for j, i in enumerate(batch):
                    p = group[i]
                    pred = f", predicted {p.predicted_s:.0f} s" if p.predicted_s is not None else ""
                    shards = ", ".join(f"{s} ({self._task_range(ctx, frozen[s])}, attempt {attempts[s]})"
                                       for s in p.shards[:4]) + (f", ... {len(p.shards) - 4} more" if len(p.shards) > 4 else "")
                    ctx.emit(f"  [{j}] shard(s) {shards}{pred}")
                    first = p.shards[0]
                    ctx.emit(f"      to debug it here once the study is frozen: {sys.executable} -m bayesim_hpc.worker "
                             f"{ctx.rd.path} {first} "
                             f"--attempt {attempts[first]}" + (" (and the same for its other shards)"
                                                               if len(p.shards) > 1 else ""))
                ctx.emit(f"--- sbatch script of array {k} (submitit) ---")
                for line in self.render_script(ctx.rd, name, n, res).splitlines():
                    ctx.emit(line)
                ctx.emit("--- end ---")
        return RunOutcome(detached=True, dry_run=True)

    @staticmethod
    def _task_range(ctx: RunContext, shard: Any) -> str:
        """A shard's tasks by id: ``d001_f001_r00001 .. d001_f001_r00010 (10 tasks)``."""
        idx = ctx.study.space.shard_indices(shard)
        space = ctx.study.space
        return f"{space.task_id(int(idx[0]))} .. {space.task_id(int(idx[-1]))}, {len(idx)} tasks"
