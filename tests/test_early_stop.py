"""Systematic failures stop early (issue 14): when the first tasks all fail the same way, the
run stops with the error, one task id and the replay command, instead of failing every task."""

from __future__ import annotations

import pytest

from bayesim_hpc import MockFitter, SimData, bias_metric, load_results, run_simulation, simulation_config
from bayesim_hpc.errors import ErrorBudgetExceeded, SystematicFailureError

from .user_path import cli, write_study

QUIET = dict(progress=False, emit=lambda s: None)


def broken_generator(data_spec, rng, task_ctx):
    x = rng.normal(size=data_spec["n"] + 0.5)   # a float size: TypeError in every task
    return SimData(train={"x": x, "y": x}, response="y", true_params={"slope": 1.0})


def sometimes_broken(data_spec, rng, task_ctx):
    if task_ctx.task_id.endswith(("r00002", "r00005")):
        raise ValueError("bad luck in this replicate")
    x = rng.normal(size=data_spec["n"])
    return SimData(train={"x": x, "y": 2 * x}, response="y", true_params={"slope": 2.0})


def study(generator, tmp_path, **kw):
    kw.setdefault("n_replicates", 30)
    return simulation_config(data_grid={"n": [20, 40]}, fit_grid={"m": ["a"]}, data_generator=generator,
                             fitter=MockFitter(draws=50), metrics=[bias_metric()], seed=5, retain="minimal",
                             result_path=tmp_path / "r", shard_size=30, **kw)


@pytest.mark.parametrize("executor", ["inline", "local", "mock"])
def test_a_bug_in_every_task_stops_early(executor, tmp_path):
    with pytest.raises(SystematicFailureError) as err:
        run_simulation(study(broken_generator, tmp_path), executor, workers=2, **QUIET)
    msg = str(err.value)
    assert "stopped early" in msg and "in generate with TypeError" in msg
    assert f"bayesim-hpc replay {tmp_path / 'r'} d00" in msg and "Fix the data generator" in msg
    summary = load_results(tmp_path / "r").summary
    assert (summary["status"] == "failed").sum() <= 20   # 10 per worker at most, not all 60


def test_keep_going_runs_every_task(tmp_path):
    res = run_simulation(study(broken_generator, tmp_path), "inline", keep_going=True, **QUIET)
    assert (res.summary["status"] == "failed").sum() == 60


def test_opt_out_in_the_study(tmp_path):
    res = run_simulation(study(broken_generator, tmp_path, stop_on_systematic_failure=None), "inline", **QUIET)
    assert (res.summary["status"] == "failed").sum() == 60


def test_scattered_failures_do_not_stop(tmp_path):
    res = run_simulation(study(sometimes_broken, tmp_path), "local", workers=2, **QUIET)
    s = res.summary
    assert (s["status"] == "failed").sum() == 4 and (s["status"] == "success").sum() == 56


def test_max_errors_still_works(tmp_path):
    with pytest.raises(ErrorBudgetExceeded) as err:
        run_simulation(study(sometimes_broken, tmp_path, max_errors=1), "inline", **QUIET)
    assert not isinstance(err.value, SystematicFailureError) and "max_errors=1" in str(err.value)


def test_resume_of_a_single_failed_task_does_not_trip_it(tmp_path):
    """Retrying the one failed task of a shard is not 'every task of the shard failed'."""
    path = write_study(tmp_path / "work", n_replicates=10)   # d002_f001_r00001 fails by design
    rdir = tmp_path / "results"
    cli("run", str(path), "--result-dir", str(rdir), check_rc=3)
    out = cli("resume", str(rdir), check_rc=3)
    assert "stopped early" not in out.stderr and "79 succeeded, 1 failed" in out.stderr


def test_cli_early_stop_message_and_exit_code(tmp_path):
    path = write_study(tmp_path / "work", n_replicates=12)
    path.write_text(path.read_text().replace('make_x(data_spec["n"], rng)', 'make_x(data_spec["n"] + 0.5, rng)'))
    rdir = tmp_path / "results"
    out = cli("run", str(path), "--result-dir", str(rdir), "--executor", "inline", check_rc=4)
    assert "stopped early" in out.stderr and "replay" in out.stderr
    assert "to finish: bayesim-hpc resume" not in out.stderr  # resume cannot fix code
    assert out.stderr.count("FAILED") <= 5  # repeats are folded, not one line per task
    again = cli("run", str(path), "--result-dir", str(rdir), "--executor", "inline", "--keep-going", check_rc=3)
    assert "0 succeeded, 96 failed, 0 missing" in again.stderr


def test_key_error_names_the_keys_the_spec_has(tmp_path):
    def gen(spec, rng, ctx):
        return SimData(train={"y": rng.normal(size=spec["n"]) * spec["sigma"]}, response="y",
                       true_params={"mu": 0.0})
    res = run_simulation(study(gen, tmp_path, n_replicates=2), "inline", keep_going=True, **QUIET)
    msg = res.summary["error_message"].iloc[0]
    assert "'sigma'" in msg and "data_spec (a row of data_grid), which has: 'n'" in msg
