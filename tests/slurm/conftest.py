"""Fixtures for tests against the real one-node Slurm cluster of ``scripts/local-slurm.sh``.

``slurm_cluster`` (session) starts the cluster if needed (as root; it installs the Debian
packages the first time) and puts ``SLURM_CONF`` into ``os.environ``. It leaves the cluster
running afterwards: starting a running cluster takes ~0.1 s, a cold start ~2 s.

``reconfigured_cluster`` gives a context manager that restarts the cluster with other settings
and restores the defaults afterwards. A restart cancels every job on the cluster, so it first
takes an exclusive lock that every test session using ``slurm_cluster`` holds shared: it waits
until no other test session is using the cluster (or skips after a while).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "local-slurm.sh"
DEFAULT_MAX_ARRAY_SIZE = 10001
SETTING_VARS = ("LOCAL_SLURM_MAX_ARRAY_SIZE", "LOCAL_SLURM_ACCOUNTING")
LOCK_WAIT_S = 120


@dataclass
class SlurmCluster:
    slurm_conf: str
    directory: Path
    lock: IO[str] | None = field(default=None, repr=False)  # shared while this session uses it

    def active_settings(self) -> dict[str, str]:
        """The settings the running cluster's config was written with (from settings.env)."""
        out = {}
        for line in (self.directory / "etc" / "settings.env").read_text().splitlines():
            key, _, value = line.partition("=")
            out[key.removeprefix("ACTIVE_")] = value
        return out

    def is_default(self) -> bool:
        s = self.active_settings()
        return (s.get("MAX_ARRAY_SIZE") == str(DEFAULT_MAX_ARRAY_SIZE) and s.get("ACCOUNTING") == "1"
                and s.get("NODES", "2") == os.environ.get("LOCAL_SLURM_NODES", "2")
                and s.get("CPUS", "4") == os.environ.get("LOCAL_SLURM_CPUS", "4"))


class ScriptError(RuntimeError):
    pass


def run_script(verb: str, **settings: str) -> dict[str, str]:
    """Run ``local-slurm.sh VERB`` with the given LOCAL_SLURM_* settings (others: defaults).

    Returns the exported variables it printed. Raises ScriptError with its stderr on failure.
    """
    env = {k: v for k, v in os.environ.items() if k not in SETTING_VARS}
    env.update(settings)
    proc = subprocess.run(["bash", str(SCRIPT), verb], env=env, capture_output=True, text=True, timeout=900,
                          check=False)
    if proc.returncode != 0:
        raise ScriptError(f"local-slurm.sh {verb} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    exports = {}
    for line in proc.stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line[len("export "):].partition("=")
            exports[key] = value
    return exports


def _why_not_runnable() -> str | None:
    if os.name != "posix" or shutil.which("bash") is None:
        return "local-slurm.sh needs bash on a POSIX system"
    if os.geteuid() != 0:
        return "local-slurm.sh must run as root (slurmd runs as root)"
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        return "Slurm is not installed and there is no apt-get to install it"
    return None


def _lock_path() -> Path:
    directory = os.environ.get("LOCAL_SLURM_DIR", "/tmp/slurm-test").rstrip("/")
    return Path(directory + ".tests.lock")


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The local Slurm cluster, running with default settings; SLURM_CONF is set in os.environ."""
    reason = _why_not_runnable()
    if reason:
        pytest.skip(reason)
    t0 = time.monotonic()
    try:
        exports = run_script("start")
    except ScriptError as e:
        text = str(e)
        if "must run as root" in text or "apt-get" in text:
            pytest.skip(f"cannot start the local Slurm cluster: {text}")
        raise
    os.environ.update(exports)
    cluster = SlurmCluster(exports["SLURM_CONF"], Path(exports["LOCAL_SLURM_DIR"]))
    if not cluster.is_default():  # left reconfigured by an interrupted test run
        os.environ.update(run_script("restart"))
    print(f"\nlocal Slurm cluster up in {time.monotonic() - t0:.1f}s (SLURM_CONF={cluster.slurm_conf})")
    with open(_lock_path(), "w") as cluster.lock:
        fcntl.flock(cluster.lock, fcntl.LOCK_SH)  # other sessions may use it too, but not restart it
        yield cluster


@pytest.fixture
def reconfigured_cluster(slurm_cluster: SlurmCluster) -> Callable[..., AbstractContextManager[SlurmCluster]]:
    """``with reconfigured_cluster(max_array_size=11, accounting=False): ...`` restarts the cluster
    with these settings and restores the defaults afterwards (each restart takes ~3-8 s and
    cancels every job on the cluster)."""
    lock = slurm_cluster.lock
    assert lock is not None

    @contextmanager
    def reconfigure(*, max_array_size: int | None = None, accounting: bool | None = None) -> Iterator[SlurmCluster]:
        settings = {}
        if max_array_size is not None:
            settings["LOCAL_SLURM_MAX_ARRAY_SIZE"] = str(max_array_size)
        if accounting is not None:
            settings["LOCAL_SLURM_ACCOUNTING"] = "1" if accounting else "0"
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:  # upgrade our shared lock: waits for other sessions to finish
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # (a failed upgrade may have dropped the shared lock)
                if time.monotonic() > deadline:
                    fcntl.flock(lock, fcntl.LOCK_SH)
                    pytest.skip("another test session is using the local Slurm cluster; not restarting it")
                time.sleep(1)
        try:
            os.environ.update(run_script("restart", **settings))
            try:
                yield slurm_cluster
            finally:
                os.environ.update(run_script("restart"))
        finally:
            fcntl.flock(lock, fcntl.LOCK_SH)

    return reconfigure


@pytest.fixture
def studies(slurm_cluster: SlurmCluster) -> Iterator[list[Path]]:
    """Result directories used by a test; their Slurm jobs are cancelled afterwards."""
    from bayesim_hpc.executors.slurm import SlurmExecutor
    from bayesim_hpc.resultdir import ResultDir

    made: list[Path] = []
    yield made
    for path in made:
        rd = ResultDir(path)
        if rd.exists():
            try:
                SlurmExecutor().cancel(rd)
            except Exception as exc:  # the cluster may have been restarted; never mask the test's error
                print(f"cleanup of {path}: {exc}")
