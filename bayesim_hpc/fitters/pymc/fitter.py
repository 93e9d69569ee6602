"""PyMCFitter: fit PyMC models, compiling each model once with nutpie and swapping the data.

The user writes only ``build_model(data: SimData, fit_spec: dict) -> pm.Model`` and puts
everything that changes between datasets in ``pm.Data`` containers (give the likelihood
``shape=x.shape`` so the number of rows may change)::

    def build_model(data, fit_spec):
        with pm.Model() as model:
            x = pm.Data("x", data.column("x"))
            y = pm.Data("y_obs", data.column("y"))
            a = pm.Normal("intercept", 0, 10)
            b = pm.Normal("slope", 0, 10)
            sigma = pm.HalfNormal("sigma", 5)
            pm.Normal("y", a + b * x, sigma, observed=y, shape=x.shape)
        return model

    fitter = PyMCFitter(build_model, draws=1000, tune=1000, chains=4)

Per task the fitter builds the model (a few ms), computes its structure key
(:mod:`.graph_key`: the whole graph, every constant included) and takes the compiled model
of that key from :class:`~.compiled_models.CompiledModels` (memory, then the on-disk cache
of :mod:`.nutpie_cache`, else a compile); it swaps in the task's ``pm.Data`` values and
samples with ``nutpie.sample``, reading draws from the raw trace (:mod:`.raw_trace`).
A model is reused only for a model that differs from it in nothing but ``pm.Data`` values;
a value computed from the data and written in as a number (``2.5 * np.std(y)``) compiles
per dataset, and the fitter says once per cell which constant should become ``pm.Data``.

**``model_data=``** (``model_data(sim_data, fit_spec) -> {pm.Data name: array}``) skips the build: it
runs only on the first two tasks of every cell in a process (they check that the model's
structure follows from the fit_spec and the data's shapes, not its values; a model that
breaks this is built for every task of that data shape, with a warning) and when the data
key (fit_spec less :data:`~.graph_key.SAMPLER_KEYS`, names/dtypes/shapes of the arrays) is
new. Same seed => identical draws with and without it. A model whose nutpie run fails on new
shapes it was not keyed by is rebuilt and compiled for them, once.

fit_spec entries ``sampler`` ("nutpie" or "pymc"), ``target_accept``, ``draws``, ``tune``,
``chains`` and ``max_treedepth`` override the constructor's. Same seed => bit-identical
draws, in any process and order (nutpie and PyMC, ``cores=1``). PyTensor's compile cache:
:func:`~.compile_dir.configure_compile_dir` (or ``compile_dir=``) must run before pytensor is
first imported; a pickled fitter re-applies it before unpickling ``build_model``. pymc and
nutpie are imported lazily. The whole story, with the measured costs, is in
``docs/custom-fitters-and-metrics.md``.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ...data import SimData, TaskContext
from ...deprecation import renamed, renamed_kwargs
from ...diagnostics import ESS_PER_CHAIN, RHAT_THRESHOLD, summarize_draws
from ..base import FitResult
from .capture import _Capture, _import_pymc, _is_panic
from .compile_dir import _CompileDirFirst, configure_compile_dir
from .compiled_models import CompiledModels, cell_name, cell_of, with_data
from .data_path import _DataPath
from .graph_key import structure
from .notices import data_line
from .raw_trace import _RawFit, raw_trace_supported, read_raw_trace

__all__ = ["PyMCFitter", "data_line"]

_log = logging.getLogger(__name__)

_SAMPLERS = ("nutpie", "pymc")


def _restore_fitter(_configured: None, cls: type, state: dict) -> "PyMCFitter":
    obj = cls.__new__(cls)
    obj.__setstate__(state)
    return obj


#: default path: tasks per cell measured, and the share of their time spent building the
#: model from which the fitter suggests ``model_data=`` (once per cell and process).
_REBUILD_TASKS = 3
_REBUILD_SHARE = 0.10
#: keyword arguments renamed in 0.3 (old -> new); the old ones warn once and still work
_OLD_KWARGS = {"data": "model_data", "keep_draws_only_if_warned": "keep_fit_only_if_warned"}


class PyMCFitter(_DataPath):
    """A :class:`~bayesim_hpc.fitters.base.Fitter` for PyMC models (nutpie or PyMC NUTS).

    build_model: ``(data: SimData, fit_spec: dict) -> pm.Model``; use ``pm.Data`` for all
        per-dataset values.
    draws, tune, chains, target_accept, max_treedepth: sampler settings (fit_spec entries
        of the same names override them per fit).
    sampler: "nutpie" (compile once, swap data) or "pymc" (``pm.sample`` each fit).
    compile_dir: PyTensor ``base_compiledir`` for this process (see
        :func:`configure_compile_dir`); applied on first fit and when unpickled.
    keep_fit_only_if_warned: if True, ``FitResult.fit`` (the whole InferenceData) is kept
        only for fits with warnings (divergences, R-hat, low ESS, ...), else it is None;
        if False it is always kept. (Before 0.3: ``keep_draws_only_if_warned``; it warns.)
    var_names: variables whose draws are returned (default: free RVs and deterministics).
    predict: optional ``(draws: dict, data: SimData, fit_spec: dict) -> dict[str, array]``
        giving ``FitResult.predictions``.
    rhat_threshold, ess_per_chain: warning thresholds (R-hat > 1.01; ESS < 100 per chain).
    max_cached_models: compiled nutpie models kept per process (least recently used out).
    model_data: optional ``(data: SimData, fit_spec: dict) -> {pm.Data name: array}``: the
        ``pm.Data`` values of a dataset, so that nutpie fits build the model only once per
        data key (see the module docstring for the contract). (Before 0.3: ``data``; it warns.)
    lazy_idata: (default True) nutpie fits read their draws from nutpie's raw trace and
        build the InferenceData of ``FitResult.fit`` only when it is read; False builds it
        with every fit.

    model_cache: where compiled nutpie models are kept on disk for other processes (see
        :mod:`bayesim_hpc.fitters.nutpie_cache`): None (default) ``<PyTensor
        base_compiledir>/bayesim-nutpie-models`` - the study's compile dir when one is set -,
        a directory, or False for none.

    Attributes: ``n_compiles`` (nutpie models compiled or loaded from disk in this
    process), ``n_loaded`` (of them loaded from disk), ``n_builds``
    (``build_model`` calls), ``compile_log`` (one dict per compile: seconds and the
    structure description).
    """

    def __init__(
        self,
        build_model: Callable[[SimData, dict], Any],
        draws: int = 1000,
        tune: int = 1000,
        chains: int = 4,
        sampler: str = "nutpie",
        target_accept: float = 0.8,
        compile_dir: str | os.PathLike | None = None,
        keep_fit_only_if_warned: bool = False,
        var_names: Iterable[str] | None = None,
        predict: Callable[[dict, SimData, dict], dict] | None = None,
        *,
        max_treedepth: int = 10,
        rhat_threshold: float = RHAT_THRESHOLD,
        ess_per_chain: float = ESS_PER_CHAIN,
        max_cached_models: int = 8,
        model_data: Callable[[SimData, dict], Mapping[str, Any]] | None = None,
        lazy_idata: bool = True,
        model_cache: str | os.PathLike | bool | None = None,
        **old_names: Any,
    ) -> None:
        if old_names:
            new = renamed_kwargs(old_names, _OLD_KWARGS, where="PyMCFitter")
            unknown = sorted(set(new) - set(_OLD_KWARGS.values()))
            if unknown:
                raise TypeError(f"PyMCFitter() got an unexpected keyword argument {unknown[0]!r}")
            model_data = new.get("model_data", model_data)
            keep_fit_only_if_warned = new.get("keep_fit_only_if_warned", keep_fit_only_if_warned)
        if not callable(build_model):
            raise TypeError("build_model must be callable: build_model(data, fit_spec) -> pm.Model")
        if model_data is not None and not callable(model_data):
            raise TypeError("model_data must be callable: model_data(sim_data, fit_spec) -> {pm.Data name: array}")
        if sampler not in _SAMPLERS:
            raise ValueError(f"sampler must be one of {_SAMPLERS}, got {sampler!r}")
        self.build_model = build_model
        self.draws = int(draws)
        self.tune = int(tune)
        self.chains = int(chains)
        self.sampler = sampler
        self.target_accept = float(target_accept)
        self.max_treedepth = int(max_treedepth)
        self.compile_dir = None if compile_dir is None else os.path.abspath(os.fspath(compile_dir))
        self.keep_fit_only_if_warned = bool(keep_fit_only_if_warned)
        self.var_names = None if var_names is None else [str(v) for v in var_names]
        self.predict = predict
        self.rhat_threshold = float(rhat_threshold)
        self.ess_per_chain = float(ess_per_chain)
        self.max_cached_models = int(max_cached_models)
        self.model_data = model_data
        self.lazy_idata = bool(lazy_idata)
        if model_cache is True:
            model_cache = None
        self.model_cache = model_cache if model_cache in (None, False) else os.path.abspath(os.fspath(model_cache))
        self._reset_cache()

    # -- pickling: caches are per process ---------------------------------------------

    def _reset_cache(self) -> None:
        self._models = CompiledModels(self.max_cached_models, getattr(self, "model_cache", None), self._say)
        # model_data= path: data key -> _DataEntry (structure key, var_names, sampled before)
        self._data_index: OrderedDict = OrderedDict()
        self.n_builds = 0
        # (what, cell) said once per process: "constants" and "rebuild" notices
        self._said: set = set()
        # model_data= path: (data key, cell) -> tasks checked against a fresh build
        self._cell_checks: OrderedDict = OrderedDict()
        # default path, per cell: [tasks, seconds building, seconds in the fit]
        self._rebuild_stats: dict = {}

    _CACHES = ("_models", "_data_index", "n_builds", "_said", "_cell_checks", "_rebuild_stats")

    # counters of the compiled-model cache, kept as the fitter's attributes

    @property
    def n_compiles(self) -> int:
        return self._models.n_compiles

    @n_compiles.setter
    def n_compiles(self, value: int) -> None:
        self._models.n_compiles = int(value)

    @property
    def n_loaded(self) -> int:
        return self._models.n_loaded

    @property
    def compile_log(self) -> list[dict]:
        return self._models.log

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for k in self._CACHES:
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        for old, new in _OLD_KWARGS.items():  # a fitter pickled before 0.3
            if old in state:
                state.setdefault(new, state.pop(old))
        self.__dict__.update(state)
        self._reset_cache()

    # the settings keep their names of 0.2 in the study's description (bayesim_hpc.fingerprint),
    # so that a study frozen before the rename is still the same study; drop with _OLD_KWARGS
    _described_as = {new: old for old, new in _OLD_KWARGS.items()}

    # the old attribute names, for one release
    @property
    def data(self) -> Callable[[SimData, dict], Mapping[str, Any]] | None:
        renamed("PyMCFitter.data", "PyMCFitter.model_data", where="PyMCFitter")
        return self.model_data

    @property
    def keep_draws_only_if_warned(self) -> bool:
        renamed("PyMCFitter.keep_draws_only_if_warned", "PyMCFitter.keep_fit_only_if_warned", where="PyMCFitter")
        return self.keep_fit_only_if_warned

    def __reduce__(self):
        # the compile dir is applied before the state (and build_model, which may import
        # pymc) is unpickled
        return (_restore_fitter, (_CompileDirFirst(self.compile_dir), type(self), self.__getstate__()))

    def __repr__(self) -> str:
        name = getattr(self.build_model, "__name__", repr(self.build_model))
        return (
            f"PyMCFitter({name}, sampler={self.sampler!r}, draws={self.draws}, tune={self.tune}, "
            f"chains={self.chains}, target_accept={self.target_accept})"
        )

    # -- settings -----------------------------------------------------------------------

    def settings(self, fit_spec: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Sampler settings for one fit: the constructor's, overridden by the fit_spec."""
        spec = dict(fit_spec or {})
        out = {
            "sampler": str(spec.get("sampler", self.sampler)),
            "target_accept": float(spec.get("target_accept", self.target_accept)),
            "draws": int(spec.get("draws", self.draws)),
            "tune": int(spec.get("tune", self.tune)),
            "chains": int(spec.get("chains", self.chains)),
            "max_treedepth": int(spec.get("max_treedepth", self.max_treedepth)),
        }
        if out["sampler"] not in _SAMPLERS:
            raise ValueError(f"fit_spec sampler must be one of {_SAMPLERS}, got {out['sampler']!r}")
        return out

    def _var_names(self, model) -> list[str]:
        if self.var_names is not None:
            missing = [v for v in self.var_names if v not in model.named_vars]
            if missing:
                raise KeyError(f"var_names {missing} are not in the model built by build_model")
            return list(self.var_names)
        return [v.name for v in model.free_RVs] + [d.name for d in model.deterministics]

    # -- fitting ------------------------------------------------------------------------

    def fit(
        self,
        data: SimData,
        fit_spec: Mapping[str, Any],
        seed: int,
        task_ctx: TaskContext | None = None,
    ) -> FitResult:
        """Fit one dataset; see the class docstring."""
        if self.compile_dir is not None:
            configure_compile_dir(self.compile_dir, strict=False)
        fit_spec = dict(fit_spec or {})
        st = self.settings(fit_spec)
        seed = int(seed) % 2**64
        t_start = time.perf_counter()
        pm, nutpie = _import_pymc()
        timing = {"build": 0.0, "compile": 0.0, "sampling": 0.0}
        cap = _Capture()
        try:
            with cap:
                if st["sampler"] == "nutpie" and self.model_data is not None:
                    idata, var_names = self._fit_nutpie_data(pm, nutpie, data, fit_spec, st, seed, timing,
                                                             task_ctx)
                else:
                    t0 = time.perf_counter()
                    model = self._build(pm, data, fit_spec)
                    var_names = self._var_names(model)
                    timing["build"] = time.perf_counter() - t0
                    if st["sampler"] == "nutpie":
                        idata = self._sample_nutpie(nutpie, model, fit_spec, var_names, st, seed, timing, task_ctx)
                        self._note_rebuild(model, data, timing, time.perf_counter() - t0, task_ctx)
                    else:
                        idata = self._sample_pymc(pm, model, var_names, st, seed, timing)
        except BaseException as exc:
            if _is_panic(exc):
                raise RuntimeError(f"nutpie sampler panicked: {exc}") from None
            raise

        t0 = time.perf_counter()
        if isinstance(idata, _RawFit) and idata.draws is None:  # unexpected layout: build it
            idata = idata.idata.materialize()
        if isinstance(idata, _RawFit):
            draws = idata.draws
            counts = {"n_divergent": idata.divergent, "n_max_treedepth": idata.max_treedepth}
            idata = idata.idata
        else:
            post = idata.posterior
            draws = {v: np.ascontiguousarray(post[v].values) for v in var_names}
            stats = idata.sample_stats
            depth_name = "maxdepth_reached" if "maxdepth_reached" in stats else "reached_max_treedepth"
            counts = {
                "n_divergent": float(stats["diverging"].values.sum()),
                "n_max_treedepth": float(stats[depth_name].values.sum()) if depth_name in stats else float("nan"),
            }
        voi = [v for v in (data.vars_of_interest or []) if v in draws] or list(draws)
        diagnostics: dict[str, float] = summarize_draws(draws, voi)
        diagnostics.update(counts)
        timing["diagnostics"] = time.perf_counter() - t0

        warn = self._warnings(diagnostics, st) + cap.unique()
        predictions = None
        if self.predict is not None:
            t0 = time.perf_counter()
            predictions = self.predict(draws, data, fit_spec)
            timing["predict"] = time.perf_counter() - t0
        timing["total"] = time.perf_counter() - t_start
        keep = (not self.keep_fit_only_if_warned) or bool(warn)
        return FitResult(
            draws=draws,
            diagnostics=diagnostics,
            predictions=predictions,
            warnings=warn,
            fit=idata if keep else None,
            timing=timing,
        )

    def _build(self, pm, data: SimData, fit_spec: dict):
        model = self.build_model(data, fit_spec)
        self.n_builds += 1
        if not isinstance(model, pm.Model):
            raise TypeError(f"build_model must return a pm.Model, got {type(model).__name__}")
        return model

    def _compiled_for(self, nutpie, model, fit_spec, var_names, timing, ctx=None):
        key, desc = structure(model, fit_spec, var_names)
        return self._models.get_or_compile(nutpie, key, desc, model, var_names, timing, ctx)

    def _say(self, what: str, ctx: TaskContext | None, msg: str, *args: Any) -> bool:
        """Log a warning once per (what, cell) in this process; True if it was logged now."""
        k = (what, cell_of(ctx))
        if k in self._said:
            return False
        self._said.add(k)
        _log.warning(msg, *args)
        return True

    def _note_rebuild(self, model, data: SimData, timing: dict, seconds: float, ctx: TaskContext | None) -> None:
        """Default path: say once per cell when rebuilding the model is a noticeable share of a task.

        Counted over tasks that compiled nothing; said after :data:`_REBUILD_TASKS` of them
        when building took at least :data:`_REBUILD_SHARE` of their time, with the ``model_data=``
        line that would skip it, written for this model's ``pm.Data`` names.
        """
        cell = cell_of(ctx)
        if timing["compile"] > 0 or ("rebuild", cell) in self._said or ("constants", cell) in self._said:
            return
        stats = self._rebuild_stats.setdefault(cell, [0, 0.0, 0.0])
        stats[0] += 1
        stats[1] += timing["build"]
        stats[2] += seconds
        if stats[0] < _REBUILD_TASKS:
            return
        del self._rebuild_stats[cell]
        share = stats[1] / stats[2] if stats[2] > 0 else 0.0
        if share < _REBUILD_SHARE:
            self._said.add(("rebuild", cell))  # measured: cheap enough, not said
            return
        self._say(
            "rebuild", ctx,
            "PyMCFitter: %s: building the model for every task takes %.0f%% of a fit here (%.1f ms of %.1f ms). "
            "The compiled model only needs the new pm.Data values; give them directly and build_model runs "
            "only for a new structure: PyMCFitter(build_model, model_data=%s, ...)",
            cell_name(ctx), 100 * share, 1e3 * stats[1] / stats[0], 1e3 * stats[2] / stats[0],
            data_line(model, data),
        )

    def _nutpie_sample(self, nutpie, compiled, st, seed, var_names, timing):
        """nutpie.sample (timed as ``sampling``); with lazy_idata a _RawFit."""
        raw = self.lazy_idata and raw_trace_supported()
        t0 = time.perf_counter()
        result = nutpie.sample(
            compiled,
            draws=st["draws"],
            tune=st["tune"],
            chains=st["chains"],
            cores=1,
            seed=seed,
            progress_bar=False,
            save_warmup=False,
            target_accept=st["target_accept"],
            maxdepth=st["max_treedepth"],
            **({"return_raw_trace": True} if raw else {}),
        )
        timing["sampling"] = time.perf_counter() - t0
        if raw:
            t0 = time.perf_counter()
            result = read_raw_trace(result, compiled, var_names, st["draws"])
            timing["extract"] = time.perf_counter() - t0
        return result

    def _sample_nutpie(self, nutpie, model, fit_spec, var_names, st, seed, timing, ctx=None):
        compiled = self._compiled_for(nutpie, model, fit_spec, var_names, timing, ctx)
        t0 = time.perf_counter()
        values = {d.name: d.get_value(borrow=True) for d in model.data_vars}
        compiled = with_data(compiled, values)
        timing["build"] += time.perf_counter() - t0
        return self._nutpie_sample(nutpie, compiled, st, seed, var_names, timing)

    def _sample_pymc(self, pm, model, var_names, st, seed, timing):
        t0 = time.perf_counter()
        idata = pm.sample(
            draws=st["draws"],
            tune=st["tune"],
            chains=st["chains"],
            cores=1,
            random_seed=seed,
            progressbar=False,
            compute_convergence_checks=False,
            target_accept=st["target_accept"],
            max_treedepth=st["max_treedepth"],
            var_names=var_names,
            model=model,
        )
        timing["sampling"] = time.perf_counter() - t0  # includes PyMC's own compile
        return idata

    def _warnings(self, diag: Mapping[str, float], st: Mapping[str, Any]) -> list[str]:
        out = []
        n_div = diag.get("n_divergent", 0.0)
        if n_div > 0:
            out.append(f"{int(n_div)} divergent transitions")
        n_depth = diag.get("n_max_treedepth", 0.0)
        if n_depth > 0:
            out.append(f"{int(n_depth)} draws hit the maximum tree depth ({st['max_treedepth']})")
        r = diag.get("rhat_max", float("nan"))
        if r > self.rhat_threshold:
            out.append(f"R-hat {r:.4f} > {self.rhat_threshold:g}")
        ess_min = self.ess_per_chain * st["chains"]
        for name, label in (("ess_bulk_min", "bulk"), ("ess_tail_min", "tail")):
            e = diag.get(name, float("nan"))
            if e < ess_min:
                out.append(f"ESS {label} {e:.0f} < {ess_min:.0f}")
        return out
