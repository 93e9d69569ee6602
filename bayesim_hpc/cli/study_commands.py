"""Commands that run a study or act on its processes: run, check, resume, remetric, cancel, trust, clean, replay,
nodes (the Slurm nodes a study excludes)."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from .common import EXIT_ERROR, EXIT_OK, EXIT_INCOMPLETE, finish_code, handle_errors, load_study_file
from .options import (executor_options, executor_opt, keep_going_opt, notify_kwargs, notify_opts, slurm_opts, throttle,
                      workers_opt)


@click.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--result-dir", "-o", type=click.Path(file_okay=False), help="Result directory (overrides the file's result_path).")
@executor_opt
@workers_opt
@slurm_opts
@click.option("--dry-run", is_flag=True, help="Print the shard plan (and Slurm job scripts); run nothing.")
@click.option("--force", is_flag=True, help="If the study changed, move old results aside and start again.")
@click.option("--shard-size", type=int, default=None, help="Tasks per shard at the first run.")
@click.option("--progress/--no-progress", default=None, help="Progress line (default: on a terminal).")
@keep_going_opt
@click.option("--target-mcse", "target_mcse", multiple=True, metavar="MEASURE=MCSE",
              help="Adaptive replicates: add replicates in rounds until each cell's MCSE of MEASURE (a cells.csv "
                   "measure or its prefix, e.g. coverage=0.01, bias__slope=0.02) is at most MCSE. Repeatable.")
@click.option("--max-replicates", type=int, default=None, help="Cap of replicates per cell for --target-mcse.")
@notify_opts
@handle_errors
def run(study_file, result_dir, executor, workers, max_running, profile, partition, time_, mem, detach, plan,
        target_minutes, task_seconds, dry_run, force, shard_size, progress, keep_going, target_mcse, max_replicates,
        notify, no_notify, notify_stall_minutes, notify_failure_rate) -> None:
    """Run the study defined in STUDY_FILE (it defines `config = simulation_config(...)`).

    On an existing result directory the study may have grown (more replicates, new grid rows,
    new metrics): only the new tasks run. See docs/growing-a-study.md.
    """
    from ..runner import run_simulation

    config = load_study_file(study_file)
    if result_dir:
        config = dataclasses.replace(config, result_path=Path(result_dir))
    if config.result_path is None:
        raise click.UsageError("give --result-dir (or result_path in the study file): results must outlive this command")
    executor = executor or "local"
    if dry_run and executor != "slurm":
        _print_plan(config, executor, workers, shard_size)
        return
    opts = executor_options(executor, profile, partition, time_, mem, dry_run, detach, plan, target_minutes,
                             task_seconds)
    workers = throttle(executor, workers, max_running, opts)
    opts.update(notify_kwargs(notify, no_notify, notify_stall_minutes, notify_failure_rate))
    if target_mcse or max_replicates is not None:
        from ..runner import run_adaptive

        if not (target_mcse and max_replicates):
            raise click.UsageError("adaptive replicates need both --target-mcse MEASURE=MCSE and --max-replicates N")
        if detach or dry_run:
            raise click.UsageError("--target-mcse runs rounds and needs the driver: not with --detach or --dry-run")
        targets = {}
        for item in target_mcse:
            key, _, val = item.partition("=")
            try:
                targets[key.strip()] = float(val)
            except ValueError:
                raise click.UsageError(f"--target-mcse {item!r}: write MEASURE=MCSE, e.g. coverage=0.01") from None
        result = run_adaptive(config, executor, target_mcse=targets, max_replicates=max_replicates, workers=workers,
                              force=force, shard_size=shard_size, progress=progress, keep_going=keep_going, **opts)
        sys.exit(finish_code(result))
    result = run_simulation(config, executor, workers=workers, force=force, shard_size=shard_size, progress=progress,
                            keep_going=keep_going, **opts)
    sys.exit(finish_code(result))


@click.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--cell", "cells", multiple=True, help="Only this cell, e.g. d002_f001 (repeatable).")
@click.option("--traceback", "show_traceback", is_flag=True, help="Show the traceback of failed cells.")
@handle_errors
def check(study_file, cells, show_traceback) -> None:
    """Preflight: run the first replicate of every cell here, before anything is submitted.

    Prints per cell: success or the error, warnings, wall time and peak memory. Exits 1 if
    any cell fails. Nothing is written.
    """
    from ..preflight import preflight, render_check, render_checks

    config = load_study_file(study_file)
    click.echo(f"check: running replicate 1 of {len(config.space.cells) if not cells else len(cells)} cell(s) of "
               f"{study_file} in this process (the same tasks, ids and seeds as the real run)", err=True)
    checks = preflight(config, cells or None,
                       on_cell=lambda c: click.echo(render_check(c, study_file, show_traceback)))
    click.echo(render_checks(checks))
    sys.exit(EXIT_OK if all(c.ok for c in checks) else EXIT_ERROR)


def _print_plan(config: Any, executor: str, workers: int | None, shard_size: int | None) -> None:
    from ..executors import make_executor
    from ..executors.base import default_shard_size
    from ..grid import plan_shards

    from ..runner import size_warnings

    ex = make_executor(executor, workers=workers)
    size = shard_size or config.shard_size or default_shard_size(config.n_tasks, ex.parallelism)
    shards = plan_shards(config.space, size)
    for line in size_warnings(config):
        click.echo(line, err=True)
    click.echo(f"dry run: {config.n_tasks} tasks ({len(config.data_grid)} data x {len(config.fit_grid)} fit configurations"
               f" x {config.n_replicates} replicates) in {len(shards)} shards of <= {size}, executor {executor} "
               f"({ex.parallelism} slot(s)); nothing was run.")
    for s in shards[:50]:
        idx = config.space.shard_indices(s)
        first, last = config.space.task_id(int(idx[0])), config.space.task_id(int(idx[-1]))
        click.echo(f"  shard {s.shard_id:>5}: {s.n_tasks:>5} tasks, fit {config.fit_spec(config.space.ref(int(idx[0])).fit_idx)}, "
                   f"{first} .. {last}")
    if len(shards) > 50:
        click.echo(f"  ... {len(shards) - 50} more shards")
    click.echo(f"worker command: {sys.executable} -m bayesim_hpc.worker {config.result_path} --serve")


@click.command()
@click.argument("result_dir", type=click.Path(file_okay=False))
@executor_opt
@workers_opt
@slurm_opts
@click.option("--progress/--no-progress", default=None)
@keep_going_opt
@notify_opts
@handle_errors
def resume(result_dir, executor, workers, max_running, profile, partition, time_, mem, detach, plan, target_minutes,
           task_seconds, progress, keep_going, notify, no_notify, notify_stall_minutes, notify_failure_rate) -> None:
    """Finish a study: run only its missing and failed tasks."""
    from ..manifest import Manifest
    from ..resultdir import ResultDir
    from ..runner import resume_simulation

    if executor is None:
        runs = Manifest(ResultDir(result_dir)).read().get("runs", [])
        executor = runs[-1]["executor"] if runs else "local"
    opts = executor_options(executor, profile, partition, time_, mem, False, detach, plan, target_minutes,
                             task_seconds)
    workers = throttle(executor, workers, max_running, opts)
    opts.update(notify_kwargs(notify, no_notify, notify_stall_minutes, notify_failure_rate))
    result = resume_simulation(result_dir, executor, workers=workers, progress=progress, keep_going=keep_going, **opts)
    sys.exit(finish_code(result))


@click.command()
@click.argument("result_dir", type=click.Path(file_okay=False))
@click.argument("study_file", type=click.Path(dir_okay=False), required=False)
@handle_errors
def remetric(result_dir, study_file) -> None:
    """Recompute metrics from retained draws (no refitting) and reduce again.

    With STUDY_FILE, its metrics replace the frozen ones (new metrics, a changed definition or
    probability level); everything else in it must be the frozen study.
    """
    from ..recompute import remetric as do_remetric

    study = load_study_file(study_file) if study_file else None
    out = do_remetric(result_dir, study)
    click.echo(f"{out.n_success} succeeded, {out.n_failed} failed, {out.n_missing} missing of {out.n_tasks} tasks "
               f"-> {out.path}")
    sys.exit(EXIT_OK if not (out.n_missing or out.n_failed) else EXIT_INCOMPLETE)


@click.command()
@click.argument("result_dir", type=click.Path(file_okay=False))
@handle_errors
def cancel(result_dir) -> None:
    """Cancel the study's running work (Slurm jobs, or the local driver and its workers)."""
    import socket

    from ..locking import DirLock
    from ..manifest import Manifest
    from ..resultdir import ResultDir

    rd = ResultDir(result_dir)
    if not rd.exists():
        raise FileNotFoundError(f"{result_dir} is not a bayesim-hpc result directory")
    runs = Manifest(rd).read().get("runs", [])
    if runs and runs[-1].get("executor") == "slurm":
        from ..executors.slurm import SlurmExecutor

        cancelled = SlurmExecutor().cancel(rd)
        click.echo(f"cancelled {len(cancelled)} Slurm job(s): {' '.join(cancelled) or '-'}")
    holder = DirLock(rd.driver_lock).holder()
    if holder and holder.host == socket.gethostname():
        from ..locking import _alive

        if not _alive(holder.pid, holder.pid_started):  # the pid is gone or now another process
            click.echo(f"the driver lock names {holder.describe()}, but that process is gone (pid {holder.pid} "
                       "is free or belongs to another process now); nothing was signalled")
        else:
            os.kill(holder.pid, signal.SIGTERM)
            click.echo(f"sent SIGTERM to the driver ({holder.describe()}); it stops its workers (they flush "
                       "finished tasks), records the end and releases the lock")
    elif holder:
        click.echo(f"the driver runs on {holder.host} (pid {holder.pid}); stop it there")
    elif not runs or runs[-1].get("executor") != "slurm":
        click.echo("nothing is running")


