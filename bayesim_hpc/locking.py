"""A lock file that works across NFS clients and says who holds it.

``flock``-based locks (``filelock.FileLock``) do not exclude processes on different NFS
clients. :class:`DirLock` instead creates the lock file with ``O_CREAT | O_EXCL`` (atomic
on local file systems and NFSv3+) and writes the holder's host, pid, process start time
and a token into it. A lock is *stale* when its holder is on this host and that process is
gone (or the pid was reused), or, for a holder on another host, when its heartbeat (the
file's mtime, refreshed by a background thread every ``stale_after / 4`` s) has not
*advanced* during ``stale_after`` seconds of this process's monotonic clock. Wall clocks
of two hosts are never compared, so clock skew cannot make a live lock look stale or a
dead one look fresh. A stale lock is broken under a second short-lived lock
(``<path>.break``), after reading the holder again, so two processes never break and take
the same lock at once.

The heartbeat checks the token in the file before each beat. A holder that was paused
longer than ``stale_after`` (Ctrl-Z, VM suspend, NFS stall) and whose lock was broken
meanwhile finds another token: it sets :attr:`DirLock.lost` and calls ``on_lost``, and
the driver stops submitting and writing (see :mod:`bayesim_hpc.runner`).

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
from typing import Callable

import psutil

from .errors import DriverLockedError, LockLostError

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
    """An exclusive lock file with holder information and stale-lock recovery.

    ``on_lost`` is called (from the heartbeat thread) if the lock is found taken over.
    ``wait_foreign``: when the holder is on another host, :meth:`acquire` watches its
    heartbeat for up to ``stale_after`` s (beyond ``timeout``) before giving up, so a lock
    left by a vanished host is broken on the first try.
    """

    def __init__(self, path: str | os.PathLike, purpose: str = "driver", stale_after: float = 120.0,
                 heartbeat: bool = True, on_lost: Callable[[], None] | None = None,
                 wait_foreign: bool = False, notify: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.purpose = purpose
        self.stale_after = float(stale_after)
        self.heartbeat = heartbeat
        self.on_lost = on_lost
        self.wait_foreign = wait_foreign
        self.notify = notify
        self.info: LockInfo | None = None
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # token -> [mtime_ns, monotonic time of the last change, monotonic time first seen, changes seen]
        self._observed: dict[str, list] = {}
        self._guard: DirLock | None = None

    # --- reading -------------------------------------------------------------------
    def holder(self) -> LockInfo | None:
        """The current holder, or None if the lock is free or unreadable."""
        try:
            return LockInfo(**json.loads(self.path.read_text()))
        except (OSError, json.JSONDecodeError, TypeError, ValueError):
            return None

    def _observe(self, key: str) -> list | None:
        """Record the lock file's mtime for ``key`` (a token); None if the file is gone."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        now = time.monotonic()
        obs = self._observed.get(key)
        if obs is None:
            obs = self._observed[key] = [mtime, now, now, 0]
        elif obs[0] != mtime:
            obs[0], obs[1], obs[3] = mtime, now, obs[3] + 1
        return obs

    def is_stale(self, info: LockInfo | None) -> bool:
        """See the module docstring. A holder on another host is judged by watching its
        heartbeat: call this repeatedly; it turns True once the mtime stood still for
        ``stale_after`` seconds of local monotonic time."""
        if info is not None and info.host == socket.gethostname():
            if not self.path.exists():
                return False
            return not _alive(info.pid, info.pid_started)
        # half-written (a process died between create and write): a few seconds suffice
        limit = self.stale_after if info is not None else min(5.0, self.stale_after)
        obs = self._observe(info.token if info is not None else "")
        if obs is None:
            return False
        return time.monotonic() - obs[1] >= limit

    def _seen_alive(self, info: LockInfo) -> bool:
        obs = self._observed.get(info.token)
        return obs is not None and obs[3] > 0

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
        self.lost.clear()
        return True

    def _break_if_stale(self) -> bool:
        if self._guard is None:
            self._guard = DirLock(self.path.with_name(self.path.name + ".break"), "lock-breaker", heartbeat=False,
                                  stale_after=min(30.0, self.stale_after))
        guard = self._guard
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
            guard.info = None

    def acquire(self, timeout: float = 0.0, poll: float = 0.05) -> "DirLock":
        """Take the lock, waiting up to ``timeout`` seconds; raise :class:`DriverLockedError`."""
        deadline = time.monotonic() + timeout
        told = False
        while True:
            if self._try_create():
                break
            if self._break_if_stale() and self._try_create():
                break
            now = time.monotonic()
            if now >= deadline:
                info = self.holder()
                foreign = info is not None and info.host != socket.gethostname()
                obs = self._observed.get(info.token) if info is not None else None
                if (self.wait_foreign and foreign and obs is not None and not self._seen_alive(info)
                        and now < obs[2] + self.stale_after + 1.0):
                    if not told and self.notify is not None:
                        self.notify(f"{self.path} is held by {info.describe()}; watching its heartbeat for up to "
                                    f"{self.stale_after:.0f} s to see whether that driver is still alive")
                        told = True
                    time.sleep(max(poll, min(1.0, self.stale_after / 40)))
                    continue
                who = info.describe() if info else "an unknown process"
                alive = " (its heartbeat is advancing: it is alive)" if info is not None and self._seen_alive(info) else ""
                raise DriverLockedError(
                    f"{self.path.parent} is in use by {who}{alive} (lock {self.path}). Wait for it to finish, "
                    f"or stop it; if that process is gone on another host, the lock is broken "
                    f"automatically once its heartbeat has not advanced for {self.stale_after:.0f} s."
                )
            time.sleep(poll)
        if self.heartbeat:
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, daemon=True, name=f"lock-heartbeat-{self.purpose}")
            self._thread.start()
        return self

    def _beat(self) -> None:
        interval = max(0.2, self.stale_after / 4)
        while not self._stop.wait(interval):
            mine = self.info
            if mine is None:
                return
            try:
                raw = self.path.read_text()
            except FileNotFoundError:
                raw = None
            except OSError:  # storage stall: try again next beat
                continue
            try:
                token = json.loads(raw).get("token") if raw is not None else None
            except (json.JSONDecodeError, AttributeError):
                token = None
            if token != mine.token:
                if raw is not None and token is None and not raw.strip():
                    continue  # someone is writing a new lock file right now; look again
                self._lose()
                return
            try:
                os.utime(self.path)
            except FileNotFoundError:
                self._lose()
                return
            except OSError:
                continue

    def _lose(self) -> None:
        if self.lost.is_set() or self._stop.is_set():
            return
        self.lost.set()
        if self.on_lost is not None:
            try:
                self.on_lost()
            except Exception:
                pass

    def check(self) -> None:
        """Raise :class:`LockLostError` if this lock was taken over (for callers about to write)."""
        if self.lost.is_set():
            raise LockLostError(self.lost_message())

    def lost_message(self) -> str:
        now = self.holder()
        who = now.describe() if now else "nobody (the lock file is gone)"
        return (f"lost the lock {self.path}: it is now held by {who}. This driver was paused or cut off longer "
                f"than {self.stale_after:.0f} s, and the lock was taken over. It stopped submitting and writing; "
                "the other driver carries on. Check with `bayesim-hpc status`.")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            if self._thread is not threading.current_thread():
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
