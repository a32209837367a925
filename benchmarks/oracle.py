"""Throughput of the exact Gaussian-mixture score oracle against plain NumPy.

Measures GaussianMixture.score(x, t, OU()) with one t per row (t uniform in [1e-3, 2]),
float64, in millions of (point x component) pairs per second, for d in {2, 32, 128},
K in {8, 64}, identity and full covariances. In the same run it times a plain
NumPy implementation of the same formula (sgm_ref.plain.mixture_score, the plain twin
the oracle is tested against), after checking that both agree to a relative 1e-10, and
prints a Markdown table with the ratio.

    python benchmarks/oracle.py [--quick] [--n N] [--repeats R] [--rounds R] [--max-wait SECONDS]

Full covariances use the eigenbasis Sigma_k = U_k diag(lam_k) U_k^T (computed once,
outside the timing); a pair then costs about 4 d^2 flops (two d x d products), which
gives the GFLOP/s column, to be read against the matrix-product rate printed below the
table. Timings are the best of R calls (time.perf_counter) after warm-up calls that
compile the numba kernels, sgm_ref and NumPy taken in turn; n is chosen per row and per
implementation so that one call takes about 0.25 s (0.05 s with --quick).

Whether the full-covariance oracle reaches half the matrix-product peak at d = 32 is then
decided over rounds, not by one best time against one peak: each round times a score call
(the row's n) and a 2048^3 product back to back, the ratio of their GFLOP/s is that
round's share, and the table gives the median share with the sign test's 95% interval and
a verdict against 0.5 (met / missed only if the interval lies wholly on one side).

The machine may be shared: before each measurement the script waits (up to --max-wait
seconds) until other processes use less than a tenth of a core, measures again (up to
4 times) if they did not stay quiet, and marks a row "(busy)" if they never did. It
prints, and never changes, the thread settings and OPENBLAS_* environment variables.
Exit status 1 if a configuration failed the agreement check.
"""

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time

# OpenBLAS reads OPENBLAS_THREAD_TIMEOUT when numpy loads (numba's import, below): set here as
# sgm_ref sets it when imported first (sgm_ref._threads), so that the idle worker of a
# threaded product sleeps instead of spinning into the next timed call, as in train_step.py
_TIMEOUT_AT_START = os.environ.get("OPENBLAS_THREAD_TIMEOUT")  # thread_report says who set it
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numba  # noqa: E402
import numpy as np  # noqa: E402
from _machine import OtherLoad, best_time, cpu_name, paired_cells  # noqa: E402  (benchmarks/ is on sys.path when a script runs)
import scipy  # noqa: E402

import sgm_ref  # noqa: E402
from sgm_ref import OU, GaussianMixture, _threads, plain

DIMS = (2, 32, 128)
COMPONENTS = (8, 64)
COVARIANCES = ("full", "identity")
T_MIN, T_MAX = 1e-3, 2.0
TOLERANCE = 1e-10
ENV_VARS = (
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_THREAD_TIMEOUT",  # set by the script (unless set): whether OpenBLAS's idle worker sleeps
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "NUMBA_THREADING_LAYER",
)


# -- the problem --------------------------------------------------------------------------
def make_mixture(d, K, covariance, rng):
    """K components in R^d: weights uniform in [0.5, 1.5] (normalised), means of norm 3,
    full covariances A A^T / d + 0.1 I (eigenvalues roughly 0.1 to 4)."""
    w = rng.uniform(0.5, 1.5, K)
    w /= w.sum()
    mu = rng.standard_normal((K, d))
    mu *= 3.0 / np.linalg.norm(mu, axis=1, keepdims=True)
    if covariance == "identity":
        return GaussianMixture(w, mu)
    A = rng.standard_normal((K, d, d))
    cov = A @ A.transpose(0, 2, 1) / d + 0.1 * np.eye(d)
    return GaussianMixture(w, mu, 0.5 * (cov + cov.transpose(0, 2, 1)))


def make_points(mixture, n, rng):
    """n points of the forward process at per-row times: x = alpha_t x0 + sigma_t z."""
    x0 = mixture.sample(n, rng)
    t = rng.uniform(T_MIN, T_MAX, n)
    x, _ = OU().perturb(x0, t, rng)
    return x, t


