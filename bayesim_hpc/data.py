"""What a data generator returns: :class:`SimData`, and the task context it receives.

A data generator is called as ``data_generator(data_spec, rng, task_ctx)`` and returns a
:class:`SimData` (or a dict with the same keys, which :func:`coerce_sim_data` accepts).

Example:
    >>> import numpy as np
    >>> def gen(spec, rng, ctx):
    ...     x = rng.normal(size=spec["n"])
    ...     y = 1 + 2 * x + rng.normal(scale=spec["sigma"], size=spec["n"])
    ...     return SimData(train={"x": x, "y": y}, response="y",
    ...                    true_params={"intercept": 1.0, "slope": 2.0, "sigma": spec["sigma"]})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .errors import TaskError

__all__ = ["SimData", "TaskContext", "coerce_sim_data", "columns_of"]


@dataclass(frozen=True)
class TaskContext:
    """Everything a task knows about itself; passed to generators, fitters and metrics.

    ``data_idx``, ``fit_idx``, ``rep_idx`` and ``task_index`` are 0-based Python positions
    (``study.data_spec(ctx.data_idx)``); ``task_id`` and the summary's columns of the same
    names count from 1 (``d001_f001_r00001``; summary ``data_idx == ctx.data_idx + 1``).
    """

    task_id: str
    task_index: int  # canonical 0-based position in (data, fit, replicate) order
    data_idx: int
    fit_idx: int
    rep_idx: int
    data_seed: int  # integer form of the data seed (same for every fit of (d, r))
    fit_seed: int  # integer form of the fit seed (sampler seed)
    attempt: int = 1
    shard_id: int = -1


@dataclass
class SimData:
    """One simulated dataset.

    ``train``/``test`` are column mappings (dict of 1-D arrays) or pandas DataFrames.
    ``true_params`` maps parameter name to its true scalar value; ``vars_of_interest``
    defaults to its keys; ``references`` are null values some metrics compare against.
    """

    train: Any
    response: str | None = None
    true_params: dict[str, float] = field(default_factory=dict)
    test: Any = None
    vars_of_interest: list[str] | None = None
    references: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.true_params = {str(k): float(v) for k, v in dict(self.true_params).items()}
        if self.vars_of_interest is None:
            self.vars_of_interest = list(self.true_params)
        else:
            self.vars_of_interest = [str(v) for v in self.vars_of_interest]
        self.references = {str(k): float(v) for k, v in dict(self.references or {}).items()}
        self.meta = dict(self.meta or {})

    def column(self, name: str, split: str = "train") -> np.ndarray:
        """One column of ``train`` or ``test`` as a numpy array."""
        table = self.train if split == "train" else self.test
        if table is None:
            raise KeyError(f"SimData has no {split} data")
        return np.asarray(table[name])


_KEYS = ("train", "test", "response", "true_params", "vars_of_interest", "references", "meta")


def coerce_sim_data(obj: Any) -> SimData:
    """Accept a :class:`SimData` or a dict with its keys; raise a clear error otherwise."""
    if isinstance(obj, SimData):
        return obj
    if isinstance(obj, Mapping):
        unknown = sorted(set(obj) - set(_KEYS))
        if unknown:
            raise TaskError(
                "data_generator returned a dict with unknown keys "
                f"{unknown}; allowed keys are {list(_KEYS)}"
            )
        if "train" not in obj:
            raise TaskError("data_generator returned a dict without 'train'")
        return SimData(**{k: obj[k] for k in _KEYS if k in obj})
    raise TaskError(
        f"data_generator must return SimData or a dict, got {type(obj).__name__}"
    )


def columns_of(table: Any) -> dict[str, np.ndarray]:
    """A train/test table as a dict of numpy arrays (for storage)."""
    if table is None:
        return {}
    if hasattr(table, "columns") and hasattr(table, "to_numpy"):
        return {str(c): np.asarray(table[c].to_numpy()) for c in table.columns}
    if isinstance(table, Mapping):
        return {str(k): np.asarray(v) for k, v in table.items()}
    return {"values": np.asarray(table)}
