"""Print the pip requirements of bayesim-hpc from pyproject.toml, one per line (used by docker/Dockerfile).

The image installs these in their own layer, before the project's code is copied in, so that editing
the code does not download the dependencies again: only a change to pyproject.toml does.

    python3 docker/requirements.py pyproject.toml all      # dependencies + extras (self-references expanded)
    python3 docker/requirements.py pyproject.toml test,pymc
"""

from __future__ import annotations

import re
import sys
import tomllib


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    """The build requirements, the dependencies and those of ``extras``; ``name[a,b]`` entries are expanded.

    >>> requirements({"build-system": {"requires": ["setuptools"]},
    ...               "project": {"name": "p", "dependencies": ["numpy"],
    ...                           "optional-dependencies": {"a": ["scipy"], "all": ["p[a]"]}}}, ["all"])
    ['setuptools', 'numpy', 'scipy']
    """
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    self_ref = re.compile(rf"^{re.escape(project['name'])}\[(.*)\]$")
    out = list(pyproject.get("build-system", {}).get("requires", [])) + list(project.get("dependencies", []))
    seen: set[str] = set()
    todo = list(extras)
    while todo:
        extra = todo.pop(0).strip()
        if not extra or extra in seen:
            continue
        if extra not in optional:
            sys.exit(f"docker/requirements.py: no extra '{extra}' in pyproject.toml; known: {', '.join(optional)}")
        seen.add(extra)
        for req in optional[extra]:
            m = self_ref.match(req.replace(" ", ""))
            if m:
                todo.extend(m.group(1).split(","))
            elif req not in out:
                out.append(req)
    return out


if __name__ == "__main__":
    path, extras = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
    with open(path, "rb") as f:
        print("\n".join(requirements(tomllib.load(f), extras.split(","))))
