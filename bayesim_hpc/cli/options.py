"""Options shared by ``run`` and ``resume`` (executor, Slurm, notifications) and their checks."""

from __future__ import annotations

from typing import Any, Callable

import click

executor_opt = click.option("--executor", "-e", type=click.Choice(["inline", "local", "mock", "slurm"]),
                             default=None, help="Where tasks run (default: local for run, the last one for resume).")
workers_opt = click.option("--workers", "-j", type=int, default=None,
                            help="Parallel workers of a local pool (local/mock).")


keep_going_opt = click.option(
    "--keep-going", is_flag=True,
    help="Run every task even when the first ones all fail the same way (no early stop on a systematic failure).")


def notify_opts(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        click.option("--notify", "notify", multiple=True, metavar="EMAIL|URL",
                     help="Tell this email address or webhook URL when the study ends, stops early, fails often or "
                          "stalls (repeatable; resume keeps it). See docs/cluster-guide.md."),
        click.option("--no-notify", is_flag=True, help="Forget the --notify targets of earlier runs."),
        click.option("--notify-stall-minutes", type=float, default=None,
                     help="Notify when nothing progressed for this long (default 60)."),
        click.option("--notify-failure-rate", type=float, default=None,
                     help="Notify when this share of the run's tasks failed (default 0.25, after 10 tasks)."),
    ]):
        fn = opt(fn)
    return fn


def notify_kwargs(notify, no_notify, stall, rate) -> dict[str, Any]:
    if no_notify and notify:
        raise click.UsageError("--notify and --no-notify contradict each other")
    return {"notify": [] if no_notify else (list(notify) if notify else None),
            "notify_options": {"stall_minutes": stall, "failure_rate": rate}}


def slurm_opts(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        click.option("--max-running", type=int, default=None,
                     help="Slurm array throttle %N: elements running at once (default 32)."),
        click.option("--profile", help="Cluster profile: a YAML file name in slurm_templates/ or a path."),
        click.option("--partition", help="Slurm partition (overrides the profile)."),
        click.option("--time", "time_", help="Time limit per array element: minutes, or H:MM:SS as in sbatch "
                                             "(overrides the profile's time_min)."),
        click.option("--mem", help="Memory per array element, e.g. 4G (overrides the profile)."),
        click.option("--detach", is_flag=True, help="Submit and leave; check later with `status`."),
        click.option("--plan", type=click.Choice(["time", "shards"]), default=None,
                     help="Slurm elements: 'time' packs shards by measured cost (default), 'shards' one shard each."),
        click.option("--target-minutes", type=float, default=None,
                     help="Minutes of work per Slurm element (default 25, at most half of --time)."),
        click.option("--task-seconds", type=float, default=None,
                     help="Hint: seconds per task, used when nothing is measured yet (instead of a pilot)."),
    ]):
        fn = opt(fn)
    return fn


def executor_options(executor: str, profile, partition, time_, mem, dry_run, detach, plan=None, target_minutes=None,
                      task_seconds=None) -> dict[str, Any]:
    opts = {k: v for k, v in dict(profile=profile, partition=partition, time_min=time_, mem=mem, plan=plan,
                                  target_element_min=target_minutes, task_seconds=task_seconds).items()
            if v is not None}
    if executor == "slurm":
        opts.update(dry_run=dry_run, detach=detach)
    elif opts:
        raise click.UsageError(f"--profile/--partition/--time/--mem/--plan/--target-minutes/--task-seconds apply to "
                               f"--executor slurm, not {executor}")
    elif detach:
        raise click.UsageError(f"--detach needs a scheduler to leave the work with: use --executor slurm ({executor} "
                               "workers stop with their driver)")
    return opts


def throttle(executor: str, workers: int | None, max_running: int | None, opts: dict[str, Any]) -> int | None:
    """Slurm's array throttle is --max-running (--workers, its old name there, warns); --workers
    stays the local pool size. Puts max_running into ``opts``; returns the workers to pass."""
    if executor != "slurm":
        if max_running is not None:
            raise click.UsageError(f"--max-running is the Slurm array throttle; for --executor {executor} "
                                   "use --workers")
        return workers
    if workers is not None:
        from ..deprecation import renamed

        renamed("--workers", "--max-running", where="bayesim-hpc with --executor slurm")
        if max_running is not None and max_running != workers:
            raise click.UsageError("give only --max-running (--workers is its old name on Slurm)")
        max_running = workers
    if max_running is not None:
        opts["max_running"] = max_running
    return None
