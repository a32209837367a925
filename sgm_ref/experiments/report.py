"""docs/rate.md from a rate sweep's stored rows: tables, statistics, figures, and sentences made from the numbers.

    sgm-ref experiment rate-report RUN --out docs/rate.md

writes OUT (markdown), OUT's stem + ".json" (every number the text quotes) and, with
matplotlib, three figures beside it: STEM_error_vs_n.png, STEM_error_vs_d.png and
STEM_tv_vs_n.png. Nothing in the text is written by hand about the data: each sentence
of "What this shows / what it does not" is chosen by a threshold on a number printed with
it, so regenerating from other rows cannot leave a stale claim.

Rows are those of results.jsonl (sgm_ref.experiments.rate.load_results); the optional
fields baseline_empirical, baseline_minus_x, baseline_em ({"error", "se"} or null), tv
(the certified bound's terms), t0, T, steps and objective are used when present, so an
old sweep (score_error and tv_bound only) gives the same report without the baselines.
"""

import json
import math
import numbers
import os
import re

import numpy as np

from .._json import load_json
from ..io import atomic_write
from ..plots import have_matplotlib
from ..runs import _shell_path
from . import stats as S
from . import rate
from .rate import cell_key, load_results

__all__ = ["BASELINES", "load_sweep", "analyse", "compare", "report_markdown", "write_report"]

# the baselines a row may carry, and what the report calls them
BASELINES = {"baseline_empirical": "empirical measure (curse)", "baseline_minus_x": "score -x",
             "baseline_em": "EM plug-in"}
LEVEL = 0.95          # confidence level of every interval
ALPHA = 0.05          # level of the equal-slope test
ALPHA_LOF = 0.01      # level of the lack-of-fit test (issue 14 reports p < 0.01)
FLOOR_SHARE = 0.25    # a fitted floor c above this share of the error at the largest n: "flattened"
RISE = 0.10           # a mean error that grows from one n to the next by more than this (and 2 se): "rises"
TRAINING_CHANGE = 0.10  # a comparison of training settings alone: "long enough" if its interval is within 10%
# the settings that change how long or how a cell trains, not what it learns or how it is measured
TRAINING_SETTINGS = {"steps", "epochs", "min_steps", "lr_schedule", "lr_final", "time_sampling", "checkpoint", "val_n",
                     "val_points", "val_early", "output_init"}


def load_sweep(folder):
    """(rows that finished, sweep.json's content or {}) of a sweep folder.

    Raises
    ------
    ValueError
        No results.jsonl in folder, an unreadable row or sweep.json, or no finished row.
    """
    folder = os.fspath(folder)
    path = os.path.join(folder, "results.jsonl")
    if not os.path.isfile(path):
        raise ValueError(f"{folder} has no results.jsonl: give the folder of a rate sweep "
                         "(sgm-ref experiment rate OUT)")
    rows = [r for r in load_results(path) if r.get("status", "ok") == "ok"]
    if not rows:
        raise ValueError(f"{path} has no finished cell: nothing to report")
    settings = {}
    sweep = os.path.join(folder, "sweep.json")
    if os.path.lexists(sweep) and not os.path.isfile(sweep):  # a folder (or a broken link) was read as none
        raise ValueError(f"{sweep} is not a file: the sweep's settings cannot be read; remove it or put the "
                         "sweep's own sweep.json back")
    if os.path.isfile(sweep):
        fix = "put the sweep's own sweep.json back, or remove it (the report is then made without its settings)"
        with open(sweep, "rb") as f:
            try:
                settings = load_json(f, sweep)
            except ValueError as exc:  # it named the file, not a way out
                raise ValueError(f"{exc}; {fix}") from None
        if not isinstance(settings, dict):
            raise ValueError(f"{sweep} is not a sweep description (not a JSON object); {fix}")
    return rows, settings


# ---------------------------------------------------------------- numbers

def _value(row, key):
    """(error, se) of the network (key None) or a baseline in a row, or None."""
    if key is None:
        return row["score_error"], row["score_error_se"]
    b = row.get(key)
    if not isinstance(b, dict) or b.get("error") is None:
        return None
    return float(b["error"]), float(b.get("se") or 0.0)


def _tv(row, key="tv"):
    """(tv, tv_se, terms) of a row's certified bound: the new "tv" (or "tv_oracle") dict, else the old tv_bound.

    terms holds the numeric terms (TVBound.as_dict's scalars; an overflowed term is null in
    the row and left out) and "method", the sampler the bound is about, when recorded.
    """
    tv = row.get(key)
    if isinstance(tv, dict) and tv.get("tv") is not None:
        terms = {k: float(v) for k, v in tv.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        # a term the row holds as null overflowed (rate._bound_terms: inf, which JSON cannot hold)
        terms.update({k: None for k, v in tv.items() if v is None})
        if isinstance(tv.get("method"), str):
            terms["method"] = tv["method"]
        return float(tv["tv"]), float(tv.get("tv_se") or 0.0), terms
    if key == "tv" and row.get("tv_bound") is not None:
        terms = {"tv": row["tv_bound"], "tv_se": row.get("tv_bound_se") or 0.0}
        if row.get("kl_path") is not None:
            terms["kl_path"] = row["kl_path"]
        return float(row["tv_bound"]), float(row.get("tv_bound_se") or 0.0), terms
    return None


def _mean_se(values):
    """Mean over seeds ± the seed-to-seed standard error (one seed: its own Monte-Carlo se)."""
    e = np.array([v[0] for v in values])
    if e.size > 1:
        return float(e.mean()), float(e.std(ddof=1) / math.sqrt(e.size))
    return float(e[0]), float(values[0][1])


def _attempt(function, *args, **kwargs):
    """(result, None) or (None, the reason it could not be computed)."""
    try:
        return function(*args, **kwargs), None
    except ValueError as exc:
        return None, str(exc)


def _exponent(slope_fit):
    """The exponent b = -slope and its interval from a joint_slopes group."""
    low, high = slope_fit["slope_interval"]
    return {"b": -slope_fit["slope"], "b_se": slope_fit["slope_se"], "b_interval": [-high, -low],
            "dof": slope_fit["dof"]}


def analyse(rows, grid=None):
    """Every number of the report, per family: points, fits, tests, n*, TV; JSON-ready.

    grid: the sweep's grid (rate.FULL or make_grid's) when known; the cost summary then
    counts the cells against it (otherwise against the (family, d, n) the rows hold).

    Returns
    -------
    dict
        {"families": {family: {"d": [...], "n": [...], "seeds": int, "cells": {...}, ...}}}

    Raises
    ------
    ValueError
        A grid that is not a dict of non-empty lists families, d, n and seeds; a cell
        (family, d, n, seed) given twice; a score_error that is not a finite number (load
        the rows with load_sweep, which keeps the finished cells, once each).
    """
    families, seen = {}, set()
    for r in rows:
        cell = (r["family"], r["d"], r["n"], r["seed"])
        if cell in seen:
            raise ValueError(f"rows hold the cell family={cell[0]}, d={cell[1]}, n={cell[2]}, seed={cell[3]} twice: "
                             "it would count as two seeds (load the rows with load_sweep)")
        seen.add(cell)
        e = r.get("score_error")
        if isinstance(e, bool) or not isinstance(e, numbers.Real) or not math.isfinite(e):
            raise ValueError(f"rows: the cell family={cell[0]}, d={cell[1]}, n={cell[2]}, seed={cell[3]} has "
                             f"score_error {e!r}, not a finite number (a failed cell? load_sweep leaves those out)")
    # in the order of the cells, not of results.jsonl (the order in which they finished, which a
    # resumed sweep changes): the same rows give the same numbers to the last bit
    rows = sorted(rows, key=lambda r: (r["family"], r["d"], r["n"], r["seed"]))
    for r in rows:
        families.setdefault(r["family"], []).append(r)
    if grid is not None and not (isinstance(grid, dict) and all(
            isinstance(grid.get(k), (list, tuple)) and grid[k] for k in ("families", "d", "n", "seeds"))):
        raise ValueError("grid must be a sweep grid like rate.FULL (a dict with non-empty lists 'families', 'd', "
                         f"'n' and 'seeds'), or None, got {grid!r:.200}")
    out = {}
    for family, frows in sorted(families.items()):
        out[family] = _analyse_family(frows)
    return {"families": out, "level": LEVEL, "alpha": ALPHA, "alpha_lack_of_fit": ALPHA_LOF,
            "cost": _cost(rows, grid)}


def _full_grid(rows, settings):
    """The grid the rows belong to if they are cells of `--full` under its settings: rate.FULL
    itself; rate.FULL with the d not in its list added, named so, when the rows hold both
    (`--full --d 1024` run into the folder of `--full`); that command's grid alone when every
    row is at such a d; None otherwise."""
    full = rate.FULL
    if settings.get("settings") != full["settings"]:
        return None
    ds = {r["d"] for r in rows}
    extra = sorted(ds - set(full["d"]))
    flag = "`--full --d " + ",".join(str(d) for d in extra) + "`"
    if not extra:
        grid = full
    elif ds & set(full["d"]):
        grid = {**full, "d": sorted(set(full["d"]) | ds), "name": "`--full` and " + flag}
    else:
        grid = {**full, "d": extra, "name": flag}
    return grid if {cell_key(r) for r in rows} <= {cell_key(c) for c in rate.cells(grid)} else None


def _cost(rows, grid=None):
    """What the rows took: cells per seed and the recorded seconds per cell (training, plus
    evaluation with the baselines and the TV bounds: train_seconds + eval_seconds), by d."""
    planned = None if grid is None else len(grid["families"]) * len(grid["d"]) * len(grid["n"]) * len(grid["seeds"])
    grid_name = None if grid is None else grid.get("name", "`--full`" if grid is rate.FULL else "its grid")
    per_seed, by_d, seed_seconds, timed, seen, kernels = {}, {}, {}, {}, set(), {}
    for r in rows:
        per_seed[r["seed"]] = per_seed.get(r["seed"], 0) + 1
        # OpenBLAS's kernel set (rows of today's version record it; it moves the last bits and the speed)
        names = r.get("blas_kernels")
        name = " / ".join(sorted(set(names))) if isinstance(names, list) and names else None
        kernels[name] = kernels.get(name, 0) + 1
        seen.add((r["family"], r["d"], r["n"]))
        seconds = r.get("train_seconds"), r.get("eval_seconds")
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seconds):
            by_d.setdefault(r["d"], []).append(float(sum(seconds)))
            seed_seconds[r["seed"]] = seed_seconds.get(r["seed"], 0.0) + float(sum(seconds))
            timed.setdefault(r["seed"], set()).add((r["family"], r["d"], r["n"]))
    grid = seen if grid is None else {(f, d, n) for f in grid["families"] for d in grid["d"] for n in grid["n"]}
    # a complete seed holds every (family, d, n) of the grid (or that any seed has), each timed
    complete = {str(k): seed_seconds[k] / 3600.0 for k in sorted(timed) if grid <= timed[k]}
    return {"cells": len(rows), "cells_per_seed": {str(k): v for k, v in sorted(per_seed.items())},
            "grid_cells_per_seed": len(grid), "grid_known": planned is not None, "planned_cells": planned,
            "grid_name": grid_name,
            "seconds_per_cell": {str(d): {"mean": float(np.mean(v)), "max": float(np.max(v)), "cells": len(v)}
                                 for d, v in sorted(by_d.items())},
            "recorded_hours": float(sum(sum(v) for v in by_d.values()) / 3600.0),
            "hours_per_complete_seed": complete,
            "blas_kernels": {k: kernels[k] for k in sorted(kernels, key=lambda k: (k is None, k or ""))}}


