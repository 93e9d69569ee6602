"""The compiled nutpie models of one process: get-or-compile by structure key, data swap.

A :class:`CompiledModels` keeps up to ``max_models`` compiled models (least recently used
out), keyed by :func:`~.graph_key.structure`. A key not held is loaded from the on-disk
cache (:mod:`.nutpie_cache`) or compiled. Before compiling it compares the model with the
last one compiled with the same skeleton (the graph without constant values): if only
constants differ, it says once per cell which ones, so that the user can make them
``pm.Data`` and compile once.

>>> models = CompiledModels(max_models=8, disk=None, say=print)          # doctest: +SKIP
>>> key, desc = structure(model, fit_spec, var_names)                     # doctest: +SKIP
>>> compiled = models.get_or_compile(nutpie, key, desc, model, var_names, timing)   # doctest: +SKIP
>>> run = with_data(compiled, {"x": x, "y_obs": y})                      # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from typing import Any, Callable, Mapping

from ...data import TaskContext

__all__ = ["CompiledModels", "with_data", "cell_of", "cell_name"]

_log = logging.getLogger(__name__)

#: skeletons remembered per process (least recently used out).
_MAX_SKELETONS = 4096


def cell_of(ctx: TaskContext | None) -> tuple | None:
    """The (data row, fit row) of a task: notices are said once per cell."""
    return None if ctx is None else (ctx.data_idx, ctx.fit_idx)


def cell_name(ctx: TaskContext | None) -> str:
    if ctx is None:
        return "a fit"
    cell = ctx.task_id.rsplit("_", 1)[0] if ctx.task_id.count("_") >= 2 else ctx.task_id
    return f"cell {cell} (task {ctx.task_id})"


def with_data(compiled, values: Mapping[str, Any]):
    """``compiled`` with its shared data replaced by ``values`` (names it does not have ignored)."""
    updates = {k: values[k] for k in compiled.shared_data if k in values}
    return compiled.with_data(**updates) if updates else compiled


class CompiledModels:
    """Compiled nutpie models by structure key (see the module docstring).

    max_models: models kept in memory. disk: the model_cache setting - None (default
    directory under PyTensor's base_compiledir), a directory, or False (no disk cache).
    say: ``say(what, ctx, message, *args)`` logs a notice once per (what, cell).
    Counters: ``n_compiles`` (models compiled or loaded), ``n_loaded`` (of them from
    disk), ``log`` (one dict per compile: seconds, loaded, the structure description).
    """

    def __init__(self, max_models: int, disk: str | os.PathLike | bool | None,
                 say: Callable[..., Any]):
        self.max_models = int(max_models)
        self.disk_setting = disk
        self.say = say
        self.models: OrderedDict = OrderedDict()
        self.skeletons: OrderedDict = OrderedDict()
        self.n_compiles = 0
        self.n_loaded = 0
        self.log: list[dict] = []
        self._disk = None

    def __contains__(self, key) -> bool:
        return key in self.models

    def __len__(self) -> int:
        return len(self.models)

    def get(self, key):
        """The compiled model of ``key`` (marked recently used), or None."""
        compiled = self.models.get(key)
        if compiled is not None:
            self.models.move_to_end(key)
        return compiled

    def get_or_compile(self, nutpie, key, desc: dict, model, var_names: list[str], timing: dict,
                       ctx: TaskContext | None = None):
        """The compiled model of ``key``: held, loaded from disk, or compiled (timed as ``compile``)."""
        compiled = self.get(key)
        if compiled is not None:
            return compiled
        churn = self._note_constants(desc, ctx)
        t0 = time.perf_counter()
        disk = self.disk()
        if disk is not None:
            # a model that differs from an earlier one only in constants is not saved: with a
            # value computed from each dataset, that would be a file per task
            compiled, loaded = disk.get_or_compile(model, var_names, key, save=not churn)
        else:
            compiled, loaded = nutpie.compile_pymc_model(model, var_names=var_names), False
        seconds = time.perf_counter() - t0
        timing["compile"] += seconds
        self.n_compiles += 1
        self.n_loaded += int(loaded)
        self.log.append({"seconds": seconds, "loaded": loaded, **{k: v for k, v in desc.items() if k != "signature"}})
        _log.info(
            "PyMCFitter: %s nutpie model #%d in %.1f s (free %s, data %s, fit_spec %s)",
            "loaded" if loaded else "compiled", self.n_compiles, seconds, desc["free"], desc["data"],
            desc["fit_spec"],
        )
        self.models[key] = compiled
        while len(self.models) > self.max_models:
            self.models.popitem(last=False)
        return compiled

    def disk(self):
        """The on-disk model cache of this process (None when the setting is False)."""
        if self.disk_setting is False:
            return None
        if self._disk is None:
            from .nutpie_cache import ModelDiskCache

            directory = self.disk_setting
            if directory is None:
                import pytensor

                directory = os.path.join(str(pytensor.config.base_compiledir), "bayesim-nutpie-models")
            self._disk = ModelDiskCache(directory)
        return self._disk

    def _note_constants(self, desc: dict, ctx: TaskContext | None) -> bool:
        """Before a compile: if only constants differ from a model compiled before, say which (True)."""
        sig = desc["signature"]
        skeleton = desc["skeleton"]
        before = self.skeletons.get(skeleton)
        self.skeletons[skeleton] = sig
        self.skeletons.move_to_end(skeleton)
        while len(self.skeletons) > _MAX_SKELETONS:
            self.skeletons.popitem(last=False)
        if before is None or before.digest == sig.digest:
            return False
        changed = sig.differing(before)
        shown = "; ".join(changed[:5]) + (f"; ... {len(changed) - 5} more" if len(changed) > 5 else "")
        self.say(
            "constants", ctx,
            "PyMCFitter: %s: the model differs from one compiled before in this process only in the "
            "value of %d constant(s) [%s], so it is compiled again (said once per cell; every such task "
            "pays a compile). If a value comes from the data, make it pm.Data "
            "(e.g. scale = pm.Data(\"scale\", 2.5 * np.std(y)) instead of a number) so that one compiled "
            "model serves every task.",
            cell_name(ctx), len(changed), shown,
        )
        return True
