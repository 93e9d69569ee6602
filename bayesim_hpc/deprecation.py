"""Old names that still work for one release: each warns once per process, naming the new one.

A renamed keyword, option, setting or column keeps working through :func:`renamed`: the
first use of each old name (in each place it can be given) in a process emits a :class:`FutureWarning` (shown by default,
unlike ``DeprecationWarning``, so users of a study file see it too); later uses are quiet.
The table of old and new names is in docs/architecture.md ("Renamed in 0.3").

Example:
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as seen:
    ...     warnings.simplefilter("always")
    ...     forget("doc_example")
    ...     renamed("doc_example", "new_example", where="an example")
    ...     renamed("doc_example", "new_example", where="an example")
    >>> [str(w.message) for w in seen]
    ['an example: doc_example is renamed new_example; the old name stops working in the next release']
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["renamed", "renamed_kwargs", "forget"]

_WARNED: set[tuple[str, str]] = set()


def renamed(old: str, new: str, *, where: str = "bayesim_hpc", stacklevel: int = 3) -> None:
    """Warn (once per process for ``old`` in ``where``) that ``old`` is now called ``new``."""
    if (old, where) in _WARNED:
        return
    _WARNED.add((old, where))
    warnings.warn(f"{where}: {old} is renamed {new}; the old name stops working in the next release",
                  FutureWarning, stacklevel=stacklevel)


def renamed_kwargs(kwargs: dict[str, Any], names: dict[str, str], *, where: str) -> dict[str, Any]:
    """Move old keyword arguments in ``kwargs`` to their new names (``names``: old -> new), warning.

    Raises ``TypeError`` when both the old and the new name are given with different values.
    """
    out = dict(kwargs)
    for old, new in names.items():
        if old not in out:
            continue
        value = out.pop(old)
        renamed(old, new, where=where, stacklevel=4)
        if new in out and out[new] is not None and out[new] != value:
            raise TypeError(f"{where}: pass only {new} ({old} is its old name), got both {new}={out[new]!r} "
                            f"and {old}={value!r}")
        out[new] = value
    return out


def forget(old: str | None = None) -> None:
    """Let ``old`` (or every old name) warn again; for tests."""
    for key in [k for k in _WARNED if old is None or k[0] == old]:
        _WARNED.discard(key)
