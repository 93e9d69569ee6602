"""bayesim_hpc.diagnostics agrees with ArviZ (rank R-hat, bulk and tail ESS) to 1e-6."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

from bayesim_hpc import diagnostics as dg

az = pytest.importorskip("arviz")

RTOL = 1e-6


def _arviz(x: np.ndarray):
    """ArviZ's rank R-hat, bulk ESS, tail ESS for draws (chain, draw, *shape)."""
    ds = az.convert_to_dataset({"x": x})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("arviz").disabled = True
        try:
            r = az.rhat(ds, method="rank")["x"].values
            b = az.ess(ds, method="bulk")["x"].values
            t = az.ess(ds, method="tail")["x"].values
        finally:
            logging.getLogger("arviz").disabled = False
    return r, b, t


def _assert_close(ours, ref, what):
    ours = np.asarray(ours, dtype=float)
    ref = np.asarray(ref, dtype=float)
    assert ours.shape == ref.shape, what
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref), err_msg=f"{what}: NaN pattern")
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(ref), err_msg=f"{what}: inf pattern")
    ok = np.isfinite(ref)
    np.testing.assert_allclose(ours[ok], ref[ok], rtol=RTOL, atol=0, err_msg=what)


def _check(x: np.ndarray):
    ref = _arviz(x)
    ours_all = dg.diagnose(x)
    ours_each = (dg.rhat(x), dg.ess_bulk(x), dg.ess_tail(x))
    for name, o_all, o_each, r in zip(("rhat", "ess_bulk", "ess_tail"), ours_all, ours_each, ref):
        _assert_close(o_all, r, f"{name} (diagnose) {x.shape}")
        _assert_close(o_each, r, f"{name} {x.shape}")


def _ar1(rng, chains, draws, n_par, phi, shift=None):
    x = np.empty((chains, draws, n_par))
    x[:, 0] = rng.normal(size=(chains, n_par)) / np.sqrt(1 - phi**2)
    eps = rng.normal(size=(chains, draws, n_par))
    for t in range(1, draws):
        x[:, t] = phi * x[:, t - 1] + eps[:, t]
    if shift is not None:
        x += np.asarray(shift)[:, None, None]
    return x


@pytest.mark.parametrize(
    "shape",
    [(4, 1000, 10), (2, 50, 3), (3, 7, 2), (3, 4, 2), (3, 5, 1), (2, 9, 1), (8, 333, 4), (6, 101, 2)],
)
def test_random_shapes_match_arviz(shape):
    rng = np.random.default_rng(sum(shape))
    _check(rng.normal(size=shape))


def test_one_chain_rhat_is_nan_and_ess_matches():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 200, 3))
    assert np.isnan(dg.rhat(x)).all()
    _check(x)


@pytest.mark.filterwarnings("ignore:More chains")
def test_too_few_draws_give_nan():
    x = np.random.default_rng(2).normal(size=(4, 3, 2))
    for v in dg.diagnose(x):
        assert np.isnan(v).all()
    _check(x)


def test_scalar_and_multidim_inputs():
    rng = np.random.default_rng(3)
    x2 = rng.normal(size=(4, 100))
    r, b, t = dg.diagnose(x2)
    assert isinstance(r, float) and isinstance(b, float) and isinstance(t, float)
    _check(x2)
    x4 = rng.normal(size=(2, 100, 2, 3))
    assert dg.rhat(x4).shape == (2, 3)
    _check(x4)


@pytest.mark.parametrize("phi", [0.5, 0.95, 0.995, -0.6])
def test_autocorrelated_chains_match_arviz(phi):
    rng = np.random.default_rng(int(abs(phi) * 1000))
    _check(_ar1(rng, 4, 1000, 3, phi))


def test_odd_draw_count_autocorrelated():
    _check(_ar1(np.random.default_rng(5), 3, 777, 2, 0.9))


def test_shifted_chain_gives_large_rhat():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(4, 500, 3))
    x[0] += 2.0
    _check(x)
    assert (dg.rhat(x) > 1.1).all()


