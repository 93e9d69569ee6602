"""The structure key of a PyMC model: what must match for a compiled nutpie model to be reused.

Two models share a compiled model only if they differ in nothing but the values of their
``pm.Data`` containers: the key holds the fit_spec (less :data:`SAMPLER_KEYS`), the shapes
of the stored variables, the ``pm.Data`` names/ranks/dtypes and :func:`graph_signature`, a
digest of the whole graph with every constant, scalars included.

>>> key, desc = structure(model, {"model": "linear"}, ["intercept", "slope"])   # doctest: +SKIP
>>> desc["signature"].differing(other_desc["signature"])                         # doctest: +SKIP
["2.5 -> 2500 in the graph of 'slope'"]
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import numpy as np

__all__ = ["SAMPLER_KEYS", "GraphSignature", "graph_signature", "structure", "spec_key"]

#: fit_spec entries that change how the model is sampled, not the model itself.
SAMPLER_KEYS = frozenset({"sampler", "target_accept", "draws", "tune", "chains", "max_treedepth"})


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


# public names of the helpers the fitter uses
structure = _structure
spec_key = _spec_key
