"""The Euler–Maruyama reverse sampler: its time outside the score call against drawing the noise.

    python benchmarks/sampler.py [--quick] [--particles N] [--steps S] [--repeats R] [--dtype float64 float32]
    python benchmarks/sampler.py --kernel [--dtype float64 float32]   (the step kernel alone)
    python benchmarks/sampler.py --draws                              (ns per normal, each way)

For d in {2, 32, 128}, two score functions:
  oracle  the exact score of the paper's mixture family (K = 8 identity-covariance
          components, means of norm 3), GaussianMixture.score;
  mlp     a ScoreModel on an MLP of widths (256, 256, 256), SiLU, "noise"
          parameterisation, trained by fit for --train-steps steps on 10,000 samples
          of the same mixture (its cost per call does not depend on the weights).
Target: a step costs the score call plus at most 1.15x the time of drawing its N(0, I)
noise into a preallocated array with the fastest Generator-based method the project has
(sgm_ref.kernels.sampler.standard_normal_into, numpy's float64 ziggurat compiled by
numba, rounded to float32 for float32 points as the sampler's noise is; numba's float32
ziggurat is slower: --draws), one call per step as the sampler makes. Reported per row:
  outside / draw   the sampler's time outside the score call (noise, update, checks,
                   bookkeeping) over that draw time, in CPU time of the calling thread
                   (time.thread_time: a loaded machine's waits are not counted; the
                   score's BLAS threads are not the calling thread), best of --repeats,
                   the sampler runs and the draw loops interleaved;
  paired median    the median over repeats of each repeat's own ratio (its sampler run
                   over the draw loop made right after it, so a host that changes speed
                   between repeats moves both), with a distribution-free 95% interval for
                   the median (order statistics of the binomial sign test); "met" if the
                   interval lies below the target, "missed" if above, "open" if it holds
                   the target (more repeats, or a quieter host, can decide it);
  over handle draw the paired median of the same ratio over the same draw made through
                   generator_handle(rng), made once per loop as the sampler makes it: the
                   same ziggurat without numba's unboxing of the Generator on every call
                   (5-10 us). The yardstick above is the Generator call the issue names;
                   this one is the stricter;
  wall             the same ratio in wall time (best of the same runs);
  in situ          outside over the same draw made between the same score calls (a loop
                   of score call + draw and nothing else, timed outside the call; the
                   loop's own bookkeeping is in both), paired per repeat with its 95%
                   interval and verdict against 1.15, with the Generator and through
                   generator_handle: whatever runs first after a score call that touches
                   tens of MB (the MLP's products) finds the caches and TLB cold, which the
                   back-to-back draw loop never sees, so this is the sampler's own cost
                   over that of drawing its noise where it must draw it. The handle's is
                   the fair one (the sampler draws through it; the Generator's in-situ draw
                   also pays numba's cold unboxing of the Generator, which it never pays);
  draw cold / warm the draw made between score calls (its loop's time less the same loop
                   with no draw) over the back-to-back draw, with the Generator and with the
                   handle (medians over repeats): above 1.15, not even a bare draw in the
                   sampler's place meets the target against the back-to-back draw;
  floor            the draw's own floor: raw bits (bit_generator.random_raw, one 64-bit
                   word per coordinate) over the draw;
  loop / draw      the same loop of score calls with no step at all (the time array's
                   refill, the call through the timer and the timer's bookkeeping after
                   it), its CPU time outside the score over the draw: the part of
                   "outside" that no sampler can remove here, so the step itself (its
                   call, draw and update) has 1.15 minus this to spend (after a score
                   call that sweeps the caches, this loop alone runs cold).
"""

import argparse
import os
import platform
import time

import numba
import numpy as np

from _machine import OtherLoad, paired_cells  # benchmarks/ is on sys.path when a script runs
from sgm_ref import MLP, OU, GaussianMixture, ScoreModel, fit
from sgm_ref.kernels.sampler import (affine_noise_step, generator_handle, standard_normal_float32_into,
                                     standard_normal_into)
from sgm_ref.samplers import euler_maruyama, time_grid

TARGET = 1.15  # issue 16: outside / draw <= 1.15


class TimedScore:
    """Wrap a score function and accumulate the CPU time of this thread and the wall time inside it."""

    def __init__(self, score):
        self.score, self.cpu, self.wall = score, 0.0, 0.0

    def __call__(self, x, t):
        cpu, wall = time.thread_time(), time.perf_counter()
        out = self.score(x, t)
        self.cpu += time.thread_time() - cpu
        self.wall += time.perf_counter() - wall
        return out


def _draw_loop(draw, noise, rng, steps):
    """(cpu, wall) seconds of `steps` draws of the whole noise array."""
    cpu, wall = time.thread_time(), time.perf_counter()
    for _ in range(steps):
        draw(noise, rng)
    return time.thread_time() - cpu, time.perf_counter() - wall


