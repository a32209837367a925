"""The rate report end to end: synthetic rows (known slopes, baselines, TV bounds), the old sweep's rows, the CLI."""

import json
import math
import os
import re
import shutil

import numpy as np
import pytest

from _cli import assert_one_line_error, run
from _rate_page import PAGE_COMMAND, PAGE_COMPARES, PAGE_SOURCE
from sgm_ref.experiments import rate, report
from sgm_ref.experiments.rate import append_result

HERE = os.path.dirname(os.path.abspath(__file__))
NS = [500, 1000, 2000, 4000, 8000]
DS = [2, 8, 32]


def synthetic(folder, slopes, seeds=5, rng=None):
    """A sweep folder of rows whose network error is 2 (n/500)^-b_d (x lognormal noise 0.05) for each family.

    Baselines: the empirical measure's error d/2 (n/500)^-0.02, -x a constant 1, EM d/n (mixture only).
    The certified bound falls like n^-0.3 in d = 2 and 8 and is vacuous (1, se 0) in d = 32.
    With the -x baseline at 1, the error crosses half of it at n* = 500 4^(1/b).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "results.jsonl")
    for family, by_d in slopes.items():
        for seed in range(seeds):
            for d in DS:
                for n in NS:
                    noise = np.exp(0.05 * rng.standard_normal(4))
                    e = 2.0 * (n / 500) ** -by_d[d] * noise[0]
                    tv = 1.0 if d == 32 else min(0.9 * (n / 500) ** -0.3 * noise[3], 1.0)
                    row = {"family": family, "d": d, "n": n, "seed": seed, "status": "ok",
                           "score_error": e, "score_error_se": 0.01 * e,
                           "baseline_empirical": {"error": d / 2 * (n / 500) ** -0.02 * noise[1], "se": 0.01},
                           "baseline_minus_x": {"error": 1.0 * noise[2], "se": 0.001},
                           "baseline_em": {"error": d / n * noise[1], "se": 1e-5} if family == "mixture" else None,
                           "tv": {"tv": tv, "tv_se": 0.0 if d == 32 else 0.002, "kl": 0.5 * tv ** 2,
                                  "kl_se": 0.001, "kl_prior": 1e-4, "kl_path": 0.4 * tv ** 2,
                                  "tv_early_stopping": 0.01, "method": "residual_exponential"},
                           "tv_oracle": {"tv": 0.05, "tv_se": 0.001, "kl": 0.001, "kl_path": 1e-4,
                                         "kl_path_se": None, "method": "residual_exponential"},
                           "t0": 1e-3, "T": float(np.log(n)), "steps": max(2000, 4 * n), "objective": "paper"}
                    append_result(path, row)
    return folder


def conclusions(text):
    shows = text.split("## What this shows")[1].split("## What it does not show")[0]
    not_shows = text.split("## What it does not show")[1]
    return shows, not_shows


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = synthetic(str(tmp_path_factory.mktemp("sweep")),
                       {"mixture": {2: 0.8, 8: 0.8, 32: 0.8}, "product": {2: 0.9, 8: 0.6, 32: 0.2}})
    out = os.path.join(folder, "docs", "rate.md")
    os.makedirs(os.path.dirname(out))
    files = report.write_report(folder, out)
    with open(out, encoding="utf-8") as f:
        text = f.read()
    with open(os.path.join(os.path.dirname(out), "rate.json"), encoding="utf-8") as f:
        numbers = json.load(f)
    return files, text, numbers


def test_report_writes_its_text_numbers_and_figures(written):
    files, text, numbers = written
    names = sorted(os.path.basename(f) for f in files)
    assert names == ["rate.json", "rate.md", "rate_error_vs_d.png", "rate_error_vs_n.png", "rate_tv_vs_n.png"]
    for f in files:
        assert os.path.getsize(f) > 0
    for name in names[2:]:
        assert f"]({name})" in text  # linked relative to the markdown
    # the table per family and d: the network beside its baselines, n as columns
    assert "| d | method | n = 500 | n = 1000 | n = 2000 | n = 4000 | n = 8000 |" in text
    # the introduction names the baselines the rows carry and, for the residual sampler, its test
    intro = text.split("## Running it")[0]
    assert "OU-smoothed empirical measure" in intro and "fitted by EM" in intro and "the score -x" in intro
    assert "tests/test_rate_sampler.py" in intro
    for method in ("network", "empirical measure (curse)", "score -x", "EM plug-in"):
        assert f"| 2 | {method} |" in text
    product = text.split("## product")[1]
    assert "EM plug-in" not in product.split("## What this shows")[0]  # no EM rows: no EM line
    assert "steps = 2000" in text and "objective = paper" in text  # the per-n schedule


def test_report_recovers_the_planted_slopes_and_n_star(written):
    _, _, numbers = written
    mix = numbers["families"]["mixture"]
    for d in DS:
        fit = mix["fits"]["network"]["by_d"][str(d)]
        assert fit["b"] == pytest.approx(0.8, abs=0.03)
        assert fit["b_interval"][0] < 0.8 < fit["b_interval"][1]
        n_star = mix["network"][str(d)]["n_star"]
        assert n_star["censored"] is None and n_star["n_star"] == pytest.approx(500 * 4 ** (1 / 0.8), rel=0.1)
        assert mix["fits"]["empirical measure (curse)"]["by_d"][str(d)]["b"] == pytest.approx(0.02, abs=0.03)
        assert mix["fits"]["EM plug-in"]["by_d"][str(d)]["b"] == pytest.approx(1.0, abs=0.03)
    prod = numbers["families"]["product"]
    assert [prod["fits"]["network"]["by_d"][str(d)]["b"] for d in DS] == pytest.approx([0.9, 0.6, 0.2], abs=0.03)
    assert prod["network"]["32"]["n_star"] == {"n_star": None, "censored": "right"}  # 2 (16)^-0.2 > 0.5


def test_conclusions_follow_the_numbers(written):
    _, text, numbers = written
    shows, not_shows = conclusions(text)
    mix_p = numbers["families"]["mixture"]["fits"]["network"]["joint"]["p"]
    prod = numbers["families"]["product"]["fits"]["network"]["joint"]
    assert mix_p > 0.05 and prod["welch"]["p"] < 0.05
    assert "**mixture**: equal exponents across d are not rejected" in shows
    assert "**mixture**: not rejecting is not proof of a d-free exponent" in not_shows
    w = prod["welch"]
    assert (f"**product**: it does not show an exponent independent of d: equal exponents are rejected at level 0.05 "
            f"(Welch's F(2, {w['df'][1]:.1f}) = {w['F']:.2f}, p < 1e-4, the test that decides here; with one pooled "
            f"variance F(2, "
            f"{prod['df'][1]}) = {prod['F']:.2f}") in not_shows
    assert "**mixture**: the error falls with n in every d (2, 8 and 32): the exponent b of the best straight" in shows
    # product, d = 32 never reaches half of -x: its exponent is not claimed as a rate
    assert "**product**: the error falls with n in every d where it learns (2 and 8)" in shows
    b32 = numbers["families"]["product"]["fits"]["network"]["by_d"]["32"]["b"]
    assert (f"**product**: the exponent of d = 32 ({b32:.2f}) is not a rate of learning: the error does not end "
            "below half the -x baseline by n = 8000; it is left out") in not_shows
    # 5 seeds of straight lines: lack of fit not rejected, which is said to be weak evidence
    assert "a straight line in log-log is not rejected" in not_shows and "weak evidence" in not_shows
    # the TV bound: vacuous only in d = 32, falling in d = 2 and 8
    assert "**mixture**: the certified TV bound is vacuous (≥ 1) at the largest n in d = 32." in not_shows
    assert "**mixture**: the certified TV bound falls from the smallest to the largest n" in shows
    assert "**mixture**: the error falls below half the -x baseline at n*: " in shows
    assert "**product**: the error stays above half the -x baseline up to n = 8000 in d = 32." in not_shows
    assert "the network's error is below the empirical-measure (curse) baseline's in" in shows
    assert "Nothing here is measured beyond d = 32 or outside n = 500 to 8000" in not_shows
    # the exact score's bound beside the learned one, and the sampler they are about
    assert "(residual_exponential sampler)" in text and "| 2 | exact | 0.05 ± 6e-04 |" not in text
    assert "| 2 | exact | 0.05 ± 0 |" in text
    assert ("**mixture**: with the exact score the same sampler's certified bound at the largest n is 0.05 (d = 2"
            in shows)
    assert "the exact score's bound is at least half" not in not_shows  # 0.05 against 0.42


def test_conclusions_change_with_the_data(tmp_path):
    # the same report on rows where the mixture's exponents differ and seeds are few: the sentences flip
    folder = synthetic(str(tmp_path / "sweep"), {"mixture": {2: 1.0, 8: 0.6, 32: 0.3}}, seeds=3)
    report.write_report(folder)
    with open(os.path.join(folder, "rate.md"), encoding="utf-8") as f:
        shows, not_shows = conclusions(f.read())
    assert "equal exponents across d are not rejected" not in shows
    assert "**mixture**: it does not show an exponent independent of d" in not_shows
    assert "**mixture**: at most 3 seed(s) per cell" in not_shows


def test_report_on_the_old_sweep_rows(tmp_path):
    # docs/rate_full has no baselines and the old tv_bound fields: the report still renders, and says so
    folder = tmp_path / "rate_full"
    shutil.copytree(os.path.join(HERE, "..", "docs", "rate_full"), folder)
    report.write_report(str(folder), str(tmp_path / "old.md"))
    text = (tmp_path / "old.md").read_text(encoding="utf-8")
    assert "F(3, 76) = 4.70, p = 0.0046" in text  # issue 14's equal-slope test of the mixture family
    assert "n* (no -x baseline in these rows)" in text
    assert "| 128 | learned | 1 (vacuous) |" in text
    assert "(euler_maruyama sampler)" in text  # from sweep.json: the old rows do not name it
    assert "empirical measure" not in text.split("## What this shows")[0]
    # the caption names the baselines the figure draws: none here (it named all three, with their styles)
    assert ("*Error against n, one panel per family and d (network: solid; bars: ± 2 standard errors of the mean "
            "over seeds, or a lone seed's own).*") in text


def test_cli_regenerates_the_report_and_names_bad_input(tmp_path):
    folder = synthetic(str(tmp_path / "sweep"), {"mixture": {2: 0.8, 8: 0.8, 32: 0.8}}, seeds=2)
    with open(os.path.join(folder, "results.jsonl"), "ab") as f:  # a write a kill cut short
        f.write(b'{"family": "mixture", "d": 2')
    lines = sum(1 for _ in open(os.path.join(folder, "results.jsonl"), "rb"))
    result = run("experiment", "rate-report", folder, "--out", tmp_path / "rate.md")
    assert "wrote" in result.stdout + result.stderr
    # the line left out is named on one line of stderr, not in Python's two-line warning format
    warning = [line for line in result.stderr.splitlines() if "incomplete" in line]
    assert warning == [f"sgm-ref: warning: {os.path.join(folder, 'results.jsonl')}, line {lines}, is incomplete "
                       "(a write cut short) and is left out: b'{\"family\": \"mixture\", \"d\": 2'"]
    assert "UserWarning" not in result.stderr
    assert (tmp_path / "rate.md").exists() and (tmp_path / "rate.json").exists()
    path = os.path.join(folder, "results.jsonl")
    with open(path, "r+b") as f:  # the torn tail off again, for the in-process calls below
        f.truncate(os.path.getsize(path) - len(b'{"family": "mixture", "d": 2'))
    assert_one_line_error(run("experiment", "rate-report", tmp_path / "none", check=False), "has no results.jsonl")
    # the other refusals in process (each subprocess costs an import of the whole package)
    with pytest.raises(ValueError, match="does not exist"):
        report.write_report(folder, str(tmp_path / "no" / "r.md"))
    with pytest.raises(ValueError, match="--out must name a .md file"):
        report.write_report(folder, str(tmp_path / "r.txt"))
    assert not (tmp_path / "no").exists() and not (tmp_path / "r.txt").exists()


def test_report_of_a_sweep_still_running(tmp_path):
    # one seed (no replicates: no lack-of-fit test), a d with a single n so far: the rest is still reported
    folder = synthetic(str(tmp_path / "sweep"), {"mixture": {2: 0.8, 8: 0.8, 32: 0.8}}, seeds=1)
    for d, n in ((128, 500), (512, 500), (512, 1000)):  # d = 512: two n, two points, no variance of its own
        append_result(os.path.join(folder, "results.jsonl"),
                      {"family": "mixture", "d": d, "n": n, "seed": 0, "status": "ok", "score_error": 3.0,
                       "score_error_se": 0.1})
    report.write_report(folder)
    text = open(os.path.join(folder, "rate.md"), encoding="utf-8").read()
    assert "| 128 | network | 3 ± 0.1 |" in text
    assert "lack of fit (lack of fit needs replicates" in text
    assert "**mixture**: the error falls with n in every d (2, 8 and 32)" in text
    assert "**mixture**: with one seed per cell the straight line cannot be tested" in text
    assert "**mixture**: at most 1 seed(s) per cell" in text
    assert "**mixture**: no exponent in d = 128 and 512 (fewer than three points or two n" in text


def test_compare_two_sweeps_cell_by_cell(tmp_path):
    this = synthetic(str(tmp_path / "paper"), {"mixture": {2: 0.8, 8: 0.8, 32: 0.8}}, seeds=1)
    other = str(tmp_path / "sigma2")
    os.makedirs(other)
    rows = [json.loads(line) for line in open(os.path.join(this, "results.jsonl"), encoding="utf-8")]
    rng = np.random.default_rng(3)
    for r in rows:
        if r["n"] in (500, 8000):  # the other sweep ran 6 of this one's 15 cells, with errors 1.5 times larger
            append_result(os.path.join(other, "results.jsonl"),
                          {**r, "score_error": 1.5 * r["score_error"] * float(np.exp(0.02 * rng.standard_normal()))})
    for folder, weighting in ((this, "none"), (other, "sigma2")):
        with open(os.path.join(folder, "sweep.json"), "w", encoding="utf-8") as f:
            json.dump({"settings": {"weighting": weighting, "lr": 0.002}}, f)
    run("experiment", "rate-report", this, "--out", tmp_path / "rate.md", "--compare", other)
    text = (tmp_path / "rate.md").read_text(encoding="utf-8")
    section = text.split("## Compared with `sigma2`")[1].split("## What this shows")[0]
    assert "only these settings differ (this run / the other): weighting: none / sigma2." in section
    assert section.count("| mixture |") == 6 and "| mixture | 32 | 8000 | 0 |" in section
    numbers = json.loads((tmp_path / "rate.json").read_text(encoding="utf-8"))["comparisons"]["sigma2"]["families"]["mixture"]
    assert numbers["cells"] == 6 and numbers["ratio_interval"][0] < 1.5 < numbers["ratio_interval"][1]
    assert numbers["p"] < 1e-6 and numbers["other_lower"] == 0
    assert "the error of `sigma2` is 1.49 times" in section and "lower in 0 of 6 cells" in section
    unrelated = synthetic(str(tmp_path / "other-d"), {"product": {2: 0.8, 8: 0.8, 32: 0.8}}, seeds=1)
    with pytest.raises(ValueError, match="no cell .* is in both sweeps"):
        report.write_report(this, str(tmp_path / "x.md"), compare_with=unrelated)
    assert not (tmp_path / "x.md").exists()
    # several comparisons: a section each, in the order given, and the command that made the page
    longer = str(tmp_path / "budget2")
    os.makedirs(longer)
    for r in rows:
        if r["n"] == 500:
            append_result(os.path.join(longer, "results.jsonl"), {**r, "score_error": 0.9 * r["score_error"]})
    with open(os.path.join(longer, "sweep.json"), "w", encoding="utf-8") as f:
        json.dump({"settings": {"weighting": "none", "lr": 0.002, "min_steps": 24000}}, f)
    report.write_report(this, str(tmp_path / "two.md"), compare_with=[other, longer])
    text = (tmp_path / "two.md").read_text(encoding="utf-8")
    assert text.index("## Compared with `sigma2`") < text.index("## Compared with `budget2`") < text.index(
        "## What this shows")
    assert f"--compare {other} --compare {longer}`" in text and "min_steps: None / 24000" in text
    assert set(json.loads((tmp_path / "two.json").read_text(encoding="utf-8"))["comparisons"]) == {"sigma2",
                                                                                                    "budget2"}
    with pytest.raises(ValueError, match="the folders' names must differ"):
        report.write_report(this, str(tmp_path / "y.md"), compare_with=[other, other])


def test_cost_counts_cells_and_seconds_per_d_and_complete_seeds(tmp_path):
    """The cost summary: cells per seed, mean and max of train + eval seconds per d, the
    core-hours of each complete seed (one that holds every cell of the grid)."""
    rows = []
    for seed in (0, 1):
        for i, (d, n) in enumerate((d, n) for d in (2, 8) for n in (500, 1000)):
            if seed == 1 and i == 3:
                continue  # seed 1 lacks (d = 8, n = 1000)
            rows.append({"family": "mixture-iso", "d": d, "n": n, "seed": seed,
                         "train_seconds": 100.0 * d + n / 100 + seed, "eval_seconds": 10.0})
    rows.append({"family": "mixture-iso", "d": 2, "n": 500, "seed": 2})  # an old row: no times
    cost = report._cost(rows)
    assert cost["cells"] == 8 and cost["cells_per_seed"] == {"0": 4, "1": 3, "2": 1}
    assert cost["grid_cells_per_seed"] == 4 and not cost["grid_known"]
    at2 = [205.0 + 10, 210.0 + 10, 206.0 + 10, 211.0 + 10]  # train + eval
    assert cost["seconds_per_cell"]["2"] == {"mean": np.mean(at2), "max": 221.0, "cells": 4}
    assert cost["seconds_per_cell"]["8"]["cells"] == 3
    seed0 = (215 + 220 + 815 + 820) / 3600
    assert list(cost["hours_per_complete_seed"]) == ["0"]
    assert cost["hours_per_complete_seed"]["0"] == pytest.approx(seed0, rel=1e-15)
    grid = {"families": ["mixture-iso"], "d": [2, 8, 32], "n": [500, 1000], "seeds": [0, 1, 2]}
    cost = report._cost(rows, grid)
    assert cost["grid_known"] and cost["planned_cells"] == 18 and cost["grid_cells_per_seed"] == 6
    assert cost["hours_per_complete_seed"] == {}  # no seed has d = 32
    # the text: the projection only against a known grid, no time sentence without times
    grid = {**grid, "d": [2, 8]}
    text = report._cost_section(report._cost(rows, grid))[-2]
    assert "Rows: 8 cells of the 12 of its grid" in text and f"{(2070 + 216 + 221 + 816) / 3600:.1f} core-hours for the 7 timed cells" in text
    assert f"the 3 seeds need at least {3 * seed0 / 2:.1f} hours with two workers" in text
    assert "seeds need" not in report._cost_section(report._cost(rows))[-2]
    untimed = [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]
    text = report._cost_section(report._cost(untimed))[-2]
    assert text == "Rows: 8 cells (seed 0: 4, seed 1: 3, seed 2: 1; 4 cells make one seed)."
    assert "OpenBLAS" not in text and report._cost(rows)["blas_kernels"] == {None: 8}


def test_cost_counts_the_blas_kernels_the_rows_record():
    """Rows of today's version record OpenBLAS's kernel set; the page counts the cells of each,
    and those that do not record it, once any row does."""
    rows = [{"family": "mixture-iso", "d": 2, "n": 500, "seed": s, "blas_kernels": k}
            for s, k in enumerate([["Haswell", "Haswell"], ["SkylakeX", "SkylakeX"], ["SkylakeX"],
                                   ["Haswell", "SkylakeX"], []])]
    rows.append({"family": "mixture-iso", "d": 2, "n": 500, "seed": 5})  # an old row: nothing recorded
    cost = report._cost(rows)
    assert cost["blas_kernels"] == {"Haswell": 1, "Haswell / SkylakeX": 1, "SkylakeX": 2, None: 2}
    text = report._cost_section(cost)[-2]
    assert text.endswith(" Cells by the OpenBLAS kernels their matrix products ran on (they move the last bits "
                         "and the time): Haswell 1, Haswell / SkylakeX 1, SkylakeX 2, not recorded 2.")


def _page_of_stored(tmp_path, name):
    """(the report page, the rows) of a copy of the stored sweep docs/<name>."""
    folder = tmp_path / "run"
    shutil.copytree(os.path.join(HERE, "..", "docs", name), folder)
    report.write_report(str(folder), str(tmp_path / "rate.md"))
    text = (tmp_path / "rate.md").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    return text, rows


def test_the_stored_rerun_is_counted_against_full(tmp_path):
    """The rows in docs/rate_iso_rerun are today's `--full` and `--full --d 1024`, all of them:
    the page counts them against the 420 cells of both."""
    text, rows = _page_of_stored(tmp_path, "rate_iso_rerun")
    assert len(rows) == 420
    assert ("Rows: 420 cells of the 420 of `--full` and `--full --d 1024` (seed 0: 84, seed 1: 84, seed 2: 84, "
            "seed 3: 84, seed 4: 84; 84 cells make one seed)") in text and "settings other than" not in text


def test_full_with_cells_at_a_further_d_is_counted_against_both(tmp_path):
    """`--full --d 1024` run into the folder of `--full` adds its cells to the grid the page
    counts against (420 cells, 84 per seed), and names both commands; a row outside both is
    not counted against either."""
    folder = tmp_path / "run"
    shutil.copytree(os.path.join(HERE, "..", "docs", "rate_iso_rerun"), folder)
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows if r["d"] <= 512]  # `--full`'s cells alone
    extra = [dict(r, d=1024) for r in rows if r["d"] == 512 and r["seed"] == 0]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + extra), encoding="utf-8")
    report.write_report(str(folder), str(tmp_path / "rate.md"))
    text = (tmp_path / "rate.md").read_text(encoding="utf-8")
    assert (f"Rows: {len(rows) + len(extra)} cells of the 420 of `--full` and `--full --d 1024` (seed 0: 84, "
            "seed 1: 70") in text and "84 cells make one seed" in text
    assert "A complete seed took" in text and "the 5 seeds need at least" in text
    with open(folder / "results.jsonl", "a", encoding="utf-8") as f:  # n = 64000 is in neither grid
        f.write(json.dumps(dict(rows[0], n=64000)) + "\n")
    report.write_report(str(folder), str(tmp_path / "rate.md"))
    text = (tmp_path / "rate.md").read_text(encoding="utf-8")
    assert f"Rows: {len(rows) + len(extra) + 1} cells (seed 0: " in text and "of the 420" not in text


def test_cells_at_a_further_d_alone_are_counted_against_their_own_grid(tmp_path):
    """A folder holding only `--full --d 1024`'s cells counts them against that command's 70
    cells, not against 420; d = 4, below `--full`'s largest d, is handled the same way."""
    stored = [json.loads(line) for line in open(os.path.join(HERE, "..", "docs", "rate_iso_rerun", "results.jsonl"),
                                                 encoding="utf-8")]
    for d, name in ((1024, "`--full --d 1024`"), (4, "`--full --d 4`")):
        folder = tmp_path / f"run{d}"
        os.makedirs(folder)
        shutil.copy(os.path.join(HERE, "..", "docs", "rate_iso_rerun", "sweep.json"), folder)
        rows = [dict(r, d=d) for r in stored if r["d"] == 512 and r["seed"] == 0]
        (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        report.write_report(str(folder), str(tmp_path / "rate.md"))
        text = (tmp_path / "rate.md").read_text(encoding="utf-8")
        assert f"Rows: {len(rows)} cells of the 70 of {name} (seed 0: 14; 14 cells make one seed)" in text


def test_rows_of_an_earlier_full_are_not_counted_against_todays(tmp_path):
    """docs/rate_iso_cosine was `--full` before the zero output layer and the early checkpoints:
    the page names those two settings and does not count its rows against today's 350 cells."""
    text, rows = _page_of_stored(tmp_path, "rate_iso_cosine")
    assert f"Rows: {len(rows)} cells (seed 0: " in text and "of the 350 of `--full`" not in text
    assert ("These rows were made with settings other than today's `--full` (output_init: random (not recorded) "
            "here, zero in `--full`; val_early: none (not recorded) here, 3 in `--full`)") in text
    assert "sgm-ref experiment rate RUN --full --workers 2" in text and "dask worker" in text


def test_docs_rate_md_is_the_report_of_the_stored_rows(tmp_path, monkeypatch):
    """docs/rate.md is what PAGE_COMMAND writes from the stored rows (regenerated here; only
    the output path differs)."""
    root = os.path.join(HERE, "..")
    monkeypatch.chdir(root)
    out = tmp_path / "rate.md"
    report.write_report(PAGE_SOURCE, str(out), compare_with=PAGE_COMPARES)
    fresh = out.read_text(encoding="utf-8").replace(f"--out {out}", "--out docs/rate.md")
    with open(os.path.join(root, "docs", "rate.md"), encoding="utf-8") as f:
        stored = f.read()
    assert f"Generated by `{PAGE_COMMAND}`" in stored, ("docs/rate.md is not made by", PAGE_COMMAND)
    # the words and every integer exactly; printed decimals to 2% (a fit's last printed digit
    # may move with a SciPy release: the fits are least squares, their tolerances SciPy's)
    number = r"(-?\d+(?:\.\d+)?(?:e[+-]?\d+)?)"
    fresh_parts, stored_parts = re.split(number, fresh), re.split(number, stored)
    stale = "docs/rate.md is stale: " + PAGE_COMMAND
    assert len(fresh_parts) == len(stored_parts), stale
    for i, (a, b) in enumerate(zip(fresh_parts, stored_parts)):
        if i % 2 == 0 or not re.search(r"[.e]", a + b):
            assert a == b, (stale, a, b)
        else:
            assert float(a) == pytest.approx(float(b), rel=2e-2, abs=1e-12), (stale, a, b)


def test_where_the_network_does_no_better_than_minus_x():
    """n0 is the start of the longest run of largest n where the network's mean is >= -x's."""
    def point(net, mx):
        return {"network": (net, 0.01), "score -x": (mx, 0.01)}
    a = {"d": [2, 32, 512], "points": {
        "2": {"500": point(0.5, 1.0), "4000": point(0.1, 1.0)},                       # never
        "32": {"500": point(2.0, 1.0), "4000": point(0.9, 1.0), "8000": point(1.0, 1.0)},  # only the last (ties count)
        "512": {"500": point(6.0, 1.0), "2000": point(0.8, 1.0), "4000": point(1.1, 1.0), "32000": point(1.2, 1.0)}}}
    assert report._at_or_above_minus_x(a) == {32: 8000, 512: 4000}


def test_a_flat_start_at_the_minus_x_level_is_named():
    """n1 ends the run of smallest n where the network's mean is not below -x's by two standard
    errors of the difference; a d at or above -x from the smallest n on is left to `stuck`."""
    def point(net, mx, se=0.01):
        return {"network": [net, se, 5], "score -x": [mx, se, 5]}  # [mean, se, seeds]
    a = {"d": [2, 32, 512, 1024], "n": [500, 2000, 4000, 8000], "points": {
        "2": {"500": point(0.5, 1.0), "2000": point(1.0, 1.0)},                         # learns at once
        "32": {"500": point(0.98, 1.0), "2000": point(0.9, 1.0), "4000": point(1.0, 1.0)},  # 0.02 < 2 x 0.014
        "512": {"500": point(1.0, 1.0), "2000": point(1.01, 1.0), "4000": point(0.5, 1.0),
                "8000": point(0.2, 1.0)},
        "1024": {"500": point(1.0, 1.0), "8000": point(1.0, 1.0)}}}                     # flat throughout
    assert report._no_better_than_minus_x_at_first(a) == {32: 500, 512: 2000, 1024: 8000}
    not_shows = []
    report._late_start_sentences("fam", a, report._at_or_above_minus_x(a), not_shows)
    assert not_shows == [
        "**fam**: from n = 500 the network does no better than the score -x (its mean error not below the -x "
        "baseline's by two standard errors) up to n = 500 (d = 32) and 2000 (d = 512): there the straight-line "
        "exponent spans a flat start and the fall after it."]


def test_compare_by_n_shows_what_pooling_hides():
    """A setting that doubles the error at small n and halves it at large n: pooled over the
    family the geometric mean is 1, per n it is 2 and 1/2, each with its paired test."""
    rng = np.random.default_rng(4)
    rows, other = [], []
    for d in (2, 8, 32):
        for n, factor in ((500, 2.0), (8000, 0.5)):
            r = {"family": "mixture-iso", "d": d, "n": n, "seed": 0, "score_error": 0.1 * d, "score_error_se": 0.001}
            rows.append(r)
            other.append({**r, "score_error": factor * r["score_error"] * float(np.exp(0.01 * rng.standard_normal()))})
    c = report.compare(rows, other)
    assert c["families"]["mixture-iso"]["ratio"] == pytest.approx(1.0, rel=0.03)
    assert c["by_n"]["500"]["ratio"] == pytest.approx(2.0, rel=0.03) and c["by_n"]["500"]["p"] < 1e-3
    assert c["by_n"]["8000"]["ratio"] == pytest.approx(0.5, rel=0.03) and c["by_n"]["8000"]["other_lower"] == 3
    text = "\n".join(report._comparison_section(c, "other"))
    assert "- **at n = 500** (every family and d): over 3 cells the error of `other` is 2" in text


@pytest.mark.parametrize("grid", [{"d": [2]}, {"families": [], "d": [2], "n": [500], "seeds": [0]}, [1, 2]])
def test_analyse_refuses_a_grid_that_is_not_one(grid):
    rows = [{"family": "mixture-iso", "d": 2, "n": n, "seed": 0, "score_error": 0.1, "score_error_se": 0.01}
            for n in (500, 1000)]
    with pytest.raises(ValueError, match="grid must be a sweep grid like rate.FULL"):
        report.analyse(rows, grid)


def test_a_comparison_of_training_alone_says_whether_the_training_is_long_enough():
    rows = [{"family": "mixture", "d": d, "n": n, "seed": s, "status": "ok", "score_error": 1.0 / n,
             "score_error_se": 0.001} for d in (2, 8) for n in (500, 2000, 8000) for s in (0, 1)]
    rng = np.random.default_rng(0)

    def other(factor):
        return [{**r, "score_error": factor * r["score_error"] * float(np.exp(0.01 * rng.standard_normal()))}
                for r in rows]

    mine = {"settings": {"min_steps": 12000, "epochs": 200, "lr": 0.002}}
    longer = {"settings": {"min_steps": 24000, "epochs": 400, "lr": 0.002}}
    same = report.compare(rows, other(0.98), mine, longer)
    shows, not_shows = report._training_sentences([(same, "budget2")])
    assert not not_shows and len(shows) == 1
    assert shows[0].startswith("This run's training is long enough to 10%: trained longer as `budget2` (epochs 400 "
                               "instead of 200; min_steps 24000 instead of 12000), the same 12 cells (d = 2 and 8, "
                               "n = 500, 2000 and 8000, 2 seed(s)) have 0.98 times")
    assert re.search(r"by n: 0\.9\d+ \(n = 500\), 0\.9\d+ \(n = 2000\) and 0\.9\d+ \(n = 8000\)\); within 10% "
                     r"also for each family and at the largest n\.$", shows[0])
    # within 10% over all cells but not for one family: undecided, and the page says where
    two = rows + [{**r, "family": "tilt"} for r in rows]
    split = [{**r, "score_error": (0.98 if r["family"] == "mixture" else 0.88) * r["score_error"]
              * float(np.exp(0.005 * rng.standard_normal()))} for r in two]
    mixed = report.compare(two, split, mine, longer)
    low, high = mixed["all"]["ratio_interval"]
    assert 0.9 < low and high < 1.1  # pooled, it would pass
    shows, not_shows = report._training_sentences([(mixed, "budget2")])
    assert shows == [] and not_shows[0].startswith("Whether this run's training is long enough is undecided")
    where = not_shows[0].split("the interval reaches beyond 0.9 to 1.1 (")[1]
    assert where.startswith("tilt: 0.88 [0.87") and "mixture" not in where  # the family that is not within
    # a budget-bound run: the longer training halves the error
    bound = report.compare(rows, other(0.5), mine, longer)
    shows, not_shows = report._training_sentences([(bound, "budget2")])
    assert not shows and not_shows[0].startswith("This run's training is budget-bound: trained longer as `budget2`")
    # an interval that straddles a threshold decides nothing; nor does a longer run that is worse
    noisy = report.compare(rows, [{**r, "score_error": r["score_error"] * (0.8 if r["seed"] else 1.15)}
                                  for r in rows], mine, longer)
    worse = report.compare(rows, other(1.5), mine, longer)
    for c in (noisy, worse):
        shows, not_shows = report._training_sentences([(c, "budget2")])
        assert shows == [] and len(not_shows) == 1
        assert not_shows[0].startswith("Whether this run's training is long enough is undecided")
    # a comparison that changes more than the training, or trains no longer, says nothing about it
    objective = report.compare(rows, other(0.5), mine, {"settings": {**longer["settings"], "lr": 0.001}})
    assert report._training_sentences([(objective, "other")]) == ([], [])
    resampled = report.compare(rows, other(0.98), mine, {"settings": {**mine["settings"], "time_sampling": "x"}})
    assert report._training_sentences([(resampled, "other")]) == ([], [])
    shorter = report.compare(rows, other(0.98), mine, {"settings": {**mine["settings"], "min_steps": 6000}})
    assert report._training_sentences([(shorter, "other")]) == ([], [])
    text = report.report_markdown(report.analyse(rows), mine, comparisons=[(bound, "budget2")])
    assert "- This run's training is budget-bound: trained longer as `budget2`" in text.split(
        "## What it does not show")[1]


def test_rows_made_with_other_settings_than_full_say_so(tmp_path):
    folder = synthetic(str(tmp_path / "sweep"), {"mixture": {2: 0.8, 8: 0.8, 32: 0.8}}, seeds=1)
    settings = {k: v for k, v in rate.FULL["settings"].items() if k not in ("lr_schedule", "time_sampling")}
    with open(os.path.join(folder, "sweep.json"), "w", encoding="utf-8") as f:
        json.dump({"settings": {**settings, "min_steps": 3000}}, f)
    report.write_report(folder)
    text = open(os.path.join(folder, "rate.md"), encoding="utf-8").read()
    assert ("These rows were made with settings other than today's `--full` (lr_schedule: constant (not recorded) "
            "here, cosine in `--full`; min_steps: 3000 here, 12000 in `--full`; time_sampling: direct (not "
            "recorded) here, defensive in `--full`): the commands above run today's.") in text
    with open(os.path.join(folder, "sweep.json"), "w", encoding="utf-8") as f:
        json.dump({"settings": rate.FULL["settings"]}, f)
    report.write_report(folder, compare_with=None)
    assert "settings other than today's" not in open(os.path.join(folder, "rate.md"), encoding="utf-8").read()


def test_flattening_needs_its_test_and_a_rise_is_named():
    """A floor above 25% of the last error counts as flattening only where c = 0 is rejected;
    a floor above the last error is a curve that rises, not one that flattens; a rise of the
    mean error by more than two standard errors between two n is named with its numbers."""
    def net(share, p):
        return {"floor_share": share, "saturating": {"floor_test": {"p": p}}}
    a = {"d": [2, 8, 32, 128, 512],
         "network": {"2": net(0.1, 0.001), "8": net(0.5, 0.001), "32": net(0.5, 0.3), "128": net(1.2, 0.5),
                     "512": {"floor_share": None, "saturating": None}},
         "points": {"2": {"500": {"network": (1.0, 0.01)}, "1000": {"network": (0.5, 0.01)}},
                    "8": {"500": {"network": (1.0, 0.01)}, "1000": {"network": (1.15, 0.01)}},   # +15%, > 2 x 0.014
                    "32": {"500": {"network": (1.0, 0.01)}, "1000": {"network": (1.02, 0.01)}},  # within noise
                    "128": {"500": {"network": (1.0, 1e-4)}, "1000": {"network": (1.05, 1e-4)}},  # 5%: too small
                    "512": {}}}
    not_shows = []
    report._floor_sentences("fam", a, not_shows)
    report._rising_sentences("fam", a, not_shows)
    assert not_shows == [
        "**fam**: the error has flattened in d = 8: a floor c above 25% of the error at the largest n, and c = 0 "
        "rejected at level 0.05 (50%, p = 0.001 (d = 8)); larger n alone would not lower the error much under these "
        "settings.",
        "**fam**: whether the error flattens is undecided in d = 32: the fitted floor is above 25% of the error at "
        "the largest n but c = 0 is not rejected (50%, p = 0.3 (d = 32)).",
        "**fam**: in d = 128 the saturating fit's floor exceeds the error at the largest n (120%): the curve does "
        "not fall there at the end, and its b and c do not describe a flattening.",
        "**fam**: the error rises with n (by more than 10% and two standard errors) at d = 8, n = 500 to 1000: 1 to "
        "1.15."]


def test_a_comparison_says_which_draws_the_cells_share():
    rows = [{"family": "mixture", "d": 2, "n": n, "seed": 0, "status": "ok", "score_error": 1.0 / n,
             "score_error_se": 0.001} for n in (500, 2000)]
    for other, words in [({"lr": 0.001}, "each with the same data, initialisation and evaluation draws;"),
                         ({"output_init": "zero"}, "each with the same data and evaluation draws and the same "
                                                   "initialisation but for the output layer;"),
                         ({"width": 128, "output_init": "zero"}, "each with the same data and evaluation draws but "
                                                                 "not the same network (output_init and width "
                                                                 "differ);")]:
        c = report.compare(rows, rows, {"settings": {"lr": 0.002}}, {"settings": {"lr": 0.002, **other}})
        assert words in report._comparison_section(c, "other")[2]


def test_a_comparison_does_not_claim_the_draws_its_settings_change():
    """A review: two sweeps with another base_seed (or another n_eval, t0 or T) were said to have
    "the same data, initialisation and evaluation draws", though base_seed seeds every draw of a
    cell and the others move the evaluation's points (rate._integrated_errors). n_eval_tilted
    moves only the Monte-Carlo families' points."""
    rows = [{"family": family, "d": 2, "n": n, "seed": 0, "status": "ok", "score_error": 1.0 / n,
             "score_error_se": 0.001} for family in ("mixture", "tilted") for n in (500, 2000)]
    mixture = rows[:2]
    for cells, other, words in [
            (rows, {"base_seed": 1}, "each with other data, initialisation and evaluation draws (base_seed differs);"),
            (rows, {"base_seed": 1, "width": 128}, "each with other data, initialisation and evaluation draws"),
            (rows, {"n_eval": 5000}, "each with the same data and initialisation, but other evaluation draws "
                                     "(n_eval differ);"),
            (rows, {"t0": 0.001, "output_init": "zero"}, "each with the same data and the same initialisation but "
                                                         "for the output layer, but other evaluation draws (t0 "
                                                         "differ);"),
            (rows, {"T": 3.0, "width": 128}, "each with the same data but not the same network (width differ), but "
                                             "other evaluation draws (T differ);"),
            (rows, {"n_eval_tilted": 100}, "but other evaluation draws (n_eval_tilted differ);"),
            (mixture, {"n_eval_tilted": 100}, "each with the same data, initialisation and evaluation draws;")]:
        c = report.compare(cells, cells, {"settings": {"base_seed": 0, "lr": 0.002}},
                           {"settings": {"base_seed": 0, "lr": 0.002, **other}})
        assert words in report._comparison_section(c, "other")[2], other


def test_a_bound_term_that_overflowed_in_one_seed_is_not_averaged_over_the_others():
    """A review: a seed whose path term overflowed (rate._bound_terms writes its kl_path, kl and
    kl_upper as null; its bound is the trivial 1) was left out of those terms' means and in the
    tv's: "kl_path 0.2" beside a mean bound (1 + 0.3) / 2 = 0.65 that counts the overflowed seed.
    The term is now infinite (null in the numbers, ∞ in the table) when any seed's overflowed."""
    def row(seed, tv):
        overflowed = tv["tv"] == 1.0
        terms = {"tv": tv["tv"], "tv_se": 0.0 if overflowed else 0.01, "kl_prior": 1e-3, "tv_early_stopping": 0.01,
                 "kl_path": None if overflowed else 0.2, "kl_path_se": None if overflowed else 0.01,
                 "kl": None if overflowed else 0.201, "kl_upper": None if overflowed else 0.25,
                 "method": "residual_exponential"}
        return {"family": "mixture-iso", "d": 2, "n": 500, "seed": seed, "status": "ok", "score_error": 0.1,
                "score_error_se": 0.01, "tv_bound": tv["tv"], "tv": terms}

    rows = [row(0, {"tv": 0.3}), row(1, {"tv": 1.0})]
    point = report.analyse(rows)["families"]["mixture-iso"]["points"]["2"]["500"]
    assert point["tv"][:2] == [0.65, 0.35]
    terms = point["tv_terms"]
    assert terms["kl_path"] is None and terms["kl"] is None and terms["kl_upper"] is None
    assert terms["kl_prior"] == pytest.approx(1e-3, rel=1e-15) and terms["tv_early_stopping"] == 0.01
    (line,) = [x for x in report._family_section("mixture-iso", report.analyse(rows)["families"]["mixture-iso"])
               if x.startswith("| 2 | learned |")]
    assert "kl ∞, kl_path ∞, kl_prior 0.001, kl_upper ∞, tv_early_stopping 0.01" in line
    json.dumps(terms, allow_nan=False)  # the numbers file holds it
    # one seed alone, not overflowed: its terms as before
    assert report.analyse(rows[:1])["families"]["mixture-iso"]["points"]["2"]["500"]["tv_terms"]["kl_path"] == 0.2


def test_cells_that_kept_the_initial_network_are_named_and_the_exponent_after_them_fitted():
    """Where the held-out selection kept step 0 the network is its initialisation (score -x
    exactly): 72 of the page's 420 cells, all of d = 1024 up to n = 4000 (found by a review).
    The report names them and fits the exponent over the n above the last of them: here
    against scipy's linregress on the same rows, slope and t interval. The sentence said "at
    those n the network is not trained" of an n where 1 of 3 seeds kept it (a later review):
    it is the seeds named that are not trained."""
    from scipy import stats

    rng = np.random.default_rng(0)
    rows = []
    for n in (500, 1000, 2000, 4000, 8000):
        for seed in range(3):
            untrained = n <= 1000 or (n == 2000 and seed == 0)
            error = 1.0 if untrained else 5.0 * n ** -0.7 * float(np.exp(0.05 * rng.standard_normal()))
            rows.append({"family": "f", "d": 64, "n": n, "seed": seed, "score_error": error,
                         "checkpoint_step": 0 if untrained else 100})
    entry = report._after_the_initial_network(rows)
    assert entry["initial_kept"] == {"500": [3, 3], "1000": [3, 3], "2000": [1, 3]}
    assert entry["after_initial"] is None  # two n above: no exponent claimed
    assert entry["after_initial_reason"].startswith("fewer than three n above n = 2000")
    # with a third n above, the exponent is fitted
    rows += [{"family": "f", "d": 64, "n": 16000, "seed": s, "score_error": 5.0 * 16000 ** -0.7 * (1 + 0.01 * s),
              "checkpoint_step": 100} for s in range(3)]
    entry = report._after_the_initial_network(rows)
    above = [r for r in rows if r["n"] > 2000]
    fit = stats.linregress(np.log([r["n"] for r in above]), np.log([r["score_error"] for r in above]))
    half = stats.t.ppf(0.975, len(above) - 2) * fit.stderr
    after = entry["after_initial"]
    assert after["from_n"] == 4000
    assert after["b"] == pytest.approx(-fit.slope, rel=1e-12, abs=0)
    assert after["b_interval"] == pytest.approx([-fit.slope - half, -fit.slope + half], rel=1e-12, abs=0)
    a = {"d": [64], "n": [500, 1000, 2000, 4000, 8000, 16000], "network": {"64": entry}}
    not_shows = []
    random_output = []  # output_init None: the initial network is not -x
    report._initial_network_sentences("f", a, random_output, zero_output=False)
    assert random_output[0].startswith("**f**: the held-out selection kept the initial (untrained) network in every "
                                       "seed at n = 500 and 1000")
    report._initial_network_sentences("f", a, not_shows)
    assert not_shows == [
        "**f**: the held-out selection kept the initial network, whose score is -x exactly, in every seed at n = 500 "
        "and 1000, 1 of 3 seeds at n = 2000 (d = 64): in those seeds the network is not trained, and a straight "
        "line through those n measures how long that lasts as well as a rate; "
        f"fitted over the n above them, the exponent is "
        f"{after['b']:.2f} {report._interval(after['b_interval'])} (d = 64, n ≥ 4000)."]
    # rows of a sweep that kept the last step (no checkpoint_step) count as trained
    assert report._after_the_initial_network([{**r, "checkpoint_step": None} for r in rows]) == {"initial_kept": {}}


def test_p_values_and_ratios_keep_their_side_of_the_threshold():
    """A pooled p of 0.04980 was printed 'p = 0.05' in a sentence saying 'not rejected at
    level 0.05', and a ratio above 1 as '1.0' in one saying 'exceeds' (a review)."""
    assert report._p(0.0498) == "p = 0.0498"
    assert report._p(0.0503) == "p = 0.0503"
    assert report._p(0.00996) == "p = 0.00996"
    assert report._p(0.0046) == "p = 0.0046" and report._p(0.5) == "p = 0.5" and report._p(3e-5) == "p < 1e-4"
    assert report._digits_keeping_side(1.04, (1.0,), 1, "f") == "1.04"
    assert report._digits_keeping_side(4.26, (1.0,), 1, "f") == "4.3"


def test_a_folder_with_three_n_says_no_saturating_fit_was_computed(tmp_path):
    """With three n there is no saturating fit, and the report said its lower limit exceeds
    the curse rate 'in no d' (a review)."""
    text, _ = _page_of_stored(tmp_path, "rate_iso_rerun_budget2")
    assert "needs at least 4 distinct n" in text
    assert "The saturating fit's lower limit exceeds it in no d" not in text
    assert "No saturating fit was computed to compare." in text


def test_the_figures_keep_the_backend_and_the_tv_legend_beside_the_data(tmp_path, monkeypatch):
    """The report's figures are made without pyplot (it switched a notebook's backend to
    Agg); the TV figure's legend sits beside the axes and names each d once, where twelve
    entries inside covered ten points (found by a review)."""
    matplotlib = pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    matplotlib.use("svg")
    figures = {}
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.setdefault(os.path.basename(path), fig))
    analysis = report.analyse(report.load_sweep(os.path.join(HERE, "..", PAGE_SOURCE))[0])
    assert report.plot_tv_vs_n(str(tmp_path / "tv.png"), analysis) is True
    assert matplotlib.get_backend().lower() == "svg" and plt.get_fignums() == []
    (ax,) = figures["tv.png"].axes
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [f"d = {d}" for d in analysis["families"]["mixture-iso"]["d"]]
    figures["tv.png"].canvas.draw()
    box, axes_box = legend.get_window_extent(), ax.get_window_extent()
    assert box.x0 > axes_box.x1  # wholly to the right of the axes


