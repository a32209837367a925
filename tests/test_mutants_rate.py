"""Tests that kill mutants of sgm_ref/experiments/rate.py (and of the numbers of report.py) which the
module tests (test_experiments, test_rate_cells, test_rate_report, test_mutants_stats) let survive: a
mutation run changed one operator, argument or field at a time and reran them. Each test names the
mutant it kills; its reference is the docstring's definition, a closed form or a hand-written loop,
never the code's own expression. Cells here are tiny (d 2, n <= 40, a few steps)."""

import math

import numpy as np
import pytest

from sgm_ref.experiments import rate

# a cell small enough for a test: 8 units, 12 steps, few evaluation points
SMALL = {**rate.SETTINGS, "width": 8, "depth": 1, "steps": 12, "batch_size": 16, "n_eval": 64, "n_eval_tilted": 32,
         "n_eval_empirical": 16, "val_n": 64, "val_points": 4, "bound_n": 4, "bound_steps": 10}


# -- training length ---------------------------------------------------------------------------
def test_training_steps_rounds_epochs_up_and_a_batch_is_at_most_n():
    """training_steps' docstring: max(min_steps, ceil(epochs n / batch)), batch = min(batch_size, n).
    The existing checks use n = 32000, batch 256, epochs 200 (25000 exactly) and min_steps-bound n,
    where neither the rounding nor the batch's cap shows. Kills: int(...) for math.ceil(...)
    (300 / 256 -> 1 step, not 2), and batch = batch_size (n = 100 < 256: 3 epochs of one batch each
    are 3 steps, not ceil(300 / 256) = 2)."""
    s = {**rate.SETTINGS, "steps": None, "min_steps": 0, "batch_size": 256}
    assert rate.training_steps(300, {**s, "epochs": 1}) == 2       # 300 samples: batches of 256 and 44
    assert rate.training_steps(100, {**s, "epochs": 3}) == 3       # 100 < 256: each epoch one batch of 100
    assert rate.training_steps(513, {**s, "epochs": 1}) == 3       # 256 + 256 + 1
    assert rate.training_steps(256, {**s, "epochs": 1, "min_steps": 5}) == 5


# -- what a cell hands the training loop ---------------------------------------------------------
def _spy_cell(monkeypatch, cell):
    """run_cell(cell) with rate.fit and rate.tv_upper_bound wrapped: returns (row, what they got and
    gave: fit's keyword arguments and data; the bounds, "model" for the network's, "oracle" for the
    exact score's)."""
    seen = {}
    real_fit, real_bound = rate.fit, rate.tv_upper_bound

    def fit(model, data, **kwargs):
        seen.update(kwargs, data=data.copy(), model=model)
        return real_fit(model, data, **kwargs)

    def bound(score, *args, **kwargs):
        out = real_bound(score, *args, **kwargs)
        seen["model_bound" if score is seen["model"] else "oracle_bound"] = out
        return out

    def errors(*args):
        seen["n_eval"], seen["n_empirical"] = args[-3:-1]
        return real_errors(*args)

    def em(x, K, rng, **kwargs):
        seen["em_K"], seen["em_starts"] = K, kwargs["n_init"]
        return real_em(x, K, rng, **kwargs)

    real_errors, real_em = rate._integrated_errors, rate.fit_identity_mixture
    monkeypatch.setattr(rate, "fit_identity_mixture", em)
    monkeypatch.setattr(rate, "fit", fit)
    monkeypatch.setattr(rate, "tv_upper_bound", bound)
    monkeypatch.setattr(rate, "_integrated_errors", errors)
    return rate.run_cell(cell), seen


