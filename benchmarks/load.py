"""`sgm-ref demo` on a quiet machine and beside busy-loop processes: how much slower under load.

    python benchmarks/load.py                       # the full demo, 2 repeats (~6-10 min)
    python benchmarks/load.py --quick               # --steps 3000 --n-samples 2000, 1 repeat
    python benchmarks/load.py --busy 2 --repeats 3 -- --steps 6000

Each row runs the demo (its own default settings unless options for `sgm-ref demo` follow
`--`) in a fresh interpreter, once alone and once with --busy single-threaded busy-loop
processes started beside it (load --busy on top of whatever else runs), interleaved so
both see the same background. Configurations (thread settings of the demo's process):

  default     sgm_ref as installed: its defaults (sgm_ref/_threads.py: idle OpenBLAS and
              OpenMP workers sleep at once), one thread per core
  spinning    the libraries' own waiting, as before sgm_ref set any default:
              OPENBLAS_THREAD_TIMEOUT=28 and GOMP_SPINCOUNT=300000 (the values OpenBLAS
              and libgomp use when nothing is set)
  short spin  OPENBLAS_THREAD_TIMEOUT=20: an idle OpenBLAS worker spins for 2^20 TSC ticks
              (~0.4 ms at 2.6 GHz) before it sleeps, enough to bridge the gaps between a
              small training step's products
  1 thread    SGM_REF_THREADS=1 (numba and OpenBLAS)

Reported per run: wall seconds of the whole command and of its training, sampling and
evaluation (from its output), the ratio loaded / quiet of the same repeat, and the
background load: the CPUs' worth of time other processes took during the run (from
/proc/stat, minus this benchmark's own children) and the 1-minute load average when it
started. The thread variables of this shell (OMP_*, OPENBLAS_NUM_THREADS / _TIMEOUT,
GOMP_SPINCOUNT, NUMBA_*, SGM_REF_THREADS) are removed for the children, so each
configuration is exactly what it says; OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are passed on.
"""

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

from _machine import cpu_name, machine_busy_seconds

CONFIGS = {
    "default": {},
    "spinning": {"OPENBLAS_THREAD_TIMEOUT": "28", "GOMP_SPINCOUNT": "300000"},
    "short spin": {"OPENBLAS_THREAD_TIMEOUT": "20"},
    "1 thread": {"SGM_REF_THREADS": "1"},
}
THREAD_VARIABLES = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OPENBLAS_NUM_THREADS",
                    "OPENBLAS_THREAD_TIMEOUT", "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "SGM_REF_THREADS",
                    "MKL_NUM_THREADS")
PHASES = (("train", r"trained in ([0-9.]+) s"), ("sample", r"samples in ([0-9.]+) s"),
          ("evaluate", r"evaluated in ([0-9.]+) s"))
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def child_environment(config):
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    env.update(CONFIGS[config])
    return env


def busy_seconds():
    """CPU seconds used so far by the whole machine (None without /proc/stat) and by our waited-for children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return machine_busy_seconds(), children.ru_utime + children.ru_stime  # idle and iowait excluded


def process_cpu_seconds(pid):
    """User + system CPU seconds of a running process so far (/proc/PID/stat; None without it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0]
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime (fields 14, 15 of stat)


def _loops_seconds(loops):
    """CPU seconds the busy loops have used so far (None if any cannot be read)."""
    seconds = [process_cpu_seconds(p.pid) for p in loops]
    return None if None in seconds else sum(seconds)


