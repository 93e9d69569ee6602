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

import os
import sys

import click

from .common import (EXIT_BUDGET, EXIT_CHANGED, EXIT_ERROR, EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_OK,
                     EXIT_UNTRUSTED, handle_errors, load_study_file)
from .options import throttle as _throttle  # tests and old callers
from .result_commands import efficiency, export, reduce, report, status
from .study_commands import cancel, check, clean, nodes, remetric, replay, resume, run, trust

__all__ = ["main", "handle_errors", "load_study_file", "EXIT_OK", "EXIT_ERROR", "EXIT_INCOMPLETE", "EXIT_BUDGET",
           "EXIT_LOCKED", "EXIT_CHANGED", "EXIT_UNTRUSTED", "EXIT_INTERRUPTED", "_throttle"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.version_option(package_name="bayesim-hpc")
def main(debug: bool) -> None:
    """Run Bayesian simulation studies on laptops and Slurm clusters, durably."""
    from .. import runner

    runner.IGNORE_SIGINT_AFTER_INTERRUPT = True  # this process reports and exits after a Ctrl-C
    # as `python -m` would: modules a study refers to (e.g. mypkg.generators) import from here
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


for _command in (run, check, resume, status, efficiency, reduce, remetric, report, export, cancel, trust, clean, replay,
                 nodes):
    main.add_command(_command)
