r"""What a study *is*, as text: the fingerprint that guards resume.

Each part of a study (grids, seed, replicates, retention, generator, fitter, metrics) gets a
digest. Code is described by its *parsed* source (``ast.unparse`` with docstrings dropped),
so comments, docstrings and formatting never count as a change, while any change to what
the code does does. A function's description includes the helpers and plain constants it
reads from its module (``inspect.getclosurevars``), so changing ``TRUE_SLOPE = 2.0`` at the
top of a study file counts too. Library objects (bayesim-hpc's fitters and metrics, or
anything installed) are described by their qualified name and public settings, not their
source: upgrading the package does not make every study "changed".

The description text of each code part is frozen in ``study.json`` at ``run`` time, so a
later ``run`` of the study file is compared with the text the directory was made from, and a
refusal shows a short diff. ``resume DIR`` never re-derives it from the unpickled study: the
pickle *is* the frozen study (see docs/getting-started.md, "Resuming").

Example:
    >>> a = "def gen(spec, rng, ctx):\n    'A docstring does not count.'\n    return rng.normal(size=spec['n'])\n"
    >>> b = "def gen(spec, rng, ctx):  # nor does a comment\n    return rng.normal(size = spec['n'])\n"
    >>> normalized_source(a) == normalized_source(b)
    True
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import inspect
import io
import json
import sys
import sysconfig
import textwrap
import tokenize
import types
from functools import partial as functools_partial
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["describe", "fingerprint_parts", "code_descriptions", "code_diff", "legacy_fingerprint_parts", "CODE_PARTS"]

CODE_PARTS = ("data_generator", "fitter", "metrics")
_MAX_DEPTH = 6
_LIB_DIRS = tuple({str(Path(p).resolve()) for p in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                                                    sysconfig.get_paths()["stdlib"])})


# --- what is user code ----------------------------------------------------------------
def _is_library(obj: Any) -> bool:
    """True for objects that belong to an installed package, bayesim-hpc included."""
    mod_name = getattr(obj, "__module__", None) or ""
    if mod_name.split(".")[0] in ("bayesim_hpc", "builtins", "numpy", "scipy", "pandas", "pymc", "pytensor"):
        return True
    mod = sys.modules.get(mod_name)
    file = getattr(mod, "__file__", None)
    if not file:
        return False
    try:
        path = str(Path(file).resolve())
    except OSError:
        return False
    return path.startswith(_LIB_DIRS) or "site-packages" in path or "dist-packages" in path


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', getattr(obj, '__name__', repr(obj)))}"


# --- source, normalised ---------------------------------------------------------------
class _DropDocstrings(ast.NodeTransformer):
    def _strip(self, node: Any) -> Any:
        self.generic_visit(node)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_Module = _strip


def normalized_source(src: str) -> str:
    """Source without comments, docstrings or formatting: what the code *does*.

    >>> normalized_source("def f(x):  # add one\\n    return (x +\\n            1)\\n")
    'def f(x):\\n    return x + 1'
    """
    src = textwrap.dedent(src)
    try:
        return ast.unparse(_DropDocstrings().visit(ast.parse(src)))
    except SyntaxError:  # e.g. a lambda cut out of a longer expression: drop comments and blank lines
        try:
            toks = [t for t in tokenize.generate_tokens(io.StringIO(src).readline) if t.type != tokenize.COMMENT]
            src = tokenize.untokenize(toks)
        except (tokenize.TokenError, IndentationError, SyntaxError):
            pass
        return "\n".join(line.rstrip() for line in src.splitlines() if line.strip())


def _code_text(obj: Any) -> str:
    try:
        return normalized_source(inspect.getsource(obj))
    except (OSError, TypeError):
        code = getattr(obj, "__code__", None)
        if code is not None:  # no source file (defined interactively): the bytecode is all there is
            digest = hashlib.sha256(repr((code.co_code, code.co_consts, code.co_names)).encode()).hexdigest()[:16]
            return f"<{_qualname(obj)}: no source, bytecode {digest}>"
        return f"<{_qualname(obj)}: no source>"


# --- descriptions ---------------------------------------------------------------------
def _value_text(v: Any, depth: int, seen: set[int]) -> str:
    if depth > _MAX_DEPTH:
        return f"<{type(v).__name__}>"
    if v is None or isinstance(v, (bool, int, float, str, bytes)):
        return repr(v)
    if isinstance(v, np.generic):
        return repr(v.item())
    if isinstance(v, np.ndarray):
        return f"array(shape={v.shape}, dtype={v.dtype}, sha256={hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()[:16]})"
    if isinstance(v, (list, tuple)):
        inner = ", ".join(_value_text(x, depth + 1, seen) for x in v)
        return f"[{inner}]" if isinstance(v, list) else f"({inner})"
    if isinstance(v, dict):
        items = sorted(v.items(), key=lambda kv: str(kv[0]))
        return "{" + ", ".join(f"{k!r}: {_value_text(x, depth + 1, seen)}" for k, x in items) + "}"
    if isinstance(v, (set, frozenset)):
        return "{" + ", ".join(sorted(_value_text(x, depth + 1, seen) for x in v)) + "}"
    return _object_text(v, depth + 1, seen)


def _function_text(fn: Any, depth: int, seen: set[int]) -> str:
    fn = inspect.unwrap(fn)
    if id(fn) in seen:
        return f"<{_qualname(fn)}>"
    seen.add(id(fn))
    if _is_library(fn):
        return _qualname(fn)
    text = _code_text(fn)
    used: list[str] = []
    try:
        cv = inspect.getclosurevars(fn) if inspect.isfunction(fn) else None
    except (TypeError, ValueError):
        cv = None
    if cv is not None:
        for kind, names in (("global", cv.globals), ("closure", cv.nonlocals)):
            for name, val in sorted(names.items()):
                if isinstance(val, types.ModuleType):
                    continue
                if inspect.isfunction(val) or inspect.isclass(val):
                    if _is_library(val):
                        continue
                    used.append(f"# uses {kind} {name}:\n" + textwrap.indent(_function_text(val, depth + 1, seen), "  "))
                elif isinstance(val, (type(None), bool, int, float, str, bytes, tuple, list, dict, np.ndarray, np.generic)):
                    used.append(f"# uses {kind} {name} = {_value_text(val, depth + 1, seen)}")
                else:
                    used.append(f"# uses {kind} {name} = " + _object_text(val, depth + 1, seen))
    return "\n".join([text, *used])


def _settings(obj: Any, state: dict[str, Any]) -> list[tuple[str, Any]]:
    """An object's settings: its constructor's arguments as stored (``x`` or ``_x``), else
    its public attributes. Counters and caches a fitter keeps (``n_compiles``) are not settings."""
    try:
        params = [p.name for p in inspect.signature(type(obj).__init__).parameters.values()
                  if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    # a class may describe a renamed setting by its old name (``_described_as``: new -> old), so
    # that a study frozen before the rename keeps its fingerprint
    names = getattr(type(obj), "_described_as", None) or {}
    found = [(names.get(p, p), state[p] if p in state else state[f"_{p}"]) for p in params
             if p in state or f"_{p}" in state]
    if found:
        return sorted(found)
    return sorted((k, v) for k, v in state.items() if not k.startswith("_"))


def _object_text(obj: Any, depth: int, seen: set[int]) -> str:
    if depth > _MAX_DEPTH:
        return f"<{type(obj).__name__}>"
    if inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isbuiltin(obj):
        return _function_text(obj, depth, seen)
    if inspect.isclass(obj):
        return _qualname(obj) if _is_library(obj) else _code_text(obj)
    if isinstance(obj, functools_partial):
        return f"partial({_object_text(obj.func, depth + 1, seen)}, args={_value_text(obj.args, depth + 1, seen)}, " \
               f"keywords={_value_text(obj.keywords, depth + 1, seen)})"
    cls = type(obj)
    head = _qualname(cls) if _is_library(cls) else _code_text(cls)
    state = getattr(obj, "__dict__", None)
    if state is None:
        return f"{head}\n# repr: {obj!r}" if not _is_library(cls) else f"{_qualname(cls)}: {obj!r}"
    settings = [f"  {k} = " + textwrap.indent(_value_text(v, depth + 1, seen), "  ").lstrip()
                for k, v in _settings(obj, state)]
    return "\n".join([head + "(", *settings, ")"])


def describe(obj: Any) -> str:
    """A readable, canonical text of what an object does: normalised code plus settings."""
    return _object_text(obj, 0, set())


def code_descriptions(study: Any) -> dict[str, str]:
    """The description text of each code part of a study, as frozen in ``study.json``."""
    return {
        "data_generator": describe(study.data_generator),
        "fitter": describe(study.fitter),
        "metrics": "\n".join(describe(m) for m in study.metrics),
    }


def _digest(x: Any) -> str:
    return hashlib.sha256(json.dumps(x, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint_parts(study: Any, code: dict[str, str] | None = None) -> dict[str, str]:
    """A digest per part of the study definition; ``run`` compares them to say what changed."""
    code = code_descriptions(study) if code is None else code
    return {
        "data_grid": _digest(study.data_grid.to_dict("split")),
        "fit_grid": _digest(study.fit_grid.to_dict("split")),
        "task_grid": _digest(None if study.task_grid is None else study.task_grid.to_dict("split")),
        "n_replicates": str(study.n_replicates),
        "seed": str(study.seed),
        "retain": ",".join(study.retain),
        **{part: _digest(code[part]) for part in CODE_PARTS},
    }


def code_diff(before: str, after: str, part: str, max_lines: int = 14) -> str:
    """A short unified diff of a code part's description, for the refusal message."""
    lines = list(difflib.unified_diff(before.splitlines(), after.splitlines(), f"{part} (frozen)",
                                      f"{part} (now)", n=1, lineterm=""))
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... ({len(lines) - max_lines} more diff lines)"]
    return "\n".join(lines)


