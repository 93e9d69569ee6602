"""The efficiency report (issue 19 item 6): sacct parsing, figures, suggestions, the profile writer.

The sacct outputs below were captured on the local Slurm 22.05 test cluster (scripts/local-slurm.sh)
with ``sacct -D -P -n -j IDS --format`` :data:`~bayesim_hpc.efficiency.SACCT_USAGE_FORMAT`.
"""

from __future__ import annotations

import json
import pickle
import subprocess

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from bayesim_hpc import run_simulation
from bayesim_hpc.cli import main
from bayesim_hpc.efficiency import Element, class_figures, parse_duration_s, parse_mem_mb, parse_usage, suggest
from bayesim_hpc.efficiency_study import profile_with_suggestions, study_efficiency, write_profile
from bayesim_hpc.executors.slurm_profile import load_profile
from bayesim_hpc.manifest import Manifest
from bayesim_hpc.resultdir import ResultDir
from bayesim_hpc.results import load_results

from .studies.linear import make_config

# a bayesim-hpc study of two resource classes (arrays 918: 1 GB, 919: 2 GB), one shard per element
SACCT_STUDY = """\
918_0|COMPLETED|2026-11-30T09:03:08|2026-11-30T09:03:08|2026-11-30T09:03:11|3|00:01.079|3|1|1G||n1
918_0.batch|COMPLETED|2026-11-30T09:03:08|2026-11-30T09:03:08|2026-11-30T09:03:11|3|00:00.012|3|1||1096K|n1
918_0.0|COMPLETED|2026-11-30T09:03:09|2026-11-30T09:03:09|2026-11-30T09:03:11|2|00:01.066|2|1||820K|n1
918_1|COMPLETED|2026-11-30T09:03:08|2026-11-30T09:03:08|2026-11-30T09:03:11|3|00:01.019|3|1|1G||n1
918_1.batch|COMPLETED|2026-11-30T09:03:08|2026-11-30T09:03:08|2026-11-30T09:03:11|3|00:00.012|3|1||3328K|n1
918_1.0|COMPLETED|2026-11-30T09:03:09|2026-11-30T09:03:09|2026-11-30T09:03:11|2|00:01.006|2|1||820K|n1
919_0|COMPLETED|2026-11-30T09:03:08|2026-11-30T09:03:08|2026-11-30T09:03:12|4|00:01.116|4|1|2G||n1
919_0.batch|COMPLETED|2026-11-30T09:03:08|2026-11-30T09:03:08|2026-11-30T09:03:12|4|00:00.013|4|1||3276K|n1
919_0.0|COMPLETED|2026-11-30T09:03:09|2026-11-30T09:03:09|2026-11-30T09:03:12|3|00:01.102|3|1||824K|n1
919_1|COMPLETED|2026-11-30T09:03:08|2026-11-30T09:03:08|2026-11-30T09:03:12|4|00:01.099|4|1|2G||n1
919_1.batch|COMPLETED|2026-11-30T09:03:08|2026-11-30T09:03:08|2026-11-30T09:03:12|4|00:00.012|4|1||3516K|n1
919_1.0|COMPLETED|2026-11-30T09:03:09|2026-11-30T09:03:09|2026-11-30T09:03:12|3|00:01.087|3|1||2780K|n1
"""

# sbatch --array=0-2%2 --mem=1G: each element holds 300 MB for 40 s; 922_2 waited for the throttle
SACCT_MEMORY = """\
922_0|COMPLETED|2026-11-30T09:03:21|2026-11-30T09:03:21|2026-11-30T09:04:02|41|00:00.332|41|1|1G||n1
922_0.batch|COMPLETED|2026-11-30T09:03:21|2026-11-30T09:03:21|2026-11-30T09:04:02|41|00:00.332|41|1||323692K|n1
922_1|COMPLETED|2026-11-30T09:03:21|2026-11-30T09:03:21|2026-11-30T09:04:02|41|00:00.322|41|1|1G||n1
922_1.batch|COMPLETED|2026-11-30T09:03:21|2026-11-30T09:03:21|2026-11-30T09:04:02|41|00:00.322|41|1||323732K|n1
922_2|COMPLETED|2026-11-30T09:03:21|2026-11-30T09:04:03|2026-11-30T09:04:43|40|00:00.432|40|1|1G||n1
922_2.batch|COMPLETED|2026-11-30T09:04:03|2026-11-30T09:04:03|2026-11-30T09:04:43|40|00:00.432|40|1||323636K|n1
"""

