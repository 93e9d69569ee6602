"""Exceptions with messages a user can act on."""

from __future__ import annotations

from typing import Any

__all__ = [
    "BayesimError",
    "ConfigError",
    "TaskError",
    "StudyChangedError",
    "DriverLockedError",
    "ErrorBudgetExceeded",
    "SystematicFailureError",
]


class BayesimError(Exception):
    """Base class of every error bayesim-hpc raises on purpose."""


class ConfigError(BayesimError, ValueError):
    """A study definition is wrong. The message names the field, the value and the fix."""

    def __init__(self, field: str, value: Any, problem: str, fix: str):
        self.field, self.value, self.problem, self.fix = field, value, problem, fix
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{field}={shown}: {problem}. Fix: {fix}")


class TaskError(BayesimError):
    """A task's own code returned something unusable (recorded as a failed task)."""


class StudyChangedError(BayesimError):
    """The study differs from the one frozen in the result directory."""


class DriverLockedError(BayesimError):
    """Another driver holds the result directory."""


class ErrorBudgetExceeded(BayesimError):
    """More tasks failed than ``max_errors`` allows."""


class SystematicFailureError(ErrorBudgetExceeded):
    """The first tasks all failed the same way: a bug in the study's code, so the run stopped early."""