def _draw_between_scores(draw, score, x, grid, noise, rng):
    """CPU seconds outside the score of a loop that calls it and draws the noise (draw None:
    calls it and does nothing else), no more."""
    timed = TimedScore(score)
    t = np.empty(x.shape[0])
    cpu = time.thread_time()
    for t_k in grid[:-1]:
        t.fill(t_k)
        timed(x, t)
        if draw is not None:
            draw(noise, rng)
    return time.thread_time() - cpu - timed.cpu


def measure(score, d, n, steps, repeats, dtype):
    """Best-of-repeats (outside cpu, outside wall, draw cpu, draw wall, raw cpu, total wall, the
    no-step loop's cpu) per run, and per repeat (lists, the first, warming repeat left out):
    "ratios" outside cpu / back-to-back draw cpu, "handle_ratios" the same over the draw
    through generator_handle, "situ_ratios" and "situ_handle_ratios" outside cpu over the
    loop of score call + draw (Generator, handle), "cold" and "cold_handle" that loop less
    the no-step loop over the back-to-back draw (Generator, handle)."""
    grid = time_grid(5.0, 1e-3, steps, "geometric")
    draw = standard_normal_into
    noise = np.empty((n, d), dtype)
    best = dict.fromkeys(("out_cpu", "out_wall", "draw_cpu", "draw_wall", "raw", "total", "loop"), np.inf)
    for key in ("ratios", "handle_ratios", "situ_ratios", "situ_handle_ratios", "cold", "cold_handle"):
        best[key] = []
    draw(noise, np.random.default_rng(0))  # compile
    for r in range(repeats + 1):  # the first run compiles and warms caches
        timed = TimedScore(score)
        rng = np.random.default_rng(r)
        x = OU().prior(n, d, rng, dtype)
        cpu, wall = time.thread_time(), time.perf_counter()
        euler_maruyama(timed, OU(), grid, x, rng)
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        # the two draw loops in alternating order, so neither always runs second (warm)
        if r % 2:
            handle_cpu, _ = _draw_loop(draw, noise, generator_handle(rng), steps)
            draw_cpu, draw_wall = _draw_loop(draw, noise, rng, steps)
        else:
            draw_cpu, draw_wall = _draw_loop(draw, noise, rng, steps)
            handle_cpu, _ = _draw_loop(draw, noise, generator_handle(rng), steps)
        tic = time.thread_time()
        for _ in range(steps):
            rng.bit_generator.random_raw(n * d)
        raw = time.thread_time() - tic
        # the two in-situ loops in alternating order too; the handle made once per loop, as
        # the sampler makes it
        if r % 2:
            situ_handle = _draw_between_scores(draw, score, x, grid, noise, generator_handle(rng))
            situ = _draw_between_scores(draw, score, x, grid, noise, rng)
        else:
            situ = _draw_between_scores(draw, score, x, grid, noise, rng)
            situ_handle = _draw_between_scores(draw, score, x, grid, noise, generator_handle(rng))
        loop = _draw_between_scores(None, score, x, grid, noise, rng)
        if r:
            outside = cpu - timed.cpu
            best["ratios"].append(outside / draw_cpu)
            best["handle_ratios"].append(outside / handle_cpu)
            best["situ_ratios"].append(outside / situ)
            best["situ_handle_ratios"].append(outside / situ_handle)
            best["cold"].append((situ - loop) / draw_cpu)
            best["cold_handle"].append((situ_handle - loop) / handle_cpu)
            for key, value in (("out_cpu", outside), ("out_wall", wall - timed.wall), ("draw_cpu", draw_cpu),
                               ("draw_wall", draw_wall), ("raw", raw), ("total", wall), ("loop", loop)):
                best[key] = min(best[key], value)
    return best


@numba.njit(cache=True)
def _no_step(y, s):
    """A compiled call on (y, s) that does nothing else: what the least step pays to be called."""
    return y.size + s.size