def compare(rows, other_rows, settings=None, other_settings=None):
    """The cells two sweeps both ran, side by side: what the settings that differ do to the error.

    Cells are matched on (family, d, n, seed); a matched pair shares its data, network
    initialisation and evaluation draws (all seeded by the cell), so the ratio of the two
    errors measures the settings alone, unless the settings that differ change those draws
    (base_seed: every draw; the network's settings: its initialisation; t0, T, n_eval or
    n_eval_tilted: the evaluation's points), as the report's section then says. Per family,
    stats.paired_log_ratio of the network's score error (other / this run) over the matched
    cells.

    Returns
    -------
    dict
        {"differs": {setting: [this, other]}, "cells": [{"family", "d", "n", "seed",
        "error": [e, se], "other": [e, se], "ratio"}], "families": {family: paired_log_ratio},
        "by_n": {n: paired_log_ratio over families and d}, "all": paired_log_ratio over every cell}

    Raises
    ------
    ValueError
        No cell is in both sweeps.
    """
    mine = {(r["family"], r["d"], r["n"], r["seed"]): r for r in rows}
    theirs = {(r["family"], r["d"], r["n"], r["seed"]): r for r in other_rows}
    keys = sorted(set(mine) & set(theirs))
    if not keys:
        raise ValueError("--compare: no cell (family, d, n, seed) is in both sweeps; run the other sweep on some "
                         "of this sweep's cells (same --families, --d, --n, --seeds)")
    a = (settings or {}).get("settings", {})
    b = (other_settings or {}).get("settings", {})
    differs = {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    cells = []
    for key in keys:
        e, o = _value(mine[key], None), _value(theirs[key], None)
        cells.append({"family": key[0], "d": key[1], "n": key[2], "seed": key[3], "error": list(e),
                      "other": list(o), "ratio": o[0] / e[0] if e[0] > 0 and o[0] > 0 else None})
    families = {}
    for family in sorted({c["family"] for c in cells}):
        pairs = [(c["error"][0], c["other"][0]) for c in cells if c["family"] == family and c["ratio"] is not None]
        if pairs:
            families[family] = S.paired_log_ratio(*zip(*pairs), level=LEVEL)
    # the same per n over all families and d: a setting can help at one end of n and hurt at the other
    by_n = {}
    for n in sorted({c["n"] for c in cells}):
        pairs = [(c["error"][0], c["other"][0]) for c in cells if c["n"] == n and c["ratio"] is not None]
        if pairs:
            by_n[str(n)] = S.paired_log_ratio(*zip(*pairs), level=LEVEL)
    pairs = [(c["error"][0], c["other"][0]) for c in cells if c["ratio"] is not None]
    pooled = S.paired_log_ratio(*zip(*pairs), level=LEVEL) if pairs else None
    return {"differs": differs, "cells": cells, "families": families, "by_n": by_n, "all": pooled}


def _evaluation_settings(cells):
    """The settings that move the evaluation draws of these cells (rate._integrated_errors: the
    window [t0, T], and n_eval, or n_eval_tilted for a Monte-Carlo family)."""
    families = {c["family"] for c in cells}
    return ({"t0", "T"} | ({"n_eval"} if families - set(rate._MONTE_CARLO_FAMILIES) else set())
            | ({"n_eval_tilted"} if families & set(rate._MONTE_CARLO_FAMILIES) else set()))


def _comparison_section(comparison, name):
    network = sorted(set(comparison["differs"]) & _NETWORK_SETTINGS)
    evaluation = sorted(set(comparison["differs"]) & _evaluation_settings(comparison["cells"]))
    if "base_seed" in comparison["differs"]:  # every draw of a cell comes from it
        same = "other data, initialisation and evaluation draws (base_seed differs)"
    elif evaluation:  # the same data; the evaluation's points differ
        same = ("the same data and initialisation" if not network else
                "the same data and the same initialisation but for the output layer" if network == ["output_init"]
                else f"the same data but not the same network ({_list(network)} differ)")
        same += f", but other evaluation draws ({_list(evaluation)} differ)"
    else:
        same = ("the same data, initialisation and evaluation draws" if not network else
                "the same data and evaluation draws and the same initialisation but for the output layer"
                if network == ["output_init"] else
                f"the same data and evaluation draws but not the same network ({_list(network)} differ)")
    lines = [f"## Compared with {_code(name)}", "",
             f"The cells both sweeps ran, each with {same}; "
             "only these settings differ (this run / the other): " +
             ("; ".join(f"{k}: {_show(v[0], k)} / {_show(v[1], k)}" for k, v in comparison["differs"].items())
              or "none recorded") + ".", "",
             f"| family | d | n | seed | this run | {name} | ratio |", "|---|---|---|---|---|---|---|"]
    for c in comparison["cells"]:
        lines.append(f"| {c['family']} | {c['d']} | {c['n']} | {c['seed']} | {_g(c['error'][0])} ± "
                     f"{_g(c['error'][1], 2)} | {_g(c['other'][0])} ± {_g(c['other'][1], 2)} | {_g(c['ratio'])} |")
    lines.append("")
    groups = [(f"**{family}**", f) for family, f in comparison["families"].items()]
    groups += [(f"**at n = {n}** (every family and d)", f) for n, f in comparison.get("by_n", {}).items()]
    for label, f in groups:
        if f["t"] is None:
            lines.append(f"- {label}: {f['cells']} cell(s), ratio {_g(f['ratio'])} (no test: one cell "
                         "or identical ratios).")
            continue
        low, high = f["ratio_interval"]
        lines.append(f"- {label}: over {f['cells']} cells the error of {_code(name)} is {_g(f['ratio'])} times "
                     f"this run's (geometric mean; {int(100 * LEVEL)}% interval [{_g(low)}, {_g(high)}], paired "
                     f"t = {f['t']:.2f}, {_p(f['p'])}); lower in {f['other_lower']} of {f['cells']} cells.")
    return lines + [""]


def _analyse_family(rows):
    ds = sorted({r["d"] for r in rows})
    ns = sorted({r["n"] for r in rows})
    keys = [None] + [k for k in BASELINES if any(_value(r, k) is not None for r in rows)]
    names = {None: "network", **BASELINES}
    points = {}   # d -> n -> {"network": [mean, se, seeds], baseline: ..., "tv": ..., "tv_exact": ...}
    result_methods = set()  # the samplers the certified bounds are about
    schedule = {}
    for d in ds:
        points[str(d)] = {}
        for n in ns:
            cell = [r for r in rows if r["d"] == d and r["n"] == n]
            if not cell:
                continue
            p = {}
            for k in keys:
                values = [v for v in (_value(r, k) for r in cell) if v is not None]
                if values:
                    p[names[k]] = [*_mean_se(values), len(values)]
            for key, name in (("tv", "tv"), ("tv_oracle", "tv_exact")):
                tvs = [t for t in (_tv(r, key) for r in cell) if t is not None]
                if tvs:
                    terms = sorted({k for t in tvs for k in t[2]} - {"method"})
                    p[name] = [*_mean_se([(t[0], t[1]) for t in tvs]), len(tvs)]
                    # a term that overflowed in some seed (None: inf) has the mean inf, shown as None; it
                    # was the mean of the other seeds, beside a tv whose mean counts that seed's bound 1
                    p[name + "_terms"] = {k: None if any(k in t[2] and t[2][k] is None for t in tvs) else
                                          float(np.mean([t[2][k] for t in tvs if k in t[2]])) for k in terms}
                    methods = sorted({t[2]["method"] for t in tvs if "method" in t[2]})
                    if methods:
                        result_methods.update(methods)
            points[str(d)][str(n)] = p
            for key in ("t0", "T", "steps", "objective"):
                seen = sorted({json.dumps(r[key]) for r in cell if r.get(key) is not None})
                if seen:
                    schedule.setdefault(str(n), {})[key] = [json.loads(v) for v in seen]
    result = {"d": ds, "n": ns, "seeds": max(len({r["seed"] for r in rows if r["d"] == d and r["n"] == n})
                                             for d in ds for n in ns),
              "methods": [names[k] for k in keys], "points": points, "schedule": schedule,
              "tv_samplers": sorted(result_methods)}

    # seed-level fits of the network (and of the baselines, for their exponents)
    positive = [r for r in rows if r["score_error"] > 0]
    result["left_out"] = len(rows) - len(positive)  # a debiased error <= 0 has no log
    fits = {}
    for k in keys:
        data = [(r["d"], r["n"], _value(r, k)[0]) for r in rows if _value(r, k) is not None and _value(r, k)[0] > 0]
        if not data:
            continue
        # a d with one n so far (a sweep still running) has no slope, and one with two points
        # no variance of its own: fit the others
        fitted = {d for d in ds if len({n for dd, n, _ in data if dd == d}) >= 2
                  and sum(dd == d for dd, _, _ in data) >= 3}
        data = [row for row in data if row[0] in fitted]
        if not data:
            fits[names[k]] = {"joint": None, "joint_reason": "no d has two distinct n and three points "
                                                    "with a positive error yet", "by_d": {}}
            continue
        g, n, e = map(np.array, zip(*data))
        joint, why = _attempt(S.joint_slopes, g, n, e, level=LEVEL)
        fits[names[k]] = {"joint": joint, "joint_reason": why, "by_d": {}}
        if joint is not None:
            for gfit in joint["groups"]:
                fits[names[k]]["by_d"][str(gfit["group"])] = {**_exponent(gfit)}
    result["fits"] = fits
    network = {}
    for d in ds:
        curve = [r for r in positive if r["d"] == d]
        n = np.array([r["n"] for r in curve], dtype=float)
        e = np.array([r["score_error"] for r in curve], dtype=float)
        entry = {}
        lof, why = _attempt(S.lack_of_fit, n, e) if curve else (None, "no positive error")
        entry["lack_of_fit"], entry["lack_of_fit_reason"] = lof, why
        sat, why = _attempt(S.saturating_fit, n, e, level=LEVEL) if curve else (None, "no positive error")
        entry["saturating"], entry["saturating_reason"] = sat, why
        slope = fits.get("network", {}).get("by_d", {}).get(str(d))
        # where the pure-error test rejects a curve, its seed-level interval takes the seeds at one
        # n, which share that n's departure from the curve, for independent scatter about it
        # (tilt-iso d = 2: [0.35, 0.43] above the curse rate 1/3, but [0.28, 0.50] from the means):
        # the claims use the curve fitted to the n-means, its bending counted as error
        entry["line_claim"] = _claim_interval(slope, lof, S.means_line, n, e)
        entry["saturating_lack_of_fit"] = None
        if sat and lof:
            entry["saturating_lack_of_fit"], _ = _attempt(S.saturating_lack_of_fit, n, e, sat)
        entry["saturating_claim"] = _claim_interval(sat, entry["saturating_lack_of_fit"], S.saturating_fit, n, e)
        entry["curse_rate"] = S.curse_rate(d)
        line_claim, sat_claim = entry["line_claim"], entry["saturating_claim"]
        entry["curse_slope"] = S.curse_comparison(d, line_claim["b_interval"]) if line_claim else None
        entry["curse_saturating"] = S.curse_comparison(d, sat_claim["b_interval"]) if sat_claim else None
        if sat and curve:
            top = [r["score_error"] for r in curve if r["n"] == max(n)]
            entry["floor_share"] = sat["c"] / float(np.mean(top))
        entry["n_star"], entry["n_star_reason"] = _n_star(points[str(d)])
        entry["minus_x_end"] = _minus_x_end(points[str(d)])
        entry.update(_after_the_initial_network([r for r in rows if r["d"] == d]))
        network[str(d)] = entry
    result["network"] = network
    # Welch's test of equal exponents on the claims' standard errors: from the n-means where a d's
    # line bends (the seed-level one takes its curvature for noise), the seeds' elsewhere
    claims = {d: network[str(d)]["line_claim"] for d in ds if (network[str(d)].get("line_claim") or {}).get("b_se")}
    bent = [d for d in claims if claims[d]["basis"] == "n-means"]
    if "network" in fits and bent and len(claims) >= 2:
        welch, why = _attempt(S.welch_slopes, [claims[d]["b"] for d in claims], [claims[d]["b_se"] for d in claims],
                              [claims[d]["dof"] for d in claims])
        fits["network"]["welch_claim"] = None if welch is None else {**welch, "n_means": bent}
    return result


def _claim_interval(fit, lack, on_means, n, e):
    """{"b_interval", "basis"} of the exponent the conclusions judge: the seed-level fit's, or,
    where its lack of fit is rejected (p < ALPHA_LOF), the same curve's fitted to the n-means
    (the means of log error over the seeds: basis "n-means"; None where that fit fails)."""
    if not fit:
        return None
    if not (lack and lack["p"] < ALPHA_LOF):
        return {"b_interval": fit["b_interval"], "basis": "seeds",
                **{k: fit[k] for k in ("b", "b_se", "dof") if k in fit}}
    if on_means is S.means_line:  # (it takes the seeds and makes their means itself)
        refit, _ = _attempt(S.means_line, n, e, level=LEVEL)
        extra = {"b": refit["b"], "b_se": refit["b_se"], "dof": refit["df"]} if refit else {}
    else:
        levels = np.unique(n)
        means = np.exp([np.mean(np.log(e[n == v])) for v in levels])
        refit, _ = _attempt(on_means, levels, means, level=LEVEL)
        extra = {}
    return {"b_interval": refit["b_interval"], "basis": "n-means", **extra} if refit else None


def _after_the_initial_network(rows):
    """Where the held-out selection kept the initial network (checkpoint_step 0: its output
    layer starts at zero, so its score is -x exactly) and the exponent after that.

    Returns {"initial_kept": {n: [seeds that kept it, seeds]} for the n where any did, and,
    if any did, "after_initial": the straight line's exponent over the n above the largest
    such n (None with "after_initial_reason" if fewer than three n are left)}. Rows without
    a checkpoint_step (sweeps that kept the last step) count as trained."""
    kept = {}
    for r in rows:
        if r.get("checkpoint_step") == 0:
            kept.setdefault(r["n"], set()).add(r["seed"])
    if not kept:
        return {"initial_kept": {}}
    seeds = {n: len({r["seed"] for r in rows if r["n"] == n}) for n in kept}
    out = {"initial_kept": {str(n): [len(kept[n]), seeds[n]] for n in sorted(kept)}}
    last = max(kept)
    after = [r for r in rows if r["n"] > last and r["score_error"] > 0]
    if len({r["n"] for r in after}) < 3:
        out["after_initial"], out["after_initial_reason"] = None, (
            f"fewer than three n above n = {last}, the largest where the initial network was kept")
        return out
    n = np.array([r["n"] for r in after], dtype=float)
    e = np.array([r["score_error"] for r in after], dtype=float)
    fit, why = _attempt(S.joint_slopes, np.zeros(n.size), n, e, level=LEVEL)
    out["after_initial"] = None if fit is None else {"from_n": int(n.min()), **_exponent(fit["groups"][0])}
    out["after_initial_reason"] = why
    if fit is not None:  # a line the pure-error test rejects: its interval from the n-means, as the claims'
        lof, _ = _attempt(S.lack_of_fit, n, e)
        claim = _claim_interval(out["after_initial"], lof, S.means_line, n, e)
        if claim and claim["basis"] == "n-means":
            out["after_initial"].update(b_interval=claim["b_interval"], basis="n-means", lack_of_fit_p=lof["p"])
    return out


def _minus_x_end(by_n):
    """{"n_last": the largest n where the network and the -x baseline were both measured (n* >
    n_last when n* is censored "right": nothing is known beyond it), "ends_below": whether the
    mean error there is below half the baseline's (it can cross below and come back above)},
    or None without such an n."""
    ns = [n for n, p in by_n.items() if "network" in p and "score -x" in p]
    if not ns:
        return None
    last = by_n[max(ns, key=int)]
    return {"n_last": int(max(ns, key=int)), "ends_below": bool(last["network"][0] < 0.5 * last["score -x"][0])}


def _n_star(by_n):
    ns = [n for n, p in by_n.items() if "network" in p and "score -x" in p]
    if not ns:
        return None, "no -x baseline in these rows"
    ns = sorted(ns, key=int)
    e = [by_n[n]["network"][0] for n in ns]
    base = [by_n[n]["score -x"][0] for n in ns]
    if min(e) <= 0 or min(base) <= 0:
        return None, "a mean error <= 0 (below its Monte-Carlo noise)"
    return _attempt(S.n_star, [int(n) for n in ns], e, base)


# ---------------------------------------------------------------- text

def _code(text):
    """text as a Markdown code span that shows it verbatim (CommonMark 0.30, section 6.1): fenced
    by one backtick more than its longest run of them, with a space inside each fence when it
    begins or ends with a backtick or a space (a folder named it`s broke the single-backtick span)."""
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text[:1] in ("`", " ") or text[-1:] in ("`", " ") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _g(v, digits=3):
    if v is None:
        return "–"
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


# settings that change a cell's network or its initial parameters (the rest share them)
_NETWORK_SETTINGS = {"width", "depth", "activation", "time_embedding", "parameterization", "output_init"}

# what a cell does when its sweep did not record a setting (a sweep made before it existed)
_UNRECORDED = {"lr_schedule": "constant", "time_sampling": "direct", "lr_final": "none", "checkpoint": "the last",
               "val_early": "none", "output_init": "random"}


def _show(v, key=None):
    """A setting's value; None for a setting the sweep did not record: what the cell did then."""
    if v is None and key in _UNRECORDED:
        return f"{_UNRECORDED[key]} (not recorded)"
    return _g(v, 4) if isinstance(v, float) else str(v)


def _interval(iv, digits=2):
    low, high = iv
    return f"[{'–' if low is None else f'{low:.{digits}f}'}, {'∞' if high is None else f'{high:.{digits}f}'}]"


def _p(p):
    """'p = 0.0046' or 'p < 1e-4': two significant digits, more where two would put p on or
    across a level the report tests at (0.0498 is not 'p = 0.05')."""
    if p < 1e-4:
        return "p < 1e-4"
    return f"p = {_digits_keeping_side(p, (ALPHA, ALPHA_LOF), 2)}"


def _digits_keeping_side(v, thresholds, digits, kind="g"):
    """v printed with `digits` digits (format kind "g": significant, "f": decimals), or more
    until the printed value lies on the same side of each threshold as v (and is not equal
    to one that v is not)."""
    for k in range(digits, 17):
        text = f"{v:.{k}{kind}}"
        shown = float(text)
        if all((shown < c) == (v < c) and (shown == c) == (v == c) for c in thresholds):
            return text
    return repr(v)


def _share(v):
    """A floor's share of the error as a percentage, with the digits that keep it on its side of
    FLOOR_SHARE and of 100% (a share of 0.2504 is not "25%" beside "a floor above 25%", nor
    1.003 "100%" beside "the floor exceeds the error")."""
    return _digits_keeping_side(100.0 * v, (100.0 * FLOOR_SHARE, 100.0), 0, "f") + "%"


def _ratio(v):
    """_g(v), or more digits where _g would print v on the other side of 1 or at 1 (a ratio of
    1.0004 printed "1" beside "the network's error is below the baseline's")."""
    text = _g(v)
    return text if (float(text) > 1.0) == (v > 1.0) and (float(text) == 1.0) == (v == 1.0) else \
        _digits_keeping_side(v, (1.0,), 3)


def _limit(v):
    """An exponent's lower limit with two decimals, or more until it lies on its side of 0: a claim
    "bounded away from 0" beside a printed 0.00 contradicts itself (and -0.00 hides a negative)."""
    return _digits_keeping_side(v, (0.0,), 2, "f")


def _welch(joint):
    """'F(4, 9.3) = 18.93, p < 1e-4' of a joint_slopes result's Welch test."""
    w = joint["welch"]
    return f"F({w['df'][0]}, {w['df'][1]:.1f}) = {w['F']:.2f}, {_p(w['p'])}"


def _list(values):
    values = [str(v) for v in values]
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]


