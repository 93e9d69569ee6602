"""Workers inside a container, and the check that the workers' Python matches the driver's.

**Containers** (profile key ``container``)::

    container:
      runtime: apptainer          # apptainer | singularity | oci
      image: /shared/images/bayesim.sif
      binds: [/scratch/$USER]     # besides the result directory and the study file's folder
      python: python3             # the interpreter inside the image (default python3)
      options: [--cleanenv]       # more options of `apptainer exec` (e.g. --nv)

* ``apptainer``/``singularity``: the element's command becomes ``apptainer exec --bind ...
  IMAGE python3 -u -m submitit.core._submit ...`` (submitit's ``python``), so Slurm's ``srun``
  starts the worker inside the image. The result directory and the study file's folder are bound
  automatically (the workers write there and import the study from there).
* ``oci``: ``image`` is an OCI bundle (a directory with ``config.json`` and ``rootfs``); the worker
  step is started by ``srun --container=BUNDLE`` (Slurm's own container support, configured by
  the admins in ``oci.conf``; runc or crun).

**Environment parity** (profile key ``check_environment``, default true): before anything is
submitted, the worker's interpreter -- inside the container through the same wrapper, or the
profile's ``python`` -- is run once here, printing the versions of Python, bayesim-hpc, PyMC,
numpy, cloudpickle and submitit. Any difference from the driver's stops the run with
:class:`WorkerEnvironmentError` (exit 9), naming both versions. The element would otherwise
unpickle the study with other code, or fail after hours in the queue.

Example:
    >>> c = Container.from_profile({"runtime": "apptainer", "image": "/img/b.sif", "binds": ["/data"]})
    >>> c.python_command(result_dir="/scratch/rd")
    'apptainer exec --bind /data,/scratch/rd /img/b.sif python3'
    >>> compare({"python": "3.11.2", "numpy": "2.4.6"}, {"python": "3.11.9", "numpy": "1.26.4"})
    ['numpy: driver 2.4.6, worker 1.26.4']
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import WorkerEnvironmentError

__all__ = ["Container", "Parity", "WorkerEnvironmentError", "check_environment", "compare", "driver_versions",
           "probe_versions", "require_parity", "study_paths", "PACKAGES"]

RUNTIMES = ("apptainer", "singularity", "oci")
_KEYS = {"runtime", "image", "binds", "python", "options", "command"}

PACKAGES = ("bayesim-hpc", "pymc", "numpy", "cloudpickle", "submitit")
"""Distributions whose versions must match between driver and workers (besides Python)."""

_VERSIONS_SCRIPT = (  # one line: it shows up whole in logs and `ps`
    "import json, platform, importlib.metadata as m; ds = {}; "
    "[ds.setdefault((d.metadata['Name'] or '').lower().replace('_', '-'), d.version) for d in m.distributions()]; "
    "print(json.dumps({'python': platform.python_version(), **{n: ds.get(n) for n in %r}}))" % (PACKAGES,))


@dataclass(frozen=True)
class Container:
    """How an element's worker runs inside a container (see the module docstring)."""

    runtime: str
    image: str
    binds: tuple[str, ...] = ()
    python: str = "python3"
    options: tuple[str, ...] = ()
    command: str | None = None  #: the runtime's executable (default: the runtime's name)

    @classmethod
    def from_profile(cls, data: Mapping[str, Any] | None, where: str = "profile") -> "Container | None":
        """The profile's ``container`` mapping, checked; None if absent."""
        if data is None:
            return None
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: 'container' must be a mapping like {{runtime: apptainer, image: x.sif}}")
        bad = set(data) - _KEYS
        if bad:
            raise ValueError(f"{where}: container: unknown key(s) {sorted(bad)}; known: {sorted(_KEYS)}")
        runtime = data.get("runtime")
        if runtime not in RUNTIMES:
            raise ValueError(f"{where}: container.runtime={runtime!r}: use one of {', '.join(RUNTIMES)}")
        image = data.get("image")
        if not image or not isinstance(image, str):
            raise ValueError(f"{where}: container.image is missing: the image file (apptainer/singularity, "
                             "e.g. /shared/bayesim.sif) or the OCI bundle directory (oci)")
        for key in ("binds", "options"):
            value = data.get(key) or []
            if not isinstance(value, list) or not all(isinstance(b, str) for b in value):
                raise ValueError(f"{where}: container.{key} must be a list of strings, got {value!r}")
        if runtime == "oci" and data.get("binds"):
            raise ValueError(f"{where}: container.binds does not apply to runtime oci: the bundle's config.json "
                             "lists its mounts")
        return cls(runtime=runtime, image=image, binds=tuple(data.get("binds") or ()),
                   python=str(data.get("python") or "python3"), options=tuple(data.get("options") or ()),
                   command=data.get("command"))

    def bind_list(self, result_dir: str | Path | None = None, study_file: str | Path | None = None) -> list[str]:
        """The user's binds, then the result directory and the study file's folder (unless bound already)."""
        out = list(self.binds)
        bound = [Path(b.split(":", 1)[0]) for b in out]
        for extra in (result_dir, Path(study_file).parent if study_file else None):
            if extra is None:
                continue
            p = Path(extra).resolve()
            if not any(p == b or b in p.parents for b in bound):
                out.append(str(p))
                bound.append(p)
        return out

    def python_command(self, result_dir: str | Path | None = None, study_file: str | Path | None = None) -> str:
        """What submitit runs as ``python`` in the element (and the parity check runs here)."""
        if self.runtime == "oci":
            return self.python  # srun --container=BUNDLE starts it inside the bundle
        argv = [self.command or self.runtime, "exec"]
        binds = self.bind_list(result_dir, study_file)
        if binds:
            argv += ["--bind", ",".join(binds)]
        argv += [*self.options, self.image]
        return " ".join(shlex.quote(a) for a in argv) + " " + self.python

    def srun_args(self) -> list[str]:
        """Extra ``srun`` options of the worker step (OCI: ``--container=BUNDLE``)."""
        return [f"--container={self.image}"] if self.runtime == "oci" else []

    def describe(self) -> str:
        if self.runtime == "oci":
            return f"container: OCI bundle {self.image} (srun --container), interpreter {self.python}"
        return f"container: {self.runtime} image {self.image}, interpreter {self.python}" + (
            f", binds {', '.join(self.binds)} (+ the result directory and the study's folder)" if self.binds else
            " (binds: the result directory and the study's folder)")


