"""The plain records that cross layers: what a task produced, and a task's state.

They live here, below both the task runner and the storage layer, so storage never imports
the code that runs tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

__all__ = ["TaskRecord", "TaskState", "WorkerExit"]


class TaskState(IntEnum):
    """A task's state as the segments tell it (the value is what state arrays hold).

    >>> int(TaskState.SUCCEEDED), TaskState(2).name
    (1, 'FAILED')
    """

    MISSING = 0
    SUCCEEDED = 1
    FAILED = 2
    HIDDEN = 3  #: (status only) a task of a cell the study dropped: neither done nor pending


class WorkerExit(IntEnum):
    """Exit codes of a worker process, and of a Slurm element that runs workers (defined once here)."""

    DONE = 0      #: every task of the shard ran
    STOPPED = 3   #: told to stop (time limit, preemption, Ctrl-C): finished tasks flushed
    BUDGET = 4    #: stopped by the error budget or early on a systematic failure
    STORAGE = 5   #: a segment could not be written (disk full): another attempt would fail the same way


@dataclass
class TaskRecord:
    """One task's outcome as it is stored: scalar columns plus retained artifacts."""

    index: int
    task_id: str
    status: str
    attempt: int
    columns: dict[str, float] = field(default_factory=dict)
    error_type: str = ""
    error_message: str = ""
    error_stage: str = ""
    error_traceback: str = ""
    warnings: list[str] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)