_INTRO = (
    "Cole & Lu prove that when the log-relative density f of p_0 = e^f gamma_d / Z has low complexity, "
    "empirical score matching on n samples learns p_0 at a rate in n whose exponent does not depend on d "
    "(an upper bound, whose constants may grow with d). `sgm-ref experiment rate` measures what a trained "
    "network does on such targets. Each cell (family, d, n, seed) draws n samples, trains the network and "
    "measures its integrated score error int E|s - grad log p_t|^2 dt by Monte Carlo against the target's "
    "score (exact for mixtures; for tilts a Monte Carlo estimate whose own error is subtracted)")
# the baselines, as the introduction describes them (only those the rows carry)
_BASELINE_TEXT = {
    "empirical measure (curse)": "the score of the OU-smoothed empirical measure, the unrestricted minimiser of "
                                 "the empirical loss, whose error falls ever more slowly with n as d grows (the "
                                 "curse of dimensionality)",
    "score -x": "the score -x, what a network that learned nothing scores",
    "EM plug-in": "for mixtures an identity-covariance mixture fitted by EM, a parametric plug-in that knows the "
                  "family's form"}
_RESIDUAL_TEXT = (
    "The certified bound on TV(p_0, sampler output) is Girsanov's; the residual exponential integrator freezes "
    "only s + x over a step, so with the exact score its path term is small in every d (at d = 128 at least "
    "100 times below Euler–Maruyama's on the same grid: tests/test_rate_sampler.py).")
# what the families of sgm_ref.experiments.rate are (their parameters come from sweep.json)
_FAMILY_TEXT = {
    "mixture-iso": "the paper's example, K identity-covariance Gaussians whose means lie in a fixed plane, embedded "
                   "in R^d by a seeded orthonormal frame: the same target up to a rotation in every d.",
    "tilt-iso": "exp(f) gamma_d with f a two-layer tanh network of fixed path norm acting on the same kind of "
                "plane: the paper's general class, again the same target up to a rotation in every d (its score "
                "oracle is Monte Carlo, so no certified bound is computed for it).",
    "mixture": "the earlier mixture, means of fixed norm in random directions of R^d (their geometry changes "
               "with d).",
    "product": "each coordinate an equal mixture of two Gaussians: 2^d components, f has d terms.",
    "tilted": "the earlier tilt, exp(f) gamma_d with f a tanh network in random directions of R^d.",
}


