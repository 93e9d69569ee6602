#!/usr/bin/env bash
# Quick start 1: install, then run a real PyMC study end to end on local worker processes
# and show what it found. Re-running it resumes (and so finishes at once).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
out=${1:-example-results/linear_pymc}
set +e
.venv/bin/bayesim-hpc run examples/linear_pymc.py --executor local --workers 2 --result-dir "$out"
rc=$?
set -e
[ "$rc" -eq 0 ] || [ "$rc" -eq 3 ] || exit "$rc"   # 3: finished with failed tasks (shown below)
.venv/bin/bayesim-hpc status "$out" || true
.venv/bin/python - "$out" <<'PY'
import sys
import pandas as pd
from bayesim_hpc import load_results
pd.set_option("display.width", 160)
res = load_results(sys.argv[1])
print(res.summary[["task_id", "status", "rmse__pred_test", "bias__slope", "cover90__slope", "rhat_max", "ess_bulk_min", "timing_total"]].head(5).to_string(index=False))
cols = ["data_n", "n_success", "bias__slope", "bias__slope__mcse", "rmse__slope", "cover90__slope", "cover90__slope__wilson_low", "cover90__slope__wilson_high"]
print(res.cells[cols].to_string(index=False))
PY
echo "report: $(.venv/bin/bayesim-hpc report "$out")"
