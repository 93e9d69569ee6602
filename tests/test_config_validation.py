"""Wrong study definitions fail at once, with a message naming the field and the fix."""

import pandas as pd
import pytest

from bayesim_hpc import ConfigError, MockFitter, resolve_retention, rmse_metric, run_simulation

from .studies.linear import make_config


def gen2(spec, rng):  # one argument short
    return {}


class NoFit:
    pass


CASES = [
    ("data_grid", dict(data_grid=None), "data_grid"),
    ("data_grid type", dict(data_grid=[1, 2, 3]), "data_grid"),
    ("data_grid empty list", dict(data_grid={"n": []}), "data_grid['n']"),
    ("data_grid bad column", dict(data_grid=pd.DataFrame({"my col": [1]})), "data_grid column"),
    ("data_grid dunder column", dict(data_grid={"a__b": [1]}), "data_grid column"),
    ("data_grid non-scalar", dict(data_grid=pd.DataFrame({"n": [[1, 2]]})), "data_grid['n']"),
    ("data_grid duplicate rows", dict(data_grid=pd.DataFrame({"n": [100, 100]})), "data_grid"),
    ("fit_grid", dict(fit_grid=None), "fit_grid"),
    ("fit_grid empty frame", dict(fit_grid=pd.DataFrame()), "fit_grid"),
    ("data_generator missing", dict(data_generator=None), "data_generator"),
    ("data_generator arity", dict(data_generator=gen2), "data_generator"),
    ("data_generator not callable", dict(data_generator=42), "data_generator"),
    ("fitter missing", dict(fitter=None), "fitter"),
    ("fitter class", dict(fitter=MockFitter), "fitter"),
    ("fitter without fit", dict(fitter=NoFit()), "fitter"),
    ("metrics empty", dict(metrics=[]), "metrics"),
    ("metrics not list", dict(metrics=rmse_metric()), "metrics"),
    ("metric factory uncalled", dict(metrics=[rmse_metric]), "metrics[0]"),
    ("metric duplicate", dict(metrics=[rmse_metric(), rmse_metric()]), "metrics[1]"),
    ("n_replicates zero", dict(n_replicates=0), "n_replicates"),
    ("n_replicates float", dict(n_replicates=2.5), "n_replicates"),
    ("n_replicates bool", dict(n_replicates=True), "n_replicates"),
    ("seed missing", dict(seed=None), "seed"),
    ("seed negative", dict(seed=-1), "seed"),
    ("seed string", dict(seed="42"), "seed"),
    ("retain unknown profile", dict(retain="everything"), "retain"),
    ("retain unknown artifact", dict(retain=["metrics", "posterior"]), "retain"),
    ("tasks_per_segment", dict(tasks_per_segment=0), "tasks_per_segment"),
    ("chunk_size (old name)", dict(chunk_size=-5), "chunk_size"),
    ("max_in_memory conflict", dict(tasks_per_segment=10, max_in_memory=20), "max_in_memory"),
    ("max_errors", dict(max_errors=-1), "max_errors"),
    ("task_grid columns", dict(task_grid=pd.DataFrame({"d": [1]})), "task_grid"),
    ("task_grid range", dict(task_grid=pd.DataFrame({"data_idx": [2], "fit_idx": [1]})), "task_grid['data_idx']"),
    ("shard_size", dict(shard_size=0), "shard_size"),
    ("draws_dtype", dict(draws_dtype="float16"), "draws_dtype"),
    ("compression", dict(compression="zstd"), "compression"),
    ("result_path type", dict(result_path=3.14), "result_path"),
]


@pytest.mark.parametrize("label,overrides,field", CASES, ids=[c[0] for c in CASES])
def test_wrong_config_names_field(label, overrides, field):
    with pytest.raises(ConfigError) as info:
        make_config(**overrides)
    msg = str(info.value)
    assert msg.startswith(field), msg
    assert "Fix:" in msg
    assert info.value.field == field


def test_result_path_that_is_a_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ConfigError, match="result_path.*not a directory"):
        make_config(result_path=f)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_old_names_of_tasks_per_segment_still_work():
    assert make_config(max_in_memory=7).tasks_per_segment == 7
    assert make_config(chunk_size=10, checkpoint_every=50).tasks_per_segment == 10
    assert make_config(chunk_size=100, checkpoint_every=20).tasks_per_segment == 20
    assert make_config(tasks_per_segment=20, checkpoint_every=20).tasks_per_segment == 20


def test_unknown_executor_and_resume_mode(tmp_path):
    cfg = make_config(result_path=tmp_path / "r")
    with pytest.raises(ConfigError, match="^executor="):
        run_simulation(cfg, executor="kubernetes")
    with pytest.raises(ConfigError, match="^resume="):
        run_simulation(cfg, resume="sometimes", progress=False)


def test_dict_grid_expands_to_all_combinations():
    cfg = make_config(data_grid={"n": [50, 100], "sigma": [0.5, 1.0, 2.0]}, n_replicates=3)
    assert len(cfg.data_grid) == 6
    assert cfg.n_tasks == 18
    assert cfg.data_spec(1) == {"n": 50, "sigma": 1.0}


def test_resolve_retention_profiles():
    assert resolve_retention("minimal") == ["metrics"]
    assert resolve_retention("standard") == ["metrics", "diagnostics", "warnings"]
    assert resolve_retention("debug") == ["metrics", "diagnostics", "draws", "predictions", "fit", "data", "warnings"]
    assert resolve_retention(["warnings", "draws"]) == ["metrics", "draws", "warnings"]


def test_a_metric_name_suggests_the_factory():
    from tests.studies.linear import make_config

    with pytest.raises(ConfigError, match=r"metrics\[0\]='bias': is a name, not a metric. Fix: pass the metric "
                                          r"object: metrics=\[bias_metric\(\)\]"):
        make_config(metrics=["bias"])