def test_the_error_vs_d_figure_draws_a_single_n_once(monkeypatch):
    """A review: rows of one n drew each method twice in the error-vs-d figure, in two colours
    under the same label ("network, n = 40" twice), as though two n had been measured."""
    pytest.importorskip("matplotlib")
    figures = {}
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.setdefault(os.path.basename(path), fig))
    rows = [{"family": "mixture", "d": d, "n": 40, "seed": 0, "status": "ok", "score_error": 0.1 * d,
             "score_error_se": 0.01, "baseline_minus_x": {"error": 1.0, "se": 0.01}} for d in (2, 8)]
    report.plot_error_vs_d("one.png", report.analyse(rows))
    labels = [t.get_text() for t in figures["one.png"].axes[0].get_legend().get_texts()]
    assert labels == ["network, n = 40", "score -x, n = 40"]
    rows += [{**r, "n": 80} for r in rows]  # two n: each drawn at both, the smaller first
    report.plot_error_vs_d("two.png", report.analyse(rows))
    labels = [t.get_text() for t in figures["two.png"].axes[0].get_legend().get_texts()]
    assert labels == ["network, n = 40", "score -x, n = 40", "network, n = 80", "score -x, n = 80"]


def test_the_page_says_what_a_planar_target_and_the_curse_rate_can_and_cannot_show():
    """A reader of docs/rate.md learns that both families are one low-dimensional problem
    rotated into R^d (so low complexity and low intrinsic dimension are not told apart, with
    the EM plug-in's exponents as the evidence), that the score errors use one fixed window
    whatever the schedule, and where 2/(d + 4) comes from and what beating it means."""
    with open(os.path.join(HERE, "..", "docs", "rate.md"), encoding="utf-8") as f:
        page = " ".join(f.read().split())
    assert ("**mixture-iso and tilt-iso**: the target is one low-dimensional problem rotated into R^d" in page
            and "cannot tell Cole & Lu's explanation" in page
            and "the EM plug-in, which does not know the plane either, has exponent 1.01 to 1.06 in every d" in page)
    assert page.count("the score errors above are on the fixed window [t0, T] = [0.01, 5] for every n") == 2
    assert "(minimax: Wibisono, Wu & Yang 2024; Stone 1982" in page and "not evidence for it alone" in page
    # a family that is not confined to a plane gets no such sentence
    fams = {"product": {"fits": {}}}
    assert report._PLANAR_FAMILIES == ("mixture-iso", "tilt-iso") and "product" not in report._PLANAR_FAMILIES
    assert "EM plug-in" not in report._plane_sentence(["mixture-iso"], fams)