def test_constant_draws_like_arviz():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(4, 100, 4))
    x[..., 0] = 1.5  # constant everywhere: R-hat NaN, ESS = number of draws
    x[0, :, 1] = 0.25  # one stuck chain
    _check(x[..., :2])
    r, b, t = dg.diagnose(x)
    assert np.isnan(r[0]) and b[0] == 400 and t[0] == 400
    # constant within chains, different between: the exact answer is R-hat = inf; ArviZ
    # divides by rounding noise (huge but arbitrary), ESS agrees
    x[..., 2] = np.arange(4)[:, None]
    r, b, t = dg.diagnose(x)
    ref_r, ref_b, ref_t = _arviz(x)
    assert np.isinf(r[2]) and ref_r[2] > 1e6
    _assert_close(b, ref_b, "ess_bulk stuck chains")
    _assert_close(t, ref_t, "ess_tail stuck chains")


def test_nan_draws_give_nan_only_for_that_parameter():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(4, 200, 3))
    x[2, 17, 1] = np.nan
    _check(x)
    r, b, t = dg.diagnose(x)
    assert np.isnan([r[1], b[1], t[1]]).all() and np.isfinite([r[0], b[2], t[2]]).all()


def test_ties_discrete_draws_match_arviz():
    rng = np.random.default_rng(9)
    x = np.round(rng.normal(size=(4, 300, 3)) * np.array([1.0, 3.0, 0.2]))
    x[..., 2] = rng.poisson(0.3, size=(4, 300))
    _check(x)


def test_summarize_draws_keys_and_values():
    rng = np.random.default_rng(10)
    draws = {"mu": rng.normal(size=(4, 300)), "beta": rng.normal(size=(4, 300, 3))}
    draws["beta"][1, :, 2] += 1.0
    s = dg.summarize_draws(draws)
    r_mu, b_mu, t_mu = dg.diagnose(draws["mu"])
    r_b, b_b, t_b = dg.diagnose(draws["beta"])
    assert s["rhat.mu"] == pytest.approx(r_mu) and s["ess_bulk.mu"] == pytest.approx(b_mu)
    assert s["rhat.beta"] == pytest.approx(r_b.max()) and s["ess_tail.beta"] == pytest.approx(t_b.min())
    assert s["rhat_max"] == pytest.approx(max(r_mu, r_b.max()))
    assert s["ess_bulk_min"] == pytest.approx(min(b_mu, b_b.min()))
    assert s["ess_tail_min"] == pytest.approx(min(t_mu, t_b.min()))
    only = dg.summarize_draws(draws, ["mu"])
    assert set(only) == {"rhat_max", "ess_bulk_min", "ess_tail_min", "rhat.mu", "ess_bulk.mu", "ess_tail.mu"}
    with pytest.raises(KeyError):
        dg.summarize_draws(draws, ["nope"])
    with pytest.raises(ValueError):
        dg.summarize_draws({"a": np.zeros((4, 10)), "b": np.zeros((4, 11))})


def test_summarize_draws_skips_nan_unless_all_nan():
    rng = np.random.default_rng(11)
    draws = {"c": np.full((4, 100), 2.0), "z": rng.normal(size=(4, 100))}
    s = dg.summarize_draws(draws)
    assert np.isnan(s["rhat.c"]) and np.isfinite(s["rhat_max"])
    assert np.isnan(dg.summarize_draws({"c": draws["c"]})["rhat_max"])


@pytest.mark.slow
def test_real_pymc_draws_match_arviz():
    pm = pytest.importorskip("pymc")
    rng = np.random.default_rng(12)
    y = rng.normal(1.0, 2.0, size=30)
    with pm.Model():
        mu = pm.Normal("mu", 0, 10)
        sigma = pm.HalfNormal("sigma", 5)
        pm.Normal("theta", mu, sigma, shape=3)
        pm.Normal("y", mu, sigma, observed=y)
        idata = pm.sample(
            draws=300, tune=300, chains=4, cores=1, random_seed=1, progressbar=False,
            compute_convergence_checks=False,
        )
    post = idata.posterior
    for name in ("mu", "sigma", "theta"):
        _check(post[name].values)
    ref_r = az.rhat(idata, method="rank")
    s = dg.summarize_draws({n: post[n].values for n in ("mu", "sigma", "theta")})
    expect = max(float(ref_r[n].max()) for n in ("mu", "sigma", "theta"))
    assert s["rhat_max"] == pytest.approx(expect, rel=RTOL)
