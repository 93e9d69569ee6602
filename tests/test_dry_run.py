"""`--dry-run` on the Slurm executor (issue 18): nothing left behind, elements by task id, the
memory request and where it came from, no submitit wckey, a script that says what it runs.
Runs without a cluster: the plan and the script need no scheduler."""

from __future__ import annotations

from bayesim_hpc import run_simulation

from .studies.linear import make_config


def test_slurm_dry_run_shows_the_plan_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_CONF", raising=False)  # no scheduler to ask (scontrol fails at once)
    rdir = tmp_path / "new-study"
    lines: list[str] = []
    res = run_simulation(make_config(n_replicates=20, shard_size=10, result_path=rdir), "slurm", dry_run=True,
                         progress=False, emit=lines.append)
    text = "\n".join(lines)
    assert res.dry_run and not rdir.exists(), "a dry run must not leave the result directory behind"
    assert "d001_f001_r00001 .. d001_f001_r00010, 10 tasks" in text
    assert "memory 2GB (default)" in text and "#SBATCH --mem=2GB" in text
    assert "--wckey" not in text
    assert "runs bayesim_hpc.executors.slurm_job.run_element" in text
    assert "-m bayesim_hpc.worker" in text  # the command that runs an element's shard here


def test_profile_and_option_requests_name_their_source(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_CONF", raising=False)
    lines: list[str] = []
    run_simulation(make_config(n_replicates=4, result_path=tmp_path / "r"), "slurm", dry_run=True, mem="3G",
                   profile="example-cluster", progress=False, emit=lines.append)
    line = next(x for x in lines if x.startswith("requests per element"))
    assert "memory 3GB (option)" in line and "(profile example-cluster)" in line


def test_dry_run_shows_excluded_nodes_and_clusters(tmp_path, monkeypatch):
    from bayesim_hpc import MockFitter
    from bayesim_hpc.manifest import Manifest
    from bayesim_hpc.resultdir import ResultDir

    monkeypatch.delenv("SLURM_CONF", raising=False)
    rdir = tmp_path / "r"
    fitter = MockFitter(fail_tasks=("d001_f001_r00002",))
    cfg = lambda: make_config(n_replicates=4, result_path=rdir, fitter=fitter)  # noqa: E731
    run_simulation(cfg(), "inline", progress=False, emit=lambda s: None)
    Manifest(ResultDir(rdir)).update(lambda m: m.setdefault("excluded_nodes", {}).update(
        n7={"why": "NODE_FAIL 2 times (3 element run(s) lost: job(s) 5_0, 5_1, 9_0)", "since": 0}))
    lines: list[str] = []
    run_simulation(cfg(), "slurm", dry_run=True, clusters=["c1", "c2"], retry_failed=True, progress=False,
                   emit=lines.append)
    text = "\n".join(lines)
    assert "#SBATCH --exclude=n7" in text and "n7: NODE_FAIL 2 times" in text and "--clear" in text
    assert "--clusters=c1,c2" in text
