"""Which artifacts a task keeps: retention profiles and custom lists.

>>> resolve_retention("minimal")
['metrics']
>>> resolve_retention("standard")
['metrics', 'diagnostics', 'warnings']
>>> resolve_retention(["draws"])  # metrics are always kept
['metrics', 'draws']
>>> resolve_retention(["diagnostics", "draws_if_warned"])  # draws only of tasks that warned
['metrics', 'diagnostics', 'draws_if_warned']
"""

from __future__ import annotations

from typing import Iterable

from .errors import ConfigError

__all__ = ["ARTIFACTS", "PROFILES", "resolve_retention"]

#: Every artifact, in canonical order.
ARTIFACTS = ("metrics", "diagnostics", "draws", "predictions", "fit", "data", "warnings")
#: Items a custom list may name besides the artifacts.
CONDITIONAL = ("draws_if_warned",)

PROFILES = {
    "minimal": ("metrics",),
    "standard": ("metrics", "diagnostics", "warnings"),
    "debug": ARTIFACTS,
}


def resolve_retention(retain: str | Iterable[str] = "standard") -> list[str]:
    """The explicit artifact list for a profile name or a custom list (canonical order)."""
    if isinstance(retain, str):
        if retain in PROFILES:
            return list(PROFILES[retain])
        if retain in ARTIFACTS:
            retain = [retain]
        else:
            raise ConfigError(
                "retain", retain, "unknown retention profile",
                f"use one of {sorted(PROFILES)} or a list drawn from {list(ARTIFACTS)}",
            )
    try:
        items = list(retain)
    except TypeError:
        raise ConfigError(
            "retain", retain, "must be a profile name or a list of artifacts",
            f"use one of {sorted(PROFILES)} or a list drawn from {list(ARTIFACTS)}",
        ) from None
    unknown = [a for a in items if a not in ARTIFACTS + CONDITIONAL]
    if unknown:
        raise ConfigError(
            "retain", items, f"unknown artifact(s) {unknown}",
            f"choose from {list(ARTIFACTS + CONDITIONAL)}",
        )
    chosen = set(items) | {"metrics"}
    if "draws" in chosen:
        chosen.discard("draws_if_warned")
    return [a for a in ARTIFACTS + CONDITIONAL if a in chosen]
