"""When to ask the scheduler next: back-off after quiet queries, and a rate limit.

Pure arithmetic over an injectable clock; nothing here runs a command (the monitor in
:mod:`.slurm_watch` queries through :mod:`.slurm_query`).

Example:
    >>> p = Poller(initial_delay=2, max_delay=8, min_interval=0, clock=lambda: 0.0)
    >>> [p.record(changed=False) for _ in range(4)]
    [2.0, 4.0, 8.0, 8.0]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable

from .slurm_states import JobState

__all__ = ["Poller"]


class Poller:
    """How long to wait before the next scheduler query: back-off plus a rate limit.

    After each query call :meth:`observe` (with the states it returned) or :meth:`record` (with
    whether anything changed); it returns the seconds to wait before the next query.

    * Back-off: ``initial_delay`` after a change (or the first query), then multiplied by
      ``factor`` after each query that saw no change, up to ``max_delay``.
    * Rate limit (token bucket): at most ``burst`` queries in quick succession, refilled at one
      per ``min_interval`` seconds. So in steady state, even when states change at every query,
      there is never more than one query per ``min_interval`` (10 s by default); after a quiet
      spell a change is followed by a few quick queries. ``min_interval=0`` disables the limit.

    ``clock`` (monotonic seconds) is injectable for tests; nothing here sleeps except :meth:`wait`.
    """

    def __init__(self, *, initial_delay: float = 2.0, max_delay: float = 60.0, factor: float = 2.0,
                 min_interval: float = 10.0, burst: int = 3, clock: Callable[[], float] = time.monotonic):
        if initial_delay < 0 or max_delay < initial_delay:
            raise ValueError("need 0 <= initial_delay <= max_delay")
        if factor < 1:
            raise ValueError("factor must be >= 1")
        if min_interval < 0 or burst < 1:
            raise ValueError("need min_interval >= 0 and burst >= 1")
        self.initial_delay, self.max_delay, self.factor = float(initial_delay), float(max_delay), float(factor)
        self.min_interval, self.burst, self._clock = float(min_interval), int(burst), clock
        self.queries = 0
        self._backoff: float | None = None
        self._tokens = float(burst)
        self._last_query: float | None = None
        self._last_snapshot: Hashable = object()
        self.next_due: float | None = None

    def reset(self) -> None:
        """Start the back-off again from ``initial_delay`` (the rate limit still applies)."""
        self._backoff = None

    def observe(self, states: Iterable[JobState]) -> float:
        """Record a query that returned ``states``; the delay resets if any job's state changed."""
        snapshot = frozenset((s.job_id, s.state) for s in states)
        changed = snapshot != self._last_snapshot
        self._last_snapshot = snapshot
        return self.record(changed)

    def record(self, changed: bool) -> float:
        """Record a query made now; ``changed``: did it see anything new. Returns the next delay."""
        now = self._clock()
        self.queries += 1
        if self.min_interval > 0:
            if self._last_query is not None:
                self._tokens = min(float(self.burst), self._tokens + (now - self._last_query) / self.min_interval)
            self._tokens -= 1.0
        self._last_query = now
        if changed or self._backoff is None:
            self._backoff = self.initial_delay
        else:
            self._backoff = min(self.max_delay, self._backoff * self.factor)
        # the next query may only be made once the bucket holds a whole token again
        wait_for_token = max(0.0, (1.0 - self._tokens) * self.min_interval) if self.min_interval > 0 else 0.0
        delay = max(self._backoff, wait_for_token)
        self.next_due = now + delay
        return delay

    def remaining(self) -> float:
        """Seconds until the next query is due (0 if due now or nothing was recorded yet)."""
        return 0.0 if self.next_due is None else max(0.0, self.next_due - self._clock())

    def wait(self, sleep: Callable[[float], None] = time.sleep) -> None:
        """Sleep until the next query is due."""
        delay = self.remaining()
        if delay > 0:
            sleep(delay)