def test_a_sweep_where_the_network_learns_in_no_d_is_reported(tmp_path):
    """When no d's error ended below half the -x baseline, every exponent is left out of the
    claims and no d is left: the page stopped with IndexError in _list([]) (a review: `sgm-ref
    experiment rate-report` on a quick sweep of one d printed a traceback)."""
    folder = synthetic(tmp_path / "run", {"mixture-iso": {2: 0.05, 8: 0.05, 32: 0.05}})
    report.write_report(folder)
    shows, not_shows = conclusions((tmp_path / "run" / "rate.md").read_text())
    assert "the exponents of d = 2, 8 and 32 (0.06, 0.05 and 0.05) are not rates of learning" in not_shows
    assert "the error stays above half the -x baseline up to n = 8000 in d = 2, 8 and 32" in not_shows
    # no claim about exponents under "What this shows": not even that they are equal across d
    assert "the error falls with n" not in shows and "exceeds the curse rate" not in shows
    assert "equal exponents" not in shows and "but d = 2, 8 and 32 among them, where the exponent is not a rate" \
        in not_shows


@pytest.mark.parametrize("name", ["sweep.md", "summary.md"])
def test_a_report_never_overwrites_the_sweeps_own_files(tmp_path, name):
    """--out RUN/sweep.md wrote the report's numbers over RUN/sweep.json (a review): the next
    `sgm-ref experiment rate RUN` refused the folder ("not a sweep description") and its cells
    could not be continued. Now refused before anything is written."""
    folder = synthetic(tmp_path / "run", {"mixture": {2: 0.5, 8: 0.5, 32: 0.5}}, seeds=1)
    (tmp_path / "run" / "sweep.json").write_text('{"settings": {}}\n')
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with pytest.raises(ValueError, match=f"--out .*{name}: the report would overwrite the sweep's own "
                                         f".*{name.replace('.md', '.json')}.*give the report another name"):
        report.write_report(folder, tmp_path / "run" / name)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before
    report.write_report(folder, tmp_path / name)  # outside a sweep's folder the name is free
    assert (tmp_path / name).is_file()


