"""The cost of the rate experiment's full grid: cells x measured seconds per cell.

Measures, in one process with one numba and one BLAS thread (as a sweep worker runs):

- milliseconds per training step of the cell's network (FULL settings: width 256,
  depth 3, batch 256) at every d of the grid (200 steps each);
- the seconds of one held-out evaluation (rate.HeldOut: the objective on val_n points) at
  every d;
- the seconds of everything else a cell does (sampling, EM, the baselines' errors, the
  certified bounds), from run_cell with one training step, at the smallest and largest
  d and n of each family;

and predicts every cell as training_steps(n) x ms/step(d) + the held-out evaluations a
cell of that many steps makes beyond the one-step cell's (24 against 2 with FULL settings,
held_out_calls) x their seconds(d) + the rest, the rest interpolated linearly in log d and
log n between the measured corners (it grows about linearly in d, so the middle d are
overestimated). Prints the per-cell table, the total
worker-seconds and the hours with 2 workers. The load average is printed beside each
measurement: on a shared machine the figures are upper bounds of a quiet one's.

    OPENBLAS_NUM_THREADS=1 python benchmarks/rate_cost.py
    OPENBLAS_NUM_THREADS=1 python benchmarks/rate_cost.py --d 512,1024 --steps-only --repeats 3

--d times other dimensions than the grid's (the prediction then covers them); --steps-only
prints the training step times alone (the median of --repeats runs of 200 steps each).
"""

import argparse
import os
import time

import numpy as np

from sgm_ref import _threads, set_threads
from sgm_ref.experiments import rate
from sgm_ref.nn import MLP
from sgm_ref.optim import Adam
from sgm_ref.processes import OU
from sgm_ref.score_model import ScoreModel
from sgm_ref.train import fit


def step_seconds(d, S, steps=200):
    """Seconds per training step of a rate cell's network at dimension d (FULL settings)."""
    rng = np.random.default_rng(0)
    net = MLP(d, (S["width"],) * S["depth"], S["activation"], S["time_embedding"], rng=rng)
    model = ScoreModel(net, OU(), S["parameterization"])
    optimizer = Adam(model.params, lr=S["lr"], ema_decay=S["ema_decay"], ema_warmup=True)
    data = rng.standard_normal((2000, d))
    tic = time.perf_counter()
    fit(model, data, steps=steps, batch_size=S["batch_size"], t0=1e-3, T=5.0, rng=rng, optimizer=optimizer,
        progress=False)
    return (time.perf_counter() - tic) / steps