def test_a_cells_training_is_the_settings_schedule_adam_and_draws(monkeypatch):
    """SETTINGS' comment: "Adam's rate decays from lr to lr_final lr over the cell's steps"
    (optim.CosineLR: lr_k = lr_min + (lr - lr_min) (1 + cos(pi (k - 1) / steps)) / 2, lr_min =
    lr_final lr), the L2 penalty weight_decay_times_n / n, the EMA decay ema_decay; the module
    docstring: the cell's data are drawn from SeedSequence(base_seed, spawn_key=(family, d, n,
    seed)) (its first child), batches of min(batch_size, n), training and the bound on
    [t0(n), T(n)] (schedule()), the errors on the fixed window, the empirical score on the first
    min(n_eval, n_eval_empirical) points, the EM baseline from em_starts starts; the row's epochs
    are steps x batch / n, its tv_bound, tv_bound_se, kl_path the network's bound's. The pinned
    cells of test_experiments train at the constant rate (settings before the schedule) and have
    n < schedule_n_ref (where t0(n) = t0), so nothing checked lr_final or the row's t0.
    Kills: CosineLR(lr, steps, lr_final ** 2) (ends at 1e-6 lr, not 0.25 lr); the row's epochs as
    steps batch_size / n (19.2 here, not 12); the row's t0 recorded as the window's t0; the row's
    kl_path from the exact score's bound; its tv_bound_se as tv; the empirical baseline told
    n_eval_empirical = 100 points where 64 exist (its se divided by sqrt(100)); EM from one start."""
    s = {**SMALL, "steps": 12, "lr": 2e-3, "lr_final": 0.25, "batch_size": 64, "schedule_n_ref": 10,
         "n_eval_empirical": 100}
    row, seen = _spy_cell(monkeypatch, {"family": "mixture-iso", "d": 2, "n": 40, "seed": 1, "settings": s})
    assert row["status"] == "ok" and row["steps"] == 12
    lr, low = 2e-3, 0.25 * 2e-3
    want = [low + (lr - low) * (1.0 + math.cos(math.pi * (k - 1) / 12)) / 2.0 for k in range(1, 13)]
    got = [seen["lr_schedule"](k) for k in range(1, 13)]
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=0.0)
    opt = seen["optimizer"]
    assert opt.weight_decay == pytest.approx(s["weight_decay_times_n"] / 40, rel=1e-15)
    assert opt.ema_decay == s["ema_decay"] and opt.step_count == 12
    # n = 40 < batch_size 64: every batch is 40 draws, and 12 steps of them are 12 epochs
    assert seen["steps"] == 12 and seen["batch_size"] == 40 and row["epochs"] == 12.0
    # schedule(): t0(n) = t0 (n_ref / n)^(1/2), T(n) = T + log(n / n_ref) / 2; n / n_ref = 4
    t0, T = s["t0"] / 2.0, s["T"] + math.log(2.0)
    assert seen["t0"] == pytest.approx(t0, rel=1e-15) and seen["T"] == pytest.approx(T, rel=1e-15)
    assert (row["t0"], row["T"]) == (seen["t0"], seen["T"]) and (row["t0_eval"], row["T_eval"]) == (s["t0"], s["T"])
    # the row's bound is the network's (on [t0(n), T(n)]); tv_oracle the exact score's
    net, oracle = seen["model_bound"], seen["oracle_bound"]
    assert (net.grid.min(), net.grid.max()) == pytest.approx((seen["t0"], seen["T"]), rel=1e-14)
    assert (row["tv_bound"], row["tv_bound_se"], row["kl_path"], row["kl_path_se"]) == (
        net.tv, net.tv_se, net.kl_path, net.kl_path_se)
    assert (row["tv"]["tv"], row["tv_oracle"]["tv"], row["tv_oracle"]["kl_path"]) == (net.tv, oracle.tv, oracle.kl_path)
    assert oracle.kl_path != net.kl_path
    # the empirical score on the first min(n_eval, n_eval_empirical) evaluation points: all 64 here
    assert (seen["n_eval"], seen["n_empirical"]) == (64, 64)
    # the EM baseline: K = 4 components from the setting em_starts starts
    assert (seen["em_K"], seen["em_starts"]) == (4, s["em_starts"]) and s["em_starts"] != 1
    ss = np.random.SeedSequence(s["base_seed"], spawn_key=(rate._FAMILY_IDS["mixture-iso"], 2, 40, 1))
    data = rate.make_target("mixture-iso", 2).sample(40, np.random.default_rng(ss.spawn(1)[0]))
    np.testing.assert_array_equal(seen["data"], data)


