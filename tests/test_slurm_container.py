"""Workers in a container (the command lines) and the check of the workers' versions (slurm_container).

Apptainer and Singularity are not installed here: the command lines are checked as text and, once,
through a stand-in ``apptainer`` script that runs the command after the image name as the real one
would. The version check runs real interpreters: this one, and a second virtual environment
without the study's packages (or with a different numpy).
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bayesim_hpc.executors.slurm import SlurmExecutor
from bayesim_hpc.executors.slurm_container import (
    Container,
    WorkerEnvironmentError,
    check_environment,
    compare,
    driver_versions,
    probe_versions,
    require_parity,
)
from bayesim_hpc.executors.slurm_profile import load_profile
from bayesim_hpc.resultdir import ResultDir

APPTAINER = {"runtime": "apptainer", "image": "/shared/img/bayesim.sif", "binds": ["/data", "/scratch/me:/scratch"]}


def _profile(tmp_path: Path, text: str) -> str:
    p = tmp_path / "prof.yaml"
    p.write_text(text)
    return str(p)


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> Path:
    """A second virtual environment: the same Python, none of the study's packages."""
    d = tmp_path_factory.mktemp("venv") / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(d)], check=True)
    return d


def test_apptainer_wraps_the_worker_and_binds_the_result_directory_and_the_study_folder(tmp_path):
    c = Container.from_profile({**APPTAINER, "options": ["--cleanenv"]})
    cmd = c.python_command(tmp_path / "rd", tmp_path / "studies" / "s.py")
    assert cmd == (f"apptainer exec --bind /data,/scratch/me:/scratch,{tmp_path / 'rd'},{tmp_path / 'studies'} "
                   "--cleanenv /shared/img/bayesim.sif python3")
    # a result directory under a bound folder is not bound twice
    assert Container.from_profile(APPTAINER).bind_list("/data/rd") == ["/data", "/scratch/me:/scratch"]
    sing = Container.from_profile({"runtime": "singularity", "image": "/img/my image.sif", "python": "/opt/py/bin/python"})
    assert sing.python_command() == "singularity exec '/img/my image.sif' /opt/py/bin/python"
    assert sing.srun_args() == []


def test_the_sbatch_script_starts_the_worker_inside_the_image(tmp_path):
    prof = _profile(tmp_path, "container: {runtime: apptainer, image: /shared/img/b.sif, binds: [/data]}\n")
    ex = SlurmExecutor(profile=prof)
    rd = ResultDir(tmp_path / "rd")
    script = ex.render_script(rd, "bayesim-x", 3)
    srun = [ln for ln in script.splitlines() if ln.startswith("srun ")]
    assert len(srun) == 1
    want = (f"apptainer exec --bind /data,{(tmp_path / 'rd').resolve()} /shared/img/b.sif python3 "
            "-u -m submitit.core._submit")
    assert want in srun[0], srun[0]


def test_an_oci_bundle_is_started_by_srun_container(tmp_path):
    prof = _profile(tmp_path, "container: {runtime: oci, image: /shared/bundles/bayesim, python: /usr/bin/python3}\n")
    ex = SlurmExecutor(profile=prof)
    script = ex.render_script(ResultDir(tmp_path / "rd"), "bayesim-x", 2)
    srun = [ln for ln in script.splitlines() if ln.startswith("srun ")][0]
    assert "--container=/shared/bundles/bayesim" in srun and " /usr/bin/python3 -u -m submitit" in srun, srun
    assert "apptainer" not in script
    parity = check_environment(ex.worker_python(ResultDir(tmp_path / "rd")), container=ex.container)
    assert not parity.checked and "OCI bundle" in parity.line


@pytest.mark.parametrize("container, match", [
    ({"runtime": "docker", "image": "x"}, r"container.runtime='docker': use one of apptainer, singularity, oci"),
    ({"runtime": "apptainer"}, r"container.image is missing"),
    ({"runtime": "apptainer", "image": "x", "binds": "/data"}, r"container.binds must be a list"),
    ({"runtime": "oci", "image": "/b", "binds": ["/data"]}, r"binds does not apply to runtime oci"),
    ({"runtime": "apptainer", "image": "x", "bind": ["/data"]}, r"unknown key\(s\) \['bind'\]"),
])
def test_bad_container_settings_name_the_key(tmp_path, container, match):
    import yaml

    prof = _profile(tmp_path, yaml.safe_dump({"container": container}))
    with pytest.raises(ValueError, match=match):
        load_profile(prof)


