"""Compiled nutpie models cached on disk (issue 17 item 2).

The cache uses nutpie and numba internals (bayesim_hpc/fitters/pymc/nutpie_cache.py). These tests
fail loudly when an upgrade breaks them: the names it needs, and a round trip through a
fresh process that must give the same draws bit for bit.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("pymc")
pytest.importorskip("nutpie")

from bayesim_hpc.fitters.pymc.nutpie_cache import check_internals, environment_key  # noqa: E402
from bayesim_hpc.fitters.pymc import PyMCFitter  # noqa: E402

from .studies.scaled_prior import build_model, generate  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_nutpie_and_numba_internals_are_there():
    assert check_internals() == [], "nutpie/numba changed: update bayesim_hpc/fitters/pymc/nutpie_cache.py"


def test_key_holds_versions_and_cpu():
    import llvmlite.binding as llvm
    import numba
    import nutpie

    key = environment_key()
    assert f"nutpie={nutpie.__version__}" in key and f"numba={numba.__version__}" in key
    assert llvm.get_host_cpu_name() in key and llvm.get_host_cpu_features().flatten() in key


CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from bayesim_hpc.fitters.pymc import PyMCFitter
    from tests.studies.scaled_prior import build_model, generate
    data = generate({"unit": 1.0}, np.random.default_rng(3), None)
    f = PyMCFitter(build_model, draws=100, tune=100, chains=2, model_cache=sys.argv[1])
    r = f.fit(data, {}, 11, None)
    print(json.dumps({"loaded": f.n_loaded, "slope": r.draws["slope"].tolist(), "compile": r.timing["compile"]}))
""")


@pytest.mark.slow
def test_round_trip_through_a_fresh_process_same_draws(tmp_path, caplog):
    cache = tmp_path / "models"
    data = generate({"unit": 1.0}, np.random.default_rng(3), None)
    f = PyMCFitter(build_model, draws=100, tune=100, chains=2, model_cache=cache)
    here = f.fit(data, {}, 11, None)
    assert f.n_loaded == 0 and len(list(cache.glob("model-*.pkl"))) == 1
    assert not list(cache.glob(".tmp-*"))  # written under a temporary name, then renamed
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-c", CHILD, str(cache)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    child = json.loads(p.stdout.strip().splitlines()[-1])
    assert child["loaded"] == 1, "the fresh process compiled instead of loading"
    assert np.array_equal(np.asarray(child["slope"]), here.draws["slope"])
    # a damaged file: one warning, then it compiles (and rewrites the file)
    (path,) = cache.glob("model-*.pkl")
    path.write_bytes(b"not a pickle")
    g = PyMCFitter(build_model, draws=100, tune=100, chains=2, model_cache=cache)
    with caplog.at_level(logging.WARNING, logger="bayesim_hpc.fitters.pymc.nutpie_cache"):
        again = g.fit(data, {}, 11, None)
    assert g.n_loaded == 0 and np.array_equal(again.draws["slope"], here.draws["slope"])
    assert any("could not load the cached model" in r.getMessage() for r in caplog.records)
    assert path.stat().st_size > 1000