# scontrol requeue 925_0 while it ran (sacct -D: the REQUEUED run, then the pending one); 925_1 still runs;
# and array 909: elements cancelled and failed
SACCT_REQUEUED_AND_FAILED = """\
925_0|REQUEUED|2026-11-30T09:05:02|2026-11-30T09:05:03|2026-11-30T09:05:10|7|00:00.002|7|1|1G||n1
925_0.batch|CANCELLED|2026-11-30T09:05:03|2026-11-30T09:05:03|2026-11-30T09:05:11|8|00:00.002|8|1||1096K|n1
925_1|RUNNING|2026-11-30T09:05:02|2026-11-30T09:05:03|Unknown|18|00:00:00|18|1|1G||n1
925_1.batch|RUNNING|2026-11-30T09:05:03|2026-11-30T09:05:03|Unknown|18|00:00:00|18|1|||n1
925_0|PENDING|2026-11-30T09:05:11|Unknown|Unknown|0|00:00:00|0|1|1G||None assigned
909_1|CANCELLED by 0|2026-11-30T08:48:30|2026-11-30T08:48:31|2026-11-30T08:48:34|3|00:01.119|3|1|1G||n2
909_1.batch|CANCELLED|2026-11-30T08:48:31|2026-11-30T08:48:31|2026-11-30T08:48:35|4|00:00.002|4|1||3256K|n2
909_1.0|FAILED|2026-11-30T08:48:31|2026-11-30T08:48:31|2026-11-30T08:48:36|5|00:01.116|5|1||820K|n2
909_2|FAILED|2026-11-30T08:48:30|2026-11-30T08:48:31|2026-11-30T08:48:33|2|00:01.131|2|1|1G||n2
909_2.batch|FAILED|2026-11-30T08:48:31|2026-11-30T08:48:31|2026-11-30T08:48:33|2|00:00.015|2|1||1100K|n2
5_[2-9%2]|PENDING|2026-11-30T08:48:30|Unknown|Unknown|0|00:00:00|0|1|1G||None assigned
"""

# the same array after it ended: 925_0 ran again after the requeue (waited 11 s from its requeue)
SACCT_REQUEUED_DONE = """\
925_0|REQUEUED|2026-11-30T09:05:02|2026-11-30T09:05:03|2026-11-30T09:05:10|7|00:00.002|7|1|1G||n1
925_0.batch|CANCELLED|2026-11-30T09:05:03|2026-11-30T09:05:03|2026-11-30T09:05:11|8|00:00.002|8|1||1096K|n1
925_1|COMPLETED|2026-11-30T09:05:02|2026-11-30T09:05:03|2026-11-30T09:05:43|40|00:00.396|40|1|1G||n1
925_1.batch|COMPLETED|2026-11-30T09:05:03|2026-11-30T09:05:03|2026-11-30T09:05:43|40|00:00.396|40|1||323520K|n1
925_0|COMPLETED|2026-11-30T09:05:11|2026-11-30T09:05:22|2026-11-30T09:06:02|40|00:00.413|40|1|1G||n1
925_0.batch|COMPLETED|2026-11-30T09:05:22|2026-11-30T09:05:22|2026-11-30T09:06:02|40|00:00.413|40|1||323788K|n1
"""

# sbatch --mem=300M of a process that touches 600 MB: the cgroup killed it after 1 s, before the
# 30 s accounting sample saw more than 3.4 MB
SACCT_OOM = """\
1044|OUT_OF_MEMORY|2026-11-30T09:22:16|2026-11-30T09:22:43|2026-11-30T09:22:44|1|00:00.286|1|1|300M||n1
1044.batch|OUT_OF_MEMORY|2026-11-30T09:22:43|2026-11-30T09:22:43|2026-11-30T09:22:44|1|00:00.286|1|1||3460K|n1
"""


def test_parse_durations_and_sizes():
    assert parse_duration_s("00:01.079") == pytest.approx(1.079)
    assert parse_duration_s("2-01:00:00") == 2 * 86400 + 3600
    assert parse_duration_s("") is None and parse_duration_s("INVALID") is None
    assert parse_mem_mb("323692K") == pytest.approx(323692 / 1024)
    assert parse_mem_mb("1G") == 1024 and parse_mem_mb("500M") == 500 and parse_mem_mb("4Gn") == 4096
    assert parse_mem_mb("2Gc", cpus=4) == 8192 and parse_mem_mb("") is None


