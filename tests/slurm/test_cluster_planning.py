"""Time-aware planning, resource classes and re-planning on the real local Slurm cluster.

Run as root: ``eval "$(scripts/local-slurm.sh env)" && .venv/bin/python -m pytest tests/slurm -q``.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bayesim_hpc import MockFitter, resume_simulation, run_simulation
from bayesim_hpc.executors.slurm import SlurmExecutor
from bayesim_hpc.resultdir import ResultDir
from bayesim_hpc.status import study_status

from .test_slurm_executor import FAST, _cfg, assert_same, inline, manifest, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

PLANNED = {**FAST, "plan": "time"}
# two fit configurations of different cost: "light" 0.02 s per task, "heavy" 0.25 s
FITS = pd.DataFrame({"model": ["light", "heavy"], "delay": [0.02, 0.25]})


def _two_cost(path, **kw):
    return _cfg(path, data_grid={"n": [50], "sigma": [1.0]}, fit_grid=FITS, n_replicates=40, shard_size=5,
                fitter=MockFitter(delay=0.02), **kw)


def _heavy_mem(data_spec, fit_spec):
    return {"mem_gb": 2} if fit_spec["model"] == "heavy" else None


@pytest.mark.timeout(400)
def test_heavy_cells_get_fewer_tasks_per_element_classes_by_resources_and_replan_is_bit_identical(tmp_path,
                                                                                                   studies):
    ref = inline(_two_cost, tmp_path)
    path = tmp_path / "slurm"
    studies.append(path)

    # --dry-run: the figures (a pilot, nothing kept) and one array per resource class
    dry: list[str] = []
    run_simulation(_two_cost(path), "slurm", dry_run=True, emit=dry.append, resources=_heavy_mem, **PLANNED)
    text = "\n".join(dry)
    assert "pilot" in text and "d001_f001" in text and "d001_f002" in text
    assert "class 5min/1GB/1cpu" in text and "class 5min/2GB/1cpu" in text, text
    assert not (path / "study.json").exists()

    # first run, stopped after a few elements: the rest is left for a re-planned resume
    lines: list[str] = []
    ex = SlurmExecutor(resources=_heavy_mem, detach=True, **{k: v for k, v in PLANNED.items() if k != "progress"})
    run_simulation(_two_cost(path), ex, emit=lines.append, progress=False)
    subs = [s for s in manifest(path)["submissions"] if s.get("executor") == "slurm"]
    per_element = {}
    for s in subs:
        for shards in s["elements_shards"]:
            per_element[tuple(shards)] = s["resources"]
    light = [len(e) for e, r in per_element.items() if "1GB" in r]
    heavy = [len(e) for e, r in per_element.items() if "2GB" in r]
    assert light and heavy and max(heavy) < max(light), per_element  # heavy cells: fewer shards per element
    assert any("pilot ran" in line for line in lines)
    wait_for(lambda: any((path / "logs" / "slurm").glob("*/*_done.json")), 120, "an element to finish")
    SlurmExecutor().cancel(ResultDir(path))

    # resume: figures now come from the segments; whatever the new plan, results are the same
    lines2: list[str] = []
    res = resume_simulation(path, "slurm", emit=lines2.append, resources=_heavy_mem, **PLANNED)
    assert not any("pilot ran" in line for line in lines2)
    assert_same(res.summary, ref)
    assert len(res.summary) == 80 and res.summary["task_id"].is_unique

    st = study_status(path, live=False)
    assert st.elements and any(e["measured_s"] is not None for e in st.elements)
    assert "predicted vs measured" in st.render()
    done = [json.loads(p.read_text()) for p in (path / "logs" / "slurm").glob("*/*_done.json")]
    assert done and all("shards" in d and "exit" in d for d in done)  # the explicit done records