# -- the held-out objective --------------------------------------------------------------------
def test_held_out_objective_under_the_sigma2_weighting_is_the_weighted_denoising_loss():
    """HeldOut's docstring: l_i = lambda(t_i) |s(alpha_i x0_i + sigma_i z_i, t_i) + z_i / sigma_i|^2 with
    the objective's weighting; for "sigma2", lambda(t) = sigma_t^2 = 1 - exp(-2t) (the OU process).
    The existing check uses weighting "none" only. Reference: the loss by hand, alpha_t = exp(-t) and
    sigma_t^2 = -expm1(-2t) written out, on the draws in the docstring's order (x0, t, z).
    Kills: self.weight = sigma (not sigma ** 2)."""
    from types import SimpleNamespace

    from sgm_ref import OU, ScoreModel
    from sgm_ref.nn import MLP

    model = ScoreModel(MLP(2, (8,), rng=0), OU(), "residual")
    target = rate.make_target("mixture-iso", 2)
    s = {**SMALL, "val_n": 256, **dict(zip(("weighting", "time_distribution"), rate.OBJECTIVES["sigma2"]))}
    held_out = rate.HeldOut(model, SimpleNamespace(ema=None, step_count=3), target, 0.01, 5.0, s,
                            np.random.default_rng(7))
    got = held_out(model)
    twin = np.random.default_rng(7)
    x0 = target.sample(256, twin)
    t = rate._draw_times(256, 0.01, 5.0, twin, "log-uniform")
    z = twin.standard_normal(x0.shape)
    var = -np.expm1(-2.0 * t)
    xt = np.exp(-t)[:, None] * x0 + np.sqrt(var)[:, None] * z
    r = model(xt, t) + z / np.sqrt(var)[:, None]
    want = var * np.sum(r * r, axis=1)
    np.testing.assert_allclose(held_out.checkpoints[-1][2], want, rtol=1e-12)
    assert got == pytest.approx(float(np.mean(want)), rel=1e-12) and held_out.checkpoints[-1][0] == 3


def test_held_out_chooses_an_earlier_checkpoint_only_beyond_z_crit_standard_errors():
    """HeldOut's docstring: the last checkpoint, unless an earlier one is better by more than z_crit
    (2) standard errors of the paired difference D = mean(l_last - l_early), se = sd / sqrt(val_n).
    The existing check has shifts of 1 and 3 se, where 1 sits on the boundary of "> 1 se".
    Reference: D and its se by hand on losses with a known shift. Kills: D > se (z_crit dropped)."""
    rng = np.random.default_rng(11)
    base = rng.exponential(size=4000)
    noise = rng.standard_normal(4000)
    noise = (noise - noise.mean()) / noise.std(ddof=1)  # sd 1: se of D = 1 / sqrt(4000)
    se = 1.0 / math.sqrt(4000)
    held_out = rate.HeldOut.__new__(rate.HeldOut)
    held_out.z_crit = 2.0
    for k, keep_last in ((1.5, True), (1.99, True), (2.01, False), (2.5, False)):
        early = base - k * se + noise
        diff = base - early
        assert (float(np.mean(diff)) > 2.0 * float(np.std(diff, ddof=1)) / math.sqrt(4000)) != keep_last
        held_out.checkpoints = [(1, "early", early), (2, "last", base)]
        assert held_out.choose() == (("last", 2) if keep_last else ("early", 1)), k
    held_out.z_crit = 1.0  # the threshold is z_crit's
    held_out.checkpoints = [(1, "early", base - 1.5 * se + noise), (2, "last", base)]
    assert held_out.choose() == ("early", 1)


def test_bound_terms_keep_an_overflowed_term_as_null():
    """_bound_terms' docstring: a path term beyond float64 (overflow="inf") is kept with the overflowed
    terms as null (JSON has no inf); the grid and per-step terms are left out. Reference: the dict
    by hand. Kills: the terms returned with their inf (the row then fails as non-finite)."""
    from types import SimpleNamespace

    bound = SimpleNamespace(as_dict=lambda: {"tv": 1.0, "tv_se": 0.0, "kl_path": math.inf, "kl_path_se": math.nan,
                                             "kl": math.inf, "method": "residual_exponential", "grid": [0.1, 1.0],
                                             "kl_path_per_step": [math.inf]})
    assert rate._bound_terms(bound) == {"tv": 1.0, "tv_se": 0.0, "kl_path": None, "kl_path_se": None, "kl": None,
                                        "method": "residual_exponential"}
    assert rate._all_finite(rate._bound_terms(bound)) and rate._bound_terms(None) is None


