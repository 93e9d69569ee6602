"""docker/: the requirement list the image installs, and the paths the Dockerfile copies.

The image itself is built and run by scripts/docker-check.sh (needs a Docker engine; see docker/README.md).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docker" / "requirements.py"


def _requirements(extras: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(ROOT / "pyproject.toml"), extras],
                          capture_output=True, text=True)


def test_requirements_cover_the_project_and_expand_self_referencing_extras():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    out = _requirements("all")
    assert out.returncode == 0, out.stderr
    reqs = out.stdout.split()
    optional = project["optional-dependencies"]
    expected = list(pyproject["build-system"]["requires"]) + project["dependencies"]
    expected += [r for name, rs in optional.items() if name != "all" for r in rs]
    assert sorted(set(reqs)) == sorted(set(expected))
    assert not any(r.startswith(project["name"]) for r in reqs)   # "bayesim-hpc[...]" was expanded
    assert len(reqs) == len(set(reqs))

    test_only = _requirements("test").stdout.split()
    assert set(optional["test"]) <= set(test_only)
    assert not set(optional["pymc"]) & set(test_only)


def test_unknown_extra_is_named():
    out = _requirements("test,gpu")
    assert out.returncode != 0
    assert "no extra 'gpu'" in out.stderr and "pymc" in out.stderr


@pytest.mark.parametrize("line", [ln for ln in (ROOT / "docker" / "Dockerfile").read_text().splitlines()
                                  if ln.startswith("COPY ")])
def test_dockerfile_copies_existing_paths(line):
    sources = re.split(r"\s+", line.strip())[1:-1]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"docker/Dockerfile: {line!r}: {src} is not in the repository"
