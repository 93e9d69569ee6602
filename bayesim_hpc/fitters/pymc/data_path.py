"""The ``model_data=`` path of :class:`~.fitter.PyMCFitter`: build the model only when needed.

With ``PyMCFitter(build_model, model_data=model_data)``, ``model_data(sim_data, fit_spec)`` returns
the ``pm.Data`` values, and a task builds the model only when its *data key* (fit_spec less
sampler settings, names/dtypes/shapes of the arrays) is new in the process, when that key's
compiled model was evicted, and on the first two tasks of every cell, which check that the
model's structure key is the one compiled for the data key. A model whose graph follows the
data values (a prior scale computed from the data, a group count) is then built for every
task of that data key, as without ``model_data=``. Mixed into the fitter; uses its ``_build``,
``_models``, ``_say`` and ``_nutpie_sample``.
"""

from __future__ import annotations

import logging
import time
from typing import Mapping

import numpy as np

from ...data import SimData, TaskContext
from .compiled_models import cell_name, cell_of, with_data
from .graph_key import spec_key, structure

_log = logging.getLogger(__name__)

#: data keys remembered per process by the model_data= path (least recently added out).
_MAX_DATA_KEYS = 4096
#: model_data= path: tasks of each cell (per process) that build the model to check the data key.
_CHECKS_PER_CELL = 2


class _DataEntry:
    """What the model_data= path remembers per data key."""

    __slots__ = ("key", "var_names", "sampled", "values_dependent")

    def __init__(self, key: tuple, var_names: list[str]):
        self.key = key  # structure key of the compiled model in PyMCFitter._models
        self.var_names = var_names
        self.sampled = False  # a fit with this data key has sampled
        self.values_dependent = False  # the graph changed with the data values: build every task


