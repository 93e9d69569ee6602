"""Compiled nutpie models on disk, so that a new worker process does not compile again.

``nutpie.compile_pymc_model`` spends most of its time (5-10 s a model here) in numba,
compiling two C callbacks (``numba.cfunc``: the log-density with its gradient, and the
expansion to stored variables) and, before that, in PyTensor's graph rewrites. nutpie's
own ``cache=True`` cannot help: numba keys its cache on the pickled closure, which holds
the data arrays, and refuses code with "dynamic globals". This module saves, per compiled
model, numba's compile results of the two callbacks (machine code as object code, via
numba's own ``CompileResult._reduce``) and the few values nutpie derives from the model
(sizes, names and shapes of the unconstrained vector, the layout of the data record), and
rebuilds a ``CompiledPyMCModel`` from them in another process: numba's linking plus PyMC's
initial-point function, well under a second. Draws are the same bit for bit.

These are nutpie and numba **internals** (``nutpie.compile_pymc`` private names,
``numba.core.ccallback.CFunc``, ``CompileResult._reduce/_rebuild``). They are used here
and nowhere else; :func:`check_internals` names what is missing after an upgrade, the
cache key holds the versions of Python, numpy, numba, llvmlite, PyTensor, PyMC and nutpie
and the CPU (name and features: code built for AVX-512 is never loaded on a CPU without
it), and ``tests/test_pymc_model_cache.py`` fails loudly when a round trip breaks.

Safety: a cache file is a pickle and loading it runs code, so only a fitter inside a
``run``/``resume`` worker (or ``replay``) loads one; read-only commands never fit. Files
are written to a temporary name and renamed into place (atomic on POSIX, also on NFS for
a rename within one directory), so many workers starting at once either see a whole file
or none; they may compile the same model at once, and the last rename wins. Any error
while loading falls back to compiling, with one warning per process.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import pickle
import platform
import sys
import tempfile
import threading
from typing import Any

import numpy as np

__all__ = ["ModelDiskCache", "check_internals", "environment_key", "TESTED_WITH"]

_log = logging.getLogger(__name__)

#: Versions the internals below were checked with (informative: the key holds the
#: installed versions, and check_internals() the names actually used).
TESTED_WITH = {"nutpie": "0.16.8", "numba": "0.65.1", "pymc": "5.28.5", "pytensor": "2.38.3"}
_FORMAT = 1
_FIELDS = {"compiled_logp_func", "compiled_expand_func", "initial_point_func", "shared_data", "user_data",
           "n_expanded", "shape_info", "logp_func", "expand_func", "_n_dim", "_shapes", "_coords",
           "_transform_adapt_args", "dims"}
_lock = threading.Lock()
_warned: set[str] = set()


def _warn_once(what: str, msg: str, *args: Any) -> None:
    if what not in _warned:
        _warned.add(what)
        _log.warning(msg, *args)


def check_internals() -> list[str]:
    """What this module needs from nutpie and numba and does not find (empty: all there)."""
    problems = []
    try:
        import nutpie.compile_pymc as ncp
        from numba.core import compiler, serialize
        from numba.core.ccallback import CFunc
    except Exception as exc:  # pragma: no cover - nutpie/numba missing or moved
        return [f"import: {type(exc).__name__}: {exc}"]
    for name in ("CompiledPyMCModel", "update_user_data", "_prepare_dims_and_coords", "_wrap_with_lock",
                 "_rv_dict_to_flat_array_wrapper"):
        if not hasattr(ncp, name):
            problems.append(f"nutpie.compile_pymc.{name} is gone")
    fields = set(getattr(getattr(ncp, "CompiledPyMCModel", None), "__dataclass_fields__", {}))
    if fields != _FIELDS:
        problems.append(f"nutpie CompiledPyMCModel fields changed: {sorted(fields ^ _FIELDS)}")
    for obj, name in ((compiler.CompileResult, "_reduce"), (compiler.CompileResult, "_rebuild"),
                      (CFunc, "compile"), (serialize, "dumps")):
        if not hasattr(obj, name):
            problems.append(f"numba {getattr(obj, '__name__', obj)}.{name} is gone")
    try:
        source = inspect.getsource(CFunc.compile)
    except (OSError, TypeError):  # no source installed: cannot check, trust the round trip
        source = "self._cache.load_overload"
    if "self._cache.load_overload" not in source:
        problems.append("numba CFunc.compile no longer asks self._cache.load_overload")
    return problems


def environment_key() -> str:
    """Versions and CPU that compiled code depends on (part of every cache key)."""
    import llvmlite
    import llvmlite.binding as llvm
    import numba
    import nutpie
    import pymc
    import pytensor

    try:
        cpu = llvm.get_host_cpu_name() + ":" + llvm.get_host_cpu_features().flatten()
    except Exception:  # pragma: no cover - an llvmlite without these
        cpu = platform.machine() + ":" + platform.processor()
    parts = [f"format={_FORMAT}", f"python={sys.version}", f"numpy={np.__version__}",
             f"numba={numba.__version__}", f"llvmlite={llvmlite.__version__}", f"pytensor={pytensor.__version__}",
             f"pymc={pymc.__version__}", f"nutpie={nutpie.__version__}", f"floatX={pytensor.config.floatX}",
             f"cpu={cpu}", f"numba_cpu={os.environ.get('NUMBA_CPU_NAME', '')}:{os.environ.get('NUMBA_CPU_FEATURES', '')}"]
    return "\n".join(parts)


class _Capture:
    """A numba function cache that loads nothing and keeps what is compiled."""

    def __init__(self) -> None:
        self.results: list[tuple[str, bytes]] = []

    def load_overload(self, sig, target_context):
        return None

    def save_overload(self, sig, cres) -> None:
        from numba.core import serialize

        if cres.library.has_dynamic_globals:  # addresses of this process baked in: not reusable
            self.results.append(("", b""))
            return
        self.results.append((cres.fndesc.llvm_cfunc_wrapper_name, serialize.dumps(cres._reduce())))


class _LoadedCFunc:
    """What nutpie reads of a ``numba.cfunc``: its ``address`` (the library is kept alive)."""

    def __init__(self, wrapper_name: str, payload: bytes):
        from numba.core import compiler
        from numba.core.registry import cpu_target

        cres = compiler.CompileResult._rebuild(cpu_target.target_context, *pickle.loads(payload))
        self._library = cres.library
        self.address = cres.library.get_pointer_to_function(wrapper_name)
        if not self.address:
            raise RuntimeError(f"symbol {wrapper_name} not found in the cached library")


def _compile_capturing(model, var_names):
    """``nutpie.compile_pymc_model`` with the two ``numba.cfunc`` results captured."""
    import numba
    import nutpie
    from numba.core import sigutils
    from numba.core.ccallback import CFunc

    capture = _Capture()
    original = numba.cfunc

    def cfunc(sig, locals={}, cache=False, pipeline_class=None, **options):  # noqa: B006 - numba's signature
        def wrapper(func):
            extra = {} if pipeline_class is None else {"pipeline_class": pipeline_class}
            res = CFunc(func, sigutils.normalize_signature(sig), locals=dict(locals), options=options, **extra)
            res._cache = capture
            res.compile()
            return res

        return wrapper

    with _lock:
        numba.cfunc = cfunc
        try:
            compiled = nutpie.compile_pymc_model(model, var_names=var_names)
        finally:
            numba.cfunc = original
    return compiled, capture.results


class ModelDiskCache:
    """Compiled nutpie models in ``directory``, one file per key.

    >>> cache = ModelDiskCache("/scratch/study/compile/nutpie-models")   # doctest: +SKIP
    >>> compiled, loaded = cache.get_or_compile(model, var_names, structure_key)   # doctest: +SKIP
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.path.abspath(os.fspath(directory))
        self.n_loaded = 0
        self.n_saved = 0
        self._env: str | None = None
        self._usable: bool | None = None

    def usable(self) -> bool:
        if self._usable is None:
            try:
                problems = check_internals()
            except Exception as exc:  # pragma: no cover - whatever an upgrade breaks
                problems = [f"{type(exc).__name__}: {exc}"]
            if problems:
                _warn_once("internals", "PyMCFitter: the on-disk model cache is off: this nutpie/numba "
                           "(tested with %s) lacks what it uses: %s", TESTED_WITH, "; ".join(problems))
            self._usable = not problems
        return self._usable

    def path_for(self, structure_key: Any) -> str:
        if self._env is None:
            self._env = environment_key()
        digest = hashlib.sha256(self._env.encode())
        digest.update(repr(structure_key).encode())
        return os.path.join(self.directory, f"model-{digest.hexdigest()[:40]}.pkl")

    def get_or_compile(self, model, var_names: list[str], structure_key: Any, save: bool = True) -> tuple[Any, bool]:
        """(compiled model, loaded from disk?). Never raises for the cache's own problems.

        ``save=False``: a model compiled here is not written (one not likely to be asked for
        again, e.g. with a constant that changes every dataset: a file per task would fill
        the disk).
        """
        if not self.usable():
            import nutpie

            return nutpie.compile_pymc_model(model, var_names=var_names), False
        path = self.path_for((structure_key, tuple(var_names)))
        if os.path.exists(path):
            try:
                compiled = self._load(path, model)
                self.n_loaded += 1
                return compiled, True
            except Exception as exc:
                _warn_once("load", "PyMCFitter: could not load the cached model %s (%s: %s); compiling instead "
                           "(said once per process)", path, type(exc).__name__, str(exc)[:200])
        if not save:
            import nutpie

            return nutpie.compile_pymc_model(model, var_names=var_names), False
        compiled, results = _compile_capturing(model, var_names)
        try:
            self._save(path, compiled, results)
        except Exception as exc:
            _warn_once("save", "PyMCFitter: could not save the compiled model to %s (%s: %s); "
                       "every process compiles it (said once per process)", path, type(exc).__name__, exc)
        return compiled, False

    # -- file format --------------------------------------------------------------------

    def _save(self, path: str, compiled, results) -> None:
        if len(results) != 2 or not all(name for name, _ in results):
            return  # not the two callbacks we know, or code with dynamic globals: not cached
        closure = inspect.getclosurevars(compiled.initial_point_func).nonlocals
        state = {
            "format": _FORMAT,
            "n_dim": compiled._n_dim,
            "n_expanded": compiled.n_expanded,
            "shape_info": compiled.shape_info,
            "shared": {k: (v.dtype.str, v.ndim) for k, v in compiled.shared_data.items()},
            "user_dtype": compiled.user_data.dtype,
            "init_names": list(closure["names"]),
            "init_shapes": [tuple(s) for s in closure["shapes"]],
            "logp": results[0],
            "expand": results[1],
        }
        os.makedirs(self.directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pkl", dir=self.directory)
        umask = os.umask(0)
        os.umask(umask)
        try:
            os.fchmod(fd, 0o666 & ~umask)  # as a plain open() would: readable by the study's group
            with os.fdopen(fd, "wb") as fh:
                pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self.n_saved += 1

    def _load(self, path: str, model):
        import nutpie.compile_pymc as ncp
        from pymc.initial_point import make_initial_point_fn

        with open(path, "rb") as fh:
            state = pickle.load(fh)
        if state.get("format") != _FORMAT:
            raise ValueError(f"cache format {state.get('format')} (expected {_FORMAT})")
        shared = {}
        for name, (dtype, ndim) in state["shared"].items():
            value = np.array(model[name].get_value(borrow=True), dtype=dtype, order="C", copy=True)
            if value.ndim != ndim:
                raise ValueError(f"shared variable {name} has rank {value.ndim}, the cached model {ndim}")
            value.flags.writeable = False
            shared[name] = value
        user_data = np.zeros((), dtype=state["user_dtype"])
        ncp.update_user_data(user_data, shared)
        # PyMC's initial point function, made as nutpie.compile_pymc_model makes it
        ipfn = make_initial_point_fn(model=model, overrides=None, default_strategy="support_point",
                                     jitter_rvs=set(model.free_RVs), return_transformed=True)
        ipfn = ncp._rv_dict_to_flat_array_wrapper(ncp._wrap_with_lock(ipfn), names=state["init_names"],
                                                  shapes=state["init_shapes"])
        dims, coords = ncp._prepare_dims_and_coords(model, state["shape_info"])
        return ncp.CompiledPyMCModel(
            _n_dim=state["n_dim"], dims=dims, _coords=coords,
            _shapes={name: tuple(shape) for name, _, shape in zip(*state["shape_info"])},
            compiled_logp_func=_LoadedCFunc(*state["logp"]), compiled_expand_func=_LoadedCFunc(*state["expand"]),
            initial_point_func=ipfn, shared_data=shared, user_data=user_data, n_expanded=state["n_expanded"],
            shape_info=state["shape_info"], logp_func=None, expand_func=None,
        )
