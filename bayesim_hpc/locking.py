"""A lock file that works across NFS clients and says who holds it.

``flock``-based locks (``filelock.FileLock``) do not exclude processes on different NFS
clients. :class:`DirLock` instead creates the lock file with ``O_CREAT | O_EXCL`` (atomic
on local file systems and NFSv3+) and writes the holder's host, pid, process start time
and a token into it. A lock is *stale* when its holder is on this host and that process is
gone (or the pid was reused), or, for a holder on another host, when its heartbeat (the
file's mtime, refreshed by a background thread) is older than ``stale_after`` seconds.
A stale lock is broken under a second short-lived lock (``<path>.break``), after reading
the holder again, so two processes never break and take the same lock at once.

Example:
    >>> with DirLock(tmp_path / "driver.lock", purpose="driver"):   # doctest: +SKIP
    ...     run_the_study()
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from .errors import DriverLockedError

__all__ = ["LockInfo", "DirLock"]


@dataclass(frozen=True)
class LockInfo:
    host: str
    pid: int
    pid_started: float
    started: float
    token: str
    purpose: str

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"{self.purpose} pid {self.pid} on host {self.host}, started {when}"


def _proc_started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _alive(pid: int, started: float) -> bool:
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(p.create_time() - started) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


class DirLock:
    """An exclusive lock file with holder information and stale-lock recovery."""

    def __init__(self, path: str | os.PathLike, purpose: str = "driver", stale_after: float = 120.0,
                 heartbeat: bool = True):
        self.path = Path(path)
        self.purpose = purpose
        self.stale_after = float(stale_after)
        self.heartbeat = heartbeat
        self.info: LockInfo | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- reading -------------------------------------------------------------------
    def holder(self) -> LockInfo | None:
        """The current holder, or None if the lock is free or unreadable."""
        try:
            return LockInfo(**json.loads(self.path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError, TypeError, ValueError):
            return None

    def is_stale(self, info: LockInfo | None) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        if info is None:  # half-written by a process that died between create and write
            return age > 5.0
        if info.host == socket.gethostname():
            return not _alive(info.pid, info.pid_started)
        return age > self.stale_after

    # --- taking and giving back ----------------------------------------------------------
    def _try_create(self) -> bool:
        info = LockInfo(socket.gethostname(), os.getpid(), _proc_started(os.getpid()) or 0.0,
                        time.time(), uuid.uuid4().hex, self.purpose)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(asdict(info)))
            fh.flush()
            os.fsync(fh.fileno())
        self.info = info
        return True

    def _break_if_stale(self) -> bool:
        guard = DirLock(self.path.with_name(self.path.name + ".break"), "lock-breaker", heartbeat=False)
        if not guard._try_create():
            if guard.is_stale(guard.holder()):
                try:
                    guard.path.unlink()
                except FileNotFoundError:
                    pass
            return False
        try:
            info = self.holder()
            if self.is_stale(info):
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                return True
            return False
        finally:
            guard.path.unlink(missing_ok=True)

    def acquire(self, timeout: float = 0.0, poll: float = 0.05) -> "DirLock":
        """Take the lock, waiting up to ``timeout`` seconds; raise :class:`DriverLockedError`."""
        deadline = time.monotonic() + timeout
        while True:
            if self._try_create():
                break
            if self._break_if_stale() and self._try_create():
                break
            if time.monotonic() >= deadline:
                info = self.holder()
                who = info.describe() if info else "an unknown process"
                raise DriverLockedError(
                    f"{self.path.parent} is in use by {who} (lock {self.path}). Wait for it to finish, "
                    f"or stop it; if that process is gone on another host, the lock is broken "
                    f"automatically after {self.stale_after:.0f} s without a heartbeat."
                )
            time.sleep(poll)
        if self.heartbeat:
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, daemon=True, name=f"lock-heartbeat-{self.purpose}")
            self._thread.start()
        return self

    def _beat(self) -> None:
        interval = max(0.5, self.stale_after / 4)
        while not self._stop.wait(interval):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.info is not None:
            current = self.holder()
            if current is not None and current.token == self.info.token:
                self.path.unlink(missing_ok=True)
            self.info = None

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
