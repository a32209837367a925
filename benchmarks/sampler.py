"""Throughput of the Euler–Maruyama reverse sampler, and the share of time outside the score.

    python benchmarks/sampler.py [--quick] [--particles N] [--steps S]

For d in {2, 32, 128}, two score functions:
  oracle  the exact score of the paper's mixture family (K = 8 identity-covariance
          components, means of norm 3), GaussianMixture.score;
  mlp     a ScoreModel on an MLP of widths (256, 256, 256), SiLU, "noise"
          parameterisation, trained by fit for --train-steps steps on 10,000 samples
          of the same mixture (its cost per call does not depend on the weights).
Reported: particles x steps per second, the time inside the score call, and the share
outside it, split into the N(0, I) draw (the sampler's kernel running numpy's ziggurat
on the Generator, measured separately for the same sizes) and the rest (the update
kernel, checks, bookkeeping). The last column is a floor for any sampler whose noise
comes from the Generator: the share the raw bits alone (bit_generator.random_raw, one
64-bit word per coordinate and step, what the ziggurat consumes on its fast path) would
take, raw / (in score + raw), with nothing else outside the score.
"""

import argparse
import os
import platform
import time

import numpy as np

from sgm_ref import MLP, OU, GaussianMixture, ScoreModel, fit
from sgm_ref.kernels.sampler import standard_normal_into
from sgm_ref.samplers import euler_maruyama, time_grid


class TimedScore:
    """Wrap a score function and accumulate the wall time spent inside it."""

    def __init__(self, score):
        self.score, self.seconds = score, 0.0

    def __call__(self, x, t):
        tic = time.perf_counter()
        out = self.score(x, t)
        self.seconds += time.perf_counter() - tic
        return out


def measure(score, d, n, steps, repeats):
    grid = time_grid(5.0, 1e-3, steps, "geometric")
    best = None
    for r in range(repeats + 1):  # the first run compiles and warms caches
        timed = TimedScore(score)
        rng = np.random.default_rng(r)
        x = OU().prior(n, d, rng)
        tic = time.perf_counter()
        euler_maruyama(timed, OU(), grid, x, rng)
        total = time.perf_counter() - tic
        if r and (best is None or total < best[0]):
            best = (total, timed.seconds)
    noise = np.empty((n, d))
    rng = np.random.default_rng(0)
    standard_normal_into(noise, rng)
    draw = raw = np.inf
    for _ in range(repeats):  # best of repeats, like the sampler runs
        tic = time.perf_counter()
        for _ in range(steps):
            standard_normal_into(noise, rng)
        draw = min(draw, time.perf_counter() - tic)
        tic = time.perf_counter()
        for _ in range(steps):
            rng.bit_generator.random_raw(n * d)
        raw = min(raw, time.perf_counter() - tic)
    return best[0], best[1], draw, raw


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer particles and repeats")
    parser.add_argument("--particles", type=int, default=None)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--train-steps", type=int, default=300, help="training steps of the MLP score")
    args = parser.parse_args()
    n = args.particles or (1024 if args.quick else 4096)
    repeats = args.repeats or (1 if args.quick else 3)
    print(f"# Euler–Maruyama sampler, {n} particles x {args.steps} steps, float64, best of {repeats}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE')}, OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE')}\n")
    print("| d | score | particles x steps / s | in score | outside | of which N(0, I) draw | rest "
          "| floor: raw bits |")
    print("|---|---|---|---|---|---|---|---|")
    for d in (2, 32, 128):
        mixture = GaussianMixture.paper_family(d, 8, 3.0, rng=0)
        model = ScoreModel(MLP(d, (256, 256, 256), "silu", "log", rng=0), OU(), "noise")
        fit(model, mixture.sample(10_000, np.random.default_rng(1)), steps=args.train_steps, batch_size=256,
            lr=1e-3, t0=1e-3, T=5.0, rng=np.random.default_rng(2), weighting="sigma2", progress=False)
        for name, score in (("oracle", lambda x, t, g=mixture: g.score(x, t)), ("mlp", model)):
            total, inside, draw, raw = measure(score, d, n, args.steps, repeats)
            outside = total - inside
            rate = n * args.steps / total
            print(f"| {d} | {name} | {rate:.3g} | {inside / total:.1%} | {outside / total:.1%} | "
                  f"{draw / total:.1%} | {max(outside - draw, 0.0) / total:.1%} | {raw / (inside + raw):.1%} |",
                  flush=True)


if __name__ == "__main__":
    main()