# --- directories made by bayesim-hpc 0.1 -------------------------------------------------
def _legacy_source_of(obj: Any) -> str:
    target = obj if (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj)) else type(obj)
    try:
        return inspect.getsource(target)
    except (OSError, TypeError):
        code = getattr(target, "__code__", None)
        if code is not None:
            return repr((code.co_code, code.co_consts, code.co_names))
        return f"{target.__module__}.{getattr(target, '__qualname__', target)}"


def _legacy_describe(obj: Any, depth: int = 0) -> Any:
    if depth > 4:
        return repr(type(obj))
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, (list, tuple)):
        return [_legacy_describe(v, depth + 1) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _legacy_describe(v, depth + 1) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, np.ndarray):
        return hashlib.sha256(np.ascontiguousarray(obj).tobytes()).hexdigest()
    if inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isclass(obj):
        return {"source": _legacy_source_of(obj)}
    if isinstance(obj, np.generic):
        return obj.item()
    state = getattr(obj, "__dict__", None)
    out: dict[str, Any] = {"class": _qualname(type(obj)), "source": _legacy_source_of(obj)}
    if state is not None:
        names = getattr(type(obj), "_described_as", None) or {}
        out["settings"] = {names.get(k, k): _legacy_describe(v, depth + 1) for k, v in sorted(state.items())
                           if not k.startswith("_")}
    else:
        out["repr"] = repr(obj)
    return out


def legacy_fingerprint_parts(study: Any) -> dict[str, str]:
    """The code digests of bayesim-hpc 0.1 (raw source text), for directories it made."""
    parts = fingerprint_parts(study, code={p: "" for p in CODE_PARTS})
    parts.update(data_generator=_digest(_legacy_describe(study.data_generator)),
                 fitter=_digest(_legacy_describe(study.fitter)),
                 metrics=_digest([_legacy_describe(m) for m in study.metrics]))
    return parts
