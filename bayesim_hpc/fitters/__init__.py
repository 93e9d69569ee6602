"""Fitters: the protocol and the built-ins (MockFitter, ConjugateLinearFitter, PyMCFitter)."""

from .base import DIAGNOSTIC_COLUMNS, FitResult, Fitter
from .conjugate import ConjugateLinearFitter
from .mock import MockFitter

__all__ = ["FitResult", "Fitter", "DIAGNOSTIC_COLUMNS", "MockFitter", "ConjugateLinearFitter", "PyMCFitter"]


def __getattr__(name: str):  # PyMC is imported only when PyMCFitter is asked for
    if name == "PyMCFitter":
        from .pymc import PyMCFitter

        return PyMCFitter
    raise AttributeError(name)