@click.command()
@click.argument("result_dir", type=click.Path(file_okay=False))
@click.option("--remove", is_flag=True, help="Stop trusting it.")
@handle_errors
def trust(result_dir, remove) -> None:
    """Trust a result directory another user owns: run/resume/replay may then load its code.

    Like git's safe.directory: a study.pkl runs code when loaded, so directories of other
    users are refused until you trust them. The list is ~/.config/bayesim-hpc/safe-directories.
    """
    from ..resultdir import trust_file

    real = str(Path(result_dir).resolve())
    f = trust_file()
    lines = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()] if f.exists() else []
    lines = [ln for ln in lines if ln != real] + ([] if remove else [real])
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text("".join(ln + "\n" for ln in lines))
    click.echo(f"{'no longer trusted' if remove else 'trusted'}: {real} ({f})")


@click.command()
@click.argument("result_dir", type=click.Path(file_okay=False))
@click.option("--keep", "keep_n", type=int, default=3, show_default=True, help="Discarded result folders to keep.")
@handle_errors
def clean(result_dir, keep_n) -> None:
    """Remove superseded segments and dead writers' temp files; quarantine damaged ones (never the only copy of a result)."""
    from ..checkpoints import clean_old_checkpoints

    rep = clean_old_checkpoints(result_dir, keep_n=keep_n)
    for r in rep.removed:
        click.echo(f"removed {r}")
    for r, why in rep.quarantined:
        click.echo(f"quarantined {r} -> quarantine/: {why}")
    for r, why in rep.kept:
        click.echo(f"kept {r}: {why}")
    click.echo(f"{len(rep.removed)} item(s) removed, {len(rep.quarantined)} quarantined, "
               f"{rep.bytes_freed / 1e6:.1f} MB freed")