# -- the baseline: sgm_ref.plain, the specification the oracle is tested against -----------
def _numpy_setup(mixture):
    """What the baseline computes once, outside the timing: log-weights, means and, for
    full covariances, the eigenbasis Sigma_k = U_k diag(lam_k) U_k^T."""
    return plain.mixture(mixture.weights, mixture.means, mixture.covariances)


def _numpy_score(x, t, p0):
    """log p_t(x) and grad log p_t(x) by sgm_ref.plain.mixture_score (OU, one t per row)."""
    return plain.mixture_score(x, t, p0, plain.OU)


def max_relative_difference(got, want, floor=0.0):
    """max over rows of max_j |got - want| / max(max_j |want|, floor): per row, scale-free.

    floor = 1 for log-densities, whose value can pass through 0 (then it is absolute)."""
    got, want = np.atleast_2d(got.T).T, np.atleast_2d(want.T).T
    scale = np.maximum(np.max(np.abs(want), axis=1), floor)
    return float(np.max(np.max(np.abs(got - want), axis=1) / scale))


# -- timing -------------------------------------------------------------------------------
def best_times_interleaved(calls, repeats):
    """Best of repeats for each call, the calls taken in turn (round robin), so that a
    change of machine load during the measurement hits all of them alike."""
    best = {name: np.inf for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def rows_for(fn, n, target, n_max):
    """Rows so that one call of fn(n) takes about target seconds: start from n and rescale
    by the measured time (best of 2) until within a factor 1.5 (at most 4 rounds)."""
    for _ in range(4):
        elapsed = best_time(lambda: fn(n), 2)
        ratio = target / elapsed
        n_new = int(np.clip(n * ratio, 64, n_max))
        if 1 / 1.5 < ratio < 1.5 or n_new == n:
            break
        n = n_new
    return n_new


def wait_for_quiet(max_wait, window=2.0):
    """Wait (at most max_wait seconds) until other processes stay under a tenth of a core
    for `window` seconds; True if they did (or if load cannot be measured)."""
    deadline = time.monotonic() + max_wait
    while True:
        with OtherLoad() as load:
            time.sleep(window)
        if not load.busy:
            return True
        if time.monotonic() >= deadline:
            return False


def measure(d, K, covariance, args, rng):
    mixture = make_mixture(d, K, covariance, rng)
    setup = _numpy_setup(mixture)
    process = OU()

    # equal work: both implementations agree on the same points before anything is timed
    x, t = make_points(mixture, 2000, rng)
    want_logp, want_score = _numpy_score(x, t, setup)
    got_logp, got_score = mixture.log_prob_and_score(x, t, process)
    got_score_only = mixture.score(x, t, process)
    diff = max(
        max_relative_difference(got_score, want_score),
        max_relative_difference(got_score_only, want_score),
        max_relative_difference(got_logp, want_logp, floor=1.0),
    )
    row = {"d": d, "K": K, "covariance": covariance, "diff": diff}
    if not diff < TOLERANCE:
        row["error"] = f"max relative difference {diff:.3g} >= {TOLERANCE:g}; not timed"
        return row

    # n per implementation: calibrate from a probe of about 2e5 pairs, then draw the points
    n_max = min(4_000_000, 2**25 // d)  # at most 256 MB of points
    pool = {}

    def points(n):
        if pool.get("n", 0) < n:
            pool["x"], pool["t"] = make_points(mixture, n, rng)
            pool["n"] = n
        return pool["x"][:n], pool["t"][:n]

    calls = {
        "sgm_ref": lambda n: mixture.score(*points(n), process),
        "numpy": lambda n: _numpy_score(*points(n), setup),
    }
    probe = max(64, 200_000 // K)
    n = {}
    wait_for_quiet(args.max_wait)
    for name, call in calls.items():
        call(probe)  # warm-up (the numba kernels are compiled by the check above)
        n[name] = args.n if args.n else rows_for(call, probe, args.target, n_max)
    x, t = make_points(mixture, max(n.values()), rng)
    timed = {
        "sgm_ref": lambda: mixture.score(x[: n["sgm_ref"]], t[: n["sgm_ref"]], process),
        "numpy": lambda: _numpy_score(x[: n["numpy"]], t[: n["numpy"]], setup),
    }
    # on a shared machine: start when other processes are quiet, and measure again (up to
    # 4 times) if they took more than a tenth of a core meanwhile
    for attempt in range(4):
        wait_for_quiet(args.max_wait)
        with OtherLoad() as load:
            seconds = best_times_interleaved(timed, args.repeats)
        if not load.busy:
            break
    row["busy"], row["other_cpu"] = load.busy, load.other
    for name in calls:
        row[f"rate_{name}"] = n[name] * K / seconds[name] / 1e6
        row[f"n_{name}"] = n[name]
        row[f"seconds_{name}"] = seconds[name]
    return row


def matmul_peak(size, repeats):
    """GFLOP/s of one float64 NumPy matrix product of size^3 (2 size^3 flops), best of repeats,
    into a preallocated output: a fresh 2048^2 one (32 MiB, above malloc's mmap threshold) is
    new pages on every call, 3.6 ms more to write than a reused one, ~3% of the product."""
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((size, size)), rng.standard_normal((size, size))
    C = np.empty_like(A)
    np.matmul(A, B, out=C)
    return 2.0 * size**3 / best_time(lambda: np.matmul(A, B, out=C), repeats) / 1e9


PEAK_TARGET = 0.5  # issue 16: d = 32 with full covariances at >= 50% of the matrix-product peak
PEAK_DIMS = (32, 128)  # full covariances: the matrix products should dominate


def peak_shares(d, K, n, rounds, size, rng):
    """The oracle's GFLOP/s over NumPy's matrix-product GFLOP/s, one value per round: each
    round times one score call (full covariances, n points, per-row t) and one size^3
    float64 product back to back, in alternating order, so that a change of machine speed
    between rounds hits both sides of each ratio."""
    mixture = make_mixture(d, K, "full", rng)
    x, t = make_points(mixture, n, rng)
    A, B = rng.standard_normal((size, size)), rng.standard_normal((size, size))
    C = np.empty_like(A)  # the product's output, reused (as matmul_peak's)
    process = OU()
    mixture.score(x[:64], t[:64], process)
    np.matmul(A, B, out=C)
    shares = []
    for r in range(rounds):
        seconds = {}
        order = ("oracle", "matmul") if r % 2 == 0 else ("matmul", "oracle")
        for name in order:
            start = time.perf_counter()
            if name == "oracle":
                mixture.score(x, t, process)
            else:
                np.matmul(A, B, out=C)
            seconds[name] = time.perf_counter() - start
        shares.append((4.0 * d * d * K * n / seconds["oracle"]) / (2.0 * size**3 / seconds["matmul"]))
    return shares


def peak_table(rows, rounds, size, max_wait, rng):
    """Markdown rows of the round-by-round share of the peak, full covariances at d in
    PEAK_DIMS, n as calibrated for the main table; a verdict against PEAK_TARGET at d = 32."""
    lines = ["| d | K | n | share of the peak: median [95% interval] | target | verdict | other load |",
             "|" + "---|" * 7]
    for r in rows:
        if r["covariance"] != "full" or r["d"] not in PEAK_DIMS or "error" in r:
            continue
        wait_for_quiet(max_wait)
        with OtherLoad() as load:  # the rounds' own load: a verdict from a busy machine is marked
            shares = peak_shares(r["d"], r["K"], r["n_sgm_ref"], rounds, size, rng)
        cell, verdict = paired_cells(shares, PEAK_TARGET, below=False)
        other = "?" if load.other is None else f"{load.other / load.wall:.2f}" + (" (busy)" if load.busy else "")
        if r["d"] == 32:
            lines.append(f"| {r['d']} | {r['K']} | {r['n_sgm_ref']} | {cell} | >= {PEAK_TARGET:g} | {verdict} "
                         f"| {other} |")
        else:
            lines.append(f"| {r['d']} | {r['K']} | {r['n_sgm_ref']} | {cell} | (no regression) | - | {other} |")
        print(f"  share of the peak d={r['d']} K={r['K']}: {cell}", file=sys.stderr, flush=True)
    return lines


# -- first-call (JIT) cost ----------------------------------------------------------------
_JIT_SNIPPET = textwrap.dedent(
    """
    import time
    start = time.perf_counter()
    import numpy as np
    from sgm_ref import OU, GaussianMixture, plain
    imported = time.perf_counter() - start
    rng = np.random.default_rng(0)
    d, K, n = 8, 4, 1000
    A = rng.standard_normal((K, d, d))
    mixtures = {
        "identity": GaussianMixture(np.full(K, 1 / K), rng.standard_normal((K, d))),
        "full": GaussianMixture(np.full(K, 1 / K), rng.standard_normal((K, d)),
                                A @ A.transpose(0, 2, 1) / d + 0.1 * np.eye(d)),
    }
    x, t = rng.standard_normal((n, d)), rng.uniform(1e-3, 2.0, n)
    out = [f"import {imported:.3f}"]
    for name, mixture in mixtures.items():
        for call in ("first", "second"):
            start = time.perf_counter()
            mixture.score(x, t, OU())
            out.append(f"{name}_{call} {time.perf_counter() - start:.6f}")
    print(";".join(out))
    """
)


def jit_cost():
    """First vs second call of score in fresh interpreters: with the on-disk numba cache
    as it is (cache=True kernels), and with an empty cache directory (cold compile)."""
    results = {}
    with tempfile.TemporaryDirectory() as empty:
        cases = (("on-disk cache as found", {}), ("empty NUMBA_CACHE_DIR (compile)", {"NUMBA_CACHE_DIR": empty}))
        for label, extra in cases:
            env = dict(os.environ, **extra)
            proc = subprocess.run([sys.executable, "-c", _JIT_SNIPPET], env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                results[label] = f"failed: {proc.stderr.strip().splitlines()[-1:]}"
                continue
            results[label] = dict(item.split() for item in proc.stdout.strip().splitlines()[-1].split(";"))
    return results


# -- report -------------------------------------------------------------------------------
def thread_report():
    lines = [
        f"numba.get_num_threads() = {numba.get_num_threads()}, "
        f"threading layer = {numba.threading_layer()}, NUMBA_NUM_THREADS default = {numba.config.NUMBA_NUM_THREADS}"
    ]
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        lines.append("threadpoolctl not installed: BLAS thread count not queried (library default)")
    else:
        for pool in threadpool_info():
            keys = ("user_api", "internal_api", "version", "num_threads", "threading_layer", "architecture")
            lines.append("threadpoolctl: " + ", ".join(f"{k}={pool.get(k)}" for k in keys))
    lines.append("environment: " + ", ".join(f"{v}={os.environ.get(v, '(unset)')}" for v in ENV_VARS))
    defaults = _threads.environment_defaults()
    timeout = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
    if "OPENBLAS_THREAD_TIMEOUT" in defaults["set"] and "OpenBLAS (numpy)" in defaults["loaded_before"]:
        lines.append("OpenBLAS idle workers spin (~2^28 cycles) after each threaded call: OpenBLAS was loaded "
                     "before sgm_ref set OPENBLAS_THREAD_TIMEOUT=4 (numpy imported first)")
    else:  # this script sets it (as sgm_ref would) unless it was set before Python started
        who = ("set by sgm_ref before OpenBLAS loaded" if "OPENBLAS_THREAD_TIMEOUT" in defaults["set"]
               else "set before Python started" if _TIMEOUT_AT_START is not None
               else "set by this script before numpy loaded, as sgm_ref sets it")
        lines.append(f"OpenBLAS idle workers sleep after 2^{timeout} cycles (OPENBLAS_THREAD_TIMEOUT={timeout}, {who})")
    # the library's own rule for the default count (numba's, bounded by OpenBLAS's)
    blocks_on = _threads._default_block_threads(_threads._openblas_once()) if _threads.blas_settable() else 1
    lines.append(f"full covariances above d = 6: blocks of rows on {blocks_on} Python thread(s)"
                 + (", OpenBLAS on one thread meanwhile" if blocks_on > 1 else ", BLAS's own threads"))
    return lines


def table(rows):
    head = (
        "| d | K | covariance | sgm_ref M pairs/s | NumPy M pairs/s | ratio (sgm_ref/NumPy) "
        "| sgm_ref GFLOP/s (4 d^2 per pair) | n (sgm_ref / NumPy) | max rel. diff |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['d']} | {r['K']} | {r['covariance']} | {r['error']} | | | | | {r['diff']:.1e} |")
            continue
        gflops = f"{r['rate_sgm_ref'] * 4 * r['d'] ** 2 / 1e3:.1f}" if r["covariance"] == "full" else "-"
        mark = " (busy)" if r["busy"] else ""
        lines.append(
            f"| {r['d']} | {r['K']} | {r['covariance']}{mark} | {r['rate_sgm_ref']:.3g} | {r['rate_numpy']:.3g} "
            f"| {r['rate_sgm_ref'] / r['rate_numpy']:.2f} | {gflops} | {r['n_sgm_ref']} / {r['n_numpy']} "
            f"| {r['diff']:.1e} |"
        )
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short calls (~0.05 s) and 2 repeats: a smoke run")
    parser.add_argument("--n", type=int, default=None, help="fixed number of points per call (default: calibrated)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="calls per measurement, best kept (default 5, quick 2)")
    parser.add_argument("--max-wait", type=float, default=None,
                        help="seconds to wait, before each measurement, for other processes to go quiet "
                             "(default 300, quick 10)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of the share-of-the-peak table (one score call and one matrix "
                             "product each; default 9, quick 0; 0 skips it)")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 0 if args.quick else 9
    if args.rounds < 0:
        parser.error("--rounds must be >= 0")
    if args.n is not None and args.n < 1:
        parser.error("--n must be >= 1")
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.max_wait is None:
        args.max_wait = 10.0 if args.quick else 300.0
    args.target = 0.05 if args.quick else 0.25

    print("# Exact mixture oracle: GaussianMixture.score, one t per row, float64, OU")
    print()
    command = " ".join(["python", "benchmarks/oracle.py"] + sys.argv[1:])
    print(f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; command: {command}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; Python {platform.python_version()}, "
          f"NumPy {np.__version__}, SciPy {scipy.__version__}, numba {numba.__version__}, "
          f"sgm_ref {sgm_ref.__version__}")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load:
        print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"t ~ uniform[{T_MIN:g}, {T_MAX:g}] per row; best of {args.repeats}, sgm_ref and NumPy interleaved; "
          + (f"n = {args.n} per call" if args.n else f"n per call calibrated to ~{args.target:g} s"))
    print(flush=True)

    rng = np.random.default_rng(20261124)
    rows = []
    for d in DIMS:
        for K in COMPONENTS:
            for covariance in COVARIANCES:
                row = measure(d, K, covariance, args, rng)
                rows.append(row)
                note = row.get("error") or f"sgm_ref {row['rate_sgm_ref']:.3g}, NumPy {row['rate_numpy']:.3g} M pairs/s"
                print(f"  d={d} K={K} {covariance}: {note}", file=sys.stderr, flush=True)

    print("\n".join(table(rows)))
    print()
    print("M pairs/s = n K / best time of one score call (n points, K components); ratio > 1: "
          "sgm_ref faster; GFLOP/s = 4 d^2 x pairs/s; max rel. diff: sgm_ref vs the NumPy "
          "baseline on 2000 points (score per row, and log-density), checked < 1e-10 before timing.")
    others = [r["other_cpu"] for r in rows if r.get("other_cpu") is not None]
    if others:
        print()
        print(f"Other processes used {sum(others):.1f} CPU-seconds during the timed measurements; "
              f"{sum(bool(r.get('busy')) for r in rows)} row(s) marked (busy): more than 0.1 core "
              "on average in all 4 attempts.")
    print()
    size = 1024 if args.quick else 2048
    wait_for_quiet(args.max_wait)
    print(f"NumPy float64 matmul {size}^3 in this run: {matmul_peak(size, 3):.0f} GFLOP/s (best of 3)")
    print()
    if args.rounds:
        print(f"Share of the matrix-product peak, full covariances, round by round ({args.rounds} rounds; "
              f"each one score call and one {size}^3 product back to back, in alternating order; the "
              "median of the per-round ratios with the sign test's distribution-free 95% interval; "
              "met / missed when the interval lies wholly on one side of the target, else open):")
        print()
        print("\n".join(peak_table(rows, args.rounds, size, args.max_wait, rng)))
        print()
    print("Threads:")
    for line in thread_report():
        print(f"- {line}")
    print()
    print("First-call cost in a fresh interpreter (d=8, K=4, n=1000; seconds):")
    wait_for_quiet(args.max_wait)
    for label, result in jit_cost().items():
        if isinstance(result, str):
            print(f"- {label}: {result}")
            continue
        print(
            f"- {label}: import sgm_ref {float(result['import']):.2f}; "
            f"identity first {float(result['identity_first']):.3f} / second {float(result['identity_second']):.4f}; "
            f"full first {float(result['full_first']):.3f} / second {float(result['full_second']):.4f}"
        )
    failed = [r for r in rows if "error" in r]
    if failed:
        print(f"\n{len(failed)} configuration(s) failed the agreement check; see the table.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
