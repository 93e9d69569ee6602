"""Task ids, lazy enumeration, shard plans, and seeds that depend only on a task's identity."""

import numpy as np
import pandas as pd
import pytest

from bayesim_hpc import run_simulation
from bayesim_hpc.grid import TaskSpace, expand_grid, plan_shards
from bayesim_hpc.seeding import data_rng

from .studies.linear import make_config


def test_ids_and_widths_grow_with_grid():
    sp = TaskSpace.from_grids(expand_grid({"n": list(range(1200))}), expand_grid({"m": [1, 2]}), 150_000)
    assert sp.task_id(0) == "d0001_f001_r000001"
    last = sp.ref(sp.n_tasks - 1)
    assert last.task_id == "d1200_f002_r150000"
    assert sp.parse_id(last.task_id) == last


def test_small_grid_ids_and_order():
    sp = TaskSpace.from_grids(expand_grid({"n": [1, 2]}), expand_grid({"m": ["a", "b"]}), 3)
    ids = [t.task_id for t in sp]
    assert ids == sorted(ids)
    assert ids[:4] == ["d001_f001_r00001", "d001_f001_r00002", "d001_f001_r00003", "d001_f002_r00001"]
    with pytest.raises(KeyError):
        sp.parse_id("d003_f001_r00001")


def test_task_space_is_lazy():
    # 25 million tasks cost nothing until enumerated
    sp = TaskSpace.from_grids(expand_grid({"n": list(range(50))}), expand_grid({"m": list(range(5))}), 100_000)
    assert sp.n_tasks == 25_000_000
    assert sp.ref(24_999_999).task_id == "d050_f005_r100000"


def test_shards_never_mix_fit_rows_and_cover_every_task_once():
    sp = TaskSpace.from_grids(expand_grid({"n": [1, 2, 3]}), expand_grid({"m": [1, 2]}), 7)
    shards = plan_shards(sp, 4)
    seen = np.concatenate([sp.shard_indices(s) for s in shards])
    assert sorted(seen.tolist()) == list(range(sp.n_tasks))
    for s in shards:
        fits = {sp.ref(int(i)).fit_idx for i in sp.shard_indices(s)}
        assert len(fits) == 1


def test_task_grid_subset():
    tg = pd.DataFrame({"data_idx": [2, 1], "fit_idx": [1, 2]})
    cfg = make_config(data_grid={"n": [50, 100]}, fit_grid={"model": ["a", "b"]}, task_grid=tg, n_replicates=2)
    assert cfg.n_tasks == 4
    assert [t.task_id for t in cfg.space] == ["d001_f002_r00001", "d001_f002_r00002", "d002_f001_r00001", "d002_f001_r00002"]


def test_data_rng_depends_on_identity_only():
    a = data_rng(42, 3, 7).normal(size=5)
    assert np.array_equal(a, data_rng(42, 3, 7).normal(size=5))
    assert not np.array_equal(a, data_rng(42, 3, 8).normal(size=5))
    assert not np.array_equal(a, data_rng(43, 3, 7).normal(size=5))


def _datasets(cfg):
    res = run_simulation(cfg, progress=False, emit=lambda s: None)
    tr = res.task_results
    return {tid: tr[tid]["data"]["train"]["y"] for tid in tr}


def test_common_random_numbers_and_stability_under_growth():
    base = make_config(fit_grid={"model": ["a"]}, n_replicates=3, retain=["data"])
    grown = make_config(fit_grid={"model": ["a", "b"]}, n_replicates=5, retain=["data"])
    d0, d1 = _datasets(base), _datasets(grown)
    for tid, y in d0.items():  # every existing task keeps its dataset
        assert np.array_equal(y, d1[tid]), tid
    for r in range(1, 6):  # both models see the same data for a given (d, r)
        assert np.array_equal(d1[f"d001_f001_r{r:05d}"], d1[f"d001_f002_r{r:05d}"])
    assert not np.array_equal(d1["d001_f001_r00001"], d1["d001_f001_r00002"])