def run_demo(config, busy, demo_args, workdir):
    """One demo run; returns {"wall", "train", "sample", "evaluate", "others", "loadavg"}.

    others: the machine's busy time over the run less the demo's (a waited-for child, in
    RUSAGE_CHILDREN once run returns) and less what the busy loops took over the same span,
    read from /proc while they run (counted once waited for, they brought in their start-up
    and the 0.3 s before the clock started: up to 0.6 CPU-seconds more than the span's)."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        time.sleep(0.3)  # let the loops get going before the clock starts
        loadavg = os.getloadavg()[0]
        run = tempfile.mkdtemp(dir=workdir)
        command = [sys.executable, "-c", "import sys; from sgm_ref.cli import main; sys.exit(main())",
                   "demo", os.path.join(run, "demo"), *demo_args]
        loops0 = _loops_seconds(loops)
        all0, ours0 = busy_seconds()
        tic = time.perf_counter()
        done = subprocess.run(command, env=child_environment(config), capture_output=True, text=True)
        wall = time.perf_counter() - tic
        all1, ours1 = busy_seconds()  # the demo waited for: its time is in ours1; the loops' is not
        loops1 = _loops_seconds(loops)
    finally:
        for p in loops:
            p.kill()
            p.wait()
    if done.returncode != 0:
        raise SystemExit(f"sgm-ref demo failed ({config}, busy {busy}):\n{done.stderr}")
    known = all0 is not None and loops0 is not None and loops1 is not None
    row = {"wall": wall, "loadavg": loadavg,
           "others": max(0.0, (all1 - all0) - (ours1 - ours0) - (loops1 - loops0)) / wall if known else None}
    for phase, pattern in PHASES:
        m = re.search(pattern, done.stdout + done.stderr)
        row[phase] = float(m.group(1)) if m else None
    return row


def layer_report():
    """numba's threading layer and thread counts as the demo's process sees them (default config)."""
    code = ("import sgm_ref, numba, numpy as np; from sgm_ref import GaussianMixture, OU, _threads; "
            "GaussianMixture.ring().score(np.zeros((64, 2)), np.full(64, 0.5), OU()); "
            "print(numba.threading_layer(), numba.get_num_threads(), _threads.blas_threads(), "
            "_threads.environment_defaults()['set'])")
    out = subprocess.run([sys.executable, "-c", code], env=child_environment("default"), capture_output=True,
                         text=True)
    return out.stdout.strip() or out.stderr.strip().splitlines()[-1]


def fmt(x, digits=1):
    return "-" if x is None else f"{x:.{digits}f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=2, help="busy-loop processes beside the loaded run (default 2)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma-separated, from {', '.join(CONFIGS)} (default all)")
    parser.add_argument("--quick", action="store_true", help="demo with --steps 3000 --n-samples 2000, 1 repeat")
    parser.add_argument("demo_args", nargs="*", help="options for `sgm-ref demo`, after --")
    args = parser.parse_args()
    configs = args.configs.split(",")
    for c in configs:
        if c not in CONFIGS:
            parser.error(f"--configs: unknown {c!r} (from {', '.join(CONFIGS)})")
    if args.busy < 1 or args.repeats < 1:
        parser.error("--busy and --repeats must be >= 1")
    demo_args = list(args.demo_args) or (["--steps", "3000", "--n-samples", "2000"] if args.quick else [])
    repeats = 1 if args.quick else args.repeats

    rows = []
    with tempfile.TemporaryDirectory(prefix="sgm-ref-load-") as workdir:
        for r in range(repeats):
            for config in configs:
                order = (0, args.busy) if r % 2 == 0 else (args.busy, 0)  # alternate which goes first
                pair = {}
                for busy in order:
                    pair[busy] = run_demo(config, busy, demo_args, workdir)
                    print(f"repeat {r + 1} {config:9s} busy {busy}: {pair[busy]['wall']:.1f} s, others "
                          f"{fmt(pair[busy]['others'], 2)} CPUs, loadavg {pair[busy]['loadavg']:.2f}",
                          file=sys.stderr, flush=True)
                rows.append((r + 1, config, pair[0], pair[args.busy]))

    print(f"# sgm-ref demo under load ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    print()
    print(f"Machine: {cpu_name()}, {os.cpu_count()} CPUs; python {sys.version.split()[0]}; "
          f"demo options: {' '.join(demo_args) or '(the defaults)'}; loaded = {args.busy} busy-loop processes")
    print(f"Threads (default config; layer, numba threads, OpenBLAS threads, variables set by sgm_ref): "
          f"{layer_report()}")
    print()
    print("| repeat | config | quiet s (train / sample / evaluate) | loaded s (train / sample / evaluate) "
          "| loaded / quiet | others, CPUs (quiet / loaded) | loadavg (quiet / loaded) |")
    print("|---|---|---|---|---|---|---|")
    for r, config, q, b in rows:
        parts = [f"{x['wall']:.1f} ({fmt(x['train'])} / {fmt(x['sample'])} / {fmt(x['evaluate'])})" for x in (q, b)]
        print(f"| {r} | {config} | {parts[0]} | {parts[1]} | {b['wall'] / q['wall']:.2f} | "
              f"{fmt(q['others'], 2)} / {fmt(b['others'], 2)} | {q['loadavg']:.2f} / {b['loadavg']:.2f} |")
    print()
    print("others: CPUs' worth of time other processes took during the run (/proc/stat, minus this benchmark's "
          "children; the busy loops are ours and not in it). Quiet means no busy loops of ours, not an idle machine.")


if __name__ == "__main__":
    main()
