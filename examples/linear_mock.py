"""The seed vignette's linear regression study with MockFitter (no PyMC needed).

Run it:  python examples/linear_mock.py            (inline, in a temporary directory)
   or:   bayesim-hpc run examples/linear_mock.py --executor local --result-dir results/linear_mock
"""

import numpy as np

from bayesim_hpc import (MockFitter, SimData, bias_metric, coverage_metric, resolve_retention, rmse_metric,
                         run_simulation, simulation_config)


def generate(data_spec, rng: np.random.Generator, task_ctx) -> SimData:
    n = int(data_spec["n"])
    x = rng.normal(size=n)
    y = 1 + 2 * x + rng.normal(scale=data_spec["sigma"], size=n)
    return SimData(
        train={"y": y, "x": x},
        response="y",
        true_params={"intercept": 1.0, "slope": 2.0, "sigma": float(data_spec["sigma"])},
        vars_of_interest=["intercept", "slope", "sigma"],
        references={"intercept": 0.0, "slope": 0.0, "sigma": 1.0},
    )


config = simulation_config(
    data_grid={"n": [100], "sigma": [1.0]},
    fit_grid={"model": ["linear"]},
    data_generator=generate,
    fitter=MockFitter(),
    metrics=[rmse_metric(), bias_metric(), coverage_metric()],
    n_replicates=20,
    seed=42,
    retain=resolve_retention("standard"),
)

if __name__ == "__main__":
    result = run_simulation(config, progress=False)
    print(result.summary.head(3).to_string())
    print(result.cells.T.to_string())
