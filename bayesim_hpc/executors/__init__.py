"""Executors, chosen at run time by name: ``inline``, ``local``, ``mock``, ``slurm``.

>>> make_executor("local", workers=2).parallelism
2
"""

from __future__ import annotations

from typing import Any

__all__ = ["make_executor", "EXECUTORS"]

EXECUTORS = ("inline", "local", "mock", "slurm")


def make_executor(executor: str | Any = "inline", *, workers: int | None = None, max_attempts: int = 3,
                  **options: Any) -> Any:
    """An executor object from a name (or the object itself)."""
    if not isinstance(executor, str):
        if not callable(getattr(executor, "run", None)):
            from ..errors import ConfigError

            raise ConfigError("executor", executor, "is not an executor", f"use one of {list(EXECUTORS)}")
        return executor
    if executor == "inline":
        if options:
            raise TypeError(f"the inline executor takes no options, got {sorted(options)}")
        from .inline import InlineExecutor

        return InlineExecutor()
    if executor == "local":
        from .local import LocalExecutor

        return LocalExecutor(workers=workers, max_attempts=max_attempts, **options)
    if executor == "mock":
        from .mock import MockSlurmExecutor

        return MockSlurmExecutor(workers=workers, max_attempts=max_attempts, **options)
    if executor == "slurm":
        from .slurm import SlurmExecutor

        return SlurmExecutor(workers=workers, max_attempts=max_attempts, **options)
    from ..errors import ConfigError

    raise ConfigError("executor", executor, "is not a known executor", f"use one of {list(EXECUTORS)}")
