"""Tests that kill mutants of sgm_ref.experiments.stats and of report's claim logic which the
module tests (test_rate_stats, test_rate_report, the fuzz files) let survive: a mutation run
changed one operator, degree of freedom or term at a time and reran them. Each test names the
mutant it kills; its reference is a closed form, scipy.stats or mpmath, never the code's formula."""

import math

import mpmath
import numpy as np
import pytest
from scipy import stats as scipy_stats

from sgm_ref.experiments import report
from sgm_ref.experiments import stats as S


def test_welch_chi2_limit_of_three_slopes_is_chi2_of_g_minus_1_times_f():
    """dofs near 1e308 make df2 inf: F(G - 1, inf) is chi2(G - 1) / (G - 1), so p = P(chi2_{G-1} > (G-1) F).
    G = 2 (the existing test) cannot tell (G - 1) F from F. Slopes 0, 1, 2 with se 1: bw = 1, F = 1,
    p = P(chi2_2 > 2) = exp(-1) exactly. Kills: chi2.sf(F, G - 1) (gives exp(-1/2))."""
    res = S.welch_slopes([0.0, 1.0, 2.0], [1.0, 1.0, 1.0], [1e308, 1e308, 1e308])
    assert math.isinf(res["df"][1])
    assert res["F"] == pytest.approx(1.0, rel=1e-15)
    assert res["p"] == pytest.approx(math.exp(-1.0), rel=1e-14)


def test_claim_interval_keeps_the_seeds_at_p_equal_to_alpha():
    """The docstring: the n-means only where lack of fit is rejected, p < ALPHA_LOF; p = ALPHA_LOF
    exactly is not rejected. Kills: p <= ALPHA_LOF."""
    seeds = {"b": 1.0, "b_interval": [0.5, 1.5]}
    n = np.repeat([10.0, 20.0, 40.0, 80.0], 2)
    e = n ** -1.0 * np.exp([0.1, -0.1, 0.3, 0.0, -0.2, 0.1, 0.2, -0.3])
    out = report._claim_interval(seeds, {"p": report.ALPHA_LOF}, S.means_line, n, e)
    assert out == {"b": 1.0, "b_interval": [0.5, 1.5], "basis": "seeds"}
    below = report._claim_interval(seeds, {"p": math.nextafter(report.ALPHA_LOF, 0.0)}, S.means_line, n, e)
    assert below["basis"] == "n-means"


def test_saturating_claim_on_the_n_means_fits_the_geometric_means():
    """Where the saturating curve's lack of fit is rejected, its claim is saturating_fit on the
    n-means, "the means of log error over the seeds": exp(mean log e) = scipy.stats.gmean, not
    the arithmetic mean. Kills: np.mean(e[n == v])."""
    rng = np.random.default_rng(2)
    levels = np.array([100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0])
    n = np.repeat(levels, 3)
    e = 3.0 * n ** -0.7 * np.exp(0.4 * rng.standard_normal(n.size))  # wide: the two kinds of mean differ
    gm = np.array([scipy_stats.gmean(e[n == v]) for v in levels])
    want = S.saturating_fit(levels, gm, level=report.LEVEL)["b_interval"]
    out = report._claim_interval({"b_interval": [0.0, 9.0]}, {"p": 0.0}, S.saturating_fit, n, e)
    assert out["basis"] == "n-means"
    assert out["b_interval"] == pytest.approx(want, rel=1e-6)  # the profile's brentq tolerance, 1e-8
    am = np.array([np.mean(e[n == v]) for v in levels])
    assert abs(S.saturating_fit(levels, am, level=report.LEVEL)["b_interval"][1] - want[1]) > 0.1


def _rows(seeds=3):
    """Minimal sweep rows: error 2 (n/500)^-b_d x lognormal(0.05), b = 0.8 in d = 2 (bent in log-log
    by exp(0.3 (log n - log 4000)^2)) and 0.6 in d = 8."""
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(seeds):
        for d in (2, 8):
            for n in (500, 1000, 2000, 4000, 8000):
                noise = np.exp(0.05 * rng.standard_normal(3))
                e = 2.0 * (n / 500) ** -(0.8 if d == 2 else 0.6) * noise[0]
                if d == 2:
                    e *= float(np.exp(0.3 * (np.log(n) - np.log(4000)) ** 2))
                rows.append({"family": "mixture", "d": d, "n": n, "seed": seed, "status": "ok", "score_error": e,
                             "score_error_se": 0.01 * e})
    return rows


def test_welch_claim_with_two_d_one_bent_is_welchs_t_on_the_claims():
    """Two d, d = 2's line bent (lack of fit rejected): the Welch test of equal exponents is still
    computed (two claims are enough), and is Welch's t of d = 2's means-line exponent (linregress on
    the n-means of log error, m - 2 df) against d = 8's seed-level one (linregress, N - 2 df), on
    Satterthwaite's degrees of freedom: F = t^2, p two-sided. Kills: len(claims) > 2."""
    rows = _rows()
    a = report.analyse(rows)["families"]["mixture"]
    claim = a["fits"]["network"]["welch_claim"]
    assert claim is not None and claim["n_means"] == [2]

    def points(d):
        n = np.array([r["n"] for r in rows if r["d"] == d], float)
        return np.log(n), np.log([r["score_error"] for r in rows if r["d"] == d])

    x2, y2 = points(2)
    lv = np.unique(x2)
    fit2 = scipy_stats.linregress(lv, [y2[x2 == v].mean() for v in lv])
    x8, y8 = points(8)
    fit8 = scipy_stats.linregress(x8, y8)
    nu2, nu8 = lv.size - 2, x8.size - 2
    v2, v8 = fit2.stderr ** 2, fit8.stderr ** 2
    t = (fit2.slope - fit8.slope) / math.sqrt(v2 + v8)
    df = (v2 + v8) ** 2 / (v2 ** 2 / nu2 + v8 ** 2 / nu8)
    assert claim["F"] == pytest.approx(t * t, rel=1e-10)
    assert claim["df"] == [1, pytest.approx(df, rel=1e-10)]
    assert claim["p"] == pytest.approx(2 * scipy_stats.t.sf(abs(t), df), rel=1e-8)


