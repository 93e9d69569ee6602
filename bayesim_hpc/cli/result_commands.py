"""Read-only commands on a result directory: status, efficiency, reduce, report, export.

None of them loads ``study.pkl``: a result directory may come from someone else.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import EXIT_INCOMPLETE, EXIT_OK, handle_errors


@click.command()
@click.argument("result_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--no-live", is_flag=True, help="Do not ask the scheduler; use the manifest only.")
@click.option("--efficiency", "with_efficiency", is_flag=True,
              help="Also show requested vs used memory and time (as `bayesim-hpc efficiency`).")
@handle_errors
def status(result_dir, as_json, no_live, with_efficiency) -> None:
    """Show progress per cell and shard, job states with reasons, ETA and failures."""
    from ..status import study_status

    st = study_status(result_dir, live=not no_live)
    if with_efficiency:
        from ..efficiency_study import study_efficiency

        eff = study_efficiency(result_dir, live=not no_live)
        click.echo(f'{{"status": {st.to_json()}, "efficiency": {eff.to_json()}}}' if as_json
                   else st.render() + "\n" + eff.render())
    else:
        click.echo(st.to_json() if as_json else st.render())
    sys.exit(EXIT_OK if st.complete else EXIT_INCOMPLETE)


@click.command()
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
    from ..efficiency_study import study_efficiency, write_profile

    if mem_margin < 0 or time_margin < 0:
        raise click.UsageError("--mem-margin and --time-margin are shares >= 0, e.g. 0.2 for 20 %")
    if from_profile and not write_to:
        raise click.UsageError("--from names the profile to start from with --write-profile OUT.yaml")
    eff = study_efficiency(result_dir, live=not no_live, mem_margin=mem_margin, time_margin=time_margin)
    click.echo(eff.to_json() if as_json else eff.render())
    if write_to:
        path = write_profile(eff, write_to, from_profile)
        click.echo(f"wrote {path}; use it with: bayesim-hpc resume {result_dir} --profile {path}", err=True)


@click.command()
@click.argument("result_dir", type=click.Path(file_okay=False))
@handle_errors
def reduce(result_dir) -> None:
    """Merge the shard files into summary.h5 and cells.csv."""
    from ..reduce import reduce_results

    out = reduce_results(result_dir)
    click.echo(f"{out.n_success} succeeded, {out.n_failed} failed, {out.n_missing} missing of {out.n_tasks} tasks "
               f"from {out.n_segments} segments in {out.seconds:.2f} s -> {out.path}")
    for seg, why in out.corrupt:
        click.echo(f"damaged segment skipped: {seg}: {why}", err=True)
    sys.exit(EXIT_OK if not (out.n_missing or out.n_failed) else EXIT_INCOMPLETE)


@click.command()
@click.argument("result_dir", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), help="HTML file (default: RESULT_DIR/report.html).")
@handle_errors
def report(result_dir, out) -> None:
    """Write one self-contained HTML report: bias, coverage (zip plots), precision, convergence, SBC, failures."""
    from ..report import build_report

    extra = []
    try:  # the efficiency section: requested vs used (asks sacct for a Slurm study)
        from ..efficiency_study import study_efficiency

        extra.append(("efficiency", "Were the requests right?", study_efficiency(result_dir).to_html()))
    except Exception as exc:  # the report is about the results; this section is a courtesy
        click.echo(f"warning: no efficiency section ({type(exc).__name__}: {exc})", err=True)
    click.echo(str(build_report(result_dir, out, extra_sections=extra)))


@click.command()
@click.argument("result_dir", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv"]), default="parquet", show_default=True)
@click.option("--output", "-o", type=click.Path(file_okay=False), default=None,
              help="Folder for the files (default: RESULT_DIR/export).")
@click.option("--reference", type=int, default=None, help="fit_idx of the reference fit row for comparisons (default 1).")
@handle_errors
def export(result_dir, fmt, output, reference) -> None:
    """Write summary, cells and comparisons, wide and long, as Parquet or CSV (read-only: no study code runs)."""
    from ..export import export_results

    for path in export_results(result_dir, output or Path(result_dir) / "export", fmt, reference):
        click.echo(str(path))