def test_a_lower_limit_is_printed_on_its_side_of_zero(tmp_path):
    """"bounded away from 0: lower 95% limits 0.00" (a review: `sgm-ref experiment rate-report` on a
    `--quick` sweep, tilt-iso d = 2, whose limit was 0.00098): the claim's number is printed with
    the digits that keep it on its side of 0, and a negative limit is not printed as -0.00."""
    folder = synthetic(tmp_path / "run", {"mixture": {2: 0.8, 8: 0.8, 32: 0.8}})
    rows, _ = report.load_sweep(folder)
    analysis = report.analyse(rows)
    by_d = analysis["families"]["mixture"]["fits"]["network"]["by_d"]
    by_d["2"]["b_interval"][0] = 0.00098
    shows, _ = conclusions("\n".join(report._conclusions(analysis["families"])))
    limit = re.search(r"its smallest lower 95% limit (\S+) \(d = 2\)", shows).group(1)
    assert float(limit) > 0 and float(limit) == pytest.approx(0.00098, rel=0.05)
    by_d["8"]["b_interval"][0] = -0.0004
    shows, not_shows = conclusions("\n".join(report._conclusions(analysis["families"])))
    away = re.search(r"exponent bounded away from 0: lower 95% limits (\S+) and ", shows).group(1)
    near = re.search(r"the exponent's interval reaches 0 in d = 8 \(lower limits (\S+)\)", not_shows).group(1)
    assert float(away) > 0 and float(near) < 0