# -- the integrated score errors -----------------------------------------------------------------
def test_integrated_errors_per_point_from_the_points_each_score_saw():
    """_integrated_errors' docstring: one draw of n points for all scores, the empirical measure's
    score on the first n_empirical of them; the estimate is the mean over its points of
    t log(T / t0) beta(t) / 2 |s - grad log p_t|^2 (beta = 2 for the OU process) and its se the
    points' sd / sqrt(points). Reference: those sums by hand on the points the scores were called
    with, and the exact score of the mixture. Kills: m = n for the empirical score (all n points),
    the se without its sqrt(m), and the weight without its 1/2."""
    from sgm_ref import OU

    target, process = rate.make_target("mixture-iso", 2), OU()
    calls = {}

    def recorder(name, scale):
        def score(x, t):
            calls[name] = (x.copy(), t.copy())
            return scale * target.score(x, t, process)
        return score

    t0, T, n, m = 0.02, 3.0, 40, 12
    out = rate._integrated_errors({"half": recorder("half", 0.5)}, recorder("empirical", 2.0), target, process,
                                  t0, T, n, m, np.random.default_rng(4))
    (xa, ta), (xe, te) = calls["half"], calls["empirical"]
    assert xa.shape == (n, 2) and xe.shape == (m, 2)
    np.testing.assert_array_equal(xe, xa[:m])
    np.testing.assert_array_equal(te, ta[:m])
    assert np.all((t0 <= ta) & (ta <= T))
    for name, (x, t, scale) in {"half": (xa, ta, 0.5), "empirical": (xe, te, 2.0)}.items():
        g = target.score(x, t, process)
        terms = t * math.log(T / t0) * np.sum(((scale - 1.0) * g) ** 2, axis=1)  # beta / 2 = 1
        assert out[name]["error"] == pytest.approx(float(np.mean(terms)), rel=1e-12), name
        assert out[name]["se"] == pytest.approx(float(np.std(terms, ddof=1)) / math.sqrt(len(terms)), rel=1e-12), name


def test_integrated_errors_subtract_a_monte_carlo_oracles_own_error():
    """_integrated_errors' docstring: a target with a Monte-Carlo oracle (score_and_se) has the
    oracle's own error sum_j se_j^2 subtracted from every score's squared error, the empirical
    one's included. A stub oracle (the mixture's exact score, se 0.1 in each of d = 2 coordinates)
    makes the exact score's terms -0.02 t log(T / t0) exactly. Kills: the subtraction dropped
    (the terms 0)."""
    from types import SimpleNamespace

    from sgm_ref import OU

    exact, process = rate.make_target("mixture-iso", 2), OU()
    stub = SimpleNamespace(sample=exact.sample,
                           score_and_se=lambda x, t, p: (exact.score(x, t, p), np.full(x.shape, 0.1)))
    seen = {}

    def score(x, t):
        seen["t"] = t.copy()
        return exact.score(x, t, process)

    t0, T = 0.01, 5.0
    out = rate._integrated_errors({"exact": score}, score, stub, process, t0, T, 30, 30, np.random.default_rng(2))
    terms = -0.02 * seen["t"] * math.log(T / t0)
    for name in ("exact", "empirical"):
        assert out[name]["error"] == pytest.approx(float(np.mean(terms)), rel=1e-12), name
        assert out[name]["se"] == pytest.approx(float(np.std(terms, ddof=1)) / math.sqrt(30), rel=1e-12), name


def test_the_row_records_the_checkpoint_held_out_chose_and_scores_its_parameters(monkeypatch):
    """run_cell's row: checkpoint_step is the step HeldOut.choose() returned, and the network scored
    is that step's parameters. With the output layer at zero (output_init "zero") the step-0
    network is the score -x exactly, so when choose() keeps step 0 the row's score_error must equal
    its baseline_minus_x error (the same points) to the last bit. The test cells keep their last
    step, where both agree. A Monte-Carlo family (tilt-iso) is evaluated on n_eval_tilted points
    and has no bound. Kills: checkpoint_step recorded as the run's steps; n_eval for every family."""
    def first(self):
        step, params, _ = self.checkpoints[0]
        return params, step

    seen = {}

    def errors(*args):
        seen["n_eval"] = args[-3]
        return real_errors(*args)

    real_errors = rate._integrated_errors
    monkeypatch.setattr(rate.HeldOut, "choose", first)
    monkeypatch.setattr(rate, "_integrated_errors", errors)
    s = {**SMALL, "steps": 8, "val_points": 2}
    row = rate.run_cell({"family": "tilt-iso", "d": 2, "n": 24, "seed": 0, "settings": s})
    assert row["status"] == "ok" and row["val_steps"][0] == 0 and row["steps"] == 8
    assert row["checkpoint_step"] == 0
    assert row["score_error"] == row["baseline_minus_x"]["error"]
    assert row["score_error_se"] == row["baseline_minus_x"]["se"]
    assert seen["n_eval"] == s["n_eval_tilted"] != s["n_eval"] and row["tv_bound"] is None