def held_out_calls(steps, S):
    """Held-out evaluations of a cell trained for `steps` steps, as run_cell makes them: one at
    step 0 (if val_early), one at each of HeldOut.early_steps, and fit's every
    max(1, steps // val_points) steps and after the last (24 in every recorded cell of
    docs/rate_iso_rerun; 2 in the one-step cell that measures the rest)."""
    every = max(1, steps // S["val_points"])
    early = rate.HeldOut.early_steps(every, S.get("val_early") or 0)
    return bool(S.get("val_early")) + len(early) + steps // every + (steps % every != 0)


def held_out_seconds(d, S, family, repeats=3):
    """Seconds of one held-out evaluation (the EMA network on val_n points) at dimension d:
    the median of `repeats` calls after an untimed one."""
    rng = np.random.default_rng(0)
    net = MLP(d, (S["width"],) * S["depth"], S["activation"], S["time_embedding"], rng=rng)
    model = ScoreModel(net, OU(), S["parameterization"])
    optimizer = Adam(model.params, lr=S["lr"], ema_decay=S["ema_decay"], ema_warmup=True)
    held_out = rate.HeldOut(model, optimizer, rate.make_target(family, d), S["t0"], S["T"], S, rng)
    held_out(model)
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        held_out(model)
        times.append(time.perf_counter() - tic)
    return float(np.median(times))


def cell_seconds(n, d, S, ms, held, corner, d_ends, n_ends):
    """Predicted seconds of the cell (d, n): its training steps at ms[d] seconds each, its
    held-out evaluations beyond the one-step cell's at held[d] each, and the rest between the
    corners (rest_between; the corners' rest holds the one-step cell's evaluations)."""
    steps = rate.training_steps(n, S)
    extra = held_out_calls(steps, S) - held_out_calls(1, S)
    return steps * ms[d] + extra * held[d] + rest_between(corner, d, n, d_ends, n_ends)


def _weight(x, ends):
    """Where x lies between ends = (low, high) in log scale, 0 at low and 1 at high; 0 when
    low = high (one value measured: log(1) / log(1) gave NaN for every cell)."""
    low, high = ends
    return 0.0 if high == low else float(np.log(x / low) / np.log(high / low))


def rest_between(corner, d, n, d_ends, n_ends):
    """The rest of a cell at (d, n), bilinear in (log d, log n) between the measured corners
    corner[(d_end, n_end)] for d_end in d_ends and n_end in n_ends."""
    u, v = _weight(d, d_ends), _weight(n, n_ends)
    return ((1 - u) * ((1 - v) * corner[d_ends[0], n_ends[0]] + v * corner[d_ends[0], n_ends[1]])
            + u * ((1 - v) * corner[d_ends[1], n_ends[0]] + v * corner[d_ends[1], n_ends[1]]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d", help="comma-separated dimensions (default: the full grid's)")
    parser.add_argument("--steps-only", action="store_true", help="time the training steps only")
    parser.add_argument("--repeats", type=int, default=1, help="runs of 200 steps per d (the median is used)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    # one numba and one BLAS thread, as a sweep worker runs (numba's alone left OpenBLAS on
    # one thread per core unless OPENBLAS_NUM_THREADS=1 was set)
    set_threads(1)
    print(f"threads: numba 1, OpenBLAS {_threads.blas_threads()}", flush=True)
    grid, S = dict(rate.FULL), rate.SETTINGS
    if args.d:
        try:
            grid["d"] = sorted({int(v) for v in args.d.split(",")})
        except ValueError:
            parser.error(f"--d must be comma-separated integers, got {args.d!r}")
        if grid["d"][0] < 1:
            parser.error(f"--d: every dimension must be >= 1, got {args.d!r}")
    ms = {}
    for d in grid["d"]:
        times = []
        for _ in range(args.repeats):
            times.append(step_seconds(d, S))
        ms[d] = float(np.median(times))
        print(f"training d = {d}: {1e3 * ms[d]:.2f} ms/step (median of {args.repeats}; load "
              f"{os.getloadavg()[0]:.1f})", flush=True)
    if args.steps_only:
        return
    held = {}
    for d in grid["d"]:
        held[d] = held_out_seconds(d, S, grid["families"][0])
        print(f"held-out evaluation d = {d}: {held[d]:.2f} s ({held_out_calls(1, S)} in the one-step cell, "
              f"{held_out_calls(rate.training_steps(min(grid['n']), S), S)} in a cell at n = {min(grid['n'])}; "
              f"load {os.getloadavg()[0]:.1f})", flush=True)
    rest = {}
    d_ends, n_ends = (min(grid["d"]), max(grid["d"])), (min(grid["n"]), max(grid["n"]))
    for family in grid["families"]:
        for d in dict.fromkeys(d_ends):  # one d (--d 512): its corners once, not twice
            for n in dict.fromkeys(n_ends):
                row = rate.run_cell({"family": family, "d": d, "n": n, "seed": 0, "settings": {**S, "steps": 1}})
                rest[family, d, n] = row["eval_seconds"] + row["train_seconds"]
                print(f"rest of a cell {family} d = {d} n = {n}: {rest[family, d, n]:.1f} s "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
    print("\n| family | d | " + " | ".join(f"n = {n}" for n in grid["n"]) + " |")
    print("|---|---|" + "---|" * len(grid["n"]))
    total = 0.0
    for family in grid["families"]:
        for d in grid["d"]:
            corner = {(a, b): rest[family, a, b] for a in d_ends for b in n_ends}
            seconds = [cell_seconds(n, d, S, ms, held, corner, d_ends, n_ends) for n in grid["n"]]
            total += len(grid["seeds"]) * sum(seconds)
            print(f"| {family} | {d} | " + " | ".join(f"{s:.0f}" for s in seconds) + " |")
    cells = len(grid["families"]) * len(grid["d"]) * len(grid["n"]) * len(grid["seeds"])
    print(f"\n{cells} cells, {total:.0f} worker-seconds ({total / cells:.0f} s per cell on average): "
          f"{total / 2 / 3600:.2f} hours with --workers 2")


if __name__ == "__main__":
    main()
