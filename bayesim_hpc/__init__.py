"""bayesim-hpc: Bayesian simulation studies on laptops and Slurm clusters, durably.

>>> from bayesim_hpc import simulation_config, run_simulation, MockFitter, rmse_metric
"""

from .checkpoints import clean_old_checkpoints, estimate_size, list_checkpoints
from .config import Study, simulation_config
from .data import SimData, TaskContext
from .errors import (BayesimError, ConfigError, DriverLockedError, ErrorBudgetExceeded, StudyChangedError,
                     TaskError)
from .fitters import ConjugateLinearFitter, FitResult, Fitter, MockFitter
from .grid import expand_grid
from .metrics import (bias_metric, coverage_metric, interval_width_metric, posterior_mean_metric,
                      posterior_sd_metric, rmse_metric, sbc_rank_metric)
from .reduce import reduce_results
from .results import SimulationResult, load_results
from .retention import resolve_retention
from .runner import resume_simulation, run_simulation

__version__ = "0.1.0"

__all__ = [
    "simulation_config", "Study", "run_simulation", "resume_simulation", "load_results", "reduce_results",
    "SimulationResult", "SimData", "TaskContext", "FitResult", "Fitter", "MockFitter", "ConjugateLinearFitter",
    "PyMCFitter", "rmse_metric", "bias_metric", "coverage_metric", "interval_width_metric",
    "posterior_mean_metric", "posterior_sd_metric", "sbc_rank_metric", "resolve_retention", "expand_grid",
    "list_checkpoints", "clean_old_checkpoints", "estimate_size", "BayesimError", "ConfigError",
    "StudyChangedError", "DriverLockedError", "ErrorBudgetExceeded", "TaskError",
]


def __getattr__(name: str):
    if name == "PyMCFitter":  # imports PyMC only when asked for
        from .fitters.pymc import PyMCFitter

        return PyMCFitter
    raise AttributeError(f"module 'bayesim_hpc' has no attribute {name!r}")