@click.command()
@click.argument("result_dir", type=click.Path(file_okay=False))
@click.argument("task_id")
@click.option("--pdb", "use_pdb", is_flag=True, help="Re-raise the task's error under pdb.")
@handle_errors
def replay(result_dir, task_id, use_pdb) -> None:
    """Re-run one task in this process with its exact seeds (to debug a failure)."""
    from ..summary_file import read_summary
    from ..resultdir import ResultDir
    from ..task import run_task, task_context

    rd = ResultDir(result_dir)
    study = rd.load_study()
    ref = study.space.parse_id(task_id)
    ctx = task_context(study, ref)
    click.echo(f"replaying {task_id}: data row {ref.data_idx + 1} {study.data_spec(ref.data_idx)}, fit row "
               f"{ref.fit_idx + 1} {study.fit_spec(ref.fit_idx)}, replicate {ref.rep_idx + 1}, "
               f"data seed {ctx.data_seed}, fit seed {ctx.fit_seed}")
    rec = run_task(study, ref)
    click.echo(f"status: {rec.status}")
    if rec.status != "success":
        click.echo(rec.error_traceback.rstrip())
        if use_pdb:
            import pdb

            pdb.set_trace()
    metrics = {k: v for k, v in rec.columns.items() if not k.startswith("timing")}
    for k, v in sorted(metrics.items()):
        click.echo(f"  {k} = {v!r}")
    if rd.summary.exists():
        s = read_summary(rd.summary)
        row = s[s["task_id"] == task_id]
        if len(row):
            same = all(k not in row.columns or (row[k].iloc[0] == v) or (v != v and row[k].iloc[0] != row[k].iloc[0])
                       for k, v in metrics.items())
            click.echo(f"matches the stored result: {'yes' if same and row['status'].iloc[0] == rec.status else 'NO'}")
    for w in rec.warnings:
        click.echo(f"warning: {w}")
    sys.exit(EXIT_OK if rec.status == "success" else EXIT_ERROR)


@click.command()
@click.argument("result_dir", type=click.Path(file_okay=False))
@click.option("--clear", is_flag=True, help="Take nodes off the list (all, or those named with --node).")
@click.option("--node", "nodes", multiple=True, metavar="NAME", help="With --clear: only this node (repeatable).")
@handle_errors
def nodes(result_dir, clear, nodes) -> None:
    """List the Slurm nodes this study excludes (and why), or clear the list.

    A node is excluded after its elements ended NODE_FAIL, or failed there the same way while
    succeeding elsewhere; later submissions (resubmissions, waves, resume) get --exclude.
    """
    from ..executors import slurm_nodes
    from ..manifest import Manifest
    from ..resultdir import ResultDir

    rd = ResultDir(result_dir)
    if not rd.exists():
        raise FileNotFoundError(f"{result_dir} is not a bayesim-hpc result directory")
    if nodes and not clear:
        raise click.UsageError("--node goes with --clear (e.g. `bayesim-hpc nodes DIR --clear --node n3`)")
    manifest = Manifest(rd)
    if clear:
        gone = slurm_nodes.clear(manifest, list(nodes) or None)
        unknown = sorted(set(nodes) - set(gone))
        click.echo(f"cleared {len(gone)} node(s): {' '.join(gone) or '-'}"
                   + (f"; not on the list: {' '.join(unknown)}" if unknown else ""))
        return
    excluded = slurm_nodes.excluded(manifest.read())
    if not excluded:
        click.echo("no node is excluded")
        return
    for node, info in sorted(excluded.items()):
        click.echo(f"{node}: {info.get('why', '')}")
