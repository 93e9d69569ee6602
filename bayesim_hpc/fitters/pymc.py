"""Fit PyMC models: compile once with nutpie, swap the data for each task.

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

For every task the fitter calls ``build_model`` (a few ms) only to read the new
``pm.Data`` values and the model's structure. It keeps one compiled nutpie model per
*structure key* - the fit_spec without sampler-only entries (:data:`SAMPLER_KEYS`), the
names, static shapes and dims lengths of the free RVs and stored deterministics, the
``pm.Data`` names/ranks/dtypes, and a digest of the whole graph (:func:`graph_signature`):
every op, how they connect, and the value of every constant, scalars included, of every
shared variable that is not ``pm.Data``, of transforms and initial values. So a compiled
model is reused only for a model that differs from it in nothing but ``pm.Data`` values.
The same structure reuses the compiled model via ``compiled.with_data(...)`` (about 26x
cheaper per fit than ``pm.sample``); a new structure compiles again (logged at INFO, counted
in :attr:`PyMCFitter.n_compiles`). Values baked into the graph as numbers change the key:
a prior scaled to the data (``pm.Normal("b", 0, 2.5 * np.std(y))``, as rstanarm does) or
data given as numpy arrays instead of ``pm.Data`` compile for every dataset - correct, but
a compile per task. When a model differs from one compiled before only in such constants,
the fitter logs a warning once per cell naming them (``2.5 -> 2500 in the graph of
'slope'``): make them ``pm.Data`` to compile once. Stored variables whose shape follows the
data without a named dim (e.g. a ``pm.Deterministic`` of length n) put the data shapes into
the key; leave them out of ``var_names`` to avoid that.

When rebuilding the model takes a noticeable share of the tasks of a cell (10 % over 3
tasks that compiled nothing), the fitter says so once per cell, with the ``data=`` argument
that avoids it, written for the model's ``pm.Data`` names (:func:`data_line`).

**Giving the data directly** (``data=``, recommended for large studies): building the model
only to read its ``pm.Data`` values costs ~10 ms a task (~10 % of a 4 x 1000 nutpie fit of a
small model). Pass ``data(sim_data, fit_spec) -> {pm.Data name: array}`` and ``build_model`` is
called only on the first task of each *data key* - the fit_spec without :data:`SAMPLER_KEYS`
plus the names, dtypes and shapes of the arrays ``data`` returns - and when that key's compiled
model has been evicted; every other task only calls ``data`` and ``compiled.with_data``::

    def model_data(data, fit_spec):
        return {"x": data.column("x"), "y_obs": data.column("y")}

    fitter = PyMCFitter(build_model, data=model_data, draws=1000, tune=1000, chains=4)

A task that builds checks that ``data`` returned exactly the model's ``pm.Data`` names, with
the values ``build_model`` put in them (else ValueError), derives the full structure key as
above and compiles only when that is new: a new dataset size costs one build per process, not
a compile. Same seed => identical draws with and without ``data=``. ``sampler="pymc"`` fits
still build the model every task (``pm.sample`` needs it).

The contract: the model's structure (free RVs and their shapes, stored variables, constants)
must follow from the fit_spec and the shapes and dtypes of the data arrays, not from their
values. The fitter checks it: the first two tasks of every cell in a process build the model
anyway and compare its structure key with the one compiled for the data key. A model whose
graph follows the values (a prior scale computed from the data, ``len(np.unique(g))``
groups) is then built for every task of that data key, as without ``data=``, with a warning
once per cell; a cell whose first two tasks happen to agree is trusted for the rest. Return
such values as ``pm.Data`` (a scale as a 0-d ``pm.Data``; group sizes, length n_groups, for
a count). A shape dependency the structure key cannot see (e.g. a
likelihood given ``shape=len(x)`` as a number) makes nutpie fail on other shapes: the fitter
then rebuilds the model for the new shapes, compiles it (keyed by those shapes, logged once)
and samples again; a failure with the shapes the model was compiled for, or with shapes that
have sampled before, is raised as is.

**Lazy InferenceData** (``lazy_idata=True``, the default): ``nutpie.sample`` spends about a
third of a small model's fit (~35 ms of ~110 ms for 4 x 1000 draws of the linear regression)
turning its Arrow trace into an ``arviz.InferenceData``. The fitter asks nutpie for the raw
trace instead, reads the draws and divergence/tree-depth counts from it directly (same
numbers, bit for bit) and keeps a :class:`LazyInferenceData` that builds the InferenceData -
exactly what ``nutpie.sample`` returns - only when it is used: reading ``FitResult.fit``
(a metric, the ``fit`` retention) returns the built ``arviz.InferenceData``, which ArviZ
functions accept. A study that never reads the fit object skips the cost. A
:class:`LazyInferenceData` held directly is not an ``InferenceData`` instance: call its
``materialize()``. ``lazy_idata=False`` builds it with every fit. PyMC-sampler fits are not
affected.

fit_spec entries ``sampler`` ("nutpie" or "pymc"), ``target_accept``, ``draws``, ``tune``,
``chains`` and ``max_treedepth`` override the constructor's, so one fit grid can compare
samplers: ``{"model": ["linear"], "sampler": ["nutpie", "pymc"], "target_accept": [0.8,
0.95]}``.

Same seed => bit-identical draws, in any process and order (nutpie and PyMC, ``cores=1``).

PyTensor's compile cache: :func:`configure_compile_dir` (or ``compile_dir=``) sets
``PYTENSOR_FLAGS=base_compiledir=...`` and must run before pytensor is first imported in the
process. A pickled fitter re-applies its ``compile_dir`` before unpickling ``build_model``
(which may import pymc). This module imports pymc/nutpie lazily.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
import warnings
from collections import OrderedDict
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ..data import SimData, TaskContext
from ..diagnostics import summarize_draws
from .base import FitResult

__all__ = ["PyMCFitter", "LazyInferenceData", "configure_compile_dir", "SAMPLER_KEYS", "graph_signature", "data_line"]

_log = logging.getLogger(__name__)

#: fit_spec entries that change how the model is sampled, not the model itself.
SAMPLER_KEYS = frozenset({"sampler", "target_accept", "draws", "tune", "chains", "max_treedepth"})
_SAMPLERS = ("nutpie", "pymc")
#: Loggers whose records are captured per fit (WARNING and above become FitResult.warnings;
#: lower levels are dropped, so nothing prints once per task).
_CAPTURED_LOGGERS = ("pymc", "pytensor", "nutpie", "arviz", "numba")


# --------------------------------------------------------------------------- compile dir


def configure_compile_dir(path: str | os.PathLike, *, strict: bool = True) -> bool:
    """Point PyTensor's (and nutpie's numba) compile cache at ``path`` for this process.

    Sets ``base_compiledir=<path>`` in ``PYTENSOR_FLAGS`` (keeping other flags). It must be
    called before pytensor is first imported in the process (importing pymc imports it);
    afterwards the setting cannot change. Returns True when the setting is (or already
    was) in effect. If pytensor is already imported with another directory: raises
    RuntimeError when ``strict``, else logs a warning and returns False.
    """
    path = os.path.abspath(os.fspath(path))
    os.makedirs(path, exist_ok=True)
    if "pytensor" in sys.modules:
        import pytensor

        current = os.path.realpath(str(pytensor.config.base_compiledir))
        if current == os.path.realpath(path):
            return True
        msg = (
            f"configure_compile_dir({path!r}) came too late: pytensor is already imported "
            f"with base_compiledir={current!r}. Call it before importing pymc/pytensor "
            "(or set PYTENSOR_FLAGS=base_compiledir=... in the environment)."
        )
        if strict:
            raise RuntimeError(msg)
        _log.warning(msg)
        return False
    flags = [
        f
        for f in os.environ.get("PYTENSOR_FLAGS", "").split(",")
        if f.strip() and not f.strip().startswith("base_compiledir=")
    ]
    flags.append(f"base_compiledir={path}")
    os.environ["PYTENSOR_FLAGS"] = ",".join(flags)
    return True


class _CompileDirFirst:
    """Pickled ahead of a fitter's state: unpickling it applies the compile dir."""

    def __init__(self, path: str | None):
        self.path = path

    def __reduce__(self):
        return (_apply_compile_dir, (self.path,))


