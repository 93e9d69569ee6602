"""Export: Parquet/CSV read back equal to load_results, DuckDB can query them, no study code runs."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from bayesim_hpc import MockFitter, coverage_metric, load_results, run_simulation, sbc_rank_metric
from bayesim_hpc.cli import main
from bayesim_hpc.export import export_results

from .studies.linear import make_config

QUIET = dict(progress=False, emit=lambda s: None)


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    rdir = tmp_path_factory.mktemp("exp") / "r"
    run_simulation(make_config(result_path=rdir, fitter=MockFitter(fail_tasks=("d002_f001_r00004",)),
                               data_grid={"n": [50, 100], "sigma": [1.0]}, fit_grid={"model": ["a", "b"]},
                               metrics=[coverage_metric(0.9), sbc_rank_metric(19)], n_replicates=12), **QUIET)
    # export must not unpickle study.pkl: make it unreadable as a pickle
    (rdir / "study.pkl").write_bytes(b"not a pickle: export must not read me")
    return rdir


def test_parquet_round_trip_equals_load_results(study_dir, tmp_path):
    r = CliRunner().invoke(main, ["export", str(study_dir), "--format", "parquet", "--output", str(tmp_path / "x")],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = load_results(study_dir)
    names = {p.split("/")[-1] for p in r.output.split()}
    assert names == {f"{t}.parquet" for t in ("summary", "cells", "compare", "summary_long", "cells_long", "compare_long")}
    pd.testing.assert_frame_equal(pq.read_table(tmp_path / "x" / "summary.parquet").to_pandas(), res.summary)
    pd.testing.assert_frame_equal(pq.read_table(tmp_path / "x" / "cells.parquet").to_pandas(), res.cells)
    pd.testing.assert_frame_equal(pq.read_table(tmp_path / "x" / "compare.parquet").to_pandas(), res.compare())
    meta = json.loads((tmp_path / "x" / "export.json").read_text())
    assert meta["tables"]["summary"]["rows"] == 48


def test_long_tables_hold_the_same_numbers(study_dir, tmp_path):
    export_results(study_dir, tmp_path, "parquet")
    res = load_results(study_dir)
    cl = pq.read_table(tmp_path / "cells_long.parquet").to_pandas()
    row = cl[(cl["measure"] == "cover90") & (cl["param"] == "slope") & (cl["data_idx"] == 2) & (cl["fit_idx"] == 1)]
    cell = res.cells[(res.cells["data_idx"] == 2) & (res.cells["fit_idx"] == 1)].iloc[0]
    assert row["value"].item() == cell["cover90__slope"] and row["mcse"].item() == cell["cover90__slope__mcse"]
    assert row["wilson_low"].item() == cell["cover90__slope__wilson_low"]
    sl = pq.read_table(tmp_path / "summary_long.parquet").to_pandas()
    hit = sl[(sl["task_id"] == "d001_f002_r00003") & (sl["measure"] == "cover90") & (sl["param"] == "slope")
             & (sl["detail"] == "lo")]
    assert hit["value"].item() == res.summary.set_index("task_id").loc["d001_f002_r00003", "cover90__slope__lo"]


def test_duckdb_can_query_the_export(study_dir, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    export_results(study_dir, tmp_path, "parquet")
    got = duckdb.sql(
        f"select fit_model, avg(value) as bias from '{tmp_path / 'cells_long.parquet'}' "
        "where measure = 'bias' and param = 'slope' group by fit_model order by fit_model").df()
    cells = load_results(study_dir).cells
    want = cells.groupby("fit_model")["bias__slope"].mean()
    assert got["fit_model"].tolist() == ["a", "b"]
    assert np.allclose(got["bias"], want.to_numpy())
    n = duckdb.sql(f"select count(*) from '{tmp_path / 'summary.parquet'}' where status = 'failed'").fetchall()[0][0]
    assert n == 1


def test_csv_export_reads_back(study_dir, tmp_path):
    export_results(study_dir, tmp_path, "csv")
    back = pd.read_csv(tmp_path / "cells.csv")
    pd.testing.assert_frame_equal(back, load_results(study_dir).cells, check_dtype=False)
    with pytest.raises(ValueError, match="use 'parquet' or 'csv'"):
        export_results(study_dir, tmp_path, "xlsx")
