"""Time-aware planning (bayesim_hpc.planning): packing, cost-sized shards, figures, and that a plan
never changes results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bayesim_hpc import MockFitter, run_simulation
from bayesim_hpc.grid import TaskSpace, plan_shards
from bayesim_hpc.planning import (CellCost, CostModel, cost_model, hinted, measure_segments, plan_elements,
                                  plan_shards_by_cost)
from bayesim_hpc.resultdir import ResultDir

from .studies.linear import make_config


def _space(n_data=3, n_fit=2, n_rep=50):
    return TaskSpace(np.array([(d, f) for d in range(n_data) for f in range(n_fit)]), n_data, n_fit, n_rep)


def _covered(space, shards):
    idx = np.concatenate([space.shard_indices(s) for s in shards])
    return np.sort(idx)


def test_cost_sized_shards_cover_every_task_once_never_mix_fits_and_keep_heavy_shards_short():
    space = _space()
    task_s = np.array([0.1, 5.0] * 3)  # fit 2 is heavy
    shards = plan_shards_by_cost(space, task_s, max_shard_s=30.0, max_size=40)
    assert np.array_equal(_covered(space, shards), np.arange(space.n_tasks))
    for s in shards:
        fits = {space.fit_idx_at_shard_pos(p) for p in range(s.start, s.stop)}
        assert len(fits) == 1
        cost = sum(task_s[space.shard_cell_order[p // space.n_rep]] for p in range(s.start, s.stop))
        assert s.n_tasks <= 40 and (cost <= 30.0 + 1e-9 or s.n_tasks == 1)
    heavy = [s.n_tasks for s in shards if space.fit_idx_at_shard_pos(s.start) == 1]
    light = [s.n_tasks for s in shards if space.fit_idx_at_shard_pos(s.start) == 0]
    assert max(heavy) == 6 and max(light) == 40


def test_elements_pack_to_the_budget_by_class_and_heavy_cells_get_fewer_tasks():
    space = _space(n_data=1, n_fit=2, n_rep=100)
    shards = plan_shards(space, 10)
    model = CostModel({0: CellCost(0.1, 2.0, "pilot", 2), 1: CellCost(3.0, 8.0, "pilot", 2)}, startup_s=5.0)
    plan = plan_elements(space, shards, model, slots=4, target_s=100.0,
                         resources_of=lambda sh: "big" if space.fit_idx_at_shard_pos(sh.start) == 1 else "small")
    assert sorted(s for e in plan for s in e.shards) == [s.shard_id for s in shards]  # each shard once
    assert all(len({("big" if space.fit_idx_at_shard_pos(shards[s].start) == 1 else "small") for s in e.shards}) == 1
               for e in plan)
    small = [e for e in plan if e.resources == "small"]
    big = [e for e in plan if e.resources == "big"]
    assert len(small) == 1 and small[0].n_tasks == 100  # 10 s of light work: one element
    # 310 s of work on 4 slots: a budget of 77.5 s; the 300 s of heavy work in 4 elements of 20-30 tasks
    assert len(big) == 4 and all(20 <= e.n_tasks <= 30 for e in big)
    for e in plan:  # start-up and the first-fit compile are in the prediction
        assert e.predicted_s >= 5.0 + (2.0 if e.resources == "small" else 8.0)
    # a small study: about one element per slot, not one per target
    few = plan_elements(space, shards, model, slots=2, target_s=10_000.0)
    assert len(few) == 2


def test_max_elements_raises_the_budget():
    space = _space(n_data=1, n_fit=1, n_rep=100)
    shards = plan_shards(space, 5)
    model = CostModel({0: CellCost(1.0, 0.0, "hint")})
    assert len(plan_elements(space, shards, model, slots=1, target_s=10.0)) == 10  # the target: 2 shards each
    assert len(plan_elements(space, shards, model, slots=100, target_s=10.0)) == 20  # a shard is never split
    assert len(plan_elements(space, shards, model, slots=1, target_s=10.0, max_elements=4)) <= 4


def test_figures_from_hint_and_segments(tmp_path):
    cfg = make_config(result_path=tmp_path / "s", data_grid={"n": [50], "sigma": [1.0]},
                      fit_grid={"model": ["a", "b"]}, n_replicates=6, shard_size=3)
    space = cfg.space
    h = hinted(space, [cfg.fit_spec(f) for f in range(space.n_fit)], {"b": 7.0})
    assert {k: c.task_s for k, c in h.items()} == {1: 7.0} and h[1].source == "hint"
    assert hinted(space, [cfg.fit_spec(0), cfg.fit_spec(1)], 2.0)[0].task_s == 2.0
    with pytest.raises(ValueError, match="task_seconds"):
        hinted(space, [cfg.fit_spec(0), cfg.fit_spec(1)], "fast")
    run_simulation(cfg, "inline", progress=False, emit=lambda s: None)
    m = measure_segments(ResultDir(cfg.result_path).path, space)
    assert set(m) == {0, 1} and all(c.source == "segments" and c.n == 6 and c.task_s > 0 for c in m.values())
    model = cost_model(space, measured=m, hint=h)
    assert model.cells[1].source == "segments"  # measured beats a hint
    assert cost_model(space).cells[0].source == "guess"


def test_a_cost_sized_plan_gives_bit_identical_results_to_the_count_plan(tmp_path):
    fits = pd.DataFrame({"model": ["light", "heavy"], "delay": [0.0, 0.0]})
    kw = dict(data_grid={"n": [30, 60], "sigma": [1.0]}, fit_grid=fits, n_replicates=15, retain="minimal",
              fitter=MockFitter(fail_tasks=("d002_f002_r00004",)))
    plain = run_simulation(make_config(result_path=tmp_path / "plain", shard_size=7, **kw), "inline",
                           progress=False, emit=lambda s: None).summary
    cfg = make_config(result_path=tmp_path / "planned", shard_size=7, **kw)
    shards = plan_shards_by_cost(cfg.space, np.array([0.01, 1.0, 0.01, 1.0]), max_shard_s=4.0, max_size=7)
    assert len(shards) != len(plan_shards(cfg.space, 7))
    ResultDir(cfg.result_path).freeze(cfg, 7, shards)
    planned = run_simulation(cfg, "inline", progress=False, emit=lambda s: None).summary
    cols = [c for c in plain.columns if not c.startswith("timing") and c not in ("segment", "shard_id")]
    a = plain.sort_values("task_id")[cols].reset_index(drop=True)
    b = planned.sort_values("task_id")[cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
