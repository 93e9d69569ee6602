"""Notices written for the user's own model: the ``model_data=`` line that would skip rebuilds.

>>> data_line(model, sim_data)   # doctest: +SKIP
"lambda data, fit_spec: {'x': data.column('x'), 'y_obs': data.column('y')}"
"""

from __future__ import annotations

import numpy as np

from ...data import SimData

__all__ = ["data_line"]


def data_line(model, data: SimData | None = None) -> str:
    """The ``model_data=`` argument that gives ``model``'s ``pm.Data`` values directly, as source text.

    A value equal to a column of ``data`` is written ``data.column(...)``; others are left
    as ``...`` for the user to fill in.

    >>> data_line(model, sim_data)  # doctest: +SKIP
    'lambda data, fit_spec: {"x": data.column("x"), "y_obs": data.column("y")}'
    """
    items = []
    for d in model.data_vars:
        value = d.get_value(borrow=True)
        source = "..."
        for split, table in (("train", getattr(data, "train", None)), ("test", getattr(data, "test", None))):
            if table is None:
                continue
            try:
                names = list(table.columns) if hasattr(table, "columns") else list(table)
            except TypeError:
                continue
            for name in names:
                col = np.asarray(table[name])
                if col.shape == value.shape and np.array_equal(col, value):
                    source = f"data.column({str(name)!r})" if split == "train" else \
                        f"data.column({str(name)!r}, 'test')"
                    break
            if source != "...":
                break
        items.append(f"{d.name!r}: {source}")
    return "lambda data, fit_spec: {" + ", ".join(items) + "}"
