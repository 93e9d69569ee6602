"""What growing a study costs: task-space lookups with many blocks, and an extension's freeze.

Prints a table:
* per-call time of ``ref``, ``parse_id`` and whole-study ``cell_and_rep`` / ``shard_indices``
  for a 250,000-task space (500 data x 5 fit x 100 replicates) as frozen at creation (1
  block) and after 20 adaptive rounds (21 blocks), and of ``TaskSpace.from_layout``;
* wall time of ``run`` on an existing 25,000-task directory that adds nothing (the
  extension check), that adds 5,000 tasks (plan + freeze, tasks not run: ``reduce=False``
  and the inline run of the new tasks is excluded), and the reducer on the grown directory
  and on the same study run at once.

    python benchmarks/bench_grow.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bayesim_hpc.grid import TaskSpace, plan_shards  # noqa: E402


def per_call(fn, n: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t) / n


def spaces() -> dict[str, TaskSpace]:
    cells = np.array([(d, f) for d in range(500) for f in range(5)])
    one = TaskSpace(cells, 500, 5, 100)
    grown = TaskSpace(cells, 500, 5, 20)
    rng = np.random.default_rng(1)
    reps = 20
    for _ in range(20):  # 20 rounds, each adding 4 replicates to a random half of the cells
        reps += 4
        pick = rng.random(len(cells)) < 0.5
        want = {(int(d), int(f)): int(grown.cell_reps[k]) + 4 for k, (d, f) in enumerate(cells) if pick[k]}
        grown = grown.extend(want, 500, 5)
    return {"1 block": one, f"{len(grown.blocks)} blocks": grown}


def main() -> None:
    print(f"{'space':<12} {'tasks':>8} {'ref us':>8} {'parse us':>9} {'cell_and_rep ms':>16} "
          f"{'all shards ms':>14} {'from_layout ms':>15}")
    for name, sp in spaces().items():
        ids = [sp.task_id(i) for i in range(0, sp.n_tasks, 997)]
        r = per_call(lambda i, sp=sp: sp.ref((i * 7919) % sp.n_tasks), 20000) * 1e6
        p = per_call(lambda i, sp=sp, ids=ids: sp.parse_id(ids[i % len(ids)]), 20000) * 1e6
        t = time.perf_counter()
        sp.cell_and_rep(np.arange(sp.n_tasks))
        car = (time.perf_counter() - t) * 1e3
        shards = plan_shards(sp, 100)
        t = time.perf_counter()
        for s in shards:
            sp.shard_indices(s)
        sh = (time.perf_counter() - t) * 1e3
        layout = sp.to_layout()
        t = time.perf_counter()
        TaskSpace.from_layout(layout)
        fl = (time.perf_counter() - t) * 1e3
        print(f"{name:<12} {sp.n_tasks:>8} {r:>8.2f} {p:>9.2f} {car:>16.1f} {sh:>14.1f} {fl:>15.1f}")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_scale import study

    from bayesim_hpc import reduce_results, run_simulation

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r"
        quiet = dict(progress=False, emit=lambda s: None)
        run_simulation(study(50, 100, path), "inline", **quiet)
        t = time.perf_counter()
        run_simulation(study(50, 100, path), "inline", reduce=False, **quiet)
        same = time.perf_counter() - t
        from bayesim_hpc.extend import plan_extension
        from bayesim_hpc.resultdir import ResultDir

        rd = ResultDir(path)
        t = time.perf_counter()
        ext = plan_extension(rd.read_frozen().raw, rd.load_study(), study(50, 120, path), str(path))
        rd.apply_extension(ext, 100)
        grow = time.perf_counter() - t
        run_simulation(study(50, 120, path), "inline", reduce=False, **quiet)
        t = time.perf_counter()
        out = reduce_results(path)
        red = time.perf_counter() - t
        fresh = Path(tmp) / "fresh"
        run_simulation(study(50, 120, fresh), "inline", reduce=False, **quiet)
        t = time.perf_counter()
        reduce_results(fresh)
        red_fresh = time.perf_counter() - t
        print(f"\n25,000-task directory: run adding nothing {same:.2f} s; extension to {out.n_tasks} tasks "
              f"(check + freeze, {ext.n_new_tasks} new) {grow:.2f} s; reduce of the grown study {red:.2f} s "
              f"(of the same study run at once: {red_fresh:.2f} s)")


if __name__ == "__main__":
    main()
