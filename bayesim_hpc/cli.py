"""The ``bayesim-hpc`` command line.

::

    bayesim-hpc run examples/linear_mock.py --executor local --workers 4 --result-dir results/lin
    bayesim-hpc status results/lin
    bayesim-hpc resume results/lin
    bayesim-hpc report results/lin
    bayesim-hpc remetric results/lin [study.py]   # metrics again, from retained draws
    bayesim-hpc export results/lin --format parquet --output results/lin/export

Exit codes: 0 done; 1 error; 2 usage error; 3 the study is not complete (tasks missing or
failed, or the driver was stopped by SIGTERM / ``cancel``); 4 stopped by the error budget
(``max_errors``) or early on a systematic failure; 5 the result directory is in use by another
driver (or this driver lost its lock to another); 6 the study changed since the result
directory was made; 7 the result directory belongs to another user and is not trusted
(``bayesim-hpc trust DIR``); 8 no Slurm partition can hold a request (before submission); 9 the
Slurm workers' Python or packages differ from the driver's (before submission); 130 interrupted by Ctrl-C (what finished is kept, ``resume``
finishes the rest). Each error class carries its code as ``exit_code``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import runpy
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import click

EXIT_OK, EXIT_ERROR, EXIT_INCOMPLETE, EXIT_BUDGET, EXIT_LOCKED, EXIT_CHANGED, EXIT_UNTRUSTED = 0, 1, 3, 4, 5, 6, 7
EXIT_INTERRUPTED = 130


def _fail(msg: str, code: int) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Errors as one clear line and a meaningful exit code; tracebacks with --debug."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .errors import BayesimError

        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:  # outside a run (a run turns it into Interrupted)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            _fail("interrupted", EXIT_INTERRUPTED)
        except Exception as exc:
            if debug:
                traceback.print_exc()
            code = getattr(exc, "exit_code", EXIT_ERROR)
            name = "" if isinstance(exc, (BayesimError, FileNotFoundError, ValueError)) else f"{type(exc).__name__}: "
            _fail(f"{name}{exc}" + ("" if debug else "  (--debug for the traceback)" if code == EXIT_ERROR and name else ""), code)

    return wrapper


def load_study_file(path: str) -> Any:
    """Execute a study file and return its ``config`` (a Study)."""
    from .config import Study

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no study file {path}")
    sys.path.insert(0, str(p.resolve().parent))
    try:
        ns = runpy.run_path(str(p), run_name="bayesim_study")
    except Exception as exc:
        from .errors import BayesimError

        where = f"{exc.filename}:{exc.lineno}" if isinstance(exc, SyntaxError) else _study_line(exc, p)
        if isinstance(exc, BayesimError):
            raise BayesimError(f"{exc} (in {where})") from exc
        raise BayesimError(f"the study file failed at {where}: {type(exc).__name__}: {exc}") from exc
    config = ns.get("config")
    if not isinstance(config, Study):
        raise click.UsageError(f"{path} must define `config = simulation_config(...)` at top level")
    return dataclasses.replace(config, study_file=str(p.resolve()))


def _study_line(exc: BaseException, path: Path) -> str:
    """``file:line`` of the deepest frame of ``exc`` in the study file (else its last frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if Path(f.filename).resolve() == path.resolve()]
    f = (mine or frames or [None])[-1]
    return f"{f.filename}:{f.lineno}" if f is not None else str(path)