def report_markdown(analysis, settings=None, figures=None, source=None, comparisons=()):
    """The markdown of docs/rate.md from analyse()'s numbers (figures: {kind: relative path};
    comparisons: (compare()'s result, the other sweep's name) pairs, a section each before the
    conclusions)."""
    settings = settings or {}
    figures = figures or {}
    lines = ["# The rate experiment: score error against n in several dimensions", "",
             f"Generated by {_code('sgm-ref experiment rate-report' + (' ' + source if source else ''))} from the stored "
             "rows (do not edit by hand: rerun the command). Every number below is recomputed from the rows; the "
             "sentences of the last section are chosen by thresholds on the numbers printed with them.", ""]
    fams = analysis["families"]
    present = [m for m in _BASELINE_TEXT if any(m in a["methods"] for a in fams.values())]
    intro = _INTRO + (", beside baselines measured the same way: " + "; ".join(_BASELINE_TEXT[m] for m in present)
                      if present else "") + "."
    if any("residual_exponential" in (a.get("tv_samplers") or []) for a in fams.values()):
        intro += " " + _RESIDUAL_TEXT
    lines += [intro, ""]
    known = [f for f in fams if f in _FAMILY_TEXT]
    if known:
        lines += ["Families: " + " ".join(f"**{f}**: {_FAMILY_TEXT[f]}" for f in known), ""]
    if settings.get("settings"):
        s = settings["settings"]
        lines += ["Settings shared by the cells: " + ", ".join(f"{k} = {v}" for k, v in s.items()) + ".", ""]
    if settings.get("families"):
        lines += ["Families (as recorded in sweep.json): " + "; ".join(
            f"{f}: " + ", ".join(f"{k} = {v}" for k, v in spec.items()) for f, spec in settings["families"].items()
            if f in fams) + ".", ""]
    if analysis.get("cost"):
        lines += _cost_section(analysis["cost"])
        full = rate.FULL["settings"]
        if settings.get("settings"):
            other = [k for k in sorted(set(full) | set(settings["settings"]))
                     if settings["settings"].get(k) != full.get(k)]
            if other:
                lines += ["These rows were made with settings other than today's `--full` (" + "; ".join(
                    f"{k}: {_show(settings['settings'].get(k), k)} here, {_show(full.get(k), k)} in `--full`"
                    for k in other) + "): the commands above run today's.", ""]
    # the baselines the figure draws (_STYLE), by their line styles: rows without them (docs/rate_full)
    # were captioned with all three
    styles = {"empirical measure (curse)": "empirical measure dashed", "score -x": "score -x dotted",
              "EM plug-in": "EM plug-in dash-dotted"}
    drawn = "network: solid" + ("; baselines: " + ", ".join(styles[m] for m in present) if present else "")
    bars = "bars: ± 2 standard errors of the mean over seeds, or a lone seed's own"  # _mean_se
    for key, caption in (("error_vs_n", f"Error against n, one panel per family and d ({drawn}; {bars})"),
                         ("error_vs_d", f"Error against d at fixed n ({bars})"),
                         ("tv_vs_n", f"Certified TV bound against n ({bars})")):
        if key in figures:
            lines += [f"![{caption}]({figures[key]})", "", f"*{caption}.*", ""]
    for family, a in fams.items():
        if not a["tv_samplers"] and isinstance(settings.get("settings", {}).get("bound_method"), str):
            a = {**a, "tv_samplers": [settings["settings"]["bound_method"]]}  # old rows: the sweep's setting
        lines += _family_section(family, a, settings)
    for comparison in comparisons:
        lines += _comparison_section(*comparison)
    zero_output = (settings.get("settings") or {}).get("output_init") == "zero"  # an initial score -x exactly
    lines += _conclusions(fams, comparisons, zero_output)
    return "\n".join(lines) + "\n"


def _cost_section(cost):
    """How to run the sweep, and what its rows took (recorded per cell, one worker each)."""
    per_seed = ", ".join(f"seed {k}: {v}" for k, v in cost["cells_per_seed"].items())
    lines = ["## Running it", "",
             "```bash",
             f"sgm-ref experiment rate RUN --quick             # {len(rate.cells(rate.QUICK))} small cells, "
             "minutes: the pipeline end to end",
             f"sgm-ref experiment rate RUN --full --workers 2  # {len(rate.cells(rate.FULL))} cells "
             f"({len(rate.FULL['seeds'])} seeds), resumable: rerun to continue",
             f"sgm-ref experiment rate RUN --full --d 1024 --workers 2   # {len(rate.cells({**rate.FULL, 'd': [1024]}))} "
             "cells more, at d = 1024, into the same folder",
             "sgm-ref experiment rate RUN --full --scheduler tcp://HOST:8786   # the same cells on a Dask cluster",
             "sgm-ref experiment rate-report RUN --out docs/rate.md           # this page from RUN's rows",
             "```", "",
             "A stopped run continues where it stopped when the same command is run again (finished cells "
             "are kept in RUN/results.jsonl; a changed setting is refused). On a Dask cluster, start "
             "`dask scheduler` on one host and `dask worker tcp://HOST:8786 --nthreads 1` on each machine, "
             "then the command with `--scheduler`; the folder resumes the same way.", ""]
    text = (f"Rows: {cost['cells']} cells"
            + (f" of the {cost['planned_cells']} of {cost['grid_name']}" if cost["grid_known"] else "")
            + f" ({per_seed}; {cost['grid_cells_per_seed']} cells make one seed).")
    if cost["seconds_per_cell"]:
        per_d = ", ".join(f"d = {d}: {_g(c['mean'])} s (max {_g(c['max'])} s)"
                          for d, c in cost["seconds_per_cell"].items())
        timed = sum(c["cells"] for c in cost["seconds_per_cell"].values())
        text += (f" Recorded time per cell (training, then evaluation with the baselines and the TV bounds; one "
                 f"core each): {per_d}; {cost['recorded_hours']:.1f} core-hours for the {timed} timed cells.")
    if cost["grid_known"] and cost["hours_per_complete_seed"]:
        hours = list(cost["hours_per_complete_seed"].values())
        seeds = cost["planned_cells"] // cost["grid_cells_per_seed"]
        took = f"{hours[0]:.1f}" if len(hours) == 1 else f"{min(hours):.1f} to {max(hours):.1f}"
        text += (f" A complete seed took {took} core-hours: the {seeds} seeds "
                 f"need at least {seeds * float(np.mean(hours)) / 2:.1f} hours with two workers (the recorded "
                 "times leave out drawing the data and starting the workers).")
    recorded = {k: v for k, v in cost["blas_kernels"].items() if k is not None}
    if recorded:  # rows from before the record say nothing, and then neither does the page
        text += (" Cells by the OpenBLAS kernels their matrix products ran on (they move the last bits and the "
                 "time): " + ", ".join(f"{k} {v}" for k, v in recorded.items())
                 + (f", not recorded {cost['blas_kernels'][None]}" if None in cost["blas_kernels"] else "") + ".")
    return lines + [text, ""]


def _family_section(family, a, settings=None):
    ns = a["n"]
    lines = [f"## {family}", "",
             f"Mean over seeds ± standard error over seeds (at most {a['seeds']} seeds per cell; one seed: "
             "its Monte-Carlo standard error) of the integrated score error int E|s - grad log p_t|^2 dt.", ""]
    if a["left_out"]:
        lines += [f"{a['left_out']} seed-level error(s) <= 0 (a debiased Monte-Carlo error below its noise) are in "
                  "the means but not in the log-log fits.", ""]
    lines += ["| d | method | " + " | ".join(f"n = {n}" for n in ns) + " |", "|" + "---|" * (2 + len(ns))]
    for d in a["d"]:
        by_n = a["points"][str(d)]
        for method in a["methods"]:
            cells = []
            for n in ns:
                v = by_n.get(str(n), {}).get(method)
                cells.append("" if v is None else f"{_g(v[0])} ± {_g(v[1], 1)}")
            lines.append(f"| {d} | {method} | " + " | ".join(cells) + " |")
    if a["schedule"]:
        window = (settings or {}).get("settings") or {}
        fixed = (f"; the score errors above are on the fixed window [t0, T] = [{_show(window['t0'])}, "
                 f"{_show(window['T'])}] for every n" if "t0" in window and "T" in window else "")
        lines += ["", f"Per-n schedule recorded in the rows (of the training and the certified bound{fixed}): "
                  + "; ".join(
            f"n = {n}: " + ", ".join(f"{k} = {'/'.join(_show(x) for x in v)}" for k, v in sch.items())
            for n, sch in sorted(a["schedule"].items(), key=lambda kv: int(kv[0]))) + "."]
    lines += ["", f"Exponents b (error ~ n^-b), {LEVEL:.0%} intervals. *Straight line*: seed-level least squares "
              "of log error on log n, one intercept and slope per d, each d with its own residual variance (a "
              "Student-t interval on its points minus 2 degrees of freedom). *Saturating*: "
              "error = A n^-b + c in log space, profile-likelihood interval (– or ∞: that end is not bounded "
              "by the data); p of c = 0: the F test of the straight line against it. Lack of fit: pure-error F "
              "test of the straight line from the replicate seeds. "
              "Curse rate 2/(d+4): the best exponent of the squared L2(p) error of a score estimate that knows "
              "only that the score is Lipschitz (minimax: Wibisono, Wu & Yang 2024; Stone 1982 for derivatives "
              "of a density with two derivatives). Mixtures are far smoother, so a classical estimator that "
              "adapts to smoothness would beat it too: exceeding it is what the paper's claim needs, not "
              "evidence for it alone. n*: smallest n where the error falls below half the -x baseline "
              "(interpolated on log n).", "",
              "| d | b (straight line) | lack of fit F (df), p | b (saturating) | floor c (share at max n; p of c = 0) "
              "| curse rate | n* |" + "".join(f" b of {m} |" for m in a["methods"][1:]),
              "|" + "---|" * (7 + len(a["methods"]) - 1)]
    fit = a["fits"].get("network", {})
    for d in a["d"]:
        net = a["network"][str(d)]
        b = fit.get("by_d", {}).get(str(d))
        line = f"| {d} | " + (f"{b['b']:.3f} {_interval(b['b_interval'])}" if b else "–") + " | "
        lof = net["lack_of_fit"]
        line += (f"{lof['F']:.2f} ({lof['df'][0]}, {lof['df'][1]}), {_p(lof['p'])}" if lof else "–") + " | "
        sat = net["saturating"]
        line += (f"{sat['b']:.3f} {_interval(sat['b_interval'])}" if sat else "–") + " | "
        # a floor below 1e-6 of the error is the optimiser's zero (its digits are noise)
        line += ("–" if not sat else f"0 ({net['floor_share']:.0%})" if net.get("floor_share", 1.0) < 1e-6
                 else f"{_g(sat['c'])} ({net['floor_share']:.0%}; {_p(sat['floor_test']['p'])})") + " | "
        line += f"{net['curse_rate']:.3f} | "
        ns_ = net["n_star"]
        line += _n_star_cell(ns_, (net.get("minus_x_end") or {}).get("n_last", max(ns))) + " |"
        for m in a["methods"][1:]:
            bb = a["fits"].get(m, {}).get("by_d", {}).get(str(d))
            line += (f" {bb['b']:.2f} {_interval(bb['b_interval'])}" if bb else " –") + " |"
        lines.append(line)
    joint = fit.get("joint")
    lines.append("")
    if joint and joint["F"] is not None:
        lines.append("Equal exponents across d (a common slope against one slope per d, seed level): Welch's test, "
                     f"each d with its own variance, {_welch(joint)}; the pooled-variance F test of the analysis of "
                     f"covariance, F({joint['df'][0]}, {joint['df'][1]}) = {joint['F']:.2f}, {_p(joint['p'])}; "
                     f"common slope {joint['common_slope']:.3f}.")
    else:
        lines.append("Equal exponents across d: not tested (" + (fit.get("joint_reason") or "one d only") + ").")
    what = {"lack_of_fit_reason": "lack of fit", "saturating_reason": "saturating fit", "n_star_reason": "n*"}
    reasons = sorted({f"{what[k]} ({v})" for d in a["d"] for k in what if (v := a["network"][str(d)][k])})
    if reasons:
        lines.append("Not computed: " + "; ".join(reasons) + ".")
    tv_rows = [(d, n, a["points"][str(d)][str(n)]) for d in a["d"] for n in ns
               if "tv" in a["points"][str(d)].get(str(n), {})]
    if tv_rows:
        sampler = (f" ({', '.join(a['tv_samplers'])} sampler)" if a.get("tv_samplers") else "")
        lines += ["", f"Certified upper bound on TV(p_0, sampler output){sampler}, mean ± se over seeds (≥ 1: "
                  "vacuous, TV ≤ 1 always), with the learned score and, where recorded, with the exact score (what "
                  "remains without any learning error); the terms at the largest n in the last column.", "",
                  "| d | score | " + " | ".join(f"n = {n}" for n in ns) + " | terms at the largest n |",
                  "|" + "---|" * (3 + len(ns))]
        for d in a["d"]:
            by_n = a["points"][str(d)]
            for key, label in (("tv", "learned"), ("tv_exact", "exact")):
                cells = [_tv_cell(by_n[str(n)][key]) if key in by_n.get(str(n), {}) else "" for n in ns]
                last = [n for n in ns if key in by_n.get(str(n), {})]
                if not last:
                    continue
                terms = by_n[str(last[-1])][key + "_terms"]
                shown = ", ".join(f"{k} {'∞' if v is None else _g(v)}" for k, v in terms.items()
                                  if not k.endswith("_se") and k != "tv")
                lines.append(f"| {d} | {label} | " + " | ".join(cells) + f" | {shown} |")
    return lines + [""]


