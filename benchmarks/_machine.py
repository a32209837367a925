"""What the benchmark scripts report about the machine they ran on, their shared timer, and the
interval and verdict of a median over repeats."""

import math
import platform
import time

import numpy as np
import scipy.stats


def cpu_name():
    """The CPU's model name from /proc/cpuinfo, or what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def best_time(fn, repeats):
    """The shortest of `repeats` wall-clock timings of fn(), in seconds."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def median_interval(values, level=0.95):
    """(median, low, high): the sample median of m values and the distribution-free interval
    for the population median from order statistics (the sign test's): with k the largest
    rank such that P(Bin(m, 1/2) <= k - 1) <= (1 - level) / 2, [x_(k), x_(m + 1 - k)]
    (1-based). It needs m >= 6 for 95%; with fewer no such k exists and the interval is
    (-inf, inf). Repeats on a shared machine are not identically distributed, so this says
    where the median of *these* conditions lies, not of a quiet machine."""
    x, m = np.sort(np.asarray(values, float)), len(values)
    k = 0
    while k < m // 2 and scipy.stats.binom.cdf(k, m, 0.5) <= (1 - level) / 2:
        k += 1
    if k < 1:
        return float(np.median(x)), -math.inf, math.inf
    return float(np.median(x)), float(x[k - 1]), float(x[m - k])


def verdict(low, high, target, below=True):
    """"met" if the interval [low, high] lies on the target's good side (below it if `below`,
    at or beyond it otherwise), "missed" if wholly on the other side, else "open"."""
    if not below:
        low, high, target = -high, -low, -target
    return "met" if high <= target else ("missed" if low > target else "open")