def study_paths(paths: list[str]) -> list[str]:
    """The driver's import path without its installations (its prefixes, site-/dist-packages).

    An element adds the driver's import path to its own, so that the study's own modules import.
    Inside a container the packages must come from the image: a host virtual environment that
    is mounted there (apptainer mounts $HOME) would otherwise fill in what the image lacks.

    >>> import sys
    >>> study_paths(["/home/me/study", sys.prefix + "/lib/python3.11/site-packages", "/usr/lib/python3/dist-packages"])
    ['/home/me/study']
    """
    prefixes = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    out = []
    for p in paths:
        rp = Path(p).resolve()
        if rp.name in ("site-packages", "dist-packages") or any(q == rp or q in rp.parents for q in prefixes):
            continue
        out.append(p)
    return out


# ----------------------------------------------------------------------------------------- parity
def driver_versions() -> dict[str, str | None]:
    """This process's Python and package versions (as the workers' are read: the first of each on sys.path)."""
    import importlib.metadata as m
    import platform

    ds: dict[str, str] = {}
    for d in m.distributions():
        ds.setdefault((d.metadata["Name"] or "").lower().replace("_", "-"), d.version)
    return {"python": platform.python_version(), **{n: ds.get(n) for n in PACKAGES}}


def probe_versions(python_command: str, *, timeout: float = 180.0,
                   run: Any = subprocess.run) -> dict[str, str | None]:
    """Run ``python_command -c <script>`` once and read the versions it prints.

    Raises:
        WorkerEnvironmentError: the interpreter could not be run or printed no versions.
    """
    argv = shlex.split(python_command) + ["-c", _VERSIONS_SCRIPT]
    fix = ("Fix: make the profile's python (or container.python/image) point at the workers' interpreter, "
           "or set check_environment: false in the profile to skip this check")
    try:
        proc = run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WorkerEnvironmentError(f"the workers' interpreter `{python_command}` could not be run here "
                                     f"({type(exc).__name__}: {exc}). {fix}") from exc
    lines = [ln for ln in (proc.stdout or "").splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = ((proc.stderr or "") + (proc.stdout or "")).strip().splitlines()[-3:]
        raise WorkerEnvironmentError(f"the workers' interpreter `{python_command}` failed here (exit "
                                     f"{proc.returncode}: {' | '.join(tail) or 'no output'}). {fix}")
    return json.loads(lines[-1])


def _py(version: str | None) -> str | None:
    """Python versions are compared by major.minor (pickles and bytecode depend on it, not on patches)."""
    return ".".join(version.split(".")[:2]) if version else None


def compare(driver: Mapping[str, str | None], worker: Mapping[str, str | None]) -> list[str]:
    """The differences, one line each: ``"numpy: driver 2.4.6, worker 1.26.4"``."""
    out = []
    for key in ["python", *PACKAGES]:
        if key not in driver and key not in worker:
            continue
        a, b = driver.get(key), worker.get(key)
        same = _py(a) == _py(b) if key == "python" else a == b
        if not same:
            out.append(f"{key}: driver {a or 'not installed'}, worker {b or 'not installed'}")
    return out


@dataclass
class Parity:
    """The outcome of the check: ``line`` for dry runs and logs."""

    checked: bool
    line: str
    differences: list[str] = field(default_factory=list)
    worker: dict[str, str | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.differences


def check_environment(python_command: str | None, *, enabled: bool = True, container: Container | None = None,
                      run: Any = subprocess.run, driver: Mapping[str, str | None] | None = None) -> Parity:
    """Compare the workers' versions with the driver's (see the module docstring); no exception here.

    ``python_command`` None: the workers run this very interpreter (``sys.executable``), nothing to check.
    """
    if not enabled:
        return Parity(False, "environment check: off (profile check_environment: false)")
    if container is not None and container.runtime == "oci":
        return Parity(False, "environment check: not possible before submission for an OCI bundle (it runs only "
                      "under srun --container on a node); set check_environment: false to silence this line")
    if python_command is None or python_command == shlex.quote(sys.executable):
        return Parity(False, f"environment check: workers run the driver's own interpreter ({sys.executable})")
    mine = dict(driver or driver_versions())
    theirs = probe_versions(python_command, run=run)
    diff = compare(mine, theirs)
    shown = ", ".join(f"{k} {mine.get(k) or '-'}" for k in ["python", *PACKAGES])
    if diff:
        return Parity(True, f"environment check: `{python_command}` DIFFERS from the driver: " + "; ".join(diff),
                      diff, theirs)
    return Parity(True, f"environment check: `{python_command}` matches the driver ({shown})", [], theirs)


def require_parity(parity: Parity, python_command: str | None) -> None:
    """Raise :class:`WorkerEnvironmentError` for a parity check that found differences."""
    if parity.ok:
        return
    raise WorkerEnvironmentError(
        f"the workers' environment differs from the driver's ({'; '.join(parity.differences)}; workers run "
        f"`{python_command}`). Results would come from other code, or the study would not unpickle there. Fix: "
        "install the same versions for the workers (or the driver), or, if the difference is harmless, set "
        "check_environment: false in the profile")