@pytest.mark.parametrize("d", [1, 2, 3, 12, 512])
def test_curse_comparison_is_strict_at_the_rate_itself(d):
    """"above": low > rate and "below": high < rate, strictly: an interval whose end is the rate
    2 / (d + 4) itself (the float nearest, the same one Python's 2 / (d + 4) gives) neither exceeds
    nor falls short of it; one ulp further it does. Kills: low >= rate, high <= rate."""
    rate = 2 / (d + 4)
    at_low = S.curse_comparison(d, [rate, 1.0])
    assert at_low["curse_rate"] == rate and not at_low["above"] and at_low["ratio_low"] == 1.0
    assert S.curse_comparison(d, [math.nextafter(rate, 1.0), 1.0])["above"]
    assert not S.curse_comparison(d, [0.0, rate])["below"]
    assert S.curse_comparison(d, [0.0, math.nextafter(rate, 0.0)])["below"]
    assert not S.curse_comparison(d, [rate, rate])["above"] and not S.curse_comparison(d, [rate, rate])["below"]


def test_saturating_fit_refuses_three_distinct_n_even_with_replicates():
    """Three parameters need at least four distinct n (the docstring's Raises): with three n the
    curve passes through the three means, whatever the seeds. Kills: unique(n).size < 3."""
    n = np.repeat([100.0, 400.0, 1600.0], 3)
    error = 2.0 * n ** -0.5 * np.exp(0.1 * np.sin(np.arange(n.size)))
    with pytest.raises(ValueError, match="at least 4 distinct n, got 3"):
        S.saturating_fit(n, error)


def test_joint_slopes_f_of_nearly_equal_slopes_against_50_digits():
    """Two groups with the same scatter and slopes 1e-9 apart: RSS_r - RSS_f (~1e-17) cancels in
    RSS ~ 2; F from sum_g S_xx,g (b_g - b)^2 keeps its digits. Reference: the nested-model F in
    mpmath at 50 digits on the same float inputs (agreement 2e-7, the inputs' own conditioning:
    a 1e-9 slope difference carried by data of size 1). Kills: F = (RSS_r - RSS_f) / (G - 1) / s^2
    (negative, -5e-15, for 8.5e-17)."""
    x = np.log(np.repeat([100.0, 200.0, 400.0, 800.0, 1600.0], 3))
    noise = np.random.default_rng(5).standard_normal(x.size)
    y0 = -0.5 * x + 0.3 * noise
    g = np.r_[np.zeros(x.size), np.ones(x.size)]
    n, e = np.exp(np.r_[x, x]), np.exp(np.r_[y0, y0 + 1e-9 * x])
    res = S.joint_slopes(g, n, e)
    with mpmath.workdps(50):
        X = [mpmath.log(mpmath.mpf(float(v))) for v in n]
        Y = [mpmath.log(mpmath.mpf(float(v))) for v in e]
        sxx, sxy, slopes, rss = [], [], [], mpmath.mpf(0)
        for k in (0, 1):
            idx = [i for i in range(len(X)) if g[i] == k]
            xm, ym = sum(X[i] for i in idx) / len(idx), sum(Y[i] for i in idx) / len(idx)
            a, c = sum((X[i] - xm) ** 2 for i in idx), sum((X[i] - xm) * (Y[i] - ym) for i in idx)
            sxx.append(a), sxy.append(c), slopes.append(c / a)
            rss += sum(((Y[i] - ym) - c / a * (X[i] - xm)) ** 2 for i in idx)
        common = sum(sxy) / sum(sxx)
        F = sum(a * (b - common) ** 2 for a, b in zip(sxx, slopes)) / (rss / (len(X) - 4))
    assert res["df"] == [1, len(X) - 4]
    assert res["F"] == pytest.approx(float(F), rel=1e-5)
    assert res["p"] == pytest.approx(float(scipy_stats.f.sf(float(F), 1, len(X) - 4)), rel=1e-12)


def test_means_line_refuses_means_on_a_line_up_to_rounding():
    """Seeds scattered +-s about n^-0.5 at five n: the means of log error lie on a line exactly, and
    in floats to rounding (SSE ~5e-31, not 0). The docstring's ValueError ("means that lie exactly
    on a line"), not an interval of width 1e-15 from rounding taken for scatter. Kills: sse <= 0."""
    levels = np.array([10.0, 100.0, 1000.0, 10000.0, 7.0])
    n = np.repeat(levels, 2)
    for s in (0.1, 0.3, 0.7):
        error = n ** -0.5 * np.exp(np.tile([s, -s], levels.size))
        with pytest.raises(ValueError, match="the means lie exactly on a line"):
            S.means_line(n, error)
