"""A study's history as text: when it was created, what each extension added, runtime changes.

``study.json`` keeps a ``history`` list (one entry per ``run`` that created or grew the
study, and per ``remetric`` or adaptive round); ``status`` and ``report`` show it.

Example:
    >>> lifecycle_notes({"history": [{"time": "2026-01-02T10:00:00+0000", "what": ["created: 20 tasks"]}]})
    ['2026-01-02 10:00  created: 20 tasks']
"""

from __future__ import annotations

from typing import Any

__all__ = ["lifecycle_notes"]


def lifecycle_notes(raw: dict[str, Any]) -> list[str]:
    """One line per history entry (time, then what happened), plus current runtime notes."""
    out = []
    for h in raw.get("history", []):
        when = str(h.get("time", "?"))[:16].replace("T", " ")
        what = "; ".join(h.get("what", [])) or "no change"
        out.append(f"{when}  {what}")
    if raw.get("remetric_pending"):
        out.append("remetric unfinished (interrupted): run `bayesim-hpc remetric DIR` again to finish it")
    runtime = raw.get("runtime") or {}
    if runtime.get("retain") is not None and list(runtime["retain"]) != list(raw.get("retain", runtime["retain"])):
        out.append(f"retention of the last run {runtime['retain']} differs from the frozen {raw.get('retain')}")
    return out