def test_parse_usage_keeps_steps_maxrss_and_every_run_of_a_requeued_element():
    runs = parse_usage(SACCT_STUDY)
    assert [r.job_id for r in runs] == ["918_0", "918_1", "919_0", "919_1"]
    r = runs[1]
    assert r.state == "COMPLETED" and r.req_mem_mb == 1024 and r.alloc_cpus == 1 and r.node == "n1"
    assert r.max_rss_mb == pytest.approx(3328 / 1024)  # the largest of its steps (batch 3328K, .0 820K)
    assert r.elapsed_s == 3 and r.core_s == 3 and r.cpu_s == pytest.approx(1.019) and r.wait_s == 0

    waits = [r.wait_s for r in parse_usage(SACCT_MEMORY)]
    assert waits == [0, 0, 42]  # 922_2 waited for the %2 throttle: submitted 09:03:21, started 09:04:03

    runs = parse_usage(SACCT_REQUEUED_AND_FAILED)
    assert [(r.job_id, r.state) for r in runs] == [("925_0", "REQUEUED"), ("925_1", "RUNNING"),
                                                  ("925_0", "PENDING"), ("909_1", "CANCELLED"), ("909_2", "FAILED")]
    assert runs[2].start is None and runs[2].max_rss_mb is None  # the requeued run waits again
    assert runs[0].max_rss_mb == pytest.approx(1096 / 1024)  # its step row belongs to the first run


def _el(job_id: str, runs, cls="5min/1GB/1cpu", mem=1024, retry=False, fit_s=0.0, cells=(0,)):
    return Element(job_id, cls, [0], list(cells), mem, 5, 1, retry, fit_s, runs)


def test_class_figures_from_real_runs():
    runs = parse_usage(SACCT_MEMORY)
    figs = class_figures([_el(r.job_id, [r], fit_s=30.0) for r in runs])
    assert len(figs) == 1
    c = figs[0]
    rss = [323692 / 1024, 323732 / 1024, 323636 / 1024]
    assert c.elements == 3 and c.runs == 3 and c.failed_runs == 0 and c.retries == 0
    assert c.max_rss_max_mb == pytest.approx(max(rss))
    assert c.max_rss_p95_mb == pytest.approx(np.percentile(rss, 95))
    assert c.elapsed_max_s == 41 and c.elapsed_p50_s == 41
    assert c.core_h == pytest.approx((41 + 41 + 40) / 3600)
    assert c.fit_core_h == pytest.approx(90 / 3600)
    assert c.overhead_core_h == pytest.approx((122 - 90) / 3600)
    assert c.cpu_efficiency == pytest.approx((0.332 + 0.322 + 0.432) / 122)
    assert c.wait_max_s == 42 and c.wait_p50_s == 0
    # 316 MB x 1.2 = 379 MB -> 512 MB (steps of 256); 41 s x 1.5 = 62 s -> 5 min (steps of 5)
    assert (c.suggestion.mem_mb, c.suggestion.time_min) == (512, 5)


def test_failed_and_requeued_runs_count_as_retries_and_running_ones_not_as_elapsed():
    runs = parse_usage(SACCT_REQUEUED_AND_FAILED)
    by = {}
    for r in runs:
        by.setdefault(r.job_id, []).append(r)
    figs = class_figures([_el(j, rs, retry=(j == "909_2")) for j, rs in by.items()])
    c = figs[0]
    assert c.runs == 5 and c.elements == 4
    assert c.failed_runs == 2  # CANCELLED and FAILED; REQUEUED, RUNNING and PENDING are not failures
    assert c.retries == 1 + 1  # 925_0 ran twice; 909_2 was a resubmission
    assert c.elapsed_max_s == 7  # ended runs only: 925_1 (running, 18 s so far) does not count
    assert c.failed_core_h == pytest.approx((3 + 2) / 3600)


def test_suggest_rounds_up_with_margins():
    s = suggest([1000.0] * 19 + [3000.0], [600.0] * 20, mem_margin=0.0, time_margin=0.0)
    assert s.mem_mb == 1280  # p95 = 1100 MB (between the 19th and 20th value) -> 5 x 256
    assert s.time_min == 10
    assert suggest([], []).mem_mb is None and suggest([], []).basis == "nothing measured"
    assert suggest([100], [10], mem_margin=0.2).mem_mb == 256  # never below one step


def _fake_sacct(text: str, calls: list):
    def run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, text, "")

    return run


