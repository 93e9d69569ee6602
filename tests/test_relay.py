"""Warnings raised in every task are folded across all workers (issue 18): a bounded number of
lines, then one line per kind with its count and cells."""

from __future__ import annotations

from bayesim_hpc import MockFitter, run_simulation

from .studies.linear import make_config


def test_a_warning_in_every_task_prints_a_bounded_number_of_lines(tmp_path):
    cfg = make_config(fitter=MockFitter(draws=50, warn_rate=1.0), data_grid={"n": [20, 40], "sigma": [1.0]},
                      fit_grid={"model": ["a", "b"]}, n_replicates=100, shard_size=25, result_path=tmp_path / "r")
    lines: list[str] = []
    res = run_simulation(cfg, "local", workers=2, progress=False, emit=lines.append)
    assert res.summary["n_warnings"].min() >= 1  # every one of the 400 tasks warned
    warning_lines = [line for line in lines if "WARNING" in line]
    assert len(warning_lines) <= 3 + 3 + 1, "\n".join(warning_lines)  # first 3, milestones 10/100, summary
    summary = [line for line in lines if line.startswith("  400 x WARNING")]
    assert summary and "cells: d001_f001 100" in summary[0], lines[-12:]