def _n_star_cell(n_star, n_last):
    """n_last: the largest n with a -x baseline (n* censored "right" is above it, not above the largest n)."""
    if n_star is None:
        return "–"
    if n_star["censored"] == "right":
        return f"> {n_last}"
    return ("≤ " if n_star["censored"] == "left" else "") + f"{n_star['n_star']:.0f}"


def _tv_cell(tv):
    mean, se = tv[:2]
    return "1 (vacuous)" if mean >= 1 and se == 0 else f"{_g(mean)} ± {_g(se, 1)}"


def _longer(differs):
    """Whether the other run's training is at least as long in every length setting and longer
    in one (steps, epochs, min_steps; a fixed `steps` against None is not comparable)."""
    lengths = {k: v for k, v in differs.items() if k in ("steps", "epochs", "min_steps")}
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for v in lengths.values() for x in v)
    return bool(lengths) and numbers and all(v[1] >= v[0] for v in lengths.values())


def _training_sentences(comparisons):
    """(shows, not_shows) from the comparisons with a longer training (and no other change but
    how it trains): is this run's training long enough? Long enough: the ratio's interval
    within TRAINING_CHANGE both ways over all cells, for each family and at the largest n
    (where a budget bites first); budget-bound: the interval over all cells below
    1 - TRAINING_CHANGE; else undecided."""
    shows, not_shows = [], []

    def end(v):  # an interval's end on its side of 1 -+ TRAINING_CHANGE (0.89996 is not "0.9" there)
        return _digits_keeping_side(v, (1.0 - TRAINING_CHANGE, 1.0 + TRAINING_CHANGE), 3)

    for c, name in comparisons:
        differs, pooled = c["differs"], c.get("all")
        if not differs or not set(differs) <= TRAINING_SETTINGS or not _longer(differs) or pooled is None \
                or pooled["t"] is None:
            continue
        low, high = pooled["ratio_interval"]
        how = "; ".join(f"{k} {_show(v[1], k)} instead of {_show(v[0], k)}" for k, v in differs.items())
        cells = c["cells"]
        where = (f"d = {_list(sorted({x['d'] for x in cells}))}, n = {_list(sorted({x['n'] for x in cells}))}, "
                 f"{len({x['seed'] for x in cells})} seed(s)")
        per_n = _list([f"{_g(f['ratio'])} (n = {n})" for n, f in c.get("by_n", {}).items()])
        text = (f"trained longer as {_code(name)} ({how}), the same {pooled['cells']} cells ({where}) have "
                f"{_g(pooled['ratio'])} times this run's error ({LEVEL:.0%} interval [{end(low)}, {end(high)}], paired "
                f"{_p(pooled['p'])}; by n: {per_n})")
        parts = [(family, f) for family, f in c.get("families", {}).items()]
        if c.get("by_n"):
            n_max = max(c["by_n"], key=int)
            parts.append((f"n = {n_max}", c["by_n"][n_max]))

        def within(f):
            return f["t"] is not None and 1.0 - TRAINING_CHANGE <= f["ratio_interval"][0] \
                and f["ratio_interval"][1] <= 1.0 + TRAINING_CHANGE

        wide = [(label, f) for label, f in parts if not within(f)]
        if 1.0 - TRAINING_CHANGE <= low and high <= 1.0 + TRAINING_CHANGE and not wide:
            shows.append(f"This run's training is long enough to {TRAINING_CHANGE:.0%}: {text}; within "
                         f"{TRAINING_CHANGE:.0%} also for each family and at the largest n.")
        elif high < 1.0 - TRAINING_CHANGE:
            not_shows.append(f"This run's training is budget-bound: {text}; so its errors and exponents are those "
                             "of its training, not of the network trained to its limit.")
        else:
            reach = _list([f"{label}: {_g(f['ratio'])} " + (f"[{end(f['ratio_interval'][0])}, "
                                                                f"{end(f['ratio_interval'][1])}]"
                                                                if f["t"] is not None else "(one cell, no interval)")
                           for label, f in (wide or [("all cells", pooled)])])
            not_shows.append(f"Whether this run's training is long enough is undecided: {text}; the interval reaches "
                             f"beyond {1.0 - TRAINING_CHANGE:g} to {1.0 + TRAINING_CHANGE:g} ({reach}).")
    return shows, not_shows