class _DataPath:
    """PyMCFitter's methods for ``model_data=`` (see the module docstring)."""

    def _check_due(self, dkey: tuple, ctx: TaskContext | None, count: bool = False) -> bool:
        """model_data= path: whether this task is among the first two of its cell here (``count``: record it)."""
        k = (dkey, cell_of(ctx))
        n = self._cell_checks.get(k, 0)
        if count:
            self._cell_checks[k] = n + 1
            while len(self._cell_checks) > _MAX_DATA_KEYS:
                self._cell_checks.popitem(last=False)
        return n < _CHECKS_PER_CELL

    # -- model_data= path ---------------------------------------------------------------------

    def _data_values(self, data: SimData, fit_spec: dict) -> dict[str, np.ndarray]:
        raw = self.model_data(data, fit_spec)
        if not isinstance(raw, Mapping):
            raise TypeError(
                f"data(sim_data, fit_spec) must return a dict {{pm.Data name: array}}, got {type(raw).__name__}"
            )
        return {str(k): np.asarray(v) for k, v in raw.items()}

    def _build_checked(self, pm, data: SimData, fit_spec: dict, values: Mapping[str, np.ndarray]):
        """Build the model and check that ``values`` are exactly its pm.Data values."""
        model = self._build(pm, data, fit_spec)
        var_names = self._var_names(model)
        in_model = {d.name: d.get_value(borrow=True) for d in model.data_vars}
        missing = sorted(set(in_model) - set(values))
        extra = sorted(set(values) - set(in_model))
        if missing or extra:
            raise ValueError(
                f"data(sim_data, fit_spec) must return exactly the model's pm.Data values: "
                f"missing {missing}, not pm.Data in the model {extra}"
            )
        for name, want in in_model.items():
            got = values[name]
            same = got.shape == want.shape
            if same:
                try:
                    got = got.astype(want.dtype, copy=False)
                    same = np.array_equal(got, want, equal_nan=want.dtype.kind in "fc")
                except (TypeError, ValueError):
                    same = False
            if not same:
                raise ValueError(
                    f"data(sim_data, fit_spec)[{name!r}] (shape {values[name].shape}) differs from "
                    f"the value build_model gave pm.Data {name!r} (shape {want.shape})"
                )
        return model, var_names

    def _fit_nutpie_data(self, pm, nutpie, data, fit_spec, st, seed, timing, ctx=None):
        """nutpie fit with ``model_data=``: build/compile once per data key, else only with_data.

        The first two tasks of every cell (per process) build the model anyway and check that
        its graph is the one compiled for the data key: a graph that follows the data values
        (a prior scale computed from the data, a group count) is then built for every task
        of that data key, as without ``model_data=``.
        """
        t0 = time.perf_counter()
        values = self._data_values(data, fit_spec)
        shapes = tuple(sorted((k, v.dtype.str, v.shape) for k, v in values.items()))
        dkey = (spec_key(fit_spec), shapes)
        entry = self._data_index.get(dkey)
        compiled = None if entry is None else self._models.get(entry.key)
        model = None
        if compiled is None or entry.values_dependent or self._check_due(dkey, ctx):
            model, var_names = self._build_checked(pm, data, fit_spec, values)
            key, desc = structure(model, fit_spec, var_names)
            if compiled is not None and key != entry.key and not entry.values_dependent:
                entry.values_dependent = True
                if desc["skeleton"] not in self._models.skeletons:
                    self._say("data-structure", ctx,
                              "PyMCFitter: %s: model_data= was given, but the model that build_model returns for this "
                              "task has another structure than the one built for an earlier task with the same "
                              "data shapes (its structure follows the data values, e.g. a count of groups); the "
                              "model is now built for every task with these shapes. Return such counts as pm.Data "
                              "shapes (see the PyMCFitter docs).", cell_name(ctx))
            self._check_due(dkey, ctx, count=True)
            compiled = self._models.get_or_compile(nutpie, key, desc, model, var_names, timing, ctx)
            if entry is None or entry.key not in self._models or entry.values_dependent:
                dependent = entry is not None and entry.values_dependent
                entry = _DataEntry(key, var_names)
                entry.values_dependent = dependent
                self._data_index[dkey] = entry
                self._data_index.move_to_end(dkey)
                while len(self._data_index) > _MAX_DATA_KEYS:
                    self._data_index.popitem(last=False)
        else:
            self._models.get(entry.key)  # marks it recently used
        run = with_data(compiled, values)
        timing["build"] = time.perf_counter() - t0 - timing["compile"]
        t0 = time.perf_counter()
        try:
            idata = self._nutpie_sample(nutpie, run, st, seed, entry.var_names, timing)
        except Exception as exc:
            compiled_shapes = {k: v.shape for k, v in compiled.shared_data.items()}
            if entry.sampled or all(compiled_shapes[k] == values[k].shape for k in compiled_shapes if k in values):
                raise  # not a with_data shape problem
            # the structure seemed shape-independent but nutpie fails on these shapes:
            # rebuild for them and compile a model keyed by the data shapes
            timing["failed_sampling"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            compile_before = timing["compile"]
            _log.warning(
                "PyMCFitter: the model compiled for data shapes %s failed with shapes %s (%s: %s); "
                "rebuilding and compiling it for these shapes",
                compiled_shapes, {k: v.shape for k, v in values.items()}, type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "",
            )
            if model is None:
                model, var_names = self._build_checked(pm, data, fit_spec, values)
            key, desc = structure(model, fit_spec, entry.var_names)
            key = key + (("data_shapes", shapes),)
            desc = {**desc, "data_shapes_in_key": True, "after_failure": f"{type(exc).__name__}"}
            compiled = self._models.get_or_compile(nutpie, key, desc, model, entry.var_names, timing, ctx)
            entry = _DataEntry(key, entry.var_names)
            self._data_index[dkey] = entry
            run = with_data(compiled, values)
            timing["build"] += time.perf_counter() - t1 - (timing["compile"] - compile_before)
            idata = self._nutpie_sample(nutpie, run, st, seed, entry.var_names, timing)
        entry.sampled = True
        return idata, list(entry.var_names)