def kernel_table(n, dims, dtypes, rounds=40):
    """The step kernel alone against the draw: affine_noise_step (the sampler passes the handle)
    over the yardstick, standard_normal_into(noise, rng) with the Generator into an array of the
    points' dtype, made back to back; CPU time, medians of `rounds` interleaved calls. "Cold"
    calls follow a sweep of 64 MB and a write of s (as a score call that fills the caches and
    then writes its output does); the cold draw and a cold call of a compiled function that does
    nothing (_no_step) are shown too, over the same back-to-back draw."""
    print(f"\n## The step kernel alone ({n} points, medians of {rounds} interleaved calls; "
          "back-to-back draw = 1)\n")
    print("| d | dtype | kernel / draw | cold kernel / draw | cold draw / draw | cold no-op call / draw | draw, us |")
    print("|---|---|---|---|---|---|---|")
    sweep = np.ones(8 * 2**20)
    for d in dims:
        for dtype in map(np.dtype, dtypes):
            rng = np.random.default_rng(0)
            handle = generator_handle(rng)
            y, s = (rng.standard_normal((n, d)).astype(dtype) for _ in range(2))
            out, xi = np.empty((n, d), dtype), np.empty(2048, dtype)
            a, b, c = (dtype.type(v) for v in (1.0, 1e-3, 1e-3))  # y stays of order 1 over the calls
            calls = {"draw": lambda: standard_normal_into(out, rng),
                     "kernel": lambda: affine_noise_step(y, s, handle, a, b, c, xi, 1e30),
                     "no-op": lambda: _no_step(y, s)}
            medians = {}
            for cold in (False, True):
                times = {k: [] for k in calls}
                for _ in range(rounds + 1):
                    for name, call in calls.items():
                        if cold:
                            sweep += 1.0
                            s += dtype.type(0.0)
                        tic = time.thread_time()
                        call()
                        times[name].append(time.thread_time() - tic)
                medians[cold] = {k: np.median(v[1:]) for k, v in times.items()}
            hot, cold = medians[False], medians[True]
            print(f"| {d} | {dtype.name} | {hot['kernel'] / hot['draw']:.3f} | {cold['kernel'] / hot['draw']:.3f} | "
                  f"{cold['draw'] / hot['draw']:.3f} | {cold['no-op'] / hot['draw']:.3f} | {hot['draw'] * 1e6:.0f} |",
                  flush=True)


def _float32_ziggurat():
    """numba's copy of numpy's float32 ziggurat, compiled here: a private numba module, so
    imported only for --draws."""
    from numba.np.random.distributions import random_standard_normal_f

    @numba.njit
    def fill(out, rng):
        """numba's rng.standard_normal(dtype=np.float32), one number at a time."""
        bits = rng.bit_generator
        for i in range(out.size):
            out[i] = random_standard_normal_f(bits)

    return fill


def _first_difference(fill, count=300_000, seed=73):
    """The first of `count` draws of PCG64(seed) where fill(out, rng) differs from numpy's
    float32 stream, or None (seed 73 reaches a wedge test that a float32 exponential decides
    otherwise at draw 250,736)."""
    out = np.empty(count, np.float32)
    fill(out, np.random.default_rng(seed))
    differs = out != np.random.default_rng(seed).standard_normal(count, dtype=np.float32)
    return int(np.argmax(differs)) if differs.any() else None