def _conclusions(fams, comparisons=(), zero_output=True):
    """What this shows / what it does not: one thresholded sentence per finding, each with its number.
    zero_output: whether the cells' output layers started at zero (output_init "zero"), so that an
    initial network's score is -x exactly."""
    shows, not_shows = [], []
    for family, a in fams.items():
        fit = a["fits"].get("network", {})
        by_d = fit.get("by_d", {})
        ds = [d for d in a["d"] if str(d) in by_d]
        if not ds:
            not_shows.append(f"**{family}**: no exponent could be fitted ({fit.get('joint_reason') or 'no rows'}).")
            continue
        missing = [d for d in a["d"] if d not in ds]
        if missing:
            not_shows.append(f"**{family}**: no exponent in d = {_list(missing)} (fewer than three points or two n "
                             "with a positive error); \"every d\" below means every d fitted.")
        # the exponent claims are made where the network learns: its error at the largest n
        # below half the -x baseline (n* reached) and not at or above -x's from some n on
        nstar = {d: a["network"][str(d)]["n_star"] for d in a["d"]}
        end = {d: a["network"][str(d)].get("minus_x_end") for d in a["d"]}
        stuck = _at_or_above_minus_x(a)
        never = [d for d in a["d"] if nstar[d] and nstar[d]["censored"] == "right"]
        # crossed below half the -x baseline, but back above it at the largest n
        back = [d for d in a["d"] if nstar[d] and nstar[d]["censored"] != "right" and end[d]
                and not end[d]["ends_below"]]
        out = [d for d in ds if d in never or d in back or d in stuck]
        lof = {d: a["network"][str(d)]["lack_of_fit"] for d in a["d"]}
        bent = [d for d in a["d"] if lof[d] and lof[d]["p"] < ALPHA_LOF]
        if out:
            one = len(out) == 1
            not_shows.append(f"**{family}**: the {'exponent' if one else 'exponents'} of d = {_list(out)} ("
                             + _list([f"{by_d[str(d)]['b']:.2f}" for d in out])
                             + (") is not a rate" if one else ") are not rates") + " of learning: the error does "
                             "not end below half the -x baseline by "
                             + _up_to(a, out, name_d=False) + "; "
                             + ("it is" if one else "they are")
                             + " left out of the claims about exponents under \"What this shows\".")
        ds = [d for d in ds if d not in out]
        # the intervals judged: seed-level, or from the n-means where lack of fit rejects the curve
        claim = {d: a["network"][str(d)].get("line_claim", {"b_interval": by_d[str(d)]["b_interval"],
                                                             "basis": "seeds"}) for d in ds}
        ds = [d for d in ds if claim[d]]  # (a refit on the n-means that failed: no claim)
        lows = {d: claim[d]["b_interval"][0] for d in ds}
        away = [d for d in ds if lows[d] > 0]
        sat = {d: a["network"][str(d)].get("saturating_claim", a["network"][str(d)]["saturating"]) for d in ds}
        sat_lows = {d: sat[d]["b_interval"][0] or 0.0 for d in ds if sat[d]}  # None: not bounded below
        # (no d left when the network learns in none: only the sentences below about why)
        where = ("every d" + (f" where it learns ({_list(ds)})" if out else f" ({_list(ds)})")) if ds else None
        bends = [d for d in ds if d in bent]
        if ds and len(away) == len(ds):
            dmin = min(ds, key=lambda d: lows[d])
            text = (f"**{family}**: the error falls with n in {where}: the exponent b of the best straight line in "
                    f"log-log is bounded away from 0, its smallest lower {LEVEL:.0%} limit {_limit(lows[dmin])} "
                    f"(d = {dmin})")
            if sat_lows:
                smin = min(sat_lows, key=sat_lows.get)
                text += (f"; the saturating fit's {_limit(sat_lows[smin])} (d = {smin})"
                         + ("" if sat_lows[smin] > 0 else ", whose interval reaches 0"))
            if bends:
                text += f" (in d = {_list(bends)} the curve is not a straight line: lack of fit, below)"
            shows.append(text + ".")
        elif ds:
            near = [d for d in ds if d not in away]
            if away:
                shows.append(f"**{family}**: the error falls with n in d = {_list(away)} (the best straight line's "
                             f"exponent bounded away from 0: lower {LEVEL:.0%} limits "
                             f"{_list([_limit(lows[d]) for d in away])}).")
            not_shows.append(f"**{family}**: the exponent's interval reaches 0 in d = {_list(near)} "
                             f"(lower limits {_list([_limit(lows[d]) for d in near])}): there the "
                             "error is not shown to fall with n.")
        curse = {d: a["network"][str(d)]["curse_slope"] for d in ds}
        above = [d for d in ds if curse[d] and curse[d]["above"]]
        if above:
            ratio = {d: curse[d]["ratio_low"] for d in above}
            dr = min(above, key=lambda d: ratio[d])
            sat_fitted = [d for d in ds if a["network"][str(d)]["curse_saturating"]]
            sat_above = [d for d in sat_fitted if a["network"][str(d)]["curse_saturating"]["above"]]
            if not sat_fitted:
                sat_text = "No saturating fit was computed to compare."
            else:
                sat_text = ("The saturating fit's lower limit exceeds it in "
                            + ("no d" if not sat_above else f"d = {_list(sat_above)}")
                            + ("" if len(sat_fitted) == len(ds) else f" (fitted in d = {_list(sat_fitted)})") + ".")
            shows.append(f"**{family}**: the straight-line exponent's lower limit exceeds the curse rate 2/(d+4) in "
                         f"d = {_list(above)}; the smallest ratio of lower limit to curse rate is "
                         f"{_digits_keeping_side(ratio[dr], (1.0,), 1, 'f')} (d = {dr}). " + sat_text)
        rest = [d for d in ds if d not in above]
        if rest:
            not_shows.append(f"**{family}**: the exponent is not shown to exceed the curse rate in d = {_list(rest)}.")
        joint = fit.get("joint")
        if joint and joint["F"] is not None:
            fitted = [d for d in a["d"] if str(d) in by_d]
            bs = {d: by_d[str(d)]["b"] for d in fitted}
            lo, hi = min(fitted, key=lambda d: bs[d]), max(fitted, key=lambda d: bs[d])
            welch = joint["welch"]
            test = (f"Welch's {_welch(joint)}, the test that decides here; with one pooled variance "
                    f"F({joint['df'][0]}, {joint['df'][1]}) = {joint['F']:.2f}, {_p(joint['p'])}")
            claimed = fit.get("welch_claim")
            if claimed:  # some d's lines bend: their exponents' standard errors from the n-means
                welch = claimed
                test = (f"Welch's {_welch({'welch': claimed})} on each d's exponent with its standard error "
                        f"from the n-means in d = {_list(claimed['n_means'])}, where the line bends, the test that "
                        f"decides here; at seed level throughout {_welch(joint)}, with one pooled variance "
                        f"F({joint['df'][0]}, {joint['df'][1]}) = {joint['F']:.2f}, {_p(joint['p'])}")
            if welch["p"] < ALPHA:
                not_shows.append(f"**{family}**: it does not show an exponent independent of d: equal exponents are "
                                 f"rejected at level {ALPHA} ({test}); b ranges from {bs[lo]:.2f} (d = {lo}) to "
                                 f"{bs[hi]:.2f} (d = {hi}).")
            else:
                # the difference of two d's exponents has the standard error sqrt(se_1^2 + se_2^2):
                # for the two least precise d's, 2.8 of it (z 1.96 + 0.84) is what a two-sided test
                # at level 0.05 finds with 80% power (2.8 times one exponent's se, as this said, is
                # 2.8 / sqrt 2 = 1.98 of the difference's se for equal se: found about half the time)
                def claimed_se(d):  # the claim's (from the n-means where the line bends), else the seeds'
                    claim = a["network"].get(str(d), {}).get("line_claim") or {}
                    return claim.get("b_se", by_d[str(d)]["b_se"])

                ses = sorted(map(claimed_se, fitted), reverse=True)
                unseen = 2.8 * math.hypot(ses[0], ses[1])
                equal = (f"**{family}**: equal exponents across d are not rejected at level {ALPHA} ({test}); "
                         f"common exponent {-joint['common_slope']:.2f}")
                held = [d for d in out if d in fitted]  # d the test holds whose exponents were left out above
                if held:
                    not_shows.append(equal + f", but d = {_list(held)} among them, where the exponent is not a rate "
                                             "of learning.")
                else:
                    shows.append(equal + ".")
                not_shows.append(f"**{family}**: not rejecting is not proof of a d-free exponent: each d's exponent "
                                 f"has a standard error up to {ses[0]:.3f}, so a difference of about {unseen:.2f} "
                                 "between two d's could go unseen (2.8 standard errors of the difference: a "
                                 "test at level 0.05 of those two alone finds it with 80% power, Welch's test "
                                 "across every d with less).")
        tested = [d for d in a["d"] if lof[d]]
        if bent:
            slof = {d: a["network"][str(d)].get("saturating_lack_of_fit") for d in bent}
            both = [d for d in bent if slof[d] and slof[d]["p"] < ALPHA_LOF]
            better = [d for d in bent if d not in both and slof[d]]
            text = (f"**{family}**: a straight line in log-log is rejected (lack of fit, p < {ALPHA_LOF}) in "
                    f"{len(bent)} of {len(tested)} d ({_list(bent)}): there the straight-line exponent depends on "
                    f"the n range ({min(a['n'])} to {max(a['n'])}), and its seed-level interval takes the seeds at "
                    "one n, which share that n's departure from the line, for independent scatter; the claims "
                    "above use the line through the n-means instead, its bending counted as error ("
                    + _list([f"{_interval(a['network'][str(d)]['line_claim']['b_interval'])} (d = {d})"
                             for d in bent if a["network"][str(d)].get("line_claim")]) + ").")
            if both:
                text += (f" The saturating curve is rejected too in d = {_list(both)} (its own lack of fit, "
                         + _list([_p(slof[d]["p"]) for d in both]) + "): there its claims use the curve fitted "
                         "to the n-means, and neither curve describes the error well.")
            if better:
                text += f" In d = {_list(better)} the saturating curve is not rejected: it is the better summary."
            not_shows.append(text)
        elif tested:
            not_shows.append(f"**{family}**: a straight line in log-log is not rejected (lack of fit p ≥ {ALPHA_LOF}) "
                             f"in any of the {len(tested)} d tested (smallest {_p(min(lof[d]['p'] for d in tested))}), "
                             f"which is weak evidence for one: with {a['seeds']} seeds the pure-error test sees "
                             "only strong bending.")
        elif a["seeds"] == 1:
            not_shows.append(f"**{family}**: with one seed per cell the straight line cannot be tested (no "
                             "replicates, no lack-of-fit test): the exponents are of the best line, whatever "
                             "the curve's shape.")
        else:  # replicates, but no test for another reason (e.g. fewer than three n): say which
            why = sorted({a["network"][str(d)]["lack_of_fit_reason"] for d in a["d"]} - {None})
            not_shows.append(f"**{family}**: the straight line in log-log is not tested in any d (lack of fit: "
                             + "; ".join(why) + "): the exponents are of the best line, whatever the curve's "
                             "shape.")
        # the saturating curve rejected where the line is not (its test has one df fewer: at c = 0, the
        # line itself, its F is (m - 2) / (m - 3) times the line's): its claims above use its fit to the
        # n-means there too, which the sentence above, about bent lines only, did not say
        slof = {d: a["network"][str(d)].get("saturating_lack_of_fit") for d in tested if d not in bent and d in ds}
        sat_only = [d for d in slof if slof[d] and slof[d]["p"] < ALPHA_LOF]
        if sat_only:
            not_shows.append(f"**{family}**: the saturating curve is rejected (its own lack of fit, "
                             + _list([_p(slof[d]["p"]) for d in sat_only]) + f") in d = {_list(sat_only)}, where "
                             "the straight line is not: there its claims use the curve fitted to the n-means.")
        _floor_sentences(family, a, not_shows)
        _rising_sentences(family, a, not_shows)
        _late_start_sentences(family, a, stuck, not_shows)
        _initial_network_sentences(family, a, not_shows, zero_output)
        reached = [d for d in a["d"] if nstar[d] and nstar[d]["censored"] != "right" and d not in back]
        if reached:
            shows.append(f"**{family}**: the error falls below half the -x baseline at n*: "
                         + _list([("≤ " if nstar[d]["censored"] == "left" else "") + f"{nstar[d]['n_star']:.0f}"
                                  + f" (d = {d})" for d in reached]) + ".")
        if never:
            not_shows.append(f"**{family}**: the error stays above half the -x baseline up to "
                             + _up_to(a, never) + ".")
        if back:
            not_shows.append(f"**{family}**: the error falls below half the -x baseline and is back above it at the "
                             "largest n: " + _list([f"n* {'≤' if nstar[d]['censored'] == 'left' else '='} "
                                                    f"{nstar[d]['n_star']:.0f}, above again at n = "
                                                    f"{end[d]['n_last']} (d = {d})" for d in back]) + ".")
        if stuck:
            not_shows.append(f"**{family}**: the network's mean error is at or above the score -x's at every n from "
                             + _list([f"{n0} (d = {d})" for d, n0 in stuck.items()])
                             + " up to " + _up_to(a, stuck)
                             + ": there it does no better than a score that learned nothing.")
        shows += _level_sentences(family, a)
        shows += _baseline_sentences(family, a, learns=set(ds))
        shows += _tv_sentences(family, a, not_shows)
        if a["seeds"] < 5:
            not_shows.append(f"**{family}**: at most {a['seeds']} seed(s) per cell, fewer than the 5 the statistics "
                             "here are designed for.")
    trained = _training_sentences(comparisons)
    shows += trained[0]
    not_shows += trained[1]
    planar = [f for f in fams if f in _PLANAR_FAMILIES]
    if planar:
        not_shows.append(_plane_sentence(planar, fams))
    all_d = sorted({d for a in fams.values() for d in a["d"]})
    all_n = sorted({n for a in fams.values() for n in a["n"]})
    not_shows.append(f"Nothing here is measured beyond d = {all_d[-1]} or outside n = {all_n[0]} to {all_n[-1]}; "
                     "the fitted exponents describe that range, not the asymptotic exponent of an upper-bound "
                     "theorem whose constants may grow with d.")
    lines = ["## What this shows", ""] + [f"- {s}" for s in shows] + ["", "## What it does not show", ""]
    return lines + [f"- {s}" for s in not_shows] + [""]


def _up_to(a, ds, name_d=True):
    """'n = N in d = ...' (N the largest n, when every d in ds has the -x baseline there; 'n = N'
    alone without name_d), else 'n = N1 (d = d1) and ...': the largest n where each d's error
    was compared with -x's (a claim about the -x level stops there)."""
    last = {d: _minus_x_end(a["points"][str(d)])["n_last"] for d in ds}
    if set(last.values()) == {max(a["n"])}:
        return f"n = {max(a['n'])}" + (f" in d = {_list(list(ds))}" if name_d else "")
    return _list([f"n = {last[d]} (d = {d})" for d in ds])


# families whose f depends on x only through a fixed low-dimensional plane (families.py)
_PLANAR_FAMILIES = ("mixture-iso", "tilt-iso")


