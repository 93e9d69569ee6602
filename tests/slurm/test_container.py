"""Workers in a container and the worker-environment check, on the real local Slurm cluster.

Apptainer is not installed here, so the profile's ``container.command`` is a stand-in script
that parses ``exec [--bind LIST] [options] IMAGE CMD...`` as apptainer does, logs it, and runs
CMD on the node: the test shows the sbatch script starts every worker through the wrapper.
Slurm's own ``--container`` is tested for real: the cluster's ``oci.conf`` runs steps with runc,
in an OCI bundle made here from the host's folders (read-only) with its own hostname.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bayesim_hpc import run_simulation
from bayesim_hpc.executors.slurm_container import WorkerEnvironmentError
from bayesim_hpc.executors.slurm_submit import job_name, pickled_args
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
    # the elements add the driver's import path, but not its installed packages (they come from the image)
    sub = next(s for s in manifest(path)["submissions"] if s.get("job_id"))
    args = pickled_args(path.resolve() / "logs" / "slurm" / "%j", sub["elements"][0])
    assert args is not None and args[5] and not any("site-packages" in p or p.startswith(sys.prefix) for p in args[5])


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


def _oci_bundle(tmp_path: Path, cluster_dir: Path) -> Path:
    """An OCI bundle: an empty rootfs with the host's system folders, this Python and the repository
    bound read-only, /tmp read-write, hostname ``bayesim-oci``, the host's network (elements requeue
    themselves with scontrol)."""
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (apt-get install runc)")
    if not (cluster_dir / "etc" / "oci.conf").is_file():
        pytest.skip("the test cluster has no oci.conf (started by an older scripts/local-slurm.sh: restart it)")
    bundle = tmp_path / "bundle"
    rootfs = bundle / "rootfs"
    rootfs.mkdir(parents=True)
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["root"] = {"path": str(rootfs), "readonly": True}
    spec["hostname"] = "bayesim-oci"
    spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != "network"]
    tops = {"/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/tmp"}
    for p in (Path(__file__).resolve(), Path(sys.executable).resolve(), Path(sys.prefix), Path(sys.base_prefix)):
        tops.add("/" + p.parts[1])
    for top in sorted(tops):
        if not os.path.exists(top):
            continue
        if os.path.islink(top):  # merged /usr: /lib -> usr/lib
            os.symlink(os.readlink(top), rootfs / top[1:])
            continue
        (rootfs / top[1:]).mkdir(exist_ok=True)
        spec["mounts"].append({"destination": top, "type": "bind", "source": top,
                               "options": ["rbind", "rw" if top == "/tmp" else "ro"]})
    (bundle / "config.json").write_text(json.dumps(spec, indent=1))
    return bundle


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_workers_run_in_an_oci_bundle_under_srun_container(tmp_path, studies, slurm_cluster):
    bundle = _oci_bundle(tmp_path, slurm_cluster.directory)
    prof = tmp_path / "prof.yaml"
    prof.write_text(f"container: {{runtime: oci, image: {bundle}, python: {sys.executable}}}\n")
    path = tmp_path / "study"
    studies.append(path)
    lines: list[str] = []
    res = run_simulation(_cfg(path), "slurm", profile=str(prof), emit=lines.append, **FAST)
    assert res.reduce_outcome.n_missing == 0 and len(res.summary) == 40
    assert any("not possible before submission for an OCI bundle" in line for line in lines), lines
    n_elements = sum(len(s["elements"]) for s in manifest(path)["submissions"] if s.get("job_id"))
    logs = sorted((path / "logs" / "slurm").glob("*/*_log.out"))
    assert len(logs) == n_elements >= 2
    for log in logs:  # submitit's first line, written inside the container
        assert "hostname=bayesim-oci" in log.read_text(), log.read_text()