def _rows(error, minus_x=lambda n: 1.0, ns=(500, 1000, 2000, 4000, 8000, 16000, 32000), seeds=5, d=2):
    """Rows of one family and d: the network's error error(n) and -x's minus_x(n) (None: not
    measured), each seed's value times 1 + 0.01 (seed - 2) (replicates that differ)."""
    rows = []
    for n in ns:
        for seed in range(seeds):
            w = 1.0 + 0.01 * (seed - 2)
            mx = minus_x(n)
            rows.append({"family": "mixture", "d": d, "n": n, "seed": seed, "status": "ok",
                         "score_error": error(n) * w, "score_error_se": 1e-3,
                         "baseline_minus_x": None if mx is None else {"error": mx / w, "se": 1e-3}})
    return rows


def test_n_star_and_the_minus_x_claims_stop_at_the_largest_n_with_a_baseline():
    """-x measured up to n = 8000 only, the error above half of it there and 1% of it after: the
    page said "n* > 32000" and "stays above half the -x baseline up to n = 32000" (a review);
    nothing is known about -x above 8000, so n* > 8000 and the claim stops at n = 8000."""
    rows = _rows(lambda n: 0.9 if n <= 8000 else 0.01, lambda n: 1.0 if n <= 8000 else None)
    # independently: every mean error up to 8000 is above half the mean -x there
    means = {n: np.mean([r["score_error"] for r in rows if r["n"] == n]) for n in (500, 1000, 2000, 4000, 8000)}
    mx = {n: np.mean([r["baseline_minus_x"]["error"] for r in rows if r["n"] == n]) for n in means}
    assert all(means[n] > 0.5 * mx[n] for n in means)
    analysis = report.analyse(rows)
    a = analysis["families"]["mixture"]
    text = report.report_markdown(analysis)
    row = [line for line in text.splitlines() if line.startswith("| 2 | ") and "[" in line][0]
    assert "| > 8000 |" in row and "32000 |" not in row
    _, not_shows = conclusions(text)
    assert "the error stays above half the -x baseline up to n = 8000 (d = 2)." in not_shows
    assert "does not end below half the -x baseline by n = 8000 (d = 2);" in not_shows
    assert "up to n = 32000" not in not_shows and "by n = 32000" not in not_shows
    assert a["network"]["2"]["n_star"] == {"n_star": None, "censored": "right"}
    assert a["network"]["2"]["minus_x_end"] == {"n_last": 8000, "ends_below": False}


