"""Efficiency figures against sacct, and notifications, on the real local Slurm cluster (issue 19 items 6, 7).

Run as root: ``eval "$(scripts/local-slurm.sh env)" && .venv/bin/python -m pytest tests/slurm -q``.
"""

from __future__ import annotations

import subprocess

import pandas as pd
import pytest

from bayesim_hpc import MockFitter, run_simulation
from bayesim_hpc.efficiency import parse_mem_mb
from bayesim_hpc.efficiency_study import study_efficiency
from bayesim_hpc.results import load_results

from ..test_notify import _Hook
from .test_slurm_executor import FAST, _cfg, manifest, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

FITS = pd.DataFrame({"model": ["light", "heavy"], "delay": [0.02, 0.1]})


def _study(path):
    return _cfg(path, data_grid={"n": [50], "sigma": [1.0]}, fit_grid=FITS, n_replicates=20, shard_size=10,
                fitter=MockFitter(delay=0.02))


def _heavy_mem(data_spec, fit_spec):
    return {"mem_gb": 2} if fit_spec["model"] == "heavy" else None


def _sacct(*args: str) -> list[list[str]]:
    out = subprocess.run(["sacct", "-P", "-n", *args], capture_output=True, text=True, check=True).stdout
    return [ln.split("|") for ln in out.splitlines() if ln.strip()]


@pytest.mark.timeout(300)
def test_efficiency_figures_match_sacct_and_the_webhook_hears_the_end(tmp_path, studies):
    path = tmp_path / "slurm"
    studies.append(path)
    hook = _Hook()
    try:
        run_simulation(_study(path), "slurm", resources=_heavy_mem, emit=lambda s: None, notify=[hook.url], **FAST)
    finally:
        hook.close()
    (got,) = [g["json"] for g in hook.got]
    assert got["event"] == "finished" and got["state"] == "completed"
    assert (got["succeeded"], got["failed"], got["missing"]) == (40, 0, 0) and got["directory"] == str(path)

    subs = [s for s in manifest(path)["submissions"] if s.get("executor") == "slurm"]
    ids = ",".join(s["job_id"] for s in subs)
    wait_for(lambda: all(r[1] == "COMPLETED" for r in _sacct("-X", "-j", ids, "--format", "JobID,State"))
             and len(_sacct("-X", "-j", ids, "--format", "JobID")) == 4, 60, "sacct to know the 4 elements")
    eff = study_efficiency(path)
    assert eff.accounting and eff.elements == 4
    by = {c.resources: c for c in eff.classes}
    assert set(by) == {s["resources"] for s in subs} and len(by) == 2
    summary = load_results(path).summary
    for s in subs:
        c = by[s["resources"]]
        # allocation rows: elapsed and allocated core-seconds, straight from sacct
        alloc = _sacct("-X", "-j", s["job_id"], "--format", "JobID,ElapsedRaw,CPUTimeRAW,ReqMem")
        assert c.elapsed_max_s == max(float(r[1]) for r in alloc)
        assert c.core_h == pytest.approx(sum(float(r[2]) for r in alloc) / 3600)
        assert c.req_mem_mb == parse_mem_mb(alloc[0][3]) == s["resources_raw"]["mem_mb"]
        # steps: MaxRSS, the largest of each element's steps
        steps = _sacct("-j", s["job_id"], "--format", "JobID,MaxRSS")
        rss = [parse_mem_mb(r[1]) for r in steps if "." in r[0] and r[1]]
        assert rss and c.max_rss_max_mb == pytest.approx(max(rss))
        # fits: the summary's timing_total of the tasks of this class's shards
        shards = set(s["shards"])
        tasks = load_results(path).rd.read_frozen().shards
        idx = [i for sh in tasks if sh.shard_id in shards for i in range(sh.start, sh.stop)]
        assert c.fit_core_h == pytest.approx(summary.iloc[idx]["timing_total"].sum() / 3600)
        assert c.failed_runs == 0 and c.retries == 0 and c.suggestion.time_min == 5


@pytest.mark.timeout(200)
def test_detach_asks_slurm_to_mail_and_says_webhooks_need_a_driver(tmp_path, studies):
    path = tmp_path / "det"
    studies.append(path)
    lines: list[str] = []
    run_simulation(_study(path), "slurm", detach=True, emit=lines.append,
                   notify=["someone@example.org", "http://127.0.0.1:9/hook"], **FAST)
    assert any("--detach leaves no driver to call webhooks" in ln for ln in lines), lines
    (sub,) = [s for s in manifest(path)["submissions"] if s.get("executor") == "slurm"]
    script = (path / "logs" / "slurm" / sub["job_id"] / f"{sub['job_id']}_submission.sh").read_text()
    assert "#SBATCH --mail-type=END,FAIL" in script and "#SBATCH --mail-user=someone@example.org" in script
