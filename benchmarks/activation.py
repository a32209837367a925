"""The SiLU activation pass of the training step against a candidate with its exponential fused in.

sgm_ref's pass (sgm_ref.kernels.dense.activation_forward_unguarded, inside one np.errstate
for the network pass, as MLP._run calls it) is NumPy's vectorised exp into D, then one numba
pass writing h = z s(z) and h' = s (1 + z (1 - s)) with s = 1 / (1 + 1 / e^z): two passes
over the (batch, width) block and two divisions per entry. The candidate, for issue 16's
middle row, is one pass with a vectorisable exp inlined (the oracle's
exp_nonpositive, within 1 ulp of libm's) and one division:

    e = exp(-|z|),  r = 1 / (1 + e),  s = r if z >= 0 else e r.

It is not bit-identical to sgm_ref's pass (the exponential's last bit and the formula), so
adopting it would change every trained model's bits; this script measures what it would
save. Before timing, its h and h' must equal the current pass's to 1e-14 of their largest
value (else the script exits). Each row's (batch, width) block, float64, standard normal z
times 3; pairs of calls interleaved, the ratio candidate / current per pair, its median
with the sign test's 95% interval, and the time saved per training step (one pass per
hidden layer).

    python benchmarks/activation.py [--repeats 41]
"""

import argparse
import sys
import time
from pathlib import Path

import sgm_ref  # noqa: F401  (first: its thread settings reach numpy's OpenBLAS)
import numpy as np
from numba import njit

from sgm_ref.kernels.dense import SILU, activation_forward_unguarded
from sgm_ref.kernels.mixture import exp_nonpositive

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import OtherLoad, cpu_name, median_interval  # noqa: E402

ROWS = ((2, 128, 3, 256), (32, 256, 3, 1024), (128, 512, 4, 2048))  # train_step.py's (d, width, depth, batch)
AGREEMENT = 1e-14  # max |fused - current| / max |current| of h and of h' (measured: below 1e-15)


@njit(error_model="numpy", fastmath={"contract"})
def fused_silu(Z, H, D):
    """H = silu(Z), D = silu'(Z) in one pass, the exponential inlined (the module docstring)."""
    n, m = Z.shape
    for i in range(n):
        z, h, e = Z[i], H[i], D[i]
        for j in range(m):
            zj = z[j]
            ex = exp_nonpositive(-abs(zj))
            r = 1.0 / (1.0 + ex)
            s = r if zj >= 0.0 else ex * r
            h[j] = zj * s
            e[j] = s * (1.0 + zj * (1.0 - s))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=41, help="interleaved pairs of calls per row (default 41)")
    args = parser.parse_args(argv)
    if args.repeats < 6:
        parser.error("--repeats must be at least 6 (a 95% interval of the median needs 6)")
    rng = np.random.default_rng(0)
    print(f"CPU: {cpu_name()}; numpy {np.__version__}; float64; {args.repeats} interleaved pairs per row\n")
    print("| (d, width, depth, batch) | current us / pass | fused us / pass | fused / current [95%] "
          "| saved per step, us | max rel. diff of h | other load (cores) |")
    print("|---|---|---|---|---|---|---|")
    for d, width, depth, batch in ROWS:
        Z = 3.0 * rng.standard_normal((batch, width))
        # both write h into the next layer's input, its column of ones after h, as in a step
        H, D = np.empty((batch, width + 1)), np.empty((batch, width))
        H2, D2 = np.empty((batch, width + 1)), np.empty((batch, width))
        with np.errstate(over="ignore", divide="ignore"):
            activation_forward_unguarded(Z, SILU, H, D, True)
        fused_silu(Z, H2, D2)  # compiled here, untimed
        diff = float(np.max(np.abs(H[:, :width] - H2[:, :width]) / np.maximum(np.abs(H[:, :width]), 1e-300)))
        # the same work before timing: h and h' (h' crosses 0, so against its largest |value|)
        for name, got, want in (("h", H2[:, :width], H[:, :width]), ("h'", D2, D)):
            off = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
            if not off <= AGREEMENT:
                raise SystemExit(f"({d}, {width}, {depth}, {batch}): the fused pass's {name} is off by "
                                 f"{off:.3g} of its largest value (more than {AGREEMENT:g}); not timed")
        current, fused = [], []
        # the step's own call: activation_forward_unguarded inside one np.errstate for the whole
        # network pass (MLP._run); activation_forward's errstate per call (~1 us) is no part of a
        # layer's cost, and timed it put 2% more on the small row's current pass
        with OtherLoad() as load, np.errstate(over="ignore", divide="ignore"):
            for _ in range(args.repeats):
                tic = time.perf_counter()
                activation_forward_unguarded(Z, SILU, H, D, True)
                current.append(time.perf_counter() - tic)
                tic = time.perf_counter()
                fused_silu(Z, H2, D2)
                fused.append(time.perf_counter() - tic)
        median, low, high = median_interval(np.array(fused) / np.array(current))
        a, b = 1e6 * np.median(current), 1e6 * np.median(fused)
        # cores, on average, with the ticks' resolution: a row's pairs take milliseconds, over
        # which one 10 ms tick of anyone's work reads as cores of load
        other = "?" if load.other is None else f"{load.other / load.wall:.2f} (1 tick: {load.resolution:.2f})"
        print(f"| ({d}, {width}, {depth}, {batch}) | {a:.0f} | {b:.0f} | {median:.3f} [{low:.3f}, {high:.3f}] "
              f"| {depth * (a - b):.0f} | {diff:.2g} | {other} |")


if __name__ == "__main__":
    main()
