"""InlineExecutor: every shard in this process, one after the other (for debugging)."""

from __future__ import annotations

import time

from ..worker import run_shard
from .base import RunContext, RunOutcome

__all__ = ["InlineExecutor"]


class InlineExecutor:
    """Runs shards serially in the driver's process; breakpoints and pdb work in tasks."""

    name = "inline"
    parallelism = 1

    def run(self, ctx: RunContext) -> RunOutcome:
        out = RunOutcome()
        failed = ctx.failed_before
        done = ctx.progress.done
        for sid in ctx.shard_ids:
            attempt = ctx.next_attempt(sid)
            ctx.mark(sid, state="RUNNING", attempts=attempt, job_id=f"inline-{ctx.run_id}", started=time.time())
            res = run_shard(ctx.rd.path, sid, attempt, ctx.retry_failed, emit=ctx.emit, study=ctx.study)
            if res.storage_error:
                ctx.mark(sid, state="FAILED", reason=res.storage_error[:200])
                out.storage_error = res.storage_error
                out.unfinished[sid] = res.storage_error
                break
            failed += res.n_failed
            done += res.n_run
            ctx.progress.update(done, failed)
            if res.budget_exceeded or (ctx.study.max_errors is not None and failed > ctx.study.max_errors):
                ctx.mark(sid, state="FAILED", reason="error budget exceeded")
                out.budget_exceeded = True
                out.unfinished[sid] = "error budget exceeded"
                break
            ctx.mark(sid, state="COMPLETED", reason="")
            out.completed.append(sid)
        return out