def test_an_error_back_above_half_minus_x_at_the_largest_n_is_not_a_rate():
    """The error crosses below half of -x and comes back above it at the largest n: the exponent
    claims are made only where the error ends below half the -x baseline (the comment's rule),
    and the page said "the error falls with n in every d" and "falls below ... at n*" (a review)."""
    level = {500: 0.9, 1000: 0.8, 2000: 0.6, 4000: 0.3, 8000: 0.2, 16000: 0.3, 32000: 0.8}
    rows = _rows(level.__getitem__)
    analysis = report.analyse(rows)
    nstar = analysis["families"]["mixture"]["network"]["2"]["n_star"]
    # independently: log-linear interpolation of log(error / (0.5 -x)) between n = 2000 and 4000
    g = {n: math.log(np.mean([r["score_error"] for r in rows if r["n"] == n])
                     / (0.5 * np.mean([r["baseline_minus_x"]["error"] for r in rows if r["n"] == n])))
         for n in (2000, 4000)}
    expected = math.exp(math.log(2000) + g[2000] * math.log(2) / (g[2000] - g[4000]))
    shows, not_shows = conclusions(report.report_markdown(analysis))
    assert "falls with n" not in shows and "at n*" not in shows
    assert "the exponent of d = 2 (" in not_shows and ") is not a rate of learning" in not_shows
    assert (f"the error falls below half the -x baseline and is back above it at the largest n: "
            f"n* = {expected:.0f}, above again at n = 32000 (d = 2).") in not_shows
    assert nstar["n_star"] == pytest.approx(expected, rel=1e-12)
    assert analysis["families"]["mixture"]["network"]["2"]["minus_x_end"] == {"n_last": 32000, "ends_below": False}


def test_tv_and_exponent_sentences_print_the_digits_their_claims_need():
    """A mean bound of 0.9996 was printed '1.000' in "below 1 (not vacuous)", a fall from 0.99996
    to 0.9996 as "1.000 to 1.000", and limits 0.32049 > 0.32041 as "0.32 > 0.32" (a review)."""
    a = {"d": [2], "n": [500, 32000], "points": {"2": {
        "500": {"tv": [0.99996, 1e-6, 5]}, "32000": {"tv": [0.9996, 1e-6, 5]}}}}
    not_shows = []
    shows = report._tv_sentences("fam", a, not_shows)
    below = re.search(r"below 1 \(not vacuous\) in d = 2: (\S+) \(d = 2\)", shows[0]).group(1)
    first, last = re.search(r"in d = 2 \((\S+) to (\S+)\)", shows[1]).groups()
    assert float(below) < 1 and float(below) == pytest.approx(0.9996, rel=1e-4)
    assert 1 > float(first) > float(last) and float(first) == pytest.approx(0.99996, rel=1e-5)
    b = {"n": [500, 32000], "d": [8], "points": {"8": {"32000": {
        "network": [0.1, 0.01, 5], "empirical measure (curse)": [1.0, 0.1, 5]}}}, "fits": {
        "network": {"by_d": {"8": {"b": 0.5, "b_interval": [0.32049, 0.7]}}},
        "empirical measure (curse)": {"by_d": {"8": {"b": 0.2, "b_interval": [0.1, 0.32041]}}}}}
    text = " ".join(report._baseline_sentences("fam", b))
    low, high = re.search(r"in d = 8: (\S+) > (\S+) \(d = 8\)", text).groups()
    assert float(low) > float(high) and float(low) == pytest.approx(0.32049, rel=1e-3)


