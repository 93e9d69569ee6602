"""Notifications: tell the user (email, webhook) when a study ends, stops early, fails a lot or stalls.

``--notify`` on ``run``/``resume`` takes an email address or an ``http(s)://`` webhook URL
(repeatable). The driver sends:

* ``finished``: the run ended (every task done, or some failed or missing);
* ``stopped``: the run stopped early (a systematic failure, the error budget, SIGTERM/cancel);
* ``failure_rate``: at least ``failure_rate`` of this run's tasks failed (after 10 tasks);
* ``stalled``: nothing progressed for ``stall_minutes``.

A webhook gets a POST of a small JSON object (:func:`payload`); an email goes through the
login node's ``sendmail`` (or ``mail``). Each kind is sent at most once per
``min_interval_minutes`` (the rate limit); sending happens in background threads with a short
timeout, so a dead webhook never stops or slows the study: its first failure is reported once
as a warning. The settings are runtime settings (``study.json``'s ``runtime.notify``): ``resume``
keeps them; ``--no-notify`` clears them.

With ``--detach`` on Slurm no driver is left to send anything: email addresses become Slurm's own
``--mail-type=END,FAIL --mail-user`` on the submitted arrays (one mail per array), and webhooks
are not called (the driver says so).

Example:
    >>> s = resolve_settings(["me@example.org"], None, None)
    >>> s.emails, s.webhooks
    (('me@example.org',), ())
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import ConfigError

__all__ = ["NotifySettings", "Notifier", "resolve_settings", "check_target", "payload", "post_json", "send_mail",
           "slurm_mail_options", "EVENT_KINDS", "can_mail", "resolve_notify", "start_notifier",
           "with_slurm_mail"]

EVENT_KINDS = ("finished", "stopped", "failure_rate", "stalled")
_EMAIL = re.compile(r"^[^@\s,;]+@[^@\s,;]+\.[^@\s,;]+$")
MIN_TASKS_FOR_RATE = 10


def check_target(value: str) -> str:
    """An email address or an http(s) URL, stripped; anything else is a clear error.

    >>> check_target(" https://hooks.example.org/x "), check_target("a@b.org")
    ('https://hooks.example.org/x', 'a@b.org')
    """
    v = str(value).strip()
    if v.startswith("mailto:"):
        v = v[len("mailto:"):]
    if re.match(r"^https?://[^\s/]+", v) or _EMAIL.match(v):
        return v
    raise ConfigError("--notify", value, "is neither an email address nor an http(s):// webhook URL",
                      "give e.g. --notify you@university.edu or --notify https://hooks.example.org/abc")


@dataclass(frozen=True)
class NotifySettings:
    """Where to send notifications, and when (stored in study.json's runtime settings)."""

    targets: tuple[str, ...]
    stall_minutes: float = 60.0
    failure_rate: float = 0.25
    min_interval_minutes: float = 60.0

    @property
    def emails(self) -> tuple[str, ...]:
        return tuple(t for t in self.targets if not t.startswith(("http://", "https://")))

    @property
    def webhooks(self) -> tuple[str, ...]:
        return tuple(t for t in self.targets if t.startswith(("http://", "https://")))

    def to_runtime(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_runtime(cls, d: dict[str, Any] | None) -> "NotifySettings | None":
        if not d or not d.get("targets"):
            return None
        known = {k: d[k] for k in ("stall_minutes", "failure_rate", "min_interval_minutes") if d.get(k) is not None}
        return cls(tuple(d["targets"]), **known)


def resolve_settings(targets: Sequence[str] | None, options: dict[str, Any] | None,
                     stored: dict[str, Any] | None) -> NotifySettings | None:
    """This run's settings: the given targets (``[]``: none, clearing the stored ones), else the
    stored ones; ``options`` (stall_minutes, failure_rate, min_interval_minutes) override."""
    base = NotifySettings.from_runtime(stored)
    if targets is not None:
        checked = tuple(dict.fromkeys(check_target(t) for t in targets))
        base = replace(base, targets=checked) if base else NotifySettings(checked) if checked else None
        if not checked:
            return None
    opts = {k: v for k, v in (options or {}).items() if v is not None}
    if base is None:
        if opts:
            raise ConfigError("notify_options", opts, "are set, but there is no --notify target (none given, "
                              "none kept from an earlier run)", "add --notify ADDRESS_OR_URL (resume keeps it)")
        return None
    if opts.get("failure_rate") is not None and not 0 < float(opts["failure_rate"]) <= 1:
        raise ConfigError("--notify-failure-rate", opts["failure_rate"], "is not a share in (0, 1]",
                          "give e.g. 0.25 for 25 % of the tasks")
    if opts.get("stall_minutes") is not None and float(opts["stall_minutes"]) <= 0:
        raise ConfigError("--notify-stall-minutes", opts["stall_minutes"], "must be > 0", "give e.g. 60")
    return replace(base, **{k: float(v) for k, v in opts.items()})


def slurm_mail_options(settings: NotifySettings | None) -> dict[str, str]:
    """sbatch options for Slurm's own mail to the email targets (``{}`` when there are none)."""
    if settings is None or not settings.emails:
        return {}
    return {"mail-type": "END,FAIL", "mail-user": ",".join(settings.emails)}


def with_slurm_mail(settings: NotifySettings | None, executor: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Executor options with Slurm's own mail for the email targets, where the driver cannot send:
    ``--detach`` (no driver stays) or no ``sendmail``/``mail`` on this host. Other cases: unchanged."""
    if settings is None or not settings.emails or executor != "slurm":
        return options
    if options.get("detach") or not can_mail():
        return {**options, "additional": {**slurm_mail_options(settings), **(options.get("additional") or {})}}
    return options


def payload(*, event: str, state: str, study: str, directory: str | Path, total: int, succeeded: int, failed: int,
            missing: int, message: str = "") -> dict[str, Any]:
    """The JSON a webhook receives (and the facts an email states)."""
    return {"event": event, "state": state, "study": study, "directory": str(directory), "tasks": int(total),
            "succeeded": int(succeeded), "failed": int(failed), "missing": int(missing), "message": message,
            "status_command": f"bayesim-hpc status {directory}", "host": socket.gethostname(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def post_json(url: str, data: dict[str, Any], timeout: float) -> None:
    """POST ``data`` as JSON; raises on a connection error, a timeout or an HTTP error status."""
    req = urllib.request.Request(url, data=json.dumps(data).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": "bayesim-hpc"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # HTTPError (a subclass of URLError) on >= 400
        resp.read(1024)


def send_mail(address: str, subject: str, body: str, timeout: float,
              which: Callable[[str], str | None] = shutil.which) -> None:
    """Send one email with the login node's ``sendmail`` (or ``mail``); raises when neither works."""
    sendmail = which("sendmail") or next((p for p in ("/usr/sbin/sendmail", "/usr/lib/sendmail")
                                          if Path(p).is_file()), None)
    if sendmail:
        msg = f"To: {address}\nSubject: {subject}\n\n{body}\n"
        proc = subprocess.run([sendmail, "-t"], input=msg, text=True, capture_output=True, timeout=timeout)
    elif which("mail"):
        proc = subprocess.run(["mail", "-s", subject, address], input=body + "\n", text=True, capture_output=True,
                              timeout=timeout)
    else:
        raise OSError("neither sendmail nor mail is installed here")
    if proc.returncode != 0:
        raise OSError(f"exit {proc.returncode}: {(proc.stderr or proc.stdout or '').strip()[:200]}")


def can_mail(which: Callable[[str], str | None] = shutil.which) -> bool:
    """Whether this host has a ``sendmail`` or ``mail`` the driver can use."""
    return bool(which("sendmail") or which("mail") or any(Path(p).is_file() for p in
                                                          ("/usr/sbin/sendmail", "/usr/lib/sendmail")))


@dataclass
class Notifier:
    """Sends a run's notifications; see the module docstring.

    ``clock``, ``post`` and ``mail`` are injectable (tests); ``background=False`` sends in the
    calling thread (tests). Call :meth:`progress` with each progress update (or :meth:`attach`
    a :class:`~.executors.base.ProgressLine`), :meth:`start` a ticker that checks for a stall,
    :meth:`event` for the end, and :meth:`close` to wait (briefly) for sends in flight.
    """

    settings: NotifySettings
    study: str
    directory: str
    total: int
    done0: int = 0
    failed0: int = 0
    emit: Callable[[str], None] = print
    clock: Callable[[], float] = time.monotonic
    post: Callable[[str, dict, float], None] = post_json
    mail: Callable[[str, str, str, float], None] = send_mail
    background: bool = True
    timeout_s: float = 5.0
    sent: list[dict[str, Any]] = field(default_factory=list)  # what was sent (event, target)
    suppressed: dict[str, int] = field(default_factory=dict)  # rate-limited events per kind

    def __post_init__(self) -> None:
        self.done, self.failed = self.done0, self.failed0
        self._last_change = self.clock()
        self._last_sent: dict[str, float] = {}
        self._stalled = False
        self._rate_sent = False
        self._warned: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._ticker: threading.Thread | None = None

    # --- counts ---------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        return {"total": self.total, "succeeded": max(0, self.done - self.failed), "failed": self.failed,
                "missing": max(0, self.total - self.done)}

    def attach(self, bar: Any) -> None:
        """Observe a ProgressLine: every ``bar.update(done, failed)`` also reaches :meth:`progress`."""
        original = bar.update

        def update(done: int, failed: int, force: bool = False) -> None:
            original(done, failed, force)
            self.progress(done, failed)

        bar.update = update

    def progress(self, done: int, failed: int) -> None:
        """A progress update (tasks run, of them failed, since the study began)."""
        with self._lock:
            changed = (done, failed) != (self.done, self.failed)
            self.done, self.failed = done, failed
            if changed:
                self._last_change = self.clock()
                self._stalled = False
            run, bad = done - self.done0, failed - self.failed0
        if (changed and not self._rate_sent and run >= MIN_TASKS_FOR_RATE
                and bad / run >= self.settings.failure_rate):
            self._rate_sent = True
            self.event("failure_rate", "running",
                       f"{bad} of the {run} tasks run so far failed ({100 * bad / run:.0f} %, threshold "
                       f"{100 * self.settings.failure_rate:.0f} %); see the errors with: bayesim-hpc status "
                       f"{self.directory}")
        self.check()

    def check(self) -> None:
        """Send ``stalled`` when nothing progressed for ``stall_minutes`` (once per stall)."""
        with self._lock:  # the ticker thread and progress() both check
            idle = self.clock() - self._last_change
            fire = not self._stalled and idle >= self.settings.stall_minutes * 60
            if fire:
                self._stalled = True
        if fire:
            self.event("stalled", "running",
                       f"nothing progressed for {idle / 60:.0f} minutes (jobs may wait in the queue, or hang); "
                       f"look with: bayesim-hpc status {self.directory}")

    # --- sending --------------------------------------------------------------------------
    def event(self, kind: str, state: str, message: str = "", counts: dict[str, int] | None = None) -> bool:
        """Send one event to every target, unless one of this kind went out within the rate limit."""
        with self._lock:
            now = self.clock()
            last = self._last_sent.get(kind)
            if last is not None and now - last < self.settings.min_interval_minutes * 60:
                self.suppressed[kind] = self.suppressed.get(kind, 0) + 1
                return False
            self._last_sent[kind] = now
        c = counts or self.counts()
        data = payload(event=kind, state=state, study=self.study, directory=self.directory, total=c["total"],
                       succeeded=c["succeeded"], failed=c["failed"], missing=c["missing"], message=message)
        for target in self.settings.targets:
            self.sent.append({"event": kind, "target": target})
            if self.background:
                t = threading.Thread(target=self._send, args=(target, data), daemon=True, name="bayesim-notify")
                t.start()
                self._threads.append(t)
            else:
                self._send(target, data)
        return True

    def _send(self, target: str, data: dict[str, Any]) -> None:
        try:
            if target.startswith(("http://", "https://")):
                self.post(target, data, self.timeout_s)
            else:
                subject = f"bayesim-hpc: {data['study']} {data['event']} ({data['state']})"
                body = (f"{data['message']}\n\n{data['succeeded']} succeeded, {data['failed']} failed, "
                        f"{data['missing']} missing of {data['tasks']} tasks\n{data['directory']} on {data['host']}\n"
                        f"{data['status_command']}")
                self.mail(target, subject, body, self.timeout_s)
        except Exception as exc:  # never let a notification stop or slow the study
            with self._lock:
                first = target not in self._warned
                self._warned.add(target)
            if first:
                why = f"{type(exc).__name__}: {exc}" if not isinstance(exc, urllib.error.HTTPError) else \
                    f"HTTP {exc.code}"
                self.emit(f"warning: notification to {target} failed ({why}); the study goes on, and later "
                          "failures of this target are not reported")

    # --- lifetime -------------------------------------------------------------------------
    def start(self, tick_s: float | None = None) -> None:
        """A daemon thread that checks for a stall every ``tick_s`` seconds (default: a 10th of
        ``stall_minutes``, between 1 s and 60 s)."""
        tick = tick_s if tick_s is not None else min(60.0, max(1.0, self.settings.stall_minutes * 6))

        def loop() -> None:
            while not self._stop.wait(tick):
                self.check()

        self._ticker = threading.Thread(target=loop, daemon=True, name="bayesim-notify-ticker")
        self._ticker.start()

    def close(self, wait_s: float | None = None) -> None:
        """Stop the ticker and wait up to ``wait_s`` (default: the send timeout + 1 s) for sends."""
        self._stop.set()
        deadline = time.monotonic() + (self.timeout_s + 1.0 if wait_s is None else wait_s)
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def run_ended(self, red: Any, budget_exceeded: bool, systematic: str | None) -> None:
        """The end of a run: ``stopped`` (early stop) or ``finished``, with the reducer's counts."""
        counts = None
        if red is not None:
            counts = {"total": red.n_tasks, "succeeded": red.n_success, "failed": red.n_failed,
                      "missing": red.n_missing}
        if budget_exceeded:
            first = (systematic or "").splitlines()[0] if systematic else "more tasks failed than max_errors allows"
            self.event("stopped", "systematic failure" if systematic else "error budget exceeded",
                       f"stopped early: {first}", counts)
            return
        c = counts or self.counts()
        state = "completed" if not c["failed"] and not c["missing"] else "incomplete"
        self.event("finished", state, "every task succeeded" if state == "completed" else
                   f"finish with: bayesim-hpc resume {self.directory}", counts)


def resolve_notify(rd: Any, targets: Sequence[str] | None, options: dict[str, Any] | None) -> NotifySettings | None:
    """This run's settings for the result directory ``rd``: given ones, else those stored by the last run."""
    stored = None
    try:
        stored = (json.loads(Path(rd.study_json).read_text()).get("runtime") or {}).get("notify")
    except (OSError, ValueError):
        pass
    return resolve_settings(targets, options, stored)


def start_notifier(settings: NotifySettings | None, rd: Any, total: int, done0: int, failed0: int,
                   emit: Callable[[str], None], bar: Any, *, detached: bool = False,
                   dry_run: bool = False) -> Notifier | None:
    """The driver's notifier for this run, observing ``bar`` and ticking; None when nothing is to be sent."""
    if settings is None or dry_run:
        return None
    if detached:
        if settings.webhooks:
            emit("notify: --detach leaves no driver to call webhooks ("
                 f"{', '.join(settings.webhooks)}); they are called by an attached run or resume. "
                 + ("Email addresses get Slurm's own mail (END, FAIL)." if settings.emails else ""))
        return None
    if settings.emails and not can_mail():
        emit(f"notify: no sendmail or mail on {socket.gethostname()}: the driver cannot email "
             f"{', '.join(settings.emails)} (on Slurm, Slurm's own mail is asked for instead: END, FAIL)")
        settings = replace(settings, targets=settings.webhooks)
        if not settings.targets:
            return None
    where = Path(rd.path).resolve()  # the message is read elsewhere: never a relative path
    n = Notifier(settings, study=where.name, directory=str(where), total=total, done0=done0, failed0=failed0, emit=emit)
    n.attach(bar)
    n.start()
    return n
