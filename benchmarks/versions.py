"""Two source trees of sgm_ref on the same machine, alternately: the oracle and the sampler on OU.

A change that should not touch speed (a refactor, a new process model) is checked here:
each round runs a fresh interpreter per tree (PYTHONPATH=TREE), the trees in turn (old first in even rounds, new first in odd ones), so a
change of machine load hits both alike; the table gives the median over rounds of each
tree's best-of-5 throughput, and new / old.

    git worktree add /tmp/old <commit>        # the tree to compare against
    python benchmarks/versions.py --old /tmp/old --new . [--rounds 4]

Rows: GaussianMixture.score(x, t, OU()) in M (point x component) pairs/s (one t per row,
uniform in [1e-3, 2]); sgm_ref.samplers.euler_maruyama on OU, 50 geometric steps from
T = 5 to 1e-2, in M particle-steps/s, with the exact oracle (K = 8) and with the score -x
(the sampler's own work alone).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r'''
import json, time
import numpy as np
import sgm_ref
from sgm_ref import GaussianMixture, OU
from sgm_ref.samplers import euler_maruyama, time_grid

def best(fn, repeats=5):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    return min(times)

rng = np.random.default_rng(0)
out = {"__file__": sgm_ref.__file__}  # which tree was imported: run() checks it
for d, K, cov in [(2, 8, "identity"), (2, 8, "full"), (32, 8, "full"), (128, 8, "full"), (128, 64, "identity")]:
    means = 2.0 * rng.standard_normal((K, d))
    if cov == "full":
        A = rng.standard_normal((K, d, d)) / np.sqrt(d)
        g = GaussianMixture(np.full(K, 1 / K), means, A @ np.transpose(A, (0, 2, 1)) + 0.5 * np.eye(d))
    else:
        g = GaussianMixture(np.full(K, 1 / K), means)
    n = int(min(2e6 / K / max(1, d // 8), 200_000))
    x, t = rng.standard_normal((n, d)), rng.uniform(1e-3, 2.0, n)
    g.score(x[:100], t[:100], OU())  # compile
    out[f"oracle d={d} K={K} {cov}"] = n * K / best(lambda: g.score(x, t, OU())) / 1e6
grid = time_grid(5.0, 1e-2, 50, "geometric")
for d, n in [(2, 100_000), (32, 20_000), (128, 5_000)]:
    g = GaussianMixture(np.full(8, 1 / 8), 2.0 * rng.standard_normal((8, d)))
    x = rng.standard_normal((n, d))
    for name, score in (("oracle", lambda y, t: g.score(y, t, OU())), ("-x", lambda y, t: -y)):
        euler_maruyama(score, OU(), grid[:3], x[:10], np.random.default_rng(0))  # compile
        run = lambda: euler_maruyama(score, OU(), grid, x, np.random.default_rng(1))
        out[f"sampler d={d} {name}"] = n * 50 / best(run) / 1e6
print(json.dumps(out))
'''


def run(tree):
    """CHILD's rows in a fresh interpreter with PYTHONPATH=tree, after checking that its
    sgm_ref came from tree/sgm_ref: a tree without one (a wrong --old, or the sgm_ref/
    folder itself) fell through to the installed sgm_ref, and both columns timed one tree."""
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
    # cwd: `python -c` puts the working directory ahead of PYTHONPATH, so started from inside
    # a tree it would import that tree for both sides
    with tempfile.TemporaryDirectory() as cwd:
        done = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=cwd, capture_output=True, text=True,
                              check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    imported = os.path.realpath(out.pop("__file__"))
    if imported != os.path.realpath(os.path.join(tree, "sgm_ref", "__init__.py")):
        raise SystemExit(f"{tree}: sgm_ref was imported from {imported}, not from this tree "
                         "(pass the folder that holds sgm_ref/, e.g. a git worktree's root)")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="source tree to compare against (its sgm_ref/ is imported)")
    parser.add_argument("--new", default=".", help="source tree of the change (default: this one)")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    for option in ("old", "new"):  # else the child imports the installed sgm_ref (run() refuses that too)
        if not os.path.isfile(os.path.join(getattr(args, option), "sgm_ref", "__init__.py")):
            parser.error(f"--{option} {getattr(args, option)}: no sgm_ref/__init__.py there (pass a source tree's root)")
    results = {"old": [], "new": []}
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for r in range(args.rounds):
        for which in (("old", "new") if r % 2 == 0 else ("new", "old")):  # a drift within a round hits both
            results[which].append(run(getattr(args, which)))
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    print("| row | old (median of best-of-5) | new | new / old |\n|---|---|---|---|")
    for key in results["old"][0]:
        old = statistics.median(r[key] for r in results["old"])
        new = statistics.median(r[key] for r in results["new"])
        print(f"| {key} | {old:.4g} | {new:.4g} | {new / old:.3f} |")


if __name__ == "__main__":
    main()
