"""One bad string never ruins a segment: NUL bytes and lone surrogates are stored escaped."""

from __future__ import annotations

import numpy as np

from bayesim_hpc import SimData, load_results, run_simulation

from ..studies.linear import generate, make_config
from .helpers import QUIET

BAD = "cannot read /data/caf\udce9.csv: \x00 in header"  # a non-UTF-8 file name, and a NUL byte


def nasty_generator(spec, rng, ctx):
    if spec["sigma"] == 2.0:
        raise ValueError(BAD)
    data = generate(spec, rng, ctx)
    import warnings

    warnings.warn(f"odd column name x\x00\udcff in {ctx.task_id}", stacklevel=2)
    return SimData(train=data.train, response=data.response, true_params=data.true_params)


def test_nul_and_surrogate_strings_are_stored_escaped(rdir):
    cfg = make_config(result_path=rdir, data_grid={"n": [50], "sigma": [1.0, 2.0]}, data_generator=nasty_generator,
                      n_replicates=6, shard_size=12, tasks_per_segment=12, retain=["metrics", "warnings"])
    res = run_simulation(cfg, "inline", **QUIET)
    out = res.reduce_outcome
    assert (out.n_success, out.n_failed, out.n_missing) == (6, 6, 0)
    s = load_results(rdir).summary
    failed = s[s["status"] == "failed"]
    assert (failed["error_message"] == "cannot read /data/caf\\udce9.csv: \\x00 in header").all()
    assert failed["error_type"].eq("ValueError").all()
    ok_id = s.loc[s["status"] == "success", "task_id"].iloc[0]
    warns = res.task_results[ok_id]["warnings"]
    assert any("x\\x00\\udcff" in w for w in warns)


def test_sanitize_keeps_plain_text_and_escapes_the_rest():
    from bayesim_hpc.storage import sanitize

    assert sanitize("plain ascii, tabs\tand newlines\n") == "plain ascii, tabs\tand newlines\n"
    assert sanitize("grüße") == "grüße"
    assert sanitize("a\x00b\udcffc") == "a\\x00b\\udcffc"
    assert sanitize(np.float64(1.5)) == "1.5"
