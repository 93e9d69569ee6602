"""`bayesim-hpc check`: one task per cell, here, before anything is submitted (issue 18)."""

from __future__ import annotations

from bayesim_hpc.preflight import preflight

from .studies.linear import make_config
from .user_path import cli, write_study


def test_a_study_with_one_failing_cell_exits_nonzero_and_names_it(tmp_path):
    path = write_study(tmp_path / "work")
    text = path.read_text().replace(
        "    x = make_x(data_spec[\"n\"], rng)\n",
        "    if data_spec[\"n\"] == 80 and data_spec[\"sigma\"] == 1.0:\n"
        "        raise ValueError(\"this cell's generator is broken\")\n"
        "    x = make_x(data_spec[\"n\"], rng)\n")
    path.write_text(text)
    out = cli("check", str(path), cwd=tmp_path, check_rc=1)
    assert "d004_f001  n=80, sigma=1.0 | model=a\n      FAILED in generate: ValueError: this cell's generator is broken" in out.stdout
    assert f"bayesim-hpc check {path} --cell d004_f001 --traceback" in out.stdout
    # (d002_f001_r00001 fails by design in this study file: MockFitter(fail_tasks=...))
    assert "5 of 8 cell(s) ran a task successfully" in out.stdout
    assert "FAILED: d002_f001, d004_f001, d004_f002" in out.stdout
    assert not (tmp_path / "work" / "results").exists() and not list(tmp_path.glob("**/study.json"))
    one = cli("check", str(path), "--cell", "d004_f002", "--traceback", cwd=tmp_path, check_rc=1)
    assert "Traceback" in one.stdout and "d001_f001" not in one.stdout


def test_preflight_runs_the_real_first_task_of_each_cell(tmp_path):
    from bayesim_hpc import run_simulation

    config = make_config(data_grid={"n": [20, 40], "sigma": [1.0]}, n_replicates=3, result_path=tmp_path / "r")
    checks = preflight(config)
    assert [c.task_id for c in checks] == ["d001_f001_r00001", "d002_f001_r00001"]
    assert all(c.ok and c.seconds > 0 and c.peak_rss_mb > 10 for c in checks)
    assert checks[1].label == "n=40, sigma=1.0 | model=linear"
    s = run_simulation(config, progress=False, emit=lambda s: None).summary.set_index("task_id")
    assert s.loc["d002_f001_r00001", "status"] == "success"