def test_no_exponent_says_what_the_fit_needs():
    """Two n and one seed: a d has two distinct n but only two points (a line through them has no
    variance); the reason said "no d has two distinct n yet" (a review)."""
    analysis = report.analyse(_rows(lambda n: 500 / n, ns=(500, 1000), seeds=1))
    _, not_shows = conclusions(report.report_markdown(analysis))
    assert "no exponent could be fitted (no d has two distinct n and three points with a positive error yet)" \
        in not_shows


def test_every_d_and_the_ten_per_cent_interval_are_claimed_only_where_they_hold():
    """The empirical baseline missing at the largest n in d = 8: "below it in every d" named only
    d = 2 (a missing cell is not a win); and a training interval ending at 0.89996 was printed
    "[0.9, ...]" beside "the interval reaches beyond 0.9 to 1.1" (a review)."""
    rows = _rows(lambda n: 500 / n, ns=(500, 2000, 8000)) + [{**r, "d": 8} for r in _rows(lambda n: 500 / n,
                                                                                             ns=(500, 2000, 8000))]
    for r in rows:
        r["baseline_empirical"] = None if (r["d"], r["n"]) == (8, 8000) else {"error": 5.0, "se": 0.1}
    shows, _ = conclusions(report.report_markdown(report.analyse(rows)))
    assert "at n = 8000 the network's error is below the empirical-measure (curse) baseline's in d = 2;" in shows
    mine = {"settings": {"min_steps": 12000, "epochs": 200}}
    longer = {"settings": {"min_steps": 24000, "epochs": 400}}
    c = report.compare(rows, [{**r, "score_error": r["score_error"] * (0.95 if r["seed"] % 2 else 0.97)}
                              for r in rows], mine, longer)
    c["all"]["ratio_interval"] = [0.89996, 0.99]  # an end just beyond the 10% threshold
    _, not_shows = report._training_sentences([(c, "budget2")])
    assert "undecided" in not_shows[0] and "the interval reaches beyond 0.9 to 1.1" in not_shows[0]
    low = re.search(r"95% interval \[(\S+), ", not_shows[0]).group(1)
    assert float(low) < 0.9 and float(low) == pytest.approx(0.89996, rel=1e-5)


def test_an_untested_straight_line_gives_its_reason():
    """Five seeds at two n: no lack-of-fit test (it needs three n), and the page said "with one seed
    per cell the straight line cannot be tested (no replicates ...)" (a review)."""
    analysis = report.analyse(_rows(lambda n: 500 / n, ns=(500, 1000)))
    assert analysis["families"]["mixture"]["seeds"] == 5
    _, not_shows = conclusions(report.report_markdown(analysis))
    assert "one seed" not in not_shows and "no replicates" not in not_shows
    assert ("the straight line in log-log is not tested in any d (lack of fit: lack of fit needs at least three "
            "distinct n, got 2)") in not_shows
    wobble = {500: 1.0, 1000: 1.05, 2000: 0.97}  # off the line: the line has a variance
    one = report.analyse(_rows(lambda n: 500 / n * wobble[n], ns=(500, 1000, 2000), seeds=1))
    assert "with one seed per cell the straight line cannot be tested" in report.report_markdown(one)


def test_a_flat_start_is_claimed_only_from_an_n_where_minus_x_was_measured():
    """-x not measured at n = 500: the page said "from n = 500 the network does no better than the
    score -x ... up to n = 2000" (a review); nothing is known about -x at n = 500."""
    rows = _rows(lambda n: 1.0 if n <= 2000 else 0.3 * 2000 / n, lambda n: None if n == 500 else 1.0)
    a = report.analyse(rows)["families"]["mixture"]
    assert report._no_better_than_minus_x_at_first(a) == {}
    not_shows = []
    report._late_start_sentences("mixture", a, report._at_or_above_minus_x(a), not_shows)
    assert not_shows == []
    # with -x at n = 500 too, the flat start up to n = 2000 is named (there the means differ by about
    # 2e-4, far less than two standard errors of the difference, about 0.02)
    a = report.analyse(_rows(lambda n: 1.0 if n <= 2000 else 0.3 * 2000 / n))["families"]["mixture"]
    assert report._no_better_than_minus_x_at_first(a) == {2: 2000}


def test_the_plane_sentence_says_every_d_only_where_em_was_fitted_in_every_d():
    """EM fitted in d = 2 only (its baseline missing in d = 8): the sentence said "in every d"."""
    fams = {"mixture-iso": {"d": [2, 8], "fits": {"EM plug-in": {"by_d": {"2": {"b": 1.02}}}}}}
    text = report._plane_sentence(["mixture-iso"], fams)
    assert "has exponent 1.02 to 1.02 in d = 2 (mixture-iso)" in text and "every d" not in text
    fams["mixture-iso"]["fits"]["EM plug-in"]["by_d"]["8"] = {"b": 1.06}
    assert "has exponent 1.02 to 1.06 in every d (mixture-iso)" in report._plane_sentence(["mixture-iso"], fams)


def test_the_numbers_do_not_depend_on_the_order_of_the_rows(tmp_path):
    """A review: analyse took the rows in the order of results.jsonl, the order in which the cells
    finished (a resumed sweep's rows after the first run's), and its means, fits and tests moved
    in the last bits with it (the saturating fit's b by 1e-11): the same cells gave another
    rate.json. Now the rows are taken in the order of their cells."""
    folder = synthetic(str(tmp_path), {"mixture": {2: 0.8, 8: 0.5, 32: 0.3}}, seeds=3, rng=np.random.default_rng(4))
    rows = rate.load_results(os.path.join(folder, "results.jsonl"))
    first = report.analyse(rows)
    for seed in range(3):
        shuffled = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]
        again = report.analyse(shuffled)
        assert json.dumps(again) == json.dumps(first)
        assert report.report_markdown(again) == report.report_markdown(first)
    # the seed means: numpy's mean of the seeds in their order, the exponents least squares on every seed
    e = [r["score_error"] for r in rows if r["d"] == 8 and r["n"] == 2000]
    assert first["families"]["mixture"]["points"]["8"]["2000"]["network"][:2] == [
        np.mean(e), np.std(e, ddof=1) / math.sqrt(3)]
    from scipy import stats as scipy_stats

    fit = scipy_stats.linregress(np.log([r["n"] for r in rows if r["d"] == 8]),
                                 np.log([r["score_error"] for r in rows if r["d"] == 8]))
    b = first["families"]["mixture"]["fits"]["network"]["by_d"]["8"]
    assert b["b"] == pytest.approx(-fit.slope, rel=1e-13) and b["b_se"] == pytest.approx(fit.stderr, rel=1e-12)


def test_shares_and_ratios_are_printed_on_the_side_of_the_claim_they_make():
    """A review: a floor of 25.04% of the error was printed "25%" in "a floor c above 25% of
    the error", one of 100.3% "100%" in "the floor exceeds the error at the largest n", and a
    baseline / network ratio of 1.0004 "1" in "the network's error is below the baseline's"."""
    def network(share):
        return {"floor_share": share, "saturating": {"floor_test": {"p": 0.01}}}

    a = {"d": [2, 8], "network": {"2": network(0.2504), "8": network(1.003)}}
    not_shows = []
    report._floor_sentences("mixture", a, not_shows)
    assert "rejected at level 0.05 (25.04%, p = 0.01 (d = 2))" in not_shows[0]
    assert "exceeds the error at the largest n (100.3%)" in not_shows[1]
    a = {"d": [2, 8], "n": [500], "fits": {}, "points": {
        "2": {"500": {"network": [1.0, 0.01, 5], "empirical measure (curse)": [1.0004, 0.01, 5]}},
        "8": {"500": {"network": [1.0, 0.01, 5], "empirical measure (curse)": [3.0, 0.01, 5]}}}}
    (text,) = report._baseline_sentences("mixture", a)
    assert "below the empirical-measure (curse) baseline's in every d; the ratio baseline / network is 1.0004 " \
           "(d = 2) to 3 (d = 8)." in text
    assert report._share(0.37) == "37%" and report._ratio(3.14e5) == "3.14e+05"  # as before away from the limits


def test_the_difference_not_rejecting_could_miss_is_that_of_two_exponents(written):
    """Review: the sentence said differences of 2.8 times the largest se of one exponent could
    go unseen; a difference of two exponents has the se sqrt(se_1^2 + se_2^2), and a difference of
    2.8 se_1 is found by a test of the two at level 0.05 only about half the time (power from
    the normal law), so the difference it can miss is 2.8 times the difference's se."""
    from scipy import stats as sps

    _, text, numbers = written
    _, not_shows = conclusions(text)
    ses = sorted((f["b_se"] for f in numbers["families"]["mixture"]["fits"]["network"]["by_d"].values()),
                 reverse=True)
    se_diff = math.hypot(ses[0], ses[1])
    z = sps.norm.ppf(0.975)

    def power(delta):
        return sps.norm.sf(z - delta / se_diff) + sps.norm.cdf(-z - delta / se_diff)

    assert power(2.8 * ses[0]) < 0.65  # the old number: found 61% of the time here, 51% for equal se
    assert power(2.8 * se_diff) == pytest.approx(0.8, abs=0.005)
    assert (f"**mixture**: not rejecting is not proof of a d-free exponent: each d's exponent has a standard error "
            f"up to {ses[0]:.3f}, so a difference of about {2.8 * se_diff:.2f} between two d's could go unseen"
            in not_shows)


@pytest.mark.parametrize("text, what", [('{"settings": ', r"is not valid JSON \(.*\)"),
                                        ("[1, 2]", r"is not a sweep description \(not a JSON object\)")])
def test_an_unreadable_sweep_json_is_named_with_the_fix(tmp_path, text, what):
    """A review: the report named a damaged sweep.json ("is not valid JSON (...)") but no way out;
    it is made without one, so removing it is one."""
    folder = synthetic(str(tmp_path / "sweep"), {"mixture": {2: 0.8, 8: 0.8, 32: 0.8}}, seeds=1)
    with open(os.path.join(folder, "sweep.json"), "w", encoding="utf-8") as f:
        f.write(text)
    with pytest.raises(ValueError, match=r"sweep.json " + what + r"; put the sweep's own sweep.json back, or remove "
                                         r"it \(the report is then made without its settings\)$"):
        report.load_sweep(folder)
    os.remove(os.path.join(folder, "sweep.json"))
    assert report.load_sweep(folder)[1] == {}


