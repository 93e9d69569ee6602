"""Which artifacts a task keeps: retention profiles and custom lists.

>>> resolve_retention("minimal")
['metrics']
>>> resolve_retention("standard")
['metrics', 'diagnostics', 'warnings']
>>> resolve_retention(["draws"])  # metrics are always kept
['metrics', 'draws']
"""

from __future__ import annotations

from typing import Iterable

from .errors import ConfigError

__all__ = ["ARTIFACTS", "PROFILES", "resolve_retention"]

#: Every artifact, in canonical order.
ARTIFACTS = ("metrics", "diagnostics", "draws", "predictions", "fit", "data", "warnings")

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
    unknown = [a for a in items if a not in ARTIFACTS]
    if unknown:
        raise ConfigError(
            "retain", items, f"unknown artifact(s) {unknown}",
            f"choose from {list(ARTIFACTS)}",
        )
    chosen = set(items) | {"metrics"}
    return [a for a in ARTIFACTS if a in chosen]
