#!/usr/bin/env bash
# Quick start 2: install, start the two-node Slurm test cluster on this host (as root), run the whole suite.
# Arguments go to pytest, e.g. `bash scripts/test.sh -m "not slurm and not slow"` for a quick loop.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if [ "$(id -u)" = 0 ]; then
  eval "$(scripts/local-slurm.sh start)"
else
  echo "not root: the Slurm test cluster cannot start here; tests marked 'slurm' will be skipped" >&2
fi
exec .venv/bin/python -m pytest "$@"
