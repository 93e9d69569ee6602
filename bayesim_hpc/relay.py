"""Fold repeated warning and failure lines from all workers into a bounded report.

Workers relay ``[d001_f002_r00017] WARNING <message>`` and ``[...] FAILED <message>`` lines
(each worker already folds within its shard). The driver sees every worker's lines; this
folds them again across the study: the first few of each *kind* (the message with numbers
masked) are shown in full, then a count at 10, 100, 1,000 ..., and at the end one line per
kind with its count and the cells it came from.

Example:
    >>> lines = []
    >>> fold = FoldingEmit(lines.append, show=2)
    >>> for r in range(1, 13):
    ...     fold(f"[d001_f001_r{r:05d}] WARNING 3 divergent transitions")
    >>> len(lines), lines[-1]
    (3, '[d001_f001_r00010] WARNING (10 so far of this kind) 3 divergent transitions')
    >>> fold.close()
    >>> lines[-1]
    '  12 x WARNING # divergent transitions  (cells: d001_f001 12)'
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Callable

__all__ = ["FoldingEmit"]

_LINE = re.compile(r"^\[(?P<task>d\d+_f\d+)_r\d+\] (?P<label>WARNING|FAILED)(?: \(this kind seen \d+ times in shard\))? "
                   r"(?P<message>.*)$", re.S)
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_MILESTONES = (10, 100, 1000, 10_000, 100_000, 1_000_000)


class FoldingEmit:
    """An ``emit`` that folds repeated warning/failure kinds; other lines pass through."""

    def __init__(self, emit: Callable[[str], None], show: int = 3):
        self.emit, self.show = emit, show
        self.counts: Counter[tuple[str, str]] = Counter()
        self.cells: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)

    def __call__(self, line: str) -> None:
        m = _LINE.match(line)
        if not m:
            self.emit(line)
            return
        if "(this kind seen" in line:  # a worker's own milestone: the driver counts across workers
            return
        key = (m["label"], _NUMBER.sub("#", m["message"].splitlines()[0] if m["message"] else ""))
        self.counts[key] += 1
        self.cells[key][m["task"]] += 1
        n = self.counts[key]
        if n <= self.show:
            self.emit(line)
        elif n in _MILESTONES:
            self.emit(f"[{line[1:].split(']', 1)[0]}] {m['label']} ({n} so far of this kind) {m['message']}")

    def close(self) -> None:
        """One line per kind that was folded (seen more often than shown)."""
        folded = [(k, n) for k, n in self.counts.most_common() if n > self.show]
        if not folded:
            return
        self.emit("warnings and failures by kind (all workers):")
        for (label, kind), n in folded[:20]:
            cells = self.cells[(label, kind)]
            where = ", ".join(f"{c} {k}" for c, k in cells.most_common(4))
            more = f", and {len(cells) - 4} more cells" if len(cells) > 4 else ""
            self.emit(f"  {n} x {label} {kind[:160]}  (cells: {where}{more})")