def _executor_options(executor: str, profile, partition, time_, mem, dry_run, detach, plan=None, target_minutes=None,
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


def _throttle(executor: str, workers: int | None, max_running: int | None, opts: dict[str, Any]) -> int | None:
    """Slurm's array throttle is --max-running (--workers, its old name there, warns); --workers
    stays the local pool size. Puts max_running into ``opts``; returns the workers to pass."""
    if executor != "slurm":
        if max_running is not None:
            raise click.UsageError(f"--max-running is the Slurm array throttle; for --executor {executor} "
                                   "use --workers")
        return workers
    if workers is not None:
        from .deprecation import renamed

        renamed("--workers", "--max-running", where="bayesim-hpc with --executor slurm")
        if max_running is not None and max_running != workers:
            raise click.UsageError("give only --max-running (--workers is its old name on Slurm)")
        max_running = workers
    if max_running is not None:
        opts["max_running"] = max_running
    return None


def _finish_code(result: Any) -> int:
    if result is None or result.reduce_outcome is None:
        return EXIT_OK
    red = result.reduce_outcome
    return EXIT_INCOMPLETE if (red.n_missing or red.n_failed) else EXIT_OK


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.version_option(package_name="bayesim-hpc")
def main(debug: bool) -> None:
    """Run Bayesian simulation studies on laptops and Slurm clusters, durably."""
    from . import runner

    runner.IGNORE_SIGINT_AFTER_INTERRUPT = True  # this process reports and exits after a Ctrl-C
    # as `python -m` would: modules a study refers to (e.g. mypkg.generators) import from here
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


_executor_opt = click.option("--executor", "-e", type=click.Choice(["inline", "local", "mock", "slurm"]),
                             default=None, help="Where tasks run (default: local for run, the last one for resume).")
_workers_opt = click.option("--workers", "-j", type=int, default=None,
                            help="Parallel workers of a local pool (local/mock).")


_keep_going_opt = click.option(
    "--keep-going", is_flag=True,
    help="Run every task even when the first ones all fail the same way (no early stop on a systematic failure).")


def _notify_opts(fn: Callable[..., Any]) -> Callable[..., Any]:
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


def _notify_kwargs(notify, no_notify, stall, rate) -> dict[str, Any]:
    if no_notify and notify:
        raise click.UsageError("--notify and --no-notify contradict each other")
    return {"notify": [] if no_notify else (list(notify) if notify else None),
            "notify_options": {"stall_minutes": stall, "failure_rate": rate}}


def _slurm_opts(fn: Callable[..., Any]) -> Callable[..., Any]:
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


@main.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--result-dir", "-o", type=click.Path(file_okay=False), help="Result directory (overrides the file's result_path).")
@_executor_opt
@_workers_opt
@_slurm_opts
@click.option("--dry-run", is_flag=True, help="Print the shard plan (and Slurm job scripts); run nothing.")
@click.option("--force", is_flag=True, help="If the study changed, move old results aside and start again.")
@click.option("--shard-size", type=int, default=None, help="Tasks per shard at the first run.")
@click.option("--progress/--no-progress", default=None, help="Progress line (default: on a terminal).")
@_keep_going_opt
@click.option("--target-mcse", "target_mcse", multiple=True, metavar="MEASURE=MCSE",
              help="Adaptive replicates: add replicates in rounds until each cell's MCSE of MEASURE (a cells.csv "
                   "measure or its prefix, e.g. coverage=0.01, bias__slope=0.02) is at most MCSE. Repeatable.")
@click.option("--max-replicates", type=int, default=None, help="Cap of replicates per cell for --target-mcse.")
@_notify_opts
@handle_errors
def run(study_file, result_dir, executor, workers, max_running, profile, partition, time_, mem, detach, plan,
        target_minutes, task_seconds, dry_run, force, shard_size, progress, keep_going, target_mcse, max_replicates,
        notify, no_notify, notify_stall_minutes, notify_failure_rate) -> None:
    """Run the study defined in STUDY_FILE (it defines `config = simulation_config(...)`).

    On an existing result directory the study may have grown (more replicates, new grid rows,
    new metrics): only the new tasks run. See docs/growing-a-study.md.
    """
    from .runner import run_simulation

    config = load_study_file(study_file)
    if result_dir:
        config = dataclasses.replace(config, result_path=Path(result_dir))
    if config.result_path is None:
        raise click.UsageError("give --result-dir (or result_path in the study file): results must outlive this command")
    executor = executor or "local"
    if dry_run and executor != "slurm":
        _print_plan(config, executor, workers, shard_size)
        return
    opts = _executor_options(executor, profile, partition, time_, mem, dry_run, detach, plan, target_minutes,
                             task_seconds)
    workers = _throttle(executor, workers, max_running, opts)
    opts.update(_notify_kwargs(notify, no_notify, notify_stall_minutes, notify_failure_rate))
    if target_mcse or max_replicates is not None:
        from .runner import run_adaptive

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
        sys.exit(_finish_code(result))
    result = run_simulation(config, executor, workers=workers, force=force, shard_size=shard_size, progress=progress,
                            keep_going=keep_going, **opts)
    sys.exit(_finish_code(result))


@main.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--cell", "cells", multiple=True, help="Only this cell, e.g. d002_f001 (repeatable).")
@click.option("--traceback", "show_traceback", is_flag=True, help="Show the traceback of failed cells.")
@handle_errors
def check(study_file, cells, show_traceback) -> None:
    """Preflight: run the first replicate of every cell here, before anything is submitted.

    Prints per cell: success or the error, warnings, wall time and peak memory. Exits 1 if
    any cell fails. Nothing is written.
    """
    from .preflight import preflight, render_check, render_checks

    config = load_study_file(study_file)
    click.echo(f"check: running replicate 1 of {len(config.space.cells) if not cells else len(cells)} cell(s) of "
               f"{study_file} in this process (the same tasks, ids and seeds as the real run)", err=True)
    checks = preflight(config, cells or None,
                       on_cell=lambda c: click.echo(render_check(c, study_file, show_traceback)))
    click.echo(render_checks(checks))
    sys.exit(EXIT_OK if all(c.ok for c in checks) else EXIT_ERROR)


def _print_plan(config: Any, executor: str, workers: int | None, shard_size: int | None) -> None:
    from .executors import make_executor
    from .executors.base import default_shard_size
    from .grid import plan_shards

    from .runner import size_warnings

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


@main.command()
@click.argument("result_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--no-live", is_flag=True, help="Do not ask the scheduler; use the manifest only.")
@click.option("--efficiency", "with_efficiency", is_flag=True,
              help="Also show requested vs used memory and time (as `bayesim-hpc efficiency`).")
@handle_errors
def status(result_dir, as_json, no_live, with_efficiency) -> None:
    """Show progress per cell and shard, job states with reasons, ETA and failures."""
    from .status import study_status

    st = study_status(result_dir, live=not no_live)
    if with_efficiency:
        from .efficiency_study import study_efficiency

        eff = study_efficiency(result_dir, live=not no_live)
        click.echo(f'{{"status": {st.to_json()}, "efficiency": {eff.to_json()}}}' if as_json
                   else st.render() + "\n" + eff.render())
    else:
        click.echo(st.to_json() if as_json else st.render())
    sys.exit(EXIT_OK if st.complete else EXIT_INCOMPLETE)


@main.command()
@click.argument("result_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--no-live", is_flag=True, help="Do not ask sacct; figures from the segments and done records only.")
@click.option("--write-profile", "write_to", type=click.Path(dir_okay=False), default=None,
              help="Write the suggested requests into this profile YAML (on top of --from).")
@click.option("--from", "from_profile", default=None, help="The profile to start from (a name in slurm_templates/ "
              "or a path); its other keys are kept.")
@click.option("--mem-margin", type=float, default=0.2, show_default=True,
              help="Suggested memory: p95 of MaxRSS times (1 + this).")
@click.option("--time-margin", type=float, default=0.5, show_default=True,
              help="Suggested time: p95 of the elements' elapsed times (1 + this).")
@handle_errors
def efficiency(result_dir, as_json, no_live, write_to, from_profile, mem_margin, time_margin) -> None:
    """Requested vs used memory and time per resource class and cell, and a request for the next run.

    Reads the result directory and `sacct` (Slurm accounting); no study code runs. See
    docs/cluster-guide.md ("Efficiency").
    """
    from .efficiency_study import study_efficiency, write_profile

    if mem_margin < 0 or time_margin < 0:
        raise click.UsageError("--mem-margin and --time-margin are shares >= 0, e.g. 0.2 for 20 %")
    if from_profile and not write_to:
        raise click.UsageError("--from names the profile to start from with --write-profile OUT.yaml")
    eff = study_efficiency(result_dir, live=not no_live, mem_margin=mem_margin, time_margin=time_margin)
    click.echo(eff.to_json() if as_json else eff.render())
    if write_to:
        path = write_profile(eff, write_to, from_profile)
        click.echo(f"wrote {path}; use it with: bayesim-hpc resume {result_dir} --profile {path}", err=True)


@main.command()
@click.argument("result_dir", type=click.Path(file_okay=False))
@_executor_opt
@_workers_opt
@_slurm_opts
@click.option("--progress/--no-progress", default=None)
@_keep_going_opt
@_notify_opts
@handle_errors
def resume(result_dir, executor, workers, max_running, profile, partition, time_, mem, detach, plan, target_minutes,
           task_seconds, progress, keep_going, notify, no_notify, notify_stall_minutes, notify_failure_rate) -> None:
    """Finish a study: run only its missing and failed tasks."""
    from .manifest import Manifest
    from .resultdir import ResultDir
    from .runner import resume_simulation

    if executor is None:
        runs = Manifest(ResultDir(result_dir)).read().get("runs", [])
        executor = runs[-1]["executor"] if runs else "local"
    opts = _executor_options(executor, profile, partition, time_, mem, False, detach, plan, target_minutes,
                             task_seconds)
    workers = _throttle(executor, workers, max_running, opts)
    opts.update(_notify_kwargs(notify, no_notify, notify_stall_minutes, notify_failure_rate))
    result = resume_simulation(result_dir, executor, workers=workers, progress=progress, keep_going=keep_going, **opts)
    sys.exit(_finish_code(result))


@main.command()
@click.argument("result_dir", type=click.Path(file_okay=False))
@handle_errors
def reduce(result_dir) -> None:
    """Merge the shard files into summary.h5 and cells.csv."""
    from .reduce import reduce_results

    out = reduce_results(result_dir)
    click.echo(f"{out.n_success} succeeded, {out.n_failed} failed, {out.n_missing} missing of {out.n_tasks} tasks "
               f"from {out.n_segments} segments in {out.seconds:.2f} s -> {out.path}")
    for seg, why in out.corrupt:
        click.echo(f"damaged segment skipped: {seg}: {why}", err=True)
    sys.exit(EXIT_OK if not (out.n_missing or out.n_failed) else EXIT_INCOMPLETE)


@main.command()
@click.argument("result_dir", type=click.Path(file_okay=False))
@click.argument("study_file", type=click.Path(dir_okay=False), required=False)
@handle_errors
def remetric(result_dir, study_file) -> None:
    """Recompute metrics from retained draws (no refitting) and reduce again.

    With STUDY_FILE, its metrics replace the frozen ones (new metrics, a changed definition or
    probability level); everything else in it must be the frozen study.
    """
    from .recompute import remetric as do_remetric

    study = load_study_file(study_file) if study_file else None
    out = do_remetric(result_dir, study)
    click.echo(f"{out.n_success} succeeded, {out.n_failed} failed, {out.n_missing} missing of {out.n_tasks} tasks "
               f"-> {out.path}")
    sys.exit(EXIT_OK if not (out.n_missing or out.n_failed) else EXIT_INCOMPLETE)


@main.command()
@click.argument("result_dir", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), help="HTML file (default: RESULT_DIR/report.html).")
@handle_errors
def report(result_dir, out) -> None:
    """Write one self-contained HTML report: bias, coverage (zip plots), precision, convergence, SBC, failures."""
    from .report import build_report

    extra = []
    try:  # the efficiency section: requested vs used (asks sacct for a Slurm study)
        from .efficiency_study import study_efficiency

        extra.append(("efficiency", "Were the requests right?", study_efficiency(result_dir).to_html()))
    except Exception as exc:  # the report is about the results; this section is a courtesy
        click.echo(f"warning: no efficiency section ({type(exc).__name__}: {exc})", err=True)
    click.echo(str(build_report(result_dir, out, extra_sections=extra)))


@main.command()
@click.argument("result_dir", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv"]), default="parquet", show_default=True)
@click.option("--output", "-o", type=click.Path(file_okay=False), default=None,
              help="Folder for the files (default: RESULT_DIR/export).")
@click.option("--reference", type=int, default=None, help="fit_idx of the reference fit row for comparisons (default 1).")
@handle_errors
def export(result_dir, fmt, output, reference) -> None:
    """Write summary, cells and comparisons, wide and long, as Parquet or CSV (read-only: no study code runs)."""
    from .export import export_results

    for path in export_results(result_dir, output or Path(result_dir) / "export", fmt, reference):
        click.echo(str(path))


@main.command()
@click.argument("result_dir", type=click.Path(file_okay=False))
@handle_errors
def cancel(result_dir) -> None:
    """Cancel the study's running work (Slurm jobs, or the local driver and its workers)."""
    import socket

    from .locking import DirLock
    from .manifest import Manifest
    from .resultdir import ResultDir

    rd = ResultDir(result_dir)
    if not rd.exists():
        raise FileNotFoundError(f"{result_dir} is not a bayesim-hpc result directory")
    runs = Manifest(rd).read().get("runs", [])
    if runs and runs[-1].get("executor") == "slurm":
        from .executors.slurm import SlurmExecutor

        cancelled = SlurmExecutor().cancel(rd)
        click.echo(f"cancelled {len(cancelled)} Slurm job(s): {' '.join(cancelled) or '-'}")
    holder = DirLock(rd.driver_lock).holder()
    if holder and holder.host == socket.gethostname():
        from .locking import _alive

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


@main.command()
@click.argument("result_dir", type=click.Path(file_okay=False))
@click.option("--remove", is_flag=True, help="Stop trusting it.")
@handle_errors
def trust(result_dir, remove) -> None:
    """Trust a result directory another user owns: run/resume/replay may then load its code.

    Like git's safe.directory: a study.pkl runs code when loaded, so directories of other
    users are refused until you trust them. The list is ~/.config/bayesim-hpc/safe-directories.
    """
    from .resultdir import trust_file

    real = str(Path(result_dir).resolve())
    f = trust_file()
    lines = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()] if f.exists() else []
    lines = [ln for ln in lines if ln != real] + ([] if remove else [real])
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text("".join(ln + "\n" for ln in lines))
    click.echo(f"{'no longer trusted' if remove else 'trusted'}: {real} ({f})")


@main.command()
@click.argument("result_dir", type=click.Path(file_okay=False))
@click.option("--keep", "keep_n", type=int, default=3, show_default=True, help="Discarded result folders to keep.")
@handle_errors
def clean(result_dir, keep_n) -> None:
    """Remove superseded segments and dead writers' temp files; quarantine damaged ones (never the only copy of a result)."""
    from .checkpoints import clean_old_checkpoints

    rep = clean_old_checkpoints(result_dir, keep_n=keep_n)
    for r in rep.removed:
        click.echo(f"removed {r}")
    for r, why in rep.quarantined:
        click.echo(f"quarantined {r} -> quarantine/: {why}")
    for r, why in rep.kept:
        click.echo(f"kept {r}: {why}")
    click.echo(f"{len(rep.removed)} item(s) removed, {len(rep.quarantined)} quarantined, "
               f"{rep.bytes_freed / 1e6:.1f} MB freed")


@main.command()
@click.argument("result_dir", type=click.Path(file_okay=False))
@click.argument("task_id")
@click.option("--pdb", "use_pdb", is_flag=True, help="Re-raise the task's error under pdb.")
@handle_errors
def replay(result_dir, task_id, use_pdb) -> None:
    """Re-run one task in this process with its exact seeds (to debug a failure)."""
    from .summary_file import read_summary
    from .resultdir import ResultDir
    from .task import run_task, task_context

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


@main.command()
@click.argument("result_dir", type=click.Path(file_okay=False))
@click.option("--clear", is_flag=True, help="Take nodes off the list (all, or those named with --node).")
@click.option("--node", "nodes", multiple=True, metavar="NAME", help="With --clear: only this node (repeatable).")
@handle_errors
def nodes(result_dir, clear, nodes) -> None:
    """List the Slurm nodes this study excludes (and why), or clear the list.

    A node is excluded after its elements ended NODE_FAIL, or failed there the same way while
    succeeding elsewhere; later submissions (resubmissions, waves, resume) get --exclude.
    """
    from .executors import slurm_nodes
    from .manifest import Manifest
    from .resultdir import ResultDir

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


if __name__ == "__main__":
    main()