def test_check_settings_refuses_an_empty_window_t0_equal_to_T():
    """check_settings' docstring: t0 < T. The existing check has T < t0 only; t0 = T (an empty window:
    every integrated error 0 over log(T / t0) = 0) must be refused as well. Kills: t0 <= T."""
    with pytest.raises(ValueError, match=r"settings must have t0 < T \(the score errors' window \[t0, T\]\), "
                                         r"got t0 = 0\.5, T = 0\.5"):
        rate.check_settings({**rate.SETTINGS, "t0": 0.5, "T": 0.5})
    rate.check_settings({**rate.SETTINGS, "t0": 0.5, "T": math.nextafter(0.5, 1.0)})


def test_a_budget_factor_rounds_min_steps_up():
    """make_grid's budget is a factor on the training length, epochs and min_steps alike: a cell
    trains no fewer than budget x its steps, so a fractional product is rounded up (the decimal's
    exact value, as the code's comment on 1.1 x 12000 says). The existing factors (1.1, 3, 0.5)
    give whole products. Reference: fractions.Fraction by hand. Kills: int(...) for math.ceil(...)
    (12000 x 1.00005 = 12000.6 -> 12000 steps, fewer than the budget)."""
    from fractions import Fraction

    settings = rate.make_grid(budget=1.00005, d=[2], n=[500])["settings"]
    assert settings["min_steps"] == 12001 == math.ceil(Fraction(rate.MIN_STEPS) * Fraction("1.00005"))
    assert settings["epochs"] == pytest.approx(200.01, rel=1e-15)
    quick = rate.make_grid(quick=True, budget=0.7, d=[2], n=[500])["settings"]  # 1500 x 0.7 = 1050 exactly
    assert quick["min_steps"] == 1050
    third = rate.make_grid(quick=True, budget=0.3333, d=[2], n=[500])["settings"]  # 499.95 -> 500
    assert third["min_steps"] == 500


def test_summary_leaves_an_error_of_exactly_zero_out_of_the_fit():
    """sweep_summary's docstring: an n whose every error is <= 0 is not in the fit (a debiased error
    can come out at or below 0); the existing test has -0.001 only. Exactly 0 has no log either.
    Reference: the line through the two positive points, slope log(0.01 / 0.1) / log(10) = -1.
    Kills: the fit keeping errors >= 0 (fit_slope then refuses the 0: the summary raises)."""
    rows = [{"family": "tilted", "d": 2, "n": n, "seed": 0, "score_error": e, "score_error_se": 0.01, "tv_bound": None}
            for n, e in ((100, 0.1), (1000, 0.01), (10000, 0.0))]
    (summary,) = rate.sweep_summary(rows)
    assert summary["slope"] == pytest.approx(-1.0, rel=1e-14) and summary["slope_dof"] == 0
    assert summary["local_slopes"][1] is None


# -- report's numbers ----------------------------------------------------------------------------
def test_n_star_of_a_mean_error_of_exactly_zero_names_the_monte_carlo_noise():
    """report._n_star: a mean error <= 0 (a debiased Monte-Carlo error below its noise) has no log
    and no n*, with that reason; the report shows it in the n* column. Exactly 0 is such a mean
    (stats.n_star would refuse it with its own words, "values <= 0", naming no noise).
    Kills: min(e) < 0 for min(e) <= 0."""
    from sgm_ref.experiments import report

    by_n = {"500": {"network": [0.8, 0.01, 2], "score -x": [1.0, 0.01, 2]},
            "1000": {"network": [0.0, 0.01, 2], "score -x": [1.0, 0.01, 2]}}
    assert report._n_star(by_n) == (None, "a mean error <= 0 (below its Monte-Carlo noise)")
    # positive: log(0.8 / 0.5) -> log(0.2 / 0.5) crosses 0 on log n at log 500 + log(1.6) / 2
    by_n["1000"]["network"][0] = 0.2
    (star, why) = report._n_star(by_n)
    assert why is None and star["n_star"] == pytest.approx(500.0 * math.sqrt(1.6), rel=1e-12) and not star["censored"]


