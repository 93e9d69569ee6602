#!/usr/bin/env bash
# Create a virtual environment (once) and install bayesim-hpc with PyMC, plotting and test extras.
#   VENV=.venv (default)         where to install
#   BAYESIM_NEWEST=1             ignore constraints.txt: the newest versions pyproject.toml allows
# By default the versions in constraints.txt are installed: the set the test suite last passed with.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" --upgrade pip
if [ "${BAYESIM_NEWEST:-0}" = 1 ]; then
  "${pip[@]}" --upgrade --upgrade-strategy eager -e ".[all]"
else
  "${pip[@]}" -c constraints.txt -e ".[all]"
fi
