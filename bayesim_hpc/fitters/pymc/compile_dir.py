"""PyTensor's compile directory for this process, and a pickling helper that applies it first.

>>> configure_compile_dir("/scratch/me/pytensor")   # doctest: +SKIP
True
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["configure_compile_dir"]

_log = logging.getLogger(__name__)


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
