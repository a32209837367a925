"""What the benchmark scripts report about the machine they ran on, their shared timer, the
interval and verdict of a median over repeats, and the CPU time other processes took (OtherLoad)."""

import math
import os
import platform
import time

import numpy as np


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
    where the median of *these* conditions lies, not of a quiet machine. Raises ValueError
    for no values or a non-finite one (a NaN would sort to an end and pass for a bound)."""
    x, m = np.sort(np.asarray(values, float)), len(values)
    if m == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"values must be one or more finite numbers, got {list(values)!r}")
    tail = 0.0  # P(Bin(m, 1/2) <= k), counted exactly
    k = 0
    while k < m // 2:
        tail += math.comb(m, k) / 2.0**m
        if tail > (1 - level) / 2:
            break
        k += 1
    if k < 1:
        return float(np.median(x)), -math.inf, math.inf
    return float(np.median(x)), float(x[k - 1]), float(x[m - k])


def verdict(low, high, target, below=True):
    """"met" if the interval [low, high] lies on the target's good side (at or below it if
    `below`, at or above it otherwise), "missed" if wholly on the other side, else "open"
    (also for fewer than 6 repeats, whose interval is infinite)."""
    if not below:
        low, high, target = -high, -low, -target
    return "met" if high <= target else ("missed" if low > target else "open")


def _bound(x, target):
    """x to 4 decimals, or more (up to 8) where 4 would print the target itself for a bound
    that is not the target (1.15004 against 1.15), so the printed bound shows its side."""
    for digits in range(4, 9):
        text = f"{x:.{digits}f}"
        if x == target or float(text) != target:
            return text
    return repr(x)


def paired_cells(values, target, below=True):
    """("median [low, high]", verdict) for a table row; ("median (no interval: m < 6
    repeats)", "-") when there are too few values for a 95% interval."""
    median, low, high = median_interval(values)
    if math.isinf(low):
        return f"{median:.3f} (no interval: {len(values)} < 6 repeats)", "-"
    return f"{median:.3f} [{_bound(low, target)}, {_bound(high, target)}]", verdict(low, high, target, below)


def machine_busy_seconds():
    """CPU seconds the whole machine has been busy so far (OtherLoad.busy_ticks of /proc/stat's
    "cpu" line; None without it): the one count every benchmark's load figure uses."""
    try:
        with open("/proc/stat") as f:
            return OtherLoad.busy_ticks(f.readline()) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None


class OtherLoad:
    """CPU seconds used by other processes while the block runs (Linux /proc/stat; None
    elsewhere): all busy CPU time of the machine minus this process's own."""

    @staticmethod
    def busy_ticks(line):
        """Busy clock ticks of /proc/stat's "cpu" line: user, nice, system, irq, softirq and
        steal (idle and iowait left out). guest and guest_nice, after them, are left out too:
        the kernel counts that time in user and nice already (summing all fields counted it twice)."""
        ticks = [int(v) for v in line.split()[1:9]]
        return sum(ticks) - ticks[3] - ticks[4]

    @classmethod
    def _busy(cls):
        return machine_busy_seconds()

    def __enter__(self):
        self.start = (self._busy(), sum(os.times()[:4]), time.perf_counter())
        return self

    def __exit__(self, *exc):
        busy, own = self._busy(), sum(os.times()[:4])
        self.wall = time.perf_counter() - self.start[2]
        if busy is None or self.start[0] is None:
            self.other = None
        else:
            self.other = max(0.0, (busy - self.start[0]) - (own - self.start[1]))
        return False

    @property
    def resolution(self):
        """The smallest nonzero load, in cores, this block can show: /proc/stat and os.times
        count whole clock ticks (10 ms), so over a 4 ms block one tick reads as 2.5 cores."""
        return 1.0 / os.sysconf("SC_CLK_TCK") / self.wall

    @property
    def busy(self):
        """True if other processes took more than a tenth of a core on average."""
        return self.other is not None and self.other > 0.1 * self.wall
