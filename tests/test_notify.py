"""Notifications (issue 19 item 7): webhooks received by a local HTTP server, failing webhooks,
rate limiting, the failure-rate and stall events (injected clock), runtime settings kept by resume."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from bayesim_hpc import resume_simulation, run_simulation
from bayesim_hpc.errors import ConfigError, SystematicFailureError
from bayesim_hpc import notify as notify_mod
from bayesim_hpc.notify import (Notifier, NotifySettings, check_target, resolve_settings, slurm_mail_options,
                                with_slurm_mail)

from .studies.linear import make_config


class _Hook:
    """A local webhook: records the JSON of each POST; answers ``status``."""

    def __init__(self, status: int = 200):
        got = self.got = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                got.append({"path": self.path, "type": self.headers["Content-Type"], "json": json.loads(body)})
                self.send_response(status)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    h = _Hook()
    yield h
    h.close()


def test_targets_are_checked():
    assert check_target("mailto:me@uni.edu") == "me@uni.edu"
    with pytest.raises(ConfigError, match="--notify.*neither an email address nor an http"):
        check_target("slack")
    with pytest.raises(ConfigError, match="--notify-failure-rate"):
        resolve_settings(["a@b.org"], {"failure_rate": 2}, None)
    with pytest.raises(ConfigError, match="no --notify target"):
        resolve_settings(None, {"stall_minutes": 5}, None)
    stored = NotifySettings(("a@b.org", "https://x.org/h"), stall_minutes=5).to_runtime()
    assert resolve_settings(None, None, stored).stall_minutes == 5  # kept
    assert resolve_settings([], None, stored) is None  # cleared
    assert resolve_settings(["c@d.org"], {"failure_rate": 0.5}, stored).targets == ("c@d.org",)
    assert slurm_mail_options(NotifySettings(("a@b.org", "https://x.org/h"))) == {"mail-type": "END,FAIL",
                                                                                  "mail-user": "a@b.org"}



def test_slurm_mail_where_the_driver_cannot_send(monkeypatch):
    both = NotifySettings(("a@b.org", "https://x.org/h"))
    detached = with_slurm_mail(both, "slurm", {"detach": True, "additional": {"constraint": "cpu"}})
    assert detached["additional"] == {"mail-type": "END,FAIL", "mail-user": "a@b.org", "constraint": "cpu"}
    assert with_slurm_mail(both, "local", {}) == {}
    assert with_slurm_mail(NotifySettings(("https://x.org/h",)), "slurm", {"detach": True}) == {"detach": True}
    monkeypatch.setattr(notify_mod, "can_mail", lambda: True)
    assert with_slurm_mail(both, "slurm", {}) == {}  # attached, with a mailer here: the driver sends
    monkeypatch.setattr(notify_mod, "can_mail", lambda: False)
    assert with_slurm_mail(both, "slurm", {})["additional"]["mail-user"] == "a@b.org"


def test_webhook_receives_the_end_of_a_run_and_resume_keeps_the_setting(tmp_path, hook):
    path = tmp_path / "s"
    run_simulation(make_config(result_path=path, n_replicates=10), "local", workers=2, progress=False,
                   emit=lambda s: None, notify=[hook.url])
    assert len(hook.got) == 1
    got = hook.got[0]
    assert got["path"] == "/hook" and got["type"] == "application/json"
    msg = got["json"]
    assert msg["event"] == "finished" and msg["state"] == "completed" and msg["study"] == "s"
    assert msg["directory"] == str(path) and msg["status_command"] == f"bayesim-hpc status {path}"
    assert (msg["tasks"], msg["succeeded"], msg["failed"], msg["missing"]) == (10, 10, 0, 0)
    runtime = json.loads((path / "study.json").read_text())["runtime"]
    assert runtime["notify"]["targets"] == [hook.url]
    resume_simulation(path, progress=False, emit=lambda s: None)  # no --notify: the stored one is used
    assert len(hook.got) == 2
    resume_simulation(path, progress=False, emit=lambda s: None, notify=[])  # --no-notify
    assert len(hook.got) == 2 and "notify" not in json.loads((path / "study.json").read_text())["runtime"]


def test_the_message_names_the_directory_absolutely(tmp_path, hook, monkeypatch):
    """A relative --result-dir is useless to whoever reads the message elsewhere."""
    monkeypatch.chdir(tmp_path)
    run_simulation(make_config(result_path="rel", n_replicates=2), "inline", progress=False,
                   emit=lambda s: None, notify=[hook.url])
    msg = hook.got[0]["json"]
    assert msg["directory"] == str(tmp_path.resolve() / "rel")
    assert msg["status_command"] == f"bayesim-hpc status {tmp_path.resolve() / 'rel'}"


def _boom(data_spec, rng, task_ctx):
    raise ValueError("the generator is broken")


def test_early_stop_is_sent_as_stopped(tmp_path, hook):
    cfg = make_config(result_path=tmp_path / "bad", n_replicates=30, data_generator=_boom)
    with pytest.raises(SystematicFailureError):
        run_simulation(cfg, "inline", progress=False, emit=lambda s: None, notify=[hook.url])
    events = [g["json"] for g in hook.got]
    assert [e["event"] for e in events][-1] == "stopped"
    assert events[-1]["state"] == "systematic failure" and "ValueError" in events[-1]["message"]
    assert events[-1]["failed"] > 0 and events[-1]["missing"] > 0
    assert "failure_rate" in [e["event"] for e in events]  # every task failed: over the 25 % threshold


@pytest.mark.parametrize("kind", ["status500", "refused"])
def test_a_failing_webhook_never_stops_the_study(tmp_path, kind):
    if kind == "status500":
        bad = _Hook(status=500)
        url = bad.url
    else:
        bad = _Hook()
        url = bad.url
        bad.close()  # nothing listens there any more: connection refused
    lines: list[str] = []
    try:
        res = run_simulation(make_config(result_path=tmp_path / "s", n_replicates=10), "local", workers=2,
                             progress=False, emit=lines.append, notify=[url])
    finally:
        if kind == "status500":
            bad.close()
    assert res.summary["status"].eq("success").all() and len(res.summary) == 10
    warnings = [ln for ln in lines if ln.startswith("warning: notification")]
    assert len(warnings) == 1 and url in warnings[0]
    assert ("HTTP 500" if kind == "status500" else "refused") in warnings[0]


class _Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _notifier(clock, **settings):
    sent: list[tuple[str, dict]] = []
    n = Notifier(NotifySettings(("https://example.org/h",), **settings), study="s", directory="/r/s", total=100,
                 clock=clock, post=lambda url, data, timeout: sent.append((url, data)), background=False,
                 emit=lambda s: None)
    return n, sent


def test_rate_limit_per_event_kind():
    clock = _Clock()
    n, sent = _notifier(clock, min_interval_minutes=10)
    assert n.event("stalled", "running") and not n.event("stalled", "running")
    assert n.event("finished", "completed")  # another kind is not limited by the first
    clock.t += 9 * 60
    assert not n.event("stalled", "running")
    clock.t += 61
    assert n.event("stalled", "running")
    assert [d["event"] for _, d in sent] == ["stalled", "finished", "stalled"] and n.suppressed == {"stalled": 2}


def test_stall_detection_with_an_injected_clock():
    clock = _Clock()
    n, sent = _notifier(clock, stall_minutes=30, min_interval_minutes=1)
    n.progress(5, 0)
    clock.t += 29 * 60
    n.check()
    assert sent == []
    clock.t += 61
    n.check()
    n.check()  # the same stall is sent once
    assert [d["event"] for _, d in sent] == ["stalled"]
    assert sent[0][1]["succeeded"] == 5 and sent[0][1]["missing"] == 95 and "30 minutes" in sent[0][1]["message"]
    n.progress(6, 0)  # progress re-arms it
    clock.t += 31 * 60
    n.check()
    assert [d["event"] for _, d in sent] == ["stalled", "stalled"]


def test_failure_rate_threshold_after_enough_tasks():
    clock = _Clock()
    n, sent = _notifier(clock, failure_rate=0.5)
    n.progress(6, 6)  # fewer than 10 tasks: not yet
    assert sent == []
    n.progress(12, 5)
    assert sent == []  # 42 % < 50 %
    n.progress(14, 7)
    assert [d["event"] for _, d in sent] == ["failure_rate"] and "7 of the 14" in sent[0][1]["message"]
    n.progress(20, 12)
    assert len(sent) == 1  # once per run


def test_the_ticker_reports_a_stall_without_progress_calls():
    clock = _Clock()
    n, sent = _notifier(clock, stall_minutes=1)
    done = threading.Event()
    n.post = lambda url, data, timeout: (sent.append((url, data)), done.set())
    clock.t += 120
    n.start(tick_s=0.01)
    assert done.wait(10)
    n.close()
    assert sent[0][1]["event"] == "stalled"


def test_cli_notify_options(tmp_path, hook):
    from click.testing import CliRunner

    from bayesim_hpc.cli import main

    study = tmp_path / "study.py"
    study.write_text("from tests.studies.linear import make_config\nconfig = make_config(n_replicates=4)\n")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["run", str(study), "-o", str(out), "-e", "inline", "--notify", "slack"])
    assert r.exit_code == 1 and "--notify='slack'" in r.output and "neither an email address" in r.output
    r = CliRunner().invoke(main, ["run", str(study), "-o", str(out), "-e", "inline", "--notify", hook.url,
                                  "--no-notify"])
    assert r.exit_code == 2 and "contradict" in r.output
    r = CliRunner().invoke(main, ["run", str(study), "-o", str(out), "-e", "inline", "--no-progress", "--notify",
                                  hook.url, "--notify-stall-minutes", "5"])
    assert r.exit_code == 0, r.output
    assert [g["json"]["event"] for g in hook.got] == ["finished"]
    stored = json.loads((out / "study.json").read_text())["runtime"]["notify"]
    assert stored["targets"] == [hook.url] and stored["stall_minutes"] == 5
    r = CliRunner().invoke(main, ["resume", str(out), "--no-progress"])
    assert r.exit_code == 0 and len(hook.got) == 2


def test_email_goes_through_the_login_nodes_sendmail(tmp_path, monkeypatch):
    """A fake ``sendmail`` on PATH records what the driver hands it (``sendmail -t`` reads the headers)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    mailbox = tmp_path / "mailbox"
    (bindir / "sendmail").write_text(f"#!/bin/sh\necho \"args: $*\" >> {mailbox}\ncat >> {mailbox}\n")
    (bindir / "sendmail").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{__import__('os').environ['PATH']}")
    path = tmp_path / "s"
    run_simulation(make_config(result_path=path, n_replicates=6), "inline", progress=False, emit=lambda s: None,
                   notify=["me@uni.edu"])
    text = mailbox.read_text()
    assert "args: -t" in text and "To: me@uni.edu" in text
    assert "Subject: bayesim-hpc: s finished (completed)" in text
    assert "6 succeeded, 0 failed, 0 missing of 6 tasks" in text and f"bayesim-hpc status {path}" in text
