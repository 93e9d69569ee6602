"""Fit PyMC models with nutpie: compile each model once, swap the data for every task.

One room per concept:

* :mod:`.fitter` - :class:`PyMCFitter`, the fitter itself (and :mod:`.data_path`, its
  ``model_data=`` path that skips building the model);
* :mod:`.graph_key` - the structure key: what must match for a compiled model to be reused
  (the whole graph, every constant included);
* :mod:`.compiled_models` - the compiled models of a process: get-or-compile by key, data swap;
* :mod:`.nutpie_cache` - compiled models on disk for other processes (nutpie/numba internals
  live there and nowhere else);
* :mod:`.raw_trace` - draws read from nutpie's raw trace, :class:`LazyInferenceData`;
* :mod:`.capture` - log records and warnings captured per fit;
* :mod:`.compile_dir` - PyTensor's compile directory for the process;
* :mod:`.notices` - advice written for the user's model (the ``model_data=`` line).

Example:
    >>> fitter = PyMCFitter(build_model, draws=1000, tune=1000, chains=4)   # doctest: +SKIP
    >>> result = fitter.fit(sim_data, {"model": "linear"}, seed=1)            # doctest: +SKIP

The public names are re-exported here: ``from bayesim_hpc.fitters.pymc import PyMCFitter``.
Importing this package imports neither pymc nor nutpie.
"""

from .compile_dir import _apply_compile_dir, configure_compile_dir  # noqa: F401 - see below
from .fitter import PyMCFitter, _restore_fitter  # noqa: F401
from .graph_key import SAMPLER_KEYS, GraphSignature, graph_signature
from .notices import data_line
from .raw_trace import LazyInferenceData, _materialized  # noqa: F401

# _apply_compile_dir, _restore_fitter and _materialized are named by pickles written when
# this package was one module (study.pkl of existing result directories, retained fit
# artifacts): they must stay importable from here.

__all__ = ["PyMCFitter", "LazyInferenceData", "configure_compile_dir", "SAMPLER_KEYS", "graph_signature",
           "GraphSignature", "data_line"]