def _study_with_submissions(tmp_path):
    """A real study (run inline) whose manifest records the two arrays of SACCT_STUDY, one shard per element."""
    path = tmp_path / "s"
    run_simulation(make_config(result_path=path, data_grid={"n": [50, 100], "sigma": [1.0]}, n_replicates=20,
                               shard_size=10), "inline", progress=False, emit=lambda s: None)
    subs = [{"executor": "slurm", "job_id": str(j), "shards": sh, "elements_shards": [[s] for s in sh],
             "attempts": [1, 1], "resources": cls, "elements": [f"{j}_0", f"{j}_1"], "time": 1.0 + k,
             "resources_raw": {"time_min": 5, "mem_mb": mem, "cpus_per_task": 1}}
            for k, (j, sh, cls, mem) in enumerate([(918, [0, 1], "5min/1GB/1cpu", 1024),
                                                   (919, [2, 3], "5min/2GB/1cpu", 2048)])]
    Manifest(ResultDir(path)).update(lambda d: d["submissions"].extend(subs))
    return path


def test_study_efficiency_joins_manifest_segments_and_sacct(tmp_path):
    path = _study_with_submissions(tmp_path)
    (path / "study.pkl").write_bytes(b"not a pickle: efficiency must never load it")
    calls: list = []
    eff = study_efficiency(path, run=_fake_sacct(SACCT_STUDY, calls))
    assert calls and calls[0][:2] == ["sacct", "-D"] and "918,919" in calls[0]
    assert eff.accounting and eff.elements == 4
    by = {c.resources: c for c in eff.classes}
    assert set(by) == {"5min/1GB/1cpu", "5min/2GB/1cpu"}
    # fit time per class = the tasks' timing_total in the summary (shards 0-1: cell n=50; 2-3: n=100)
    summary = load_results(path).summary
    for cls, n in (("5min/1GB/1cpu", 50), ("5min/2GB/1cpu", 100)):
        want = summary[summary["task_id"].str.startswith("d001" if n == 50 else "d002")]["timing_total"].sum()
        assert by[cls].fit_core_h == pytest.approx(want / 3600)
    assert by["5min/1GB/1cpu"].max_rss_max_mb == pytest.approx(3328 / 1024)
    assert by["5min/2GB/1cpu"].req_mem_mb == 2048 and by["5min/2GB/1cpu"].core_h == pytest.approx(8 / 3600)
    cells = {c.cell: c for c in eff.cells}
    assert cells["d001_f001"].rows == 20 and cells["d001_f001"].succeeded == 20
    assert cells["d002_f001"].max_rss_max_mb == pytest.approx(3516 / 1024)
    assert any("shorter than" in n for n in eff.notes)  # 3-4 s runs: MaxRSS is sampled
    text = eff.render()
    assert "class 5min/2GB/1cpu: 2 element(s)" in text and "--write-profile" in text
    assert json.loads(eff.to_json())["classes"][0]["overhead_core_h"] is not None


def test_without_accounting_it_says_what_it_cannot_know(tmp_path):
    path = _study_with_submissions(tmp_path)

    def no_accounting(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "sacct: error: Slurm accounting storage is disabled\n")

    eff = study_efficiency(path, run=no_accounting)
    assert not eff.accounting
    assert any("no accounting" in n and "MaxRSS" in n for n in eff.notes)
    assert all(c.max_rss_p95_mb is None and c.fit_core_h > 0 for c in eff.classes)
    assert sum(c.rows for c in eff.cells) == 40  # the segments still count
    with pytest.raises(Exception, match="nothing measured"):
        profile_with_suggestions(eff, {})

    def missing(cmd, **kw):
        raise FileNotFoundError("sacct")

    assert any("sacct did not answer" in n for n in study_efficiency(path, run=missing).notes)


