"""bayesim-hpc: Bayesian simulation studies on laptops and Slurm clusters, durably.

Names are imported on first use, so ``import bayesim_hpc`` (and every worker process)
starts fast.

>>> from bayesim_hpc import simulation_config, run_simulation, MockFitter, rmse_metric
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_WHERE = {
    "simulation_config": "config", "Study": "config",
    "run_simulation": "runner", "resume_simulation": "runner",
    "load_results": "results", "SimulationResult": "results",
    "reduce_results": "reduce",
    "run_adaptive": "runner", "n_replicates_for": "adaptive", "remetric": "recompute",
    "SimData": "data", "TaskContext": "data",
    "FitResult": "fitters.base", "Fitter": "fitters.base",
    "MockFitter": "fitters.mock", "ConjugateLinearFitter": "fitters.conjugate", "PyMCFitter": "fitters.pymc",
    "rmse_metric": "metrics", "bias_metric": "metrics", "coverage_metric": "metrics",
    "interval_width_metric": "metrics", "posterior_mean_metric": "metrics", "posterior_sd_metric": "metrics",
    "sbc_rank_metric": "metrics", "power_metric": "metrics",
    "compare": "compare", "export_results": "export",
    "resolve_retention": "retention", "expand_grid": "grid",
    "list_checkpoints": "checkpoints", "clean_old_checkpoints": "checkpoints", "estimate_size": "checkpoints",
    "BayesimError": "errors", "ConfigError": "errors", "StudyChangedError": "errors",
    "DriverLockedError": "errors", "ErrorBudgetExceeded": "errors", "TaskError": "errors",
    "LockLostError": "errors", "DriverStopped": "errors", "StorageFullError": "storage",
    "UntrustedResultDir": "resultdir",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'bayesim_hpc' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__ + ["__version__"]