def test_compare_names_each_difference_with_both_versions():
    driver = {"python": "3.11.2", "bayesim-hpc": "0.2.0", "numpy": "2.4.6", "pymc": "5.28.5"}
    assert compare(driver, {**driver, "python": "3.11.9"}) == []  # patch releases of Python do not matter
    assert compare(driver, {**driver, "python": "3.12.1", "numpy": "1.26.4", "pymc": None}) == [
        "python: driver 3.11.2, worker 3.12.1", "pymc: driver 5.28.5, worker not installed",
        "numpy: driver 2.4.6, worker 1.26.4"]


def test_the_same_interpreter_matches():
    cmd = f"env BAYESIM_PROBE=1 {shlex.quote(sys.executable)}"  # this venv's python, as a command line
    parity = check_environment(cmd)
    assert parity.checked and parity.ok and "matches the driver" in parity.line
    assert parity.worker == driver_versions()
    assert not check_environment(None).checked  # submitit's default: this very interpreter


def test_a_second_venv_without_the_packages_is_refused_with_both_versions(bare_venv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # from the repository, `python -c` would find bayesim_hpc.egg-info in the cwd
    cmd = str(bare_venv / "bin" / "python")
    parity = check_environment(cmd)
    assert parity.checked and not parity.ok
    mine = driver_versions()
    assert f"numpy: driver {mine['numpy']}, worker not installed" in parity.differences
    assert f"bayesim-hpc: driver {mine['bayesim-hpc']}, worker not installed" in parity.differences
    with pytest.raises(WorkerEnvironmentError) as err:
        require_parity(parity, cmd)
    assert err.value.exit_code == 9
    assert f"numpy: driver {mine['numpy']}, worker not installed" in str(err.value) and cmd in str(err.value)
    assert "check_environment: false" in str(err.value)


def test_a_different_numpy_in_the_workers_is_named(bare_venv, tmp_path):
    site = next((bare_venv / "lib").glob("python3*/site-packages"))
    dist = site / "numpy-1.26.4.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: numpy\nVersion: 1.26.4\n")
    try:
        parity = check_environment(str(bare_venv / "bin" / "python"))
        assert f"numpy: driver {driver_versions()['numpy']}, worker 1.26.4" in parity.differences
    finally:
        (dist / "METADATA").unlink()
        dist.rmdir()


def test_check_can_be_turned_off_and_an_interpreter_that_does_not_run_is_an_error(tmp_path):
    assert not check_environment("/nope/python", enabled=False).checked
    with pytest.raises(WorkerEnvironmentError, match=r"`/nope/python` could not be run here"):
        probe_versions("/nope/python")
    with pytest.raises(WorkerEnvironmentError, match=r"failed here \(exit 3"):
        probe_versions(f"{shlex.quote(sys.executable)} -c 'import sys; sys.exit(3)'")
    prof = _profile(tmp_path, "check_environment: maybe\n")
    with pytest.raises(ValueError, match="'check_environment' must be true or false"):
        load_profile(prof)


def test_the_check_runs_through_the_same_wrapper_as_the_workers(tmp_path):
    """A stand-in `apptainer` (exec [--bind LIST] [options] IMAGE CMD...) logs its arguments and runs CMD."""
    shim = tmp_path / "apptainer"
    log = tmp_path / "apptainer.log"
    shim.write_text(f"""#!/bin/sh
echo "$@" >> {log}
[ "$1" = exec ] || exit 64
shift
while [ "${{1#-}}" != "$1" ]; do
  case $1 in --bind|-B) shift 2 ;; *) shift ;; esac
done
shift   # the image
exec "$@"
""")
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    c = Container.from_profile({"runtime": "apptainer", "image": "/img/b.sif", "binds": ["/data"],
                                "command": str(shim), "python": sys.executable, "options": ["--cleanenv"]})
    parity = check_environment(c.python_command(tmp_path / "rd"), container=c)
    assert parity.checked and parity.ok, parity.line
    first = log.read_text().splitlines()[0]
    assert first.startswith(f"exec --bind /data,{(tmp_path / 'rd').resolve()} --cleanenv /img/b.sif {sys.executable} -c")
    assert os.access(shim, os.X_OK)
