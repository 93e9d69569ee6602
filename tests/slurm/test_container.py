"""Workers in a container and the worker-environment check, on the real local Slurm cluster.

Apptainer is not installed here, so the profile's ``container.command`` is a stand-in script
that parses ``exec [--bind LIST] [options] IMAGE CMD...`` as apptainer does, logs it, and runs
CMD on the node: the test shows the sbatch script starts every worker through the wrapper.
"""

from __future__ import annotations

import stat
import subprocess
import sys

import pytest

from bayesim_hpc import run_simulation
from bayesim_hpc.executors.slurm_container import WorkerEnvironmentError
from bayesim_hpc.executors.slurm_submit import job_name
from bayesim_hpc.resultdir import ResultDir

from .test_slurm_executor import FAST, _cfg, manifest

pytestmark = [pytest.mark.slurm]


def _shim(tmp_path):
    shim, log = tmp_path / "apptainer", tmp_path / "apptainer.log"
    shim.write_text(f"""#!/bin/sh
echo "${{SLURM_JOB_ID:-login}} $@" >> {log}
[ "$1" = exec ] || exit 64
shift
while [ "${{1#-}}" != "$1" ]; do
  case $1 in --bind|-B) shift 2 ;; *) shift ;; esac
done
shift
exec "$@"
""")
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return shim, log


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_workers_run_through_the_container_wrapper(tmp_path, studies):
    shim, log = _shim(tmp_path)
    prof = tmp_path / "prof.yaml"
    prof.write_text(f"container: {{runtime: apptainer, image: /img/bayesim.sif, binds: [/data], "
                    f"command: {shim}, python: {sys.executable}}}\n")
    path = tmp_path / "study"
    studies.append(path)
    lines: list[str] = []
    res = run_simulation(_cfg(path), "slurm", profile=str(prof), emit=lines.append, **FAST)
    assert res.reduce_outcome.n_missing == 0 and len(res.summary) == 40
    assert any(line.startswith("environment check: `") and "matches the driver" in line for line in lines), lines
    calls = log.read_text().splitlines()
    login = [c for c in calls if c.startswith("login ")]
    on_nodes = [c for c in calls if not c.startswith("login ")]
    assert len(login) == 1 and " -c " in login[0]  # the check, once, here
    n_elements = sum(len(s["elements"]) for s in manifest(path)["submissions"] if s.get("job_id"))
    assert len(on_nodes) == n_elements >= 2, calls
    rd = str(path.resolve())
    assert all(f"exec --bind /data,{rd}" in c and f"/img/bayesim.sif {sys.executable} -u -m submitit.core._submit"
               in c for c in on_nodes), on_nodes


def test_workers_with_other_versions_are_refused_before_submission(tmp_path, studies, monkeypatch):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    prof = tmp_path / "prof.yaml"
    prof.write_text(f"python: {venv / 'bin' / 'python'}\n")
    path = tmp_path / "study"
    studies.append(path)
    with pytest.raises(WorkerEnvironmentError, match=r"numpy: driver [0-9.]+, worker not installed"):
        run_simulation(_cfg(path), "slurm", profile=str(prof), emit=lambda s: None, **FAST)
    assert not manifest(path).get("submissions")
    out = subprocess.run(["squeue", "-h", "--name", job_name(ResultDir(path))], capture_output=True, text=True)
    assert out.stdout.strip() == ""
    # the user may accept the difference: then it is submitted (and here, with no numpy, it would fail)
    prof.write_text(f"python: {venv / 'bin' / 'python'}\ncheck_environment: false\n")
    dry: list[str] = []
    run_simulation(_cfg(tmp_path / "dry"), "slurm", profile=str(prof), dry_run=True, emit=dry.append, **FAST)
    assert "environment check: off (profile check_environment: false)" in dry
