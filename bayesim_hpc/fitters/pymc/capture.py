"""Capture PyMC/PyTensor/nutpie log records and Python warnings per fit; import pymc quietly."""

from __future__ import annotations

import logging
import sys
import warnings
from collections import OrderedDict

_log = logging.getLogger(__name__)

#: Loggers whose records are captured per fit (WARNING and above become FitResult.warnings;
#: lower levels are dropped, so nothing prints once per task).
_CAPTURED_LOGGERS = ("pymc", "pytensor", "nutpie", "arviz", "numba")


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
