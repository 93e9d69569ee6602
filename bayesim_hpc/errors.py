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
    "Interrupted",
    "LockLostError",
    "DriverStopped",
    "PartitionError",
    "WorkerEnvironmentError",
]


class BayesimError(Exception):
    """Base class of every error bayesim-hpc raises on purpose.

    ``exit_code`` is what the command line exits with for it (subclasses inherit it).
    """

    exit_code = 1


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

    exit_code = 6


class DriverLockedError(BayesimError):
    """Another driver holds the result directory."""

    exit_code = 5


class ErrorBudgetExceeded(BayesimError):
    """More tasks failed than ``max_errors`` allows."""

    exit_code = 4


class SystematicFailureError(ErrorBudgetExceeded):
    """The first tasks all failed the same way: a bug in the study's code, so the run stopped early."""


class Interrupted(BayesimError):
    """The run was interrupted (Ctrl-C); what finished is kept and ``resume`` finishes it."""

    exit_code = 130  # 128 + SIGINT, what a shell reports for a command ended by Ctrl-C


class LockLostError(BayesimError):
    """This driver's lock was taken over (it was paused past ``stale_after``); it stopped."""

    exit_code = 5


class DriverStopped(BayesimError):
    """The driver was told to stop (SIGTERM, e.g. by ``bayesim-hpc cancel``) and did, cleanly."""

    exit_code = 3


class PartitionError(BayesimError, ValueError):
    """No Slurm partition can hold a request (or the one named cannot), found before submitting.

    The message names the largest partition, its limits and the request field (``time``,
    ``mem_gb``, ``cpus_per_task``, ``partition``) to change (``executors.slurm_partitions``).
    """

    exit_code = 8


class WorkerEnvironmentError(BayesimError):
    """The Slurm workers' Python or packages differ from the driver's (or their interpreter does not
    run), found before submitting; the message names each difference with both versions
    (``executors.slurm_container``)."""

    exit_code = 9