def test_a_sweep_json_that_is_a_folder_is_named_not_read_as_no_settings(tmp_path):
    """A folder at RUN/sweep.json was read as a sweep without settings: the report went on
    without the families' definitions or the shared settings, saying nothing."""
    folder = synthetic(tmp_path / "run", {"mixture": {2: 0.8, 8: 0.8, 32: 0.8}})
    sweep = os.path.join(folder, "sweep.json")
    if os.path.isfile(sweep):
        os.remove(sweep)
    os.mkdir(sweep)
    with pytest.raises(ValueError, match=r"sweep.json is not a file: the sweep's settings cannot be read"):
        report.load_sweep(folder)


def test_a_saturating_curve_rejected_where_the_line_is_not_is_said(tmp_path, monkeypatch):
    """Review: where the saturating curve's own lack of fit rejects it, its claims use its fit to the
    n-means; the page said so only in the sentence about d whose straight line is rejected too. At
    c = 0 (the line itself) its F is (m - 2) / (m - 3) times the line's, so a line with p just
    above 0.01 has a saturating curve rejected: its claims changed basis and the page said nothing."""
    folder = synthetic(tmp_path / "run", {"mixture": {2: 0.8, 8: 0.8, 32: 0.8}})
    rows, _ = report.load_sweep(folder)
    monkeypatch.setattr(report.S, "saturating_lack_of_fit", lambda n, e, fit: {"F": 9.0, "df": [2, 20], "p": 2e-3})
    analysis = report.analyse(rows)
    a = analysis["families"]["mixture"]
    assert all(a["network"][str(d)]["lack_of_fit"]["p"] >= report.ALPHA_LOF for d in DS)  # straight lines
    assert all(a["network"][str(d)]["saturating_claim"]["basis"] == "n-means" for d in DS)
    text = "\n".join(report._conclusions(analysis["families"]))
    assert ("**mixture**: the saturating curve is rejected (its own lack of fit, p = 0.002, p = 0.002 and "
            "p = 0.002) in d = 2, 8 and 32, where the straight line is not: there its claims use the curve "
            "fitted to the n-means.") in text


def test_the_exponent_after_the_initial_network_takes_the_n_means_where_the_line_bends():
    """"fitted over the n above them, the exponent is 1.23 [1.17, 1.30] (d = 1024, n >= 8000)":
    a seed-level interval where the pure-error test rejects the line on those n (p = 1.2e-5 on
    the page): from the n-means, as every other claim there, [-0.04, 2.51]."""
    from sgm_ref.experiments.stats import lack_of_fit, means_line

    rng = np.random.default_rng(4)
    ns = [500, 1000, 2000, 4000, 8000]
    rows = []
    for n in ns:
        for seed in range(5):
            bend = 0.4 * (np.log(n) - np.log(2000)) ** 2
            rows.append({"n": n, "seed": seed, "checkpoint_step": 0 if n == 500 else 100,
                         "score_error": float(n ** -0.8 * np.exp(bend + 0.02 * rng.standard_normal()))})
    after = report._after_the_initial_network(rows)["after_initial"]
    n = np.array([r["n"] for r in rows if r["n"] > 500], float)
    e = np.array([r["score_error"] for r in rows if r["n"] > 500])
    assert lack_of_fit(n, e)["p"] < report.ALPHA_LOF
    assert after["basis"] == "n-means" and after["b_interval"] == means_line(n, e, level=report.LEVEL)["b_interval"]
    assert after["lack_of_fit_p"] == lack_of_fit(n, e)["p"]


def test_equal_exponents_are_tested_on_the_n_means_where_a_line_bends(tmp_path):
    """Welch's test of equal exponents took every d's seed-level standard error, which a bent
    line's curvature does not enter: where lack of fit rejects a d's line, its exponent's
    standard error comes from the n-means (means_line, m - 2 df), as its claims' intervals do."""
    from sgm_ref.experiments.stats import joint_slopes, lack_of_fit, means_line, welch_slopes

    folder = synthetic(tmp_path / "run", {"mixture": {2: 0.8, 8: 0.6, 32: 0.5}})
    path = os.path.join(folder, "results.jsonl")
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    for r in rows:  # d = 2 bends in log-log
        if r["d"] == 2:
            r["score_error"] *= float(np.exp(0.3 * (np.log(r["n"]) - np.log(4000)) ** 2))
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    analysis = report.analyse(report.load_sweep(folder)[0])["families"]["mixture"]
    claim = analysis["fits"]["network"]["welch_claim"]
    assert claim["n_means"] == [2]

    def curve(d):
        pts = [(r["n"], r["score_error"]) for r in rows if r["d"] == d]
        return np.array([p[0] for p in pts], float), np.array([p[1] for p in pts])

    assert lack_of_fit(*curve(2))["p"] < report.ALPHA_LOF
    bent = means_line(*curve(2))
    others = {d: joint_slopes(np.zeros(curve(d)[0].size), *curve(d))["groups"][0] for d in (8, 32)}
    want = welch_slopes([bent["b"]] + [-others[d]["slope"] for d in (8, 32)],
                        [bent["b_se"]] + [others[d]["slope_se"] for d in (8, 32)],
                        [bent["df"]] + [others[d]["dof"] for d in (8, 32)])
    assert claim["F"] == pytest.approx(want["F"], rel=1e-12) and claim["p"] == pytest.approx(want["p"], rel=1e-9)
    text = "\n".join(report._conclusions({"mixture": analysis}))
    assert f"Welch's F({want['df'][0]}, {want['df'][1]:.1f}) = {want['F']:.2f}" in text
    assert "standard error from the n-means in d = 2, where the line bends" in text


def test_the_page_says_an_initial_network_is_minus_x_only_for_a_sweep_whose_output_starts_at_zero():
    """report_markdown reads output_init from the sweep's settings for the initial-network
    sentence; only _initial_network_sentences was tested with its flag, so a page that called
    every sweep's initial network '-x exactly' (the flag always True) passed."""
    rows = _rows(lambda n: 1.0 if n <= 1000 else 5.0 * n ** -0.7)
    for r in rows:
        r["checkpoint_step"] = 0 if r["n"] <= 1000 else 100  # the held-out selection kept step 0
    analysis = report.analyse(rows)
    for settings, said in (({"settings": {"output_init": "zero"}}, "the initial network, whose score is -x exactly,"),
                           ({"settings": {"output_init": None}}, "the initial (untrained) network"),
                           (None, "the initial (untrained) network")):  # no sweep.json: not claimed
        _, not_shows = conclusions(report.report_markdown(analysis, settings))
        lines = [line for line in not_shows.splitlines() if "held-out selection kept" in line]
        assert len(lines) == 1 and lines[0].startswith(f"- **mixture**: the held-out selection kept {said} in every "
                                                       "seed at n = 500 and 1000"), (settings, lines)


def test_the_generated_by_command_reads_back_its_folders(tmp_path, monkeypatch):
    """The page's "Generated by" command wrote its folders bare: a sweep in "it's a sweep" gave an
    unclosed quote, a space two arguments (a review). Written as the shell needs them, split back
    by shlex they are the folders the report was made from."""
    import shlex
    monkeypatch.setattr(report, "have_matplotlib", lambda: False)  # the text alone
    folder = synthetic(str(tmp_path / "it's a sweep"), {"mixture": {2: 0.8, 8: 0.8, 32: 0.8}})
    other = synthetic(str(tmp_path / "-other sweep"), {"mixture": {2: 0.7, 8: 0.7, 32: 0.7}})
    out = str(tmp_path / "my report.md")
    monkeypatch.chdir(tmp_path)
    report.write_report(folder, out, compare_with="-other sweep")
    with open(out, encoding="utf-8") as f:
        command = re.search(r"Generated by `(.*?)` from the stored rows", f.read()).group(1)
    assert shlex.split(command) == ["sgm-ref", "experiment", "rate-report", folder, "--out", out,
                                    "--compare", "./-other sweep"], command
    assert os.path.samefile(shlex.split(command)[-1], other)


def _markdown_it():
    """markdown-it-py (installed with the docs extra, which CI installs), a CommonMark parser."""
    if os.environ.get("SGM_REF_REQUIRE_DOCS") == "1":
        from markdown_it import MarkdownIt
        return MarkdownIt
    return pytest.importorskip("markdown_it").MarkdownIt


def _code_spans(markdown_it, text):
    return [child.content for token in markdown_it("commonmark").parse(text) if token.type == "inline"
            for child in token.children if child.type == "code_inline"]


def test_code_spans_show_folders_with_backticks_verbatim(tmp_path, monkeypatch):
    """A folder named with a backtick ("it`s") ended the page's single-backtick code spans early
    (a review): the "Generated by" command and a comparison's name read as broken Markdown. Each
    span is fenced by more backticks than it holds; a CommonMark parser reads back the text."""
    markdown_it = _markdown_it()
    for text in ("a", "it`s", "x`", "`x", "``", "a `` b ` c", " lead", "trail ", "`` both ``"):
        assert _code_spans(markdown_it, f"see {report._code(text)} here") == [text], text
    monkeypatch.setattr(report, "have_matplotlib", lambda: False)
    folder = synthetic(str(tmp_path / "it`s"), {"mixture": {2: 0.8, 8: 0.8, 32: 0.8}})
    synthetic(str(tmp_path / "o``ther`"), {"mixture": {2: 0.7, 8: 0.7, 32: 0.7}})
    out = str(tmp_path / "rate.md")
    monkeypatch.chdir(tmp_path)
    report.write_report(folder, out, compare_with="o``ther`")
    with open(out, encoding="utf-8") as f:
        spans = _code_spans(markdown_it, f.read())
    assert f"sgm-ref experiment rate-report '{folder}' --out {out} --compare 'o``ther`'" in spans
    assert spans.count("o``ther`") >= 2  # its section's heading and each of its lines