def draws_table(n=2**17, rounds=15):
    """ns per N(0, 1) number, each way the project could draw the noise, medians of `rounds`
    interleaved calls into preallocated arrays of n (CPU time). The two float32 ziggurats
    (numba's own copy and standard_normal_float32_into) are first compared with numpy's own
    float32 stream over 300,000 draws (the rounded float64 draws are, by design, another
    stream); standard_normal_float32_into must agree."""
    rng = np.random.default_rng(0)
    out64, out32 = np.empty(n), np.empty(n, np.float32)
    float32_ziggurat_into = _float32_ziggurat()
    if _first_difference(standard_normal_float32_into) is not None:
        raise SystemExit("standard_normal_float32_into did not give numpy's float32 bits")
    numba_differs = _first_difference(float32_ziggurat_into)
    handle = generator_handle(rng)
    standard_normal_into(out64, rng)
    standard_normal_into(out64, handle)
    ways = {
        "Generator.standard_normal(out=, float64)": lambda: rng.standard_normal(out=out64),
        "Generator.standard_normal(out=, float32)": lambda: rng.standard_normal(out=out32, dtype=np.float32),
        "standard_normal_into (numba, float64 ziggurat; the yardstick)": lambda: standard_normal_into(out64, rng),
        "standard_normal_into through generator_handle": lambda: standard_normal_into(out64, handle),
        "standard_normal_into into float32 (float64 ziggurat, rounded)": lambda: standard_normal_into(out32, rng),
        "numba's own float32 ziggurat (numba.np.random)": lambda: float32_ziggurat_into(out32, rng),
        "standard_normal_float32_into (numpy's float32 stream)": lambda: standard_normal_float32_into(out32, rng),
    }
    times = {k: [] for k in ways}
    for _ in range(rounds + 1):
        for name, call in ways.items():
            tic = time.thread_time()
            call()
            times[name].append(time.thread_time() - tic)
    yardstick = np.median(times["standard_normal_into (numba, float64 ziggurat; the yardstick)"][1:])
    print(f"\n## Drawing {n} normals (ns per number, medians of {rounds} interleaved calls, CPU time)\n")
    print("| way | ns / number | over the yardstick |")
    print("|---|---|---|")
    for name, v in times.items():
        m = np.median(v[1:])
        print(f"| {name} | {m / n * 1e9:.2f} | {m / yardstick:.2f} |")
    print("\nnumpy's float32 stream over 300,000 draws of PCG64(73): standard_normal_float32_into the same; "
          + ("numba's own copy the same" if numba_differs is None else
             f"numba's own copy differs first at draw {numba_differs} (its wedge test in float32)"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer particles and repeats")
    parser.add_argument("--particles", type=int, default=None)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats per row (default 9, 1 with --quick; the paired interval needs >= 6)")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 32, 128])
    parser.add_argument("--scores", nargs="+", choices=("oracle", "mlp"), default=["oracle", "mlp"])
    parser.add_argument("--dtype", nargs="+", choices=("float64", "float32"), default=["float64"],
                        help="the points' dtype (both: rows for each, same run)")
    parser.add_argument("--train-steps", type=int, default=300, help="training steps of the MLP score")
    parser.add_argument("--kernel", action="store_true",
                        help="only the step kernel against the draw, hot and after a cache sweep (no score)")
    parser.add_argument("--draws", action="store_true",
                        help="only ns per normal number, each way of drawing them (numpy, numba, float32)")
    args = parser.parse_args()
    # None is "not given": 0 was read as not given and ran the default silently
    for option in ("particles", "steps", "repeats", "train_steps"):
        value = getattr(args, option)
        if value is not None and value < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1, got {value}")
    if min(args.dims) < 1:
        parser.error(f"--dims must be >= 1, got {args.dims}")
    n = args.particles if args.particles is not None else (1024 if args.quick else 4096)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 9)
    if args.draws:
        draws_table()
        return
    if args.kernel:
        kernel_table(n, args.dims, args.dtype)
        return
    print(f"# Euler–Maruyama sampler, {n} particles x {args.steps} steps, {repeats} repeats (best of, and "
          f"the paired median with its 95% interval); target: outside / draw <= {TARGET}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE')}, OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE')}; "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    print(f"| d | score | dtype | particles x steps / s | in score | best-of outside / draw (<= {TARGET}) | wall | "
          "paired median [95%] | verdict (<= 1.15) | over the handle draw [95%] | verdict, handle | in situ [95%] "
          "| verdict, in situ | in situ, handle [95%] | verdict, in situ handle | draw cold / warm (Generator, handle) "
          "| outside, us / step | draw, us / step | floor: raw bits / draw | loop / draw | other load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for d in args.dims:
        mixture = GaussianMixture.paper_family(d, 8, 3.0, rng=0)
        for dtype in map(np.dtype, args.dtype):
            scores = {"oracle": lambda x, t, g=mixture: g.score(x, t)}
            if "mlp" in args.scores:
                model = ScoreModel(MLP(d, (256, 256, 256), "silu", "log", dtype, rng=0), OU(), "noise")
                fit(model, mixture.sample(10_000, np.random.default_rng(1)).astype(dtype), steps=args.train_steps,
                    batch_size=256, lr=1e-3, t0=1e-3, T=5.0, rng=np.random.default_rng(2), weighting="sigma2",
                    progress=False)
                scores["mlp"] = model
            for name in args.scores:
                with OtherLoad() as load:  # CPUs' worth taken by other processes; above 0.1: rerun
                    b = measure(scores[name], d, n, args.steps, repeats, dtype.type)
                other = "?" if load.other is None else f"{load.other / load.wall:.2f}" + (
                    " (busy)" if load.busy else "")
                paired, decided = paired_cells(b["ratios"], TARGET)
                handle, handle_decided = paired_cells(b["handle_ratios"], TARGET)
                situ, situ_decided = paired_cells(b["situ_ratios"], TARGET)
                situ_handle, situ_handle_decided = paired_cells(b["situ_handle_ratios"], TARGET)
                print(f"| {d} | {name} | {dtype.name} | {n * args.steps / b['total']:.3g} | "
                      f"{1 - b['out_wall'] / b['total']:.1%} | **{b['out_cpu'] / b['draw_cpu']:.3f}** | "
                      f"{b['out_wall'] / b['draw_wall']:.3f} | {paired} | {decided} | {handle} | {handle_decided} | "
                      f"{situ} | {situ_decided} | {situ_handle} | {situ_handle_decided} | "
                      f"{np.median(b['cold']):.2f}, {np.median(b['cold_handle']):.2f} | "
                      f"{b['out_cpu'] / args.steps * 1e6:.0f} | "
                      f"{b['draw_cpu'] / args.steps * 1e6:.0f} | {b['raw'] / b['draw_cpu']:.2f} | "
                      f"{b['loop'] / b['draw_cpu']:.2f} | {other} |", flush=True)


if __name__ == "__main__":
    main()