def test_report_fits_leave_a_non_positive_error_out_and_fit_the_rest():
    """report.analyse: a debiased error <= 0 has no log: it is counted in left_out and left out of
    the seed-level fits, which fit the other points (the exponent b = -slope of log error on log n,
    every seed a point: scipy.stats.linregress for one d). Kills: the fits' data keeping errors <= 0
    (joint_slopes then refuses them: no network fit at all)."""
    from scipy import stats as scipy_stats

    from sgm_ref.experiments import report

    rng = np.random.default_rng(5)
    rows = []
    for seed in (0, 1):
        for n in (500, 1000, 2000, 4000):
            e = 3.0 * n ** -0.6 * float(np.exp(0.1 * rng.standard_normal()))
            rows.append({"family": "tilt-iso", "d": 2, "n": n, "seed": seed, "status": "ok",
                         "score_error": -0.001 if (n, seed) == (4000, 1) else e, "score_error_se": 0.01})
    a = report.analyse(rows)["families"]["tilt-iso"]
    assert a["left_out"] == 1
    kept = [r for r in rows if r["score_error"] > 0]
    want = scipy_stats.linregress(np.log([r["n"] for r in kept]), np.log([r["score_error"] for r in kept]))
    fit = a["fits"]["network"]["by_d"]["2"]
    assert fit["b"] == pytest.approx(-want.slope, rel=1e-12) and fit["b_se"] == pytest.approx(want.stderr, rel=1e-10)


def test_compare_pools_only_the_cells_whose_two_errors_have_a_log():
    """report.compare: a matched cell whose error in either sweep is <= 0 (a debiased error below
    its noise), in this sweep or the other, has no ratio and stays out of every paired comparison,
    the pooled one included.
    Reference: r_j = log(other_j / error_j) over the other cells by hand, their mean and sd / sqrt(m)
    (stats.paired_log_ratio's definition). Kills: the pooled comparison taking every cell (the
    log of -0.01 then refuses the whole comparison); a ratio for a cell whose other error is <= 0."""
    from sgm_ref.experiments import report

    def rows(errors):
        return [{"family": "tilt-iso", "d": 2, "n": n, "seed": 0, "score_error": e, "score_error_se": 0.01}
                for n, e in zip((500, 1000, 2000, 4000, 8000), errors)]

    mine, theirs = [0.4, 0.3, 0.2, -0.01, 0.05], [0.36, 0.33, 0.15, 0.1, -0.02]
    out = report.compare(rows(mine), rows(theirs))
    assert [c["ratio"] for c in out["cells"]][3:] == [None, None] and set(out["by_n"]) == {"500", "1000", "2000"}
    r = np.log(np.array(theirs[:3]) / np.array(mine[:3]))
    for got in (out["all"], out["families"]["tilt-iso"]):
        assert got["cells"] == 3
        assert got["mean_log_ratio"] == pytest.approx(float(r.mean()), rel=1e-12)
        assert got["se"] == pytest.approx(float(r.std(ddof=1)) / math.sqrt(3), rel=1e-12)


def test_a_single_seeds_point_carries_its_own_monte_carlo_se_for_the_baselines_too():
    """report's points: the mean over seeds ± the seed-to-seed se, and with one seed its own
    Monte-Carlo se (_mean_se's docstring), for the network and for each baseline alike. The
    report's tests have several seeds, or baselines whose se was not looked at. Reference: the
    rows' own numbers. Kills: a baseline's se read as 0."""
    from sgm_ref.experiments import report

    rows = [{"family": "mixture-iso", "d": 2, "n": n, "seed": 0, "score_error": 0.5 / k, "score_error_se": 0.01 * k,
             "baseline_minus_x": {"error": 1.0 + k, "se": 0.002 * k},
             "baseline_empirical": {"error": 2.0 * k, "se": 0.003 * k}}
            for k, n in enumerate((500, 1000, 2000), start=1)]
    points = report.analyse(rows)["families"]["mixture-iso"]["points"]["2"]
    for k, n in enumerate((500, 1000, 2000), start=1):
        p = points[str(n)]
        assert p["network"] == [0.5 / k, 0.01 * k, 1]
        assert p["score -x"] == [1.0 + k, 0.002 * k, 1]
        assert p["empirical measure (curse)"] == [2.0 * k, 0.003 * k, 1]
