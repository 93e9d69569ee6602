#!/usr/bin/env bash
# Refresh constraints.txt: install the newest versions pyproject.toml allows into a scratch
# environment, run the quick suite and the end-to-end resume tests there, and only if they
# pass, write the installed versions to constraints.txt. Review the diff and commit it.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=${VENV:-.venv-newest}
rm -rf "$scratch"
VENV="$scratch" BAYESIM_NEWEST=1 bash scripts/bootstrap.sh
"$scratch/bin/python" -m pytest -q -m "not slurm and not slow" -p no:cacheprovider
"$scratch/bin/python" -m pytest -q -p no:cacheprovider tests/test_user_path.py -k "resume"
{
  echo "# The versions the whole suite last passed with (Python $("$scratch/bin/python" -c 'import platform; print(platform.python_version())'), $(uname -s) $(uname -m))."
  echo "# scripts/bootstrap.sh installs with these by default; BAYESIM_NEWEST=1 ignores them."
  echo "# Refresh: bash scripts/refresh-constraints.sh (newest allowed versions, quick suite, rewrite)."
  "$scratch/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check | grep -v '^bayesim'
} > constraints.txt
echo "constraints.txt rewritten from $scratch; review with: git diff constraints.txt"