def _plane_sentence(planar, fams):
    """What a target confined to a plane cannot tell apart, with the EM plug-in's exponents
    (a parametric estimator that does not know the plane either) where they were fitted."""
    mixture = fams.get("mixture-iso", {})
    by_d = mixture.get("fits", {}).get("EM plug-in", {}).get("by_d", {})
    em = [f["b"] for f in by_d.values()]
    every = ("every d" if len(by_d) == len(mixture.get("d", ())) else  # "every d" only where fitted in each
             "d = " + _list(sorted(int(d) for d in by_d)) if by_d else None)
    em_text = (f"; the EM plug-in, which does not know the plane either, has exponent {min(em):.2f} to "
               f"{max(em):.2f} in {every} (mixture-iso)") if em else ""
    return (f"**{' and '.join(planar)}**: the target is one low-dimensional problem rotated into R^d (f depends on "
            "x only through a fixed plane), so a learner that finds the plane faces that problem whatever d is. "
            "These runs cannot tell Cole & Lu's explanation, a log-relative density f of low complexity, from "
            "low intrinsic dimension (data near a subspace, e.g. Chen et al. 2023)" + em_text + ". A target whose "
            "f uses all d coordinates with bounded path norm would separate the two; none is run here.")


def _floor_sentences(family, a, not_shows):
    """Has the error flattened? A fitted floor c above FLOOR_SHARE of the error at the largest
    n counts only where the straight line (c = 0) is rejected against it (floor_test); a
    floor above that error itself means the curve rises at the end, not that it flattens."""
    share = {d: a["network"][str(d)].get("floor_share") for d in a["d"]}
    sat = {d: a["network"][str(d)]["saturating"] for d in a["d"]}
    big = [d for d in a["d"] if share[d] is not None and share[d] > FLOOR_SHARE]
    flat = [d for d in big if share[d] <= 1.0 and sat[d]["floor_test"]["p"] < ALPHA]
    open_ = [d for d in big if share[d] <= 1.0 and d not in flat]
    over = [d for d in big if share[d] > 1.0]

    def each(ds):
        return _list([f"{_share(share[d])}, {_p(sat[d]['floor_test']['p'])} (d = {d})" for d in ds])

    if flat:
        not_shows.append(f"**{family}**: the error has flattened in d = {_list(flat)}: a floor c above "
                         f"{FLOOR_SHARE:.0%} of the error at the largest n, and c = 0 rejected at level {ALPHA} "
                         f"({each(flat)}); larger n alone would not lower the error much under these settings.")
    if open_:
        not_shows.append(f"**{family}**: whether the error flattens is undecided in d = {_list(open_)}: the fitted "
                         f"floor is above {FLOOR_SHARE:.0%} of the error at the largest n but c = 0 is not rejected "
                         f"({each(open_)}).")
    if over:
        not_shows.append(f"**{family}**: in d = {_list(over)} the saturating fit's floor exceeds the error at the "
                         f"largest n ({_list([_share(share[d]) for d in over])}): the curve does not fall there "
                         "at the end, and its b and c do not describe a flattening.")


def _rising_sentences(family, a, not_shows):
    """Where the mean error rises from one n to the next by more than RISE and by more than two
    standard errors of the difference (training that overfits more, or a curve that has
    turned; a rise within the noise, or a few per cent at the -x level, is not named)."""
    rises = []
    for d in a["d"]:
        pts = sorted((int(n), p["network"]) for n, p in a["points"][str(d)].items() if "network" in p)
        for (n0, e0), (n1, e1) in zip(pts, pts[1:]):
            if e1[0] - e0[0] > max(2 * math.hypot(e0[1], e1[1]), RISE * e0[0]):
                rises.append(f"d = {d}, n = {n0} to {n1}: {_g(e0[0])} to {_g(e1[0])}")
    if rises:
        not_shows.append(f"**{family}**: the error rises with n (by more than {RISE:.0%} and two standard errors) at "
                         + "; ".join(rises) + ".")


def _no_better_than_minus_x_at_first(a):
    """{d: n1} for each d where the network does no better than the score -x from the smallest n
    on: at every n up to n1 (n1 the largest such n) its mean error is not below the -x
    baseline's by more than two standard errors of the difference. A d without both at the
    smallest n is left out: nothing is known about the start there."""
    out = {}
    for d in a["d"]:
        pairs = sorted((int(n), p["network"], p["score -x"]) for n, p in a["points"][str(d)].items()
                       if "network" in p and "score -x" in p)
        if not pairs or pairs[0][0] != min(a["n"]):
            continue
        n1 = None
        for n, net, mx in pairs:  # [mean, se, seeds]
            if net[0] < mx[0] - 2 * math.hypot(net[1], mx[1]):
                break
            n1 = n
        if n1 is not None:
            out[d] = n1
    return out


def _late_start_sentences(family, a, stuck, not_shows):
    """Where the curve starts flat at the -x level before it falls: a straight line through all
    n then spans two regimes (the ones at or above -x from the smallest n on are `stuck`'s)."""
    first = min(a["n"])
    late = {d: n1 for d, n1 in _no_better_than_minus_x_at_first(a).items() if stuck.get(d) != first}
    if late:
        not_shows.append(f"**{family}**: from n = {first} the network does no better than the score -x (its mean "
                         "error not below the -x baseline's by two standard errors) up to n = "
                         + _list([f"{n1} (d = {d})" for d, n1 in late.items()])
                         + ": there the straight-line exponent spans a flat start and the fall after it.")


def _initial_network_sentences(family, a, not_shows, zero_output=True):
    """Where the held-out selection kept the initial network (its score is -x exactly where the
    output layer started at zero, zero_output), and the exponent over the n above: a line
    through those n measures the untrained start."""
    net = {d: a["network"][str(d)] for d in a["d"]}
    initial = {d: net[d].get("initial_kept") for d in a["d"] if net[d].get("initial_kept")}
    if initial:
        def kept(d):
            cells = sorted(((int(n), k, m) for n, (k, m) in initial[d].items()))
            run = 0  # the n from the smallest on where every seed kept it
            while run < len(cells) and cells[run][0] == a["n"][run] and cells[run][1] == cells[run][2]:
                run += 1
            parts = [f"every seed at n = {_list([str(n) for n, _, _ in cells[:run]])}"] if run else []
            parts += [f"{k} of {m} seeds at n = {n}" for n, k, m in cells[run:]]
            return ", ".join(parts) + f" (d = {d})"

        after = {d: net[d].get("after_initial") for d in initial}
        fitted = [d for d in initial if after[d]]
        initial_network = ("the initial network, whose score is -x exactly," if zero_output else
                           "the initial (untrained) network")
        text = (f"**{family}**: the held-out selection kept {initial_network} in "
                + "; ".join(kept(d) for d in initial)
                + ": in those seeds the network is not trained, and a straight line "
                  "through those n measures how long that lasts as well as a rate")
        if fitted:
            text += ("; fitted over the n above them, the exponent is "
                     + _list([f"{after[d]['b']:.2f} {_interval(after[d]['b_interval'])} (d = {d}, n ≥ "
                              f"{after[d]['from_n']}" + (f"; the line rejected there, lack of fit "
                                                         f"{_p(after[d]['lack_of_fit_p'])}: the interval from the "
                                                         "n-means" if after[d].get("basis") == "n-means" else "")
                              + ")" for d in fitted]))
        for d in (d for d in initial if not after[d]):
            text += f" (d = {d}: no exponent, {net[d].get('after_initial_reason')})"
        not_shows.append(text + ".")


def _at_or_above_minus_x(a):
    """{d: n0} for each d where the network's mean error is >= the score -x's at every n >= n0
    (the n where both were measured), n0 the smallest such n."""
    out = {}
    for d in a["d"]:
        pairs = [(int(n), p["network"][0], p["score -x"][0]) for n, p in a["points"][str(d)].items()
                 if "network" in p and "score -x" in p]
        n0 = None
        for n, net, mx in sorted(pairs, reverse=True):
            if net < mx:
                break
            n0 = n
        if n0 is not None:
            out[d] = n0
    return out


def _level_sentences(family, a):
    """The network's error against d at the smallest and the largest n (the error-vs-d figure)."""
    out = []
    for n in sorted({min(a["n"]), max(a["n"])}):
        e = {d: a["points"][str(d)][str(n)]["network"][0] for d in a["d"]
             if "network" in a["points"][str(d)].get(str(n), {})}
        if len(e) < 2:
            continue
        d0, d1 = min(e), max(e)
        if e[d0] > 0 and e[d1] > 0:
            out.append(f"**{family}**: at n = {n} the network's error is {_g(e[d0])} at d = {d0} and {_g(e[d1])} at "
                       f"d = {d1} (a factor {_g(e[d1] / e[d0])}).")
    return out


def _baseline_sentences(family, a, learns=None):
    out = []
    nmax = max(a["n"])
    for method, label in (("empirical measure (curse)", "the empirical-measure (curse) baseline"),
                          ("EM plug-in", "the EM plug-in")):
        ratios = {}
        for d in a["d"]:
            p = a["points"][str(d)].get(str(nmax), {})
            if method in p and "network" in p and p["network"][0] > 0 and p[method][0] > 0:
                ratios[d] = p[method][0] / p["network"][0]
        if not ratios:
            continue
        lo, hi = min(ratios, key=ratios.get), max(ratios, key=ratios.get)
        if method.startswith("empirical"):
            better = [d for d in ratios if ratios[d] > 1]
            # "every d" only when every d has the baseline at n = nmax (a missing cell is not a win)
            where = ("every d" if len(better) == len(ratios) == len(a["d"]) else
                     ("no d" if len(ratios) == len(a["d"]) else f"none of d = {_list(list(ratios))}")
                     if not better else f"d = {_list(better)}")
            out.append(f"**{family}**: at n = {nmax} the network's error is below {label}'s in {where}; the ratio "
                       f"baseline / network is {_ratio(ratios[lo])} (d = {lo}) to {_ratio(ratios[hi])} (d = {hi}).")
        else:  # the efficient parametric reference: how far the network is from it
            out.append(f"**{family}**: at n = {nmax} the network's error is {_g(1 / ratios[hi])} (d = {hi}) to "
                       f"{_g(1 / ratios[lo])} (d = {lo}) times {label}'s, the parametric reference that knows "
                       "the family.")
        fits = a["fits"].get(method, {}).get("by_d", {})
        if method.startswith("empirical") and fits:
            bs = {int(d): f["b"] for d, f in fits.items()}
            out.append(f"**{family}**: {label}'s own exponent is "
                       + _list([f"{bs[d]:.2f} (d = {d})" for d in sorted(bs)]) + ".")
            net = a["fits"].get("network", {}).get("by_d", {})
            faster = [int(d) for d, f in fits.items() if d in net and net[d]["b_interval"][0] > f["b_interval"][1]
                      and (learns is None or int(d) in learns)]
            if faster:
                def apart(v, other):  # 3 significant digits, more where 3 would print the two limits equal
                    return _g(v) if _g(v) != _g(other) else _digits_keeping_side(v, (other,), 3)

                out.append(f"**{family}**: the network's exponent is above {label}'s (its lower {LEVEL:.0%} limit "
                           f"above the baseline's upper limit) in d = {_list(sorted(faster))}: " + _list(
                               [f"{apart(net[str(d)]['b_interval'][0], fits[str(d)]['b_interval'][1])} > "
                                f"{apart(fits[str(d)]['b_interval'][1], net[str(d)]['b_interval'][0])} (d = {d})"
                                for d in sorted(faster)]) + ".")
    return out