def test_local_study_reports_the_segments(tmp_path):
    path = tmp_path / "loc"
    run_simulation(make_config(result_path=path, n_replicates=12), "local", workers=2, progress=False,
                   emit=lambda s: None)
    res = CliRunner().invoke(main, ["efficiency", str(path), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["classes"] == [] and data["cells"][0]["rows"] == 12
    assert "no Slurm submissions" in data["notes"][0]
    res = CliRunner().invoke(main, ["efficiency", str(path), "--from", "default"])
    assert res.exit_code == 2 and "--write-profile" in res.output


def test_profile_from_suggestions_keeps_the_base_and_adds_rules_for_big_cells(tmp_path):
    path = _study_with_submissions(tmp_path)
    eff = study_efficiency(path, run=_fake_sacct(SACCT_STUDY, []))
    # make the n=100 cell need more memory than the other one (its elements' MaxRSS)
    heavy = next(c for c in eff.cells if c.cell == "d002_f001")
    heavy.suggestion = suggest([3000.0], [], mem_margin=0.2)
    base = load_profile("example-cluster")
    base["rules"] = [{"match": {"n": 100}, "mem_gb": 16, "partition": "bigmem"}, {"match": {"model": "x"}, "time_min": 9}]
    prof = profile_with_suggestions(eff, base)
    assert prof["account"] == base["account"] and prof["setup"] == base["setup"]
    assert prof["mem_gb"] == 0.25 and prof["time_min"] == 5
    first = prof["rules"][0]
    assert first["match"] == {"n": 100, "sigma": 1.0, "model": "linear"} and first["mem_gb"] == 3.75
    assert first["partition"] == "bigmem"  # kept from the old rule of that cell
    assert {"match": {"n": 100}, "partition": "bigmem"} in prof["rules"]  # old rule without its memory
    assert all("time_min" not in r for r in prof["rules"])
    out = write_profile(eff, tmp_path / "next.yaml", "example-cluster")
    loaded = load_profile(str(out))  # a valid profile
    assert loaded["account"] == "my_project_account" and loaded["time_min"] == 5
    assert out.read_text().startswith("# written by `bayesim-hpc efficiency")
    assert yaml.safe_load(out.read_text())["mem_gb"] == loaded["mem_gb"]


def test_cli_write_profile_and_status_efficiency(tmp_path, monkeypatch):
    path = _study_with_submissions(tmp_path)
    from bayesim_hpc import efficiency_study

    real = efficiency_study.study_efficiency
    monkeypatch.setattr(efficiency_study, "study_efficiency",
                        lambda p, **kw: real(p, **{**kw, "run": _fake_sacct(SACCT_STUDY, [])}))
    out = tmp_path / "p.yaml"
    res = CliRunner().invoke(main, ["efficiency", str(path), "--write-profile", str(out), "--mem-margin", "0.5"])
    assert res.exit_code == 0, res.output
    assert "memory: requested 1.00 GB" in res.output and load_profile(str(out))["time_min"] == 5
    res = CliRunner().invoke(main, ["status", str(path), "--no-live", "--efficiency"])
    assert res.exit_code == 0, res.output
    assert "succeeded: 40" in res.output and "efficiency of" in res.output and "not asking sacct" in res.output
    res = CliRunner().invoke(main, ["status", str(path), "--no-live", "--efficiency", "--json"])
    both = json.loads(res.output)
    assert both["status"]["n_success"] == 40 and both["efficiency"]["elements"] == 4


def test_study_pickle_is_never_loaded(tmp_path, monkeypatch):
    path = _study_with_submissions(tmp_path)
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("efficiency unpickled study.pkl"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("efficiency unpickled study.pkl"))
    assert study_efficiency(path, live=False).elements == 4


def test_report_has_an_efficiency_section(tmp_path):
    path = tmp_path / "rep"
    run_simulation(make_config(result_path=path, n_replicates=6), "inline", progress=False, emit=lambda s: None)
    res = CliRunner().invoke(main, ["report", str(path)])
    assert res.exit_code == 0, res.output
    html_text = (path / "report.html").read_text()
    assert "Were the requests right?" in html_text and "no Slurm submissions recorded" in html_text
    assert "efficiency" in json.loads((path / "report.json").read_text())["sections"]


def test_requeued_element_counts_both_runs():
    runs = parse_usage(SACCT_REQUEUED_DONE)
    by: dict = {}
    for r in runs:
        by.setdefault(r.job_id, []).append(r)
    assert [r.wait_s for r in by["925_0"]] == [1, 11]
    c = class_figures([_el(j, rs) for j, rs in by.items()])[0]
    assert c.runs == 3 and c.retries == 1 and c.failed_runs == 0
    assert c.core_h == pytest.approx((7 + 40 + 40) / 3600)
    assert c.max_rss_max_mb == pytest.approx(323788 / 1024)
    assert c.wait_max_s == 1  # waiting = the first run's; the requeue's wait is part of the retry


def test_out_of_memory_runs_raise_the_suggestion_above_the_request():
    (run,) = parse_usage(SACCT_OOM)
    assert run.state == "OUT_OF_MEMORY" and run.req_mem_mb == 300 and run.max_rss_mb == pytest.approx(3460 / 1024)
    c = class_figures([_el("1044", [run], cls="2min/300MB/1cpu", mem=300)])[0]
    assert c.failed_runs == 1
    # MaxRSS (3.4 MB) says nothing of the need: at least twice the request, rounded up to 256 MB
    assert c.suggestion.mem_mb == 768 and "ran out of memory" in c.suggestion.basis
    timeout = parse_usage(SACCT_OOM.replace("OUT_OF_MEMORY", "TIMEOUT"))
    c = class_figures([Element("1044", "x", [0], [0], 300, 10, 1, False, 0.0, timeout)])[0]
    assert c.suggestion.time_min == 20 and "ran out of time" in c.suggestion.basis  # 1 s elapsed says nothing
