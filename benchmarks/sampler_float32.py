"""How many digits the float32 samplers lose against float64 after N steps.

    python benchmarks/sampler_float32.py

From the same 2000 points and the same noise, each sampler runs in float64 and in
float32 on a geometric grid to t0 = 1e-3; the score (the exact oracle of a 2-d mixture)
is computed in float64 and rounded to the points' dtype, so the difference is the
sampler's own float32 arithmetic and the rounding of its inputs. Reported: the largest
difference over the largest |y| (float64), and the median over points of each point's
largest difference over its largest |y|, both also in units of N 2^-24. The table is
docs/sampler_speed.md's, figure for figure (tests/test_benchmarks.py compares them).

Below it, the float32 runs again with the oracle called on the float32 points themselves
(GaussianMixture.score computes this identity-covariance mixture in float64 and rounds
once to the points' dtype): in how many runs their outputs are those of the table's float32
runs bit for bit.
"""

import argparse

import numpy as np

from sgm_ref import OU, VP, GaussianMixture
from sgm_ref.samplers import euler_maruyama, exponential_integrator, probability_flow, time_grid

METHODS = {"euler_maruyama": euler_maruyama, "exponential": exponential_integrator, "probability_flow": probability_flow}


def _units(v):
    """A figure in units of N 2^-24 as the page gives it: two decimals from 0.1 up (1.46),
    two significant digits below (0.055, 0.030)."""
    return f"{v:.2f}" if v >= 0.1 else f"{v:#.2g}"


def main(argv=None):
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    u = 2.0**-24
    g = GaussianMixture.paper_family(2, 4, 2.0, rng=0)
    x = np.random.default_rng(1).standard_normal((2000, 2))
    # the pipes of |y| escaped: bare, they split the header into 8 cells over rows of 6
    print("| process | method | N | max \\|y32 - y64\\| / max \\|y64\\| | in N 2^-24 | median per point, in N 2^-24 |")
    print("|---|---|---|---|---|---|")
    same = []
    for name, process, T in (("OU", OU(), 5.0), ("VP", VP(), 1.0)):
        score = lambda y, t, p=process: g.score(y.astype(np.float64), t, p).astype(y.dtype)  # noqa: E731
        own = lambda y, t, p=process: g.score(y, t, p)  # noqa: E731  (float32 points: float32 scores)
        for method, fn in METHODS.items():
            for n_steps in (10, 100, 1000):
                grid = time_grid(T, 1e-3, n_steps, "geometric", process)
                rng = () if method == "probability_flow" else (np.random.default_rng(3),)
                rng32 = () if method == "probability_flow" else (np.random.default_rng(3),)
                rng_own = () if method == "probability_flow" else (np.random.default_rng(3),)
                y64 = fn(score, process, grid, x, *rng)
                y32 = fn(score, process, grid, x.astype(np.float32), *rng32)
                y_own = fn(own, process, grid, x.astype(np.float32), *rng_own)
                same.append(y_own.dtype == np.float32 and np.array_equal(y_own, y32))
                top = np.max(np.abs(y32 - y64)) / np.max(np.abs(y64))
                per_point = np.max(np.abs(y32 - y64), axis=1) / np.max(np.abs(y64), axis=1)
                print(f"| {name} | {method} | {n_steps} | {top:#.2g} | {_units(top / (n_steps * u))} | "
                      f"{_units(np.median(per_point) / (n_steps * u))} |", flush=True)
    print(f"\nWith the oracle called on the float32 points (GaussianMixture.score on float32): the float32 "
          f"outputs of the table bit for bit in {sum(same)} of {len(same)} runs.")


if __name__ == "__main__":
    main()