def _apply_compile_dir(path: str | None) -> None:
    if path is not None:
        configure_compile_dir(path, strict=False)


def _restore_fitter(_configured: None, cls: type, state: dict) -> "PyMCFitter":
    obj = cls.__new__(cls)
    obj.__setstate__(state)
    return obj


# --------------------------------------------------------------------------- capture


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]):
        super().__init__(level=logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.append(f"{record.name}: {record.getMessage()}")
        except Exception:  # pragma: no cover - a broken log call must not fail a fit
            self.sink.append(f"{record.name}: {record.msg!r}")


class _Capture:
    """Collect PyMC/PyTensor/nutpie log records and Python warnings raised inside."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def __enter__(self) -> "_Capture":
        self._handler = _ListHandler(self.messages)
        self._saved = []
        for name in _CAPTURED_LOGGERS:
            lg = logging.getLogger(name)
            self._saved.append((lg, lg.handlers[:], lg.propagate))
            lg.handlers = [self._handler]
            lg.propagate = False
        self._wcm = warnings.catch_warnings(record=True)
        self._records = self._wcm.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc) -> None:
        self._wcm.__exit__(*exc)
        for lg, handlers, propagate in self._saved:
            lg.handlers = handlers
            lg.propagate = propagate
        for w in self._records:
            self.messages.append(f"{w.category.__name__}: {w.message}")

    def unique(self) -> list[str]:
        """Messages in first-seen order; repeats folded into ``(xN)``."""
        counts: OrderedDict[str, int] = OrderedDict()
        for m in self.messages:
            counts[m] = counts.get(m, 0) + 1
        return [m if n == 1 else f"{m} (x{n})" for m, n in counts.items()]


_IMPORT_MESSAGES: list[str] = []


def _import_pymc():
    """Import pymc and nutpie once, swallowing import-time notices (logged at DEBUG)."""
    if "pymc" in sys.modules and "nutpie" in sys.modules:
        import nutpie
        import pymc

        return pymc, nutpie
    with _Capture() as cap:
        import pymc
        import nutpie
    _IMPORT_MESSAGES.extend(cap.unique())
    for m in cap.unique():
        _log.debug("import: %s", m)
    return pymc, nutpie


def _is_panic(exc: BaseException) -> bool:
    # pyo3's PanicException derives from BaseException, which task runners do not catch
    return type(exc).__name__ == "PanicException"


# --------------------------------------------------------------------------- structure


def _canon(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return ("ndarray", v.dtype.str, v.shape, hashlib.sha1(np.ascontiguousarray(v).tobytes()).hexdigest())
    if isinstance(v, Mapping):
        return tuple(sorted((str(k), _canon(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_canon(x) for x in v)
    return v


def _dim_length(model, dim: str) -> Any:
    length = model.dim_lengths.get(dim)
    if length is None:
        coords = model.coords.get(dim)
        return None if coords is None else len(coords)
    if hasattr(length, "get_value"):
        return int(np.asarray(length.get_value()))
    if hasattr(length, "data"):
        return int(np.asarray(length.data))
    try:
        return int(length.eval())
    except Exception:  # pragma: no cover - symbolic length we cannot evaluate cheaply
        return repr(length)


def _spec_key(fit_spec: Mapping[str, Any]) -> tuple:
    """The model-defining part of a fit_spec (sampler-only entries left out), hashable."""
    return tuple(sorted((str(k), repr(_canon(v))) for k, v in fit_spec.items() if k not in SAMPLER_KEYS))


def _op_token(op) -> str:
    """An op's type and parameters (``__props__``), the same for equal ops in any build."""
    props = getattr(op, "__props__", None)
    name = f"{type(op).__module__}.{type(op).__qualname__}"
    if not props:
        return name
    try:
        return f"{name}{tuple((p, _canon(getattr(op, p))) for p in props)!r}"
    except Exception:  # pragma: no cover - an odd prop: fall back on the type name
        return name


def _value_token(value: Any) -> tuple[str, str]:
    """(digest of a constant's value, short text naming it) - scalars are written out."""
    try:
        arr = np.asarray(value)
    except Exception:  # pragma: no cover
        arr = None
    if arr is None or arr.dtype == object:
        text = repr(value)
        return hashlib.sha1(text.encode()).hexdigest(), text[:60]
    digest = hashlib.sha1(f"{arr.dtype.str}{arr.shape}".encode())
    digest.update(np.ascontiguousarray(arr).tobytes())
    if arr.size == 1:
        item = arr.item()
        text = f"{item:.6g}" if isinstance(item, float) else repr(item)
    else:
        text = f"array {arr.dtype} {arr.shape}"
    return digest.hexdigest(), text


class GraphSignature:
    """The model graph, its constants included, as digests (see :func:`graph_signature`).

    ``digest``: changes with any op, connection, constant value, non-``pm.Data`` shared
    value, transform or initial value. ``skeleton``: the same without constant values, so
    two models with equal skeletons and different digests differ only in constants.
    ``constants``: (where, value digest, short text) per constant, in graph order, to name
    the ones that differ.
    """

    __slots__ = ("digest", "skeleton", "constants")

    def __init__(self, digest: str, skeleton: str, constants: list[tuple[str, str, str]]):
        self.digest = digest
        self.skeleton = skeleton
        self.constants = constants

    def differing(self, other: "GraphSignature") -> list[str]:
        """Texts naming the constants whose values differ from ``other``'s (same skeleton)."""
        out = []
        for (where, d1, t1), (_, d2, t2) in zip(other.constants, self.constants):
            if d1 != d2:
                out.append(f"{t1} -> {t2} in the graph of {where!r}")
        return out


def graph_signature(model) -> GraphSignature:
    """Digest the graph of ``model`` that nutpie compiles, every constant included.

    Walks from every named variable (free RVs, observed RVs and their values, deterministics,
    potentials) through the ops that compute it, into inner graphs, stopping at other named
    variables; records each op with its parameters, how nodes connect, the value of every
    constant (scalars too: ``pm.Normal("b", 0, 2.5 * np.std(y))`` bakes the scale in) and of
    every shared variable that is not ``pm.Data``. A few hundred microseconds for a small model.
    """
    from pytensor.compile.sharedvalue import SharedVariable
    from pytensor.graph.basic import Constant

    data_ids = {id(d) for d in model.data_vars}
    roots: list[tuple[str, Any]] = [(rv.name, rv) for rv in model.free_RVs]
    for rv in model.observed_RVs:
        roots.append((rv.name, rv))
        roots.append((f"{rv.name} (observed values)", model.rvs_to_values[rv]))
    roots += [(d.name, d) for d in model.deterministics]
    roots += [(p.name or f"potential {i}", p) for i, p in enumerate(model.potentials)]
    named = {id(v) for _, v in roots} | data_ids
    full = hashlib.sha1()
    skel = hashlib.sha1()
    constants: list[tuple[str, str, str]] = []
    ids: dict[int, int] = {}
    seen_ops: set[int] = set()

    def emit(token: str, value_digest: str = "") -> None:
        skel.update(token.encode())
        full.update(token.encode())
        full.update(value_digest.encode())

    def leaf(where: str, var, n: int) -> None:
        if isinstance(var, Constant):
            digest, text = _value_token(var.data)
            constants.append((where, digest, text))
            emit(f"|{n}:const {var.type}", digest)
        elif isinstance(var, SharedVariable) and id(var) not in data_ids and "Generator" not in type(var).__name__:
            digest, text = _value_token(var.get_value(borrow=True))
            constants.append((f"{where} (shared {var.name})", digest, text))
            emit(f"|{n}:shared {var.name} {var.type}", digest)
        else:  # pm.Data, random generators, inner-graph inputs, named variables
            emit(f"|{n}:input {var.name} {var.type}")

    def apply(where: str, var) -> None:
        owner = var.owner
        inputs = ",".join(str(ids[id(i)]) for i in owner.inputs)
        emit(f"|{ids[id(var)]}={_op_token(owner.op)}({inputs})[{owner.outputs.index(var)}]")
        inner = getattr(owner.op, "inner_outputs", None)
        if inner is not None and id(owner.op) not in seen_ops:
            seen_ops.add(id(owner.op))
            emit("{")
            for out in inner:
                walk(f"{where} (inner graph)", out)
            emit("}")

    def walk(where: str, top) -> None:
        # iterative post-order DFS; a node's token names its inputs by their visit numbers
        stack = [(top, False)]
        while stack:
            var, expanded = stack.pop()
            if expanded:
                apply(where, var)
                continue
            if id(var) in ids:
                continue
            ids[id(var)] = n = len(ids)
            if var.owner is None or id(var) in named:
                leaf(where, var, n)
                continue
            emit(f"|{n}:node {var.type}")
            stack.append((var, True))
            stack.extend((i, False) for i in reversed(var.owner.inputs))

    # named variables first (as inputs), then the graph that defines each of them
    for where, root in roots:
        if id(root) not in ids:
            ids[id(root)] = n = len(ids)
            emit(f"#{where}")
            leaf(where, root, n)
    for where, root in roots:
        if root.owner is not None and id(root) not in data_ids:
            for inp in root.owner.inputs:
                walk(where, inp)
            apply(where, root)
    for rv, t in model.rvs_to_transforms.items():
        emit(f"#transform {rv.name} {type(t).__qualname__}", repr(_canon(_plain_attrs(t))))
    for rv, init in model.rvs_to_initial_values.items():
        digest, text = _value_token(init) if init is not None else ("", "None")
        emit(f"#initval {rv.name}", digest)
        constants.append((f"initval of {rv.name}", digest, text))
    emit(f"#check_bounds {getattr(model, 'check_bounds', None)}")
    return GraphSignature(full.hexdigest(), skel.hexdigest(), constants)


def _plain_attrs(obj: Any) -> dict:
    """The number/array/str attributes of a transform (its parameters); callables left out."""
    out = {}
    for k, v in sorted(getattr(obj, "__dict__", {}).items()):
        if isinstance(v, (int, float, str, bool, np.ndarray, np.generic, tuple, list)) and not k.startswith("__"):
            out[k] = v
    return out


def _structure(model, fit_spec: Mapping[str, Any], var_names: list[str]) -> tuple[tuple, dict]:
    """The structure key of a built model, and a short description of it."""
    spec = _spec_key(fit_spec)
    dims_of = model.named_vars_to_dims
    unresolved = False
    shapes = []
    stored = set(var_names)
    for v in list(model.free_RVs) + [d for d in model.deterministics if d.name in stored]:
        static = tuple(v.type.shape)
        dims = tuple(dims_of.get(v.name, ()) or ())
        lengths = []
        for i, s in enumerate(static):
            d = dims[i] if i < len(dims) else None
            if s is None and d is None:
                unresolved = True
            lengths.append(s if s is not None else (d, _dim_length(model, d) if d else None))
        shapes.append((v.name, tuple(lengths)))
    data = []
    for d in model.data_vars:
        val = d.get_value(borrow=True)
        data.append((d.name, val.ndim, val.dtype.str, val.shape if unresolved else None))
    sig = graph_signature(model)
    base = (spec, tuple(shapes), tuple(sorted(data)), tuple(var_names))
    key = base + (sig.digest,)
    desc = {
        "fit_spec": dict(spec),
        "free": [s[0] for s in shapes],
        "data": [d[0] for d in data],
        "constants": len(sig.constants),
        "data_shapes_in_key": unresolved,
        "skeleton": base + (sig.skeleton,),
        "signature": sig,
    }
    return key, desc


# --------------------------------------------------------------------------- raw trace

#: Sample-stat columns nutpie.sample leaves out of its InferenceData with default settings.
_RAW_SKIP_VARS = [
    "gradient", "unconstrained_draw", "mass_matrix_inv", "mass_matrix_eigvals", "mass_matrix_stds",
    "divergence_start", "divergence_end", "divergence_momentum", "divergence_start_gradient",
]


def _materialized(obj: Any) -> Any:
    return obj


class LazyInferenceData:
    """``FitResult.fit`` with ``lazy_idata=True``: the InferenceData, built on first use.

    Attribute and item access go to the InferenceData (built once, then kept); pickling
    stores the InferenceData itself. ``materialize()`` returns it.
    """

    __slots__ = ("_build", "_idata")
    #: FitResult.fit builds it on first read (see fitters.base)
    lazy_fit = True

    def __init__(self, build: Callable[[], Any]):
        self._build = build
        self._idata = None

    def materialize(self):
        """The ``arviz.InferenceData`` (what ``nutpie.sample`` would have returned)."""
        if self._idata is None:
            self._idata = self._build()
            self._build = None
        return self._idata

    @property
    def is_materialized(self) -> bool:
        return self._idata is not None

    def __getattr__(self, name: str):
        if name in LazyInferenceData.__slots__:  # not initialised (never via __init__)
            raise AttributeError(name)
        return getattr(self.materialize(), name)

    def __getitem__(self, key):
        return self.materialize()[key]

    def __contains__(self, key) -> bool:
        return key in self.materialize()

    def __iter__(self):
        return iter(self.materialize())

    def __reduce__(self):
        return (_materialized, (self.materialize(),))

    def __repr__(self) -> str:
        if self._idata is None:
            return "LazyInferenceData(<not built yet>)"
        return repr(self._idata)


class _RawFit:
    """Draws and sample-stat counts read from nutpie's raw Arrow trace."""

    __slots__ = ("draws", "divergent", "max_treedepth", "idata")

    def __init__(self, draws, divergent, max_treedepth, idata):
        self.draws = draws
        self.divergent = divergent
        self.max_treedepth = max_treedepth
        self.idata = idata  # LazyInferenceData


def _arrow_values(column, n_rows: int) -> np.ndarray | None:
    """One chain's column of a nutpie Arrow batch as (rows, *shape); None if it has nulls."""
    import pyarrow

    meta = column.field.metadata or {}
    shape = meta.get(b"shape", b"")
    shape = tuple(int(x) for x in shape.decode("utf-8").split(",")) if shape else ()
    col = pyarrow.array(column)
    if col.null_count:
        return None
    if hasattr(col, "flatten"):
        col = col.flatten()
    return col.to_numpy(zero_copy_only=False).reshape((n_rows,) + shape)


_RAW_SUPPORTED: list[bool] = []


def _raw_trace_supported() -> bool:
    """Whether this nutpie can return its raw trace and convert it as nutpie.sample does."""
    if not _RAW_SUPPORTED:
        try:
            import inspect

            import nutpie
            from nutpie.sample import _arrow_to_arviz  # noqa: F401

            ok = "return_raw_trace" in inspect.signature(nutpie.sample).parameters
        except Exception:  # pragma: no cover - another nutpie version
            ok = False
        if not ok:  # pragma: no cover
            _log.warning("PyMCFitter(lazy_idata=True): this nutpie has no raw trace; building InferenceData")
        _RAW_SUPPORTED.append(ok)
    return _RAW_SUPPORTED[0]


def _read_raw_trace(raw, compiled, var_names: list[str], n_draws: int) -> _RawFit:
    """Draws (chain, draw, ...) of ``var_names`` and stat counts of the posterior draws.

    ``draws`` is None when the trace is not laid out as expected (chains of other lengths,
    missing values, ...): the caller then builds the InferenceData and reads it as usual.
    """
    import pandas as pd
    from nutpie.sample import _arrow_to_arviz

    draw_batches, stat_batches = raw.get_arrow_trace()
    coords = {name: pd.Index(vals) for name, vals in (compiled.coords or {}).items()}

    def build():
        return _arrow_to_arviz(
            draw_batches, stat_batches, skip_vars=list(_RAW_SKIP_VARS), coords=coords, save_warmup=False
        )

    idata = LazyInferenceData(build)
    try:
        starts = []
        for stat in stat_batches:
            tuning = _arrow_values(stat.column("tuning"), stat.num_rows)
            if tuning is None or stat.num_rows - int(np.count_nonzero(tuning)) != n_draws:
                return _RawFit(None, 0.0, 0.0, idata)
            starts.append(int(np.count_nonzero(tuning)))
        draws = {}
        for v in var_names:
            parts = []
            for batch, start in zip(draw_batches, starts):
                vals = _arrow_values(batch.column(v), batch.num_rows)
                if vals is None:
                    return _RawFit(None, 0.0, 0.0, idata)
                parts.append(vals[start:])
            draws[v] = np.stack(parts)
        counts = []
        for name in ("diverging", "maxdepth_reached"):
            total = 0.0
            for stat, start in zip(stat_batches, starts):
                vals = _arrow_values(stat.column(name), stat.num_rows)
                if vals is None:
                    return _RawFit(None, 0.0, 0.0, idata)
                total += float(vals[start:].sum())
            counts.append(total)
    except (KeyError, ValueError, TypeError, AttributeError):
        return _RawFit(None, 0.0, 0.0, idata)
    return _RawFit(draws, counts[0], counts[1], idata)


# --------------------------------------------------------------------------- fitter


#: data keys remembered per process by the data= path (least recently added out).
_MAX_DATA_KEYS = 4096
#: data= path: tasks of each cell (per process) that build the model to check the data key.
_CHECKS_PER_CELL = 2
#: default path: tasks per cell measured, and the share of their time spent building the
#: model from which the fitter suggests ``data=`` (once per cell and process).
_REBUILD_TASKS = 3
_REBUILD_SHARE = 0.10


def data_line(model, data: SimData | None = None) -> str:
    """The ``data=`` argument that gives ``model``'s ``pm.Data`` values directly, as source text.

    A value equal to a column of ``data`` is written ``data.column(...)``; others are left
    as ``...`` for the user to fill in.

    >>> data_line(model, sim_data)  # doctest: +SKIP
    'lambda data, fit_spec: {"x": data.column("x"), "y_obs": data.column("y")}'
    """
    items = []
    for d in model.data_vars:
        value = d.get_value(borrow=True)
        source = "..."
        for split, table in (("train", getattr(data, "train", None)), ("test", getattr(data, "test", None))):
            if table is None:
                continue
            try:
                names = list(table.columns) if hasattr(table, "columns") else list(table)
            except TypeError:
                continue
            for name in names:
                col = np.asarray(table[name])
                if col.shape == value.shape and np.array_equal(col, value):
                    source = f"data.column({str(name)!r})" if split == "train" else \
                        f"data.column({str(name)!r}, 'test')"
                    break
            if source != "...":
                break
        items.append(f"{d.name!r}: {source}")
    return "lambda data, fit_spec: {" + ", ".join(items) + "}"


class _DataEntry:
    """What the data= path remembers per data key."""

    __slots__ = ("key", "var_names", "sampled", "values_dependent")

    def __init__(self, key: tuple, var_names: list[str]):
        self.key = key  # structure key of the compiled model in PyMCFitter._cache
        self.var_names = var_names
        self.sampled = False  # a fit with this data key has sampled
        self.values_dependent = False  # the graph changed with the data values: build every task


def _cell_of(ctx: TaskContext | None) -> tuple | None:
    return None if ctx is None else (ctx.data_idx, ctx.fit_idx)


def _cell_name(ctx: TaskContext | None) -> str:
    if ctx is None:
        return "a fit"
    cell = ctx.task_id.rsplit("_", 1)[0] if ctx.task_id.count("_") >= 2 else ctx.task_id
    return f"cell {cell} (task {ctx.task_id})"


def _with_data(compiled, values: Mapping[str, Any]):
    """``compiled`` with its shared data replaced by ``values`` (names it does not have ignored)."""
    updates = {k: values[k] for k in compiled.shared_data if k in values}
    return compiled.with_data(**updates) if updates else compiled


class PyMCFitter:
    """A :class:`~bayesim_hpc.fitters.base.Fitter` for PyMC models (nutpie or PyMC NUTS).

    build_model: ``(data: SimData, fit_spec: dict) -> pm.Model``; use ``pm.Data`` for all
        per-dataset values.
    draws, tune, chains, target_accept, max_treedepth: sampler settings (fit_spec entries
        of the same names override them per fit).
    sampler: "nutpie" (compile once, swap data) or "pymc" (``pm.sample`` each fit).
    compile_dir: PyTensor ``base_compiledir`` for this process (see
        :func:`configure_compile_dir`); applied on first fit and when unpickled.
    keep_draws_only_if_warned: if True, ``FitResult.fit`` (the InferenceData) is kept
        only for fits with warnings (divergences, R-hat, low ESS, ...), else it is None;
        if False it is always kept.
    var_names: variables whose draws are returned (default: free RVs and deterministics).
    predict: optional ``(draws: dict, data: SimData, fit_spec: dict) -> dict[str, array]``
        giving ``FitResult.predictions``.
    rhat_threshold, ess_per_chain: warning thresholds (R-hat > 1.01; ESS < 100 per chain).
    max_cached_models: compiled nutpie models kept per process (least recently used out).
    data: optional ``(data: SimData, fit_spec: dict) -> {pm.Data name: array}``: the
        ``pm.Data`` values of a dataset, so that nutpie fits build the model only once per
        data key (see the module docstring for the contract).
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
        keep_draws_only_if_warned: bool = False,
        var_names: Iterable[str] | None = None,
        predict: Callable[[dict, SimData, dict], dict] | None = None,
        *,
        max_treedepth: int = 10,
        rhat_threshold: float = 1.01,
        ess_per_chain: float = 100.0,
        max_cached_models: int = 8,
        data: Callable[[SimData, dict], Mapping[str, Any]] | None = None,
        lazy_idata: bool = True,
        model_cache: str | os.PathLike | bool | None = None,
    ) -> None:
        if not callable(build_model):
            raise TypeError("build_model must be callable: build_model(data, fit_spec) -> pm.Model")
        if data is not None and not callable(data):
            raise TypeError("data must be callable: data(sim_data, fit_spec) -> {pm.Data name: array}")
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
        self.keep_draws_only_if_warned = bool(keep_draws_only_if_warned)
        self.var_names = None if var_names is None else [str(v) for v in var_names]
        self.predict = predict
        self.rhat_threshold = float(rhat_threshold)
        self.ess_per_chain = float(ess_per_chain)
        self.max_cached_models = int(max_cached_models)
        self.data = data
        self.lazy_idata = bool(lazy_idata)
        if model_cache is True:
            model_cache = None
        self.model_cache = model_cache if model_cache in (None, False) else os.path.abspath(os.fspath(model_cache))
        self._reset_cache()

    # -- pickling: caches are per process ---------------------------------------------

    def _reset_cache(self) -> None:
        self._cache: OrderedDict = OrderedDict()
        # data= path: data key -> _DataEntry (structure key, var_names, sampled before)
        self._data_index: OrderedDict = OrderedDict()
        self.n_compiles = 0
        self.n_loaded = 0
        self._disk = None
        self.n_builds = 0
        self.compile_log: list[dict] = []
        # skeleton (structure without constant values) -> signature of its latest compile
        self._skeletons: OrderedDict = OrderedDict()
        # (what, cell) said once per process: "constants" and "rebuild" notices
        self._said: set = set()
        # data= path: (data key, cell) -> tasks checked against a fresh build
        self._cell_checks: OrderedDict = OrderedDict()
        # default path, per cell: [tasks, seconds building, seconds in the fit]
        self._rebuild_stats: dict = {}

    _CACHES = ("_cache", "_data_index", "n_compiles", "n_loaded", "_disk", "n_builds", "compile_log", "_skeletons", "_said",
               "_cell_checks", "_rebuild_stats")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for k in self._CACHES:
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_cache()

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
                if st["sampler"] == "nutpie" and self.data is not None:
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
            counts = {"divergent": idata.divergent, "max_treedepth": idata.max_treedepth}
            idata = idata.idata
        else:
            post = idata.posterior
            draws = {v: np.ascontiguousarray(post[v].values) for v in var_names}
            stats = idata.sample_stats
            depth_name = "maxdepth_reached" if "maxdepth_reached" in stats else "reached_max_treedepth"
            counts = {
                "divergent": float(stats["diverging"].values.sum()),
                "max_treedepth": float(stats[depth_name].values.sum()) if depth_name in stats else float("nan"),
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
        keep = (not self.keep_draws_only_if_warned) or bool(warn)
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
        key, desc = _structure(model, fit_spec, var_names)
        return self._get_or_compile(nutpie, key, desc, model, var_names, timing, ctx)

    def _get_or_compile(self, nutpie, key, desc, model, var_names, timing, ctx=None):
        compiled = self._cache.get(key)
        if compiled is not None:
            self._cache.move_to_end(key)
            return compiled
        self._note_constants(desc, ctx)
        t0 = time.perf_counter()
        disk = self._disk_cache()
        if disk is not None:
            compiled, loaded = disk.get_or_compile(model, var_names, key)
        else:
            compiled, loaded = nutpie.compile_pymc_model(model, var_names=var_names), False
        seconds = time.perf_counter() - t0
        timing["compile"] += seconds
        self.n_compiles += 1
        self.n_loaded += int(loaded)
        self.compile_log.append({"seconds": seconds, "loaded": loaded,
                                 **{k: v for k, v in desc.items() if k != "signature"}})
        _log.info(
            "PyMCFitter: %s nutpie model #%d in %.1f s (free %s, data %s, fit_spec %s)",
            "loaded" if loaded else "compiled", self.n_compiles, seconds, desc["free"], desc["data"],
            desc["fit_spec"],
        )
        self._cache[key] = compiled
        while len(self._cache) > self.max_cached_models:
            self._cache.popitem(last=False)
        return compiled

    def _check_due(self, dkey: tuple, ctx: TaskContext | None, count: bool = False) -> bool:
        """data= path: whether this task is among the first two of its cell here (``count``: record it)."""
        k = (dkey, _cell_of(ctx))
        n = self._cell_checks.get(k, 0)
        if count:
            self._cell_checks[k] = n + 1
            while len(self._cell_checks) > _MAX_DATA_KEYS:
                self._cell_checks.popitem(last=False)
        return n < _CHECKS_PER_CELL

    def _say(self, what: str, ctx: TaskContext | None, msg: str, *args: Any) -> bool:
        """Log a warning once per (what, cell) in this process; True if it was logged now."""
        k = (what, _cell_of(ctx))
        if k in self._said:
            return False
        self._said.add(k)
        _log.warning(msg, *args)
        return True

    def _note_rebuild(self, model, data: SimData, timing: dict, seconds: float, ctx: TaskContext | None) -> None:
        """Default path: say once per cell when rebuilding the model is a noticeable share of a task.

        Counted over tasks that compiled nothing; said after :data:`_REBUILD_TASKS` of them
        when building took at least :data:`_REBUILD_SHARE` of their time, with the ``data=``
        line that would skip it, written for this model's ``pm.Data`` names.
        """
        cell = _cell_of(ctx)
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
            "only for a new structure: PyMCFitter(build_model, data=%s, ...)",
            _cell_name(ctx), 100 * share, 1e3 * stats[1] / stats[0], 1e3 * stats[2] / stats[0],
            data_line(model, data),
        )

    def _disk_cache(self):
        """The on-disk model cache of this process (None when ``model_cache=False``)."""
        setting = getattr(self, "model_cache", None)  # fitters pickled before the setting existed
        if setting is False:
            return None
        if self._disk is None:
            from .nutpie_cache import ModelDiskCache

            directory = setting
            if directory is None:
                import pytensor

                directory = os.path.join(str(pytensor.config.base_compiledir), "bayesim-nutpie-models")
            self._disk = ModelDiskCache(directory)
        return self._disk

    def _note_constants(self, desc: dict, ctx: TaskContext | None) -> None:
        """Before a compile: if only constants differ from a model compiled before, say which."""
        sig = desc["signature"]
        skeleton = desc["skeleton"]
        before = self._skeletons.get(skeleton)
        self._skeletons[skeleton] = sig
        self._skeletons.move_to_end(skeleton)
        while len(self._skeletons) > _MAX_DATA_KEYS:
            self._skeletons.popitem(last=False)
        if before is None or before.digest == sig.digest:
            return
        changed = sig.differing(before)
        shown = "; ".join(changed[:5]) + (f"; ... {len(changed) - 5} more" if len(changed) > 5 else "")
        self._say(
            "constants", ctx,
            "PyMCFitter: %s: the model differs from one compiled before in this process only in the "
            "value of %d constant(s) [%s], so it is compiled again (said once per cell; every such task "
            "pays a compile). If a value comes from the data, make it pm.Data "
            "(e.g. scale = pm.Data(\"scale\", 2.5 * np.std(y)) instead of a number) so that one compiled "
            "model serves every task.",
            _cell_name(ctx), len(changed), shown,
        )

    def _nutpie_sample(self, nutpie, compiled, st, seed, var_names, timing):
        """nutpie.sample (timed as ``sampling``); with lazy_idata a _RawFit."""
        raw = self.lazy_idata and _raw_trace_supported()
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
            result = _read_raw_trace(result, compiled, var_names, st["draws"])
            timing["extract"] = time.perf_counter() - t0
        return result

    def _sample_nutpie(self, nutpie, model, fit_spec, var_names, st, seed, timing, ctx=None):
        compiled = self._compiled_for(nutpie, model, fit_spec, var_names, timing, ctx)
        t0 = time.perf_counter()
        values = {d.name: d.get_value(borrow=True) for d in model.data_vars}
        compiled = _with_data(compiled, values)
        timing["build"] += time.perf_counter() - t0
        return self._nutpie_sample(nutpie, compiled, st, seed, var_names, timing)

    # -- data= path ---------------------------------------------------------------------

    def _data_values(self, data: SimData, fit_spec: dict) -> dict[str, np.ndarray]:
        raw = self.data(data, fit_spec)
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
        """nutpie fit with ``data=``: build/compile once per data key, else only with_data.

        The first two tasks of every cell (per process) build the model anyway and check that
        its graph is the one compiled for the data key: a graph that follows the data values
        (a prior scale computed from the data, a group count) is then built for every task
        of that data key, as without ``data=``.
        """
        t0 = time.perf_counter()
        values = self._data_values(data, fit_spec)
        shapes = tuple(sorted((k, v.dtype.str, v.shape) for k, v in values.items()))
        dkey = (_spec_key(fit_spec), shapes)
        entry = self._data_index.get(dkey)
        compiled = None if entry is None else self._cache.get(entry.key)
        model = None
        if compiled is None or entry.values_dependent or self._check_due(dkey, ctx):
            model, var_names = self._build_checked(pm, data, fit_spec, values)
            key, desc = _structure(model, fit_spec, var_names)
            if compiled is not None and key != entry.key and not entry.values_dependent:
                entry.values_dependent = True
                if desc["skeleton"] not in self._skeletons:
                    self._say("data-structure", ctx,
                              "PyMCFitter: %s: data= was given, but the model that build_model returns for this "
                              "task has another structure than the one built for an earlier task with the same "
                              "data shapes (its structure follows the data values, e.g. a count of groups); the "
                              "model is now built for every task with these shapes. Return such counts as pm.Data "
                              "shapes (see the PyMCFitter docs).", _cell_name(ctx))
            self._check_due(dkey, ctx, count=True)
            compiled = self._get_or_compile(nutpie, key, desc, model, var_names, timing, ctx)
            if entry is None or entry.key not in self._cache or entry.values_dependent:
                dependent = entry is not None and entry.values_dependent
                entry = _DataEntry(key, var_names)
                entry.values_dependent = dependent
                self._data_index[dkey] = entry
                self._data_index.move_to_end(dkey)
                while len(self._data_index) > _MAX_DATA_KEYS:
                    self._data_index.popitem(last=False)
        else:
            self._cache.move_to_end(entry.key)
        run = _with_data(compiled, values)
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
            key, desc = _structure(model, fit_spec, entry.var_names)
            key = key + (("data_shapes", shapes),)
            desc = {**desc, "data_shapes_in_key": True, "after_failure": f"{type(exc).__name__}"}
            compiled = self._get_or_compile(nutpie, key, desc, model, entry.var_names, timing, ctx)
            entry = _DataEntry(key, entry.var_names)
            self._data_index[dkey] = entry
            run = _with_data(compiled, values)
            timing["build"] += time.perf_counter() - t1 - (timing["compile"] - compile_before)
            idata = self._nutpie_sample(nutpie, run, st, seed, entry.var_names, timing)
        entry.sampled = True
        return idata, list(entry.var_names)

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
        n_div = diag.get("divergent", 0.0)
        if n_div > 0:
            out.append(f"{int(n_div)} divergent transitions")
        n_depth = diag.get("max_treedepth", 0.0)
        if n_depth > 0:
            out.append(f"{int(n_depth)} draws hit the maximum tree depth ({st['max_treedepth']})")
        r = diag.get("rhat_max", float("nan"))
        if r > self.rhat_threshold:
            out.append(f"R-hat {r:.4f} > {self.rhat_threshold:g}")
        ess_min = self.ess_per_chain * st["chains"]
        for name, label in (("ess_bulk", "bulk"), ("ess_tail", "tail")):
            e = diag.get(name, float("nan"))
            if e < ess_min:
                out.append(f"ESS {label} {e:.0f} < {ess_min:.0f}")
        return out