def _tv_sentences(family, a, not_shows):
    out = []
    ns = a["n"]
    tv = {d: {n: a["points"][str(d)][str(n)]["tv"] for n in ns if "tv" in a["points"][str(d)].get(str(n), {})}
          for d in a["d"]}
    tv = {d: v for d, v in tv.items() if v}
    if not tv:
        return out
    last = {d: v[max(v)] for d, v in tv.items()}
    useful = [d for d in tv if last[d][0] < 1]
    vacuous = [d for d in tv if last[d][0] >= 1]
    if useful:
        out.append(f"**{family}**: the certified TV bound at the largest n is below 1 (not vacuous) in d = "
                   f"{_list(useful)}: " + _list([f"{_digits_keeping_side(last[d][0], (1.0,), 3, 'f')} (d = {d})"
                                                 for d in useful]) + ".")
    if vacuous:
        not_shows.append(f"**{family}**: the certified TV bound is vacuous (≥ 1) at the largest n in d = "
                         f"{_list(vacuous)}.")
    # falling: the last mean + 2 se below the first mean - 2 se
    falling = [d for d, v in tv.items()
               if len(v) > 1 and v[max(v)][0] + 2 * v[max(v)][1] < v[min(v)][0] - 2 * v[min(v)][1]]
    def ends(d):  # with the digits that keep the two ends apart (0.9996 to 0.9991 is not "1.000 to 0.999")
        first, end = tv[d][min(tv[d])][0], tv[d][max(tv[d])][0]
        return (f"{_digits_keeping_side(first, (end, 1.0), 3, 'f')} to "
                f"{_digits_keeping_side(end, (first, 1.0), 3, 'f')}")

    if falling:
        out.append(f"**{family}**: the certified TV bound falls from the smallest to the largest n (by more than two "
                   "standard errors at each end) in d = " + _list([f"{d} ({ends(d)})" for d in falling]) + ".")
    flat = [d for d in tv if len(tv[d]) > 1 and d not in falling]
    if flat:
        not_shows.append(f"**{family}**: the certified TV bound is not shown to fall with n in d = {_list(flat)}.")
    exact = {d: a["points"][str(d)][str(max(tv[d]))].get("tv_exact") for d in tv}
    exact = {d: v for d, v in exact.items() if v is not None}
    if exact:
        out.append(f"**{family}**: with the exact score the same sampler's certified bound at the largest n is "
                   + _list([f"{exact[d][0]:.3g} (d = {d}; learned {last[d][0]:.3g})" for d in exact])
                   + ": the learned score's bound minus this is what learning leaves.")
        floor = [d for d in exact if exact[d][0] >= 0.5 * last[d][0]]
        if floor:
            not_shows.append(f"**{family}**: in d = {_list(floor)} the exact score's bound is at least half the "
                             "learned one at the largest n: there the bound measures the sampler and the "
                             "early stopping more than the learning.")
    return out


# ---------------------------------------------------------------- figures

def _subplots(rows, cols, figsize):
    """A Figure made without pyplot (no global figure, no backend switch) and its axes grid."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, squeeze=False)


_STYLE = {"network": dict(ls="-", marker="o"), "empirical measure (curse)": dict(ls="--", marker="s"),
          "score -x": dict(ls=":", marker="^"), "EM plug-in": dict(ls="-.", marker="d")}


def _log_axes(ax, ticks=None, base=10):
    """Log-log axes labelled at the given x values only (matplotlib's minor labels collide)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log", base=base)
    ax.set_yscale("log")
    if ticks:
        ticks = sorted(ticks)[::max(1, (len(ticks) + 3) // 4)]  # at most four labels
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(t) for t in ticks])


def _save(fig, path):
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))


def plot_error_vs_n(path, analysis):
    fams = analysis["families"]
    cols = max(len(a["d"]) for a in fams.values())
    fig, axes = _subplots(len(fams), cols, (3.2 * cols, 2.8 * len(fams)))
    for i, (family, a) in enumerate(fams.items()):
        for j in range(cols):
            ax = axes[i][j]
            if j >= len(a["d"]):
                ax.axis("off")
                continue
            d = a["d"][j]
            by_n = a["points"][str(d)]
            for m in a["methods"]:
                pts = [(int(n), *p[m][:2]) for n, p in by_n.items() if m in p and p[m][0] > 0]
                if pts:
                    n, e, se = map(np.array, zip(*sorted(pts)))
                    ax.errorbar(n, e, yerr=2 * se, ms=3, capsize=2, label=m, **_STYLE.get(m, {}))
            _log_axes(ax, a["n"])
            ax.set_title(f"{family}, d = {d}", fontsize=9)
            if i == len(fams) - 1:
                ax.set_xlabel("n")
            if j == 0:
                ax.set_ylabel("score error")
        axes[i][0].legend(fontsize=6)
    _save(fig, path)


def plot_error_vs_d(path, analysis):
    fams = analysis["families"]
    fig, axes = _subplots(1, len(fams), (4.5 * len(fams), 3.6))
    for ax, (family, a) in zip(axes[0], fams.items()):
        # the smallest and the largest n (one n: drawn once, not twice in two colours under one label)
        for n, colour in zip(sorted({min(a["n"]), max(a["n"])}), ("C0", "C3")):
            for m in a["methods"]:
                pts = [(d, *a["points"][str(d)][str(n)][m][:2]) for d in a["d"]
                       if m in a["points"][str(d)].get(str(n), {}) and a["points"][str(d)][str(n)][m][0] > 0]
                if pts:
                    d, e, se = map(np.array, zip(*pts))
                    ax.errorbar(d, e, yerr=2 * se, color=colour, ms=3, capsize=2, label=f"{m}, n = {n}",
                                **_STYLE.get(m, {}))
        _log_axes(ax, a["d"], base=2)
        ax.set_xlabel("d")
        ax.set_title(family)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("score error")
    _save(fig, path)


def plot_tv_vs_n(path, analysis):
    fams = {f: a for f, a in analysis["families"].items()
            if any("tv" in p for by_n in a["points"].values() for p in by_n.values())}
    if not fams:
        return False
    fig, axes = _subplots(1, len(fams), (4.5 * len(fams), 3.6))
    for ax, (family, a) in zip(axes[0], fams.items()):
        for d in a["d"]:
            # the exact score's dotted lines lie on top of each other: named once, in the title
            for key, style, label in (("tv", "-", f"d = {d}"), ("tv_exact", ":", "_nolegend_")):
                pts = [(int(n), *p[key][:2]) for n, p in a["points"][str(d)].items() if key in p]
                if pts:
                    n, tv, se = map(np.array, zip(*sorted(pts)))
                    colour = f"C{a['d'].index(d) % 10}"
                    ax.errorbar(n, tv, yerr=2 * se, marker="o", ms=3, capsize=2, ls=style, color=colour, label=label)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        _log_axes(ax, a["n"])
        ax.set_xlabel("n")
        ax.set_title(family)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the data, not on it
    axes[0][0].set_ylabel("certified TV bound (≥ 1: vacuous)")
    if any("tv_exact" in p for a in fams.values() for by_n in a["points"].values() for p in by_n.values()):
        fig.suptitle("dotted: the same sampler with the exact score", fontsize=8)
    _save(fig, path)
    return True


# ---------------------------------------------------------------- the command

# what `sgm-ref experiment rate` writes into its folder (sweep.py): never a report's file
_SWEEP_FILES = ("sweep.json", "results.jsonl", "results.csv", "summary.json", "summary.md", "rate.png", ".lock")


def write_report(folder, out=None, log=None, compare_with=None):
    """Regenerate the report of a sweep folder: OUT, OUT's .json and the figures beside OUT.

    Parameters
    ----------
    folder : str
        A rate sweep's folder (results.jsonl, and sweep.json if present).
    out : str, optional
        The markdown file to write (default folder/rate.md). Figures are written beside
        it as STEM_error_vs_n.png, STEM_error_vs_d.png, STEM_tv_vs_n.png (when matplotlib
        imports; without it the text says so), and the numbers as STEM.json.
    log : callable(str), optional
    compare_with : str or sequence of str, optional
        Other sweeps' folders, each run on some of the same cells with other settings (e.g.
        ``--objective sigma2``, ``--budget 2``): a section each compares it with this one
        cell by cell (compare()), and the numbers go into the .json under "comparisons",
        by the folder's name.

    Returns
    -------
    list of str
        The files written.

    Raises
    ------
    ValueError
        No sweep in folder, out's folder does not exist, or out would overwrite a sweep's own files
        (sweep.md, summary.md in a sweep's folder); nothing is written then.
    """
    folder = os.fspath(folder)
    rows, settings = load_sweep(folder)
    out = os.path.join(folder, "rate.md") if out is None else os.fspath(out)
    where = os.path.dirname(os.path.abspath(out))
    if not out.endswith(".md"):
        raise ValueError(f"--out must name a .md file, got {out!r}")
    if not os.path.isdir(where):
        raise ValueError(f"--out {out}: its folder {where} does not exist")
    stem = os.path.splitext(os.path.basename(out))[0]
    if any(os.path.exists(os.path.join(where, f)) for f in ("sweep.json", "results.jsonl")):
        # a sweep's folder: the report's STEM.md and STEM.json must not replace the sweep's own files
        # (--out RUN/sweep.md wrote the numbers over RUN/sweep.json: the sweep could not be continued)
        clash = sorted({stem + ".md", stem + ".json"} & set(_SWEEP_FILES))
        if clash:
            raise ValueError(f"--out {out}: the report would overwrite the sweep's own {_list(clash)} in {where}; "
                             "give the report another name (the default is rate.md)")
    # the grid of `--full` (or of `--full --d ...`, alone or added to it) when the rows are its
    # cells under its settings (the sweep does not store its grid): the cost summary counts against it
    grid = _full_grid(rows, settings)
    analysis = analyse(rows, grid)
    others = [] if compare_with is None else [os.fspath(compare_with)] if isinstance(
        compare_with, (str, os.PathLike)) else [os.fspath(f) for f in compare_with]
    names = [os.path.basename(os.path.normpath(f)) for f in others]
    if len(set(names)) != len(names):
        raise ValueError(f"--compare: the folders' names must differ (the report names each by it), got {names}")
    comparisons = []
    for other, name in zip(others, names):
        other_rows, other_settings = load_sweep(other)
        comparisons.append((compare(rows, other_rows, settings, other_settings), name))
    if comparisons:
        analysis = {**analysis, "comparisons": {name: c for c, name in comparisons}}
    written, figures = [], {}
    plots = have_matplotlib()
    if plots:
        for kind, plot in (("error_vs_n", plot_error_vs_n), ("error_vs_d", plot_error_vs_d),
                           ("tv_vs_n", plot_tv_vs_n)):
            name = f"{stem}_{kind}.png"
            if plot(os.path.join(where, name), analysis) is not False:
                figures[kind] = name
                written.append(os.path.join(where, name))
    source = (f"{_shell_path(folder)} --out {_shell_path(out)}"  # as the shell reads them back (a space, a quote)
              + "".join(f" --compare {_shell_path(other)}" for other in others))
    text = report_markdown(analysis, settings, figures, source=source, comparisons=comparisons)
    if not plots:
        text += "\n(matplotlib is not installed: no figures; pip install \"sgm_ref[plot]\".)\n"
    numbers = os.path.join(where, stem + ".json")
    atomic_write(numbers, lambda f: f.write((json.dumps(analysis, indent=1, allow_nan=False) + "\n").encode("utf-8")))
    atomic_write(out, lambda f: f.write(text.encode("utf-8")))
    written += [numbers, out]
    if log is not None:
        log("wrote " + ", ".join(written))
    return written
