"""Tests written by mutation testing of sgm_ref/train.py, sgm_ref/losses.py, sgm_ref/score_model.py,
sgm_ref/gradcheck.py and sgm_ref/optim.py: each pins a regime or a convention that the other tests
let a mutated line through in (named in its docstring), against an independent reference (a
hand-written loop, mpmath, NumPy)."""
import numpy as np
import pytest

import sgm_ref.train
from sgm_ref import OU, GaussianMixture
from sgm_ref.nn import MLP
from sgm_ref.optim import Adam
from sgm_ref.score_model import ScoreModel
from sgm_ref.train import TrainingDivergedError, fit

FIT = dict(batch_size=16, lr=1e-2, t0=1e-2, T=1.0, progress=False)


def _problem(parameterization="noise"):
    data = GaussianMixture.ring().sample(64, np.random.default_rng(100))
    return ScoreModel(MLP(2, (8,), "silu", "log", rng=0), OU(), parameterization), data


@pytest.mark.parametrize("optimizer", [None, "fresh"])
def test_resuming_at_step_one_needs_the_optimizer_of_that_step(optimizer):
    """start_step = 1 resumes a run of one step taken: without the optimizer of that step (none, or
    a fresh one whose step_count is 0) Adam's bias corrections would restart at k = 1, so fit refuses
    it as it does start_step = 4. Mutant survived: start_step > 1 for start_step > 0 in fit's check
    (every test resumed at step 2 or later, or at 0)."""
    model, data = _problem()
    theta = model.params.copy()
    given = None if optimizer is None else Adam(model.params)
    taken = "no optimizer was given" if optimizer is None else "the optimizer has taken 0"
    with pytest.raises(ValueError, match=f"^start_step=1 resumes a run, but {taken}; pass the optimizer restored"):
        fit(model, data, steps=3, start_step=1, optimizer=given, rng=np.random.default_rng(0), **FIT)
    np.testing.assert_array_equal(model.params, theta)


def test_resuming_a_finished_run_takes_no_step():
    """start_step = steps is in [0, steps], as its message says: a run resumed from its last
    checkpoint has nothing left to do; fit returns the history as it was, with no step taken, no
    draw from rng, no evaluation and no callback. Mutant survived: start_step < steps in fit's
    check (which refused it; no test resumed a finished run)."""
    model, data = _problem()
    history = fit(model, data, steps=3, rng=np.random.default_rng(1), **FIT)
    theta, losses = model.params.copy(), list(history.loss)
    rng = np.random.default_rng(2)
    calls = []
    again = fit(model, data, steps=3, start_step=3, optimizer=history.optimizer, history=history, rng=rng,
                eval_every=1, evaluate=lambda m: calls.append("evaluate") or 0.0,
                callback=lambda *args: calls.append("callback"), **FIT)
    assert again is history and again.loss == losses and again.eval_steps == [] and calls == []
    np.testing.assert_array_equal(model.params, theta)
    assert history.optimizer.step_count == 3
    assert rng.random() == np.random.default_rng(2).random()  # nothing drawn


def test_a_divergence_with_two_remedies_words_them_as_a_pair(monkeypatch):
    """With weighting 'sigma2' a non-finite gradient leaves two remedies: "try a smaller lr or a larger
    t0" (not "a smaller lr, or a larger t0"). Mutant survived: len(options) < 2 for <= 2 in train._either
    (every divergence test used weighting 'none', three remedies)."""
    original = sgm_ref.train._dsm_loss

    def spoiled(*args):
        loss, grad = original(*args)
        grad[3] = np.nan
        return loss, grad

    monkeypatch.setattr(sgm_ref.train, "_dsm_loss", spoiled)
    model, data = _problem()
    with pytest.raises(TrainingDivergedError) as info:
        fit(model, data, steps=2, rng=np.random.default_rng(0), weighting="sigma2", **FIT)
    assert str(info.value).startswith("the gradient became non-finite at step 1; the model keeps the parameters of "
                                      "step 0 (try a smaller lr or a larger t0); Adam: grad contains 1 non-finite")
    assert info.value.remedies == ("a smaller lr", "a larger t0")


@pytest.mark.parametrize("grad", [True, False])
def test_a_loss_on_the_workspace_of_a_kept_forward_spoils_its_tape(grad):
    """dsm_loss on a batch of the size of a forward(x, t, keep=True) reuses its workspace (the noised
    batch overwrites x): a backward after it must be refused, as MLP.backward documents, not return
    the gradient at the loss's noised batch. Against the gradient at x from a fresh forward: the
    loss's batch gives another. Mutants survived: ws.has_tape = False dropped after the backward pass
    in losses._dsm_loss (grad True), and tape=True for tape=grad in its forward pass (grad False)."""
    from sgm_ref.losses import dsm_loss

    model, _ = _problem("score")
    net = model.network
    rng = np.random.default_rng(3)
    x, t, w = rng.standard_normal((5, 2)), rng.uniform(0.1, 1.0, 5), rng.standard_normal((5, 2))
    net.forward(x, t, keep=True)
    want = net.backward(w)
    net.forward(x, t, keep=True)
    dsm_loss(model, 3.0 * rng.standard_normal((5, 2)), rng.uniform(0.1, 1.0, 5), rng.standard_normal((5, 2)),
             grad=grad)
    with pytest.raises(ValueError, match="^backward needs a preceding forward"):
        net.backward(w)
    net.forward(x, t, keep=True)
    np.testing.assert_array_equal(net.backward(w), want)  # the tape of a fresh forward is whole


@pytest.mark.parametrize("parameterization", ["score", "residual", "noise"])
def test_dsm_loss_names_a_zero_time_for_an_embedding_that_accepts_it(parameterization):
    """t = 0 has sigma_t = 0, so the target z / sigma_t is infinite: dsm_loss refuses it by name,
    whatever the network's time embedding. Mutant survived: t < 0 for t <= 0 in dsm_loss's check
    (the test of t = 0 used the 'log' embedding, whose own 't must be > 0 for the 'log' time
    embedding' matched; with the 'linear' one the mutant said 'the loss overflows float64')."""
    from sgm_ref.losses import dsm_loss

    model = ScoreModel(MLP(2, (8,), "silu", "linear", rng=0), OU(), parameterization)
    rng = np.random.default_rng(4)
    x0, z = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    with pytest.raises(ValueError, match=r"^t must be > 0 \(sigma_0 = 0 makes z / sigma_t infinite\)$"):
        dsm_loss(model, x0, np.array([0.5, 0.0, 0.2]), z)


@pytest.mark.parametrize("parameterization", ["score", "residual"])
def test_a_score_model_names_a_zero_time_for_an_embedding_that_accepts_it(parameterization):
    """The model's score at t = 0 is not what it learns (p_0's own score): ScoreModel refuses it by
    name for every parameterization and embedding. Mutant survived: t < 0 for t <= 0 in
    ScoreModel.__call__'s check (the tests of t = 0 used the 'log' or 'fourier' embedding, which
    refuse it themselves, or 'noise', whose sigma_t = 0 does; with 'linear' the mutant returned a
    finite score for t = 0)."""
    model = ScoreModel(MLP(2, (8,), "silu", "linear", rng=0), OU(), parameterization)
    x = np.random.default_rng(5).standard_normal((3, 2))
    with pytest.raises(ValueError, match=r"^t must be > 0: the score of p_0 itself is not what the model learns$"):
        model(x, np.array([0.5, 0.0, 0.2]))


def test_a_float64_noise_score_is_the_correctly_rounded_quotient():
    """"noise": s = -net(x, t) / sigma_t, one division in float64, so each entry is the float nearest
    the exact quotient of the network's output and sigma_t (mpmath, 40 digits, from the float64
    output and OU().sigma(t)): bit for bit. Mutant survived: out *= -(1 / sigma) for out /= -sigma in
    ScoreModel.output_to_score (two roundings, up to ~1.5 ulp; the tests compared at rtol 1e-14)."""
    import mpmath as mp

    net = MLP(3, (8, 6), "silu", "log", rng=0)
    model = ScoreModel(net, OU(), "noise")
    rng = np.random.default_rng(6)
    x, t = rng.standard_normal((40, 3)), np.exp(rng.uniform(np.log(1e-6), np.log(3.0), 40))
    out, sigma = net.forward(x, t), OU().sigma(t)
    with mp.workdps(40):
        want = np.array([[float(-mp.mpf(float(o)) / mp.mpf(float(sigma[i]))) for o in row]
                         for i, row in enumerate(out)])
    np.testing.assert_array_equal(model(x, t), want)


def test_a_gradient_overflow_names_lambda_times_z_over_sigma_with_the_sigma2_weighting():
    """The message of a gradient that overflows in the backward pass gives the bound on
    lambda |z| / sigma_t and dL/dout = (2 / n) lambda (s + z / sigma_t) with lambda = sigma_t^2 for
    'sigma2': at t = 0.5 that is sigma_t max|z| (closed form sigma_t = sqrt(-expm1(-1))), and dL/dout
    sigma_t^2 times that of the weighting 'none'. Mutant survived: lambda = 1 for both weightings in
    losses._overflow (the messages' tests all had 'none', or overflowed before the backward pass)."""
    import re

    from sgm_ref.losses import dsm_loss

    rng = np.random.default_rng(0)
    x0, z = (a.astype(np.float32) for a in (rng.standard_normal((4, 2)), rng.standard_normal((4, 2))))
    model = ScoreModel(MLP(2, (16, 16, 16), "relu", "linear", rng=0, dtype=np.float32), OU(), "score")
    model.params[:] *= np.float32(1e8)  # the loss is finite (float64), the backward pass overflows float32
    tops = {}
    for weighting in ("none", "sigma2"):
        with pytest.raises(ValueError, match=r"^dsm_loss: the gradient overflows float32, though lambda") as info:
            dsm_loss(model, x0, 0.5, z, weighting)
        found = re.search(r"stays below ([^:]+): dL/dout reaches (\S+) and the backward pass", str(info.value))
        tops[weighting] = float(found.group(2))
        sigma2 = -np.expm1(-1.0) if weighting == "sigma2" else None
        bound = np.abs(z).max() / np.sqrt(-np.expm1(-1.0)) * (1.0 if sigma2 is None else sigma2)
        assert found.group(1) == f"{bound:.3g}"
    assert tops["sigma2"] == pytest.approx(-np.expm1(-1.0) * tops["none"], rel=2e-3)  # 3 digits printed


def test_check_vjp_compares_along_the_direction_actually_stepped():
    """At theta ~ 1e5 the floats are ~1.5e-11 apart, so theta +- 1e-6 u is rounded and the direction
    stepped, ((theta + eps u) - (theta - eps u)) / (2 eps), differs from u by up to ~1e-5 relative.
    f = 2 theta is exact in floats, so w . (f(theta + eps u) - f(theta - eps u)) / (2 eps) is
    (2 w) . (the direction taken) to the last digits, which check_vjp's analytic value must use (its
    docstring): it passes at rtol 1e-12. Mutant survived: analytic = vjp . u_j for vjp . taken in
    check_vjp (its tests had theta of order 1; check_gradient's own is pinned by
    test_the_divisor_is_the_step_actually_taken)."""
    from sgm_ref.gradcheck import check_vjp

    theta = np.array([100000.1, -31415.9265, 77777.7])
    before = theta.copy()
    result = check_vjp(lambda th: 2.0 * th, lambda th, w: 2.0 * w, theta, np.random.default_rng(0), directions=4,
                       eps=1e-6, rtol=1e-12, atol=0.0)
    assert result.passed, result.max_rel_error
    assert theta.tobytes() == before.tobytes()


def test_an_eps_below_the_float_spacing_is_named_as_such():
    """An eps that moves theta_i in neither direction is named ("below the spacing of floats ... use a
    larger eps"), not met as a 0 / 0 difference. Mutant survived: the up == down check dropped in
    gradcheck._coordinate_difference, which then said "the central difference along theta[0]
    overflows float64 ... scale f down (or use a larger eps)" (the test matched 'eps' alone)."""
    from sgm_ref.gradcheck import numerical_gradient

    with pytest.raises(ValueError, match=r"^eps = 1e-06 is below the spacing of floats at theta\[1\] = "
                                         r"1000000000000\.0; use a larger eps$"):
        numerical_gradient(lambda th: float(th @ th), np.array([0.5, 1e12]), eps=1e-6)


@pytest.mark.parametrize("directions", [None, 2])
def test_an_f_that_returns_a_vector_is_named(directions):
    """f(theta) must be a real scalar: a vector is named with its shape and where it was met, in both
    modes. Mutant survived: any size accepted for a scalar in gradcheck._evaluate, which then met
    NumPy's "cannot reshape array of size 3 into shape ()" (the test matched 'f' alone, which that has)."""
    from sgm_ref.gradcheck import check_gradient

    where = "theta \\+ eps e_0" if directions is None else "theta \\+ eps u"
    with pytest.raises(ValueError, match=rf"^f must return a real scalar, got float64 of shape \(3,\) at {where}$"):
        check_gradient(lambda th: 2.0 * th, np.zeros(3), np.zeros(3), directions=directions,
                       rng=np.random.default_rng(0))


def test_a_noise_divergence_or_jvp_that_overflows_where_the_score_does_not_is_refused():
    """"noise" divides the network's trace and Jacobian-vector product by sigma_t as it divides the
    output: either can overflow where the score stays finite (a trace of 1e146 at sigma_t = 3e-162
    with an output of 1e-155; tangents of 1e305 at sigma_t = 1.4e-5), and is refused, not returned
    as inf. Mutants survived: the finiteness checks of tr (ScoreModel.divergence) and of jv
    (ScoreModel.jvp) dropped, keeping only the score's (no test had a finite score with an
    overflowing divergence or product)."""
    model = ScoreModel(MLP(2, (8,), "relu", "linear", rng=0), OU(), "noise")
    for b in model.network.biases:
        b[...] = 0.0
    model.params[:] *= 1e74  # output ~ 1e148 |x|, trace ~ 1e147
    x = np.random.default_rng(0).standard_normal((3, 2)) * 1e-300
    s = model(x, 5e-324)
    assert np.all(np.isfinite(s)) and np.max(np.abs(s)) < 1e10  # the score itself is fine
    with pytest.raises(ValueError, match=r"^the score or its divergence overflows; use larger t or rescale x$"):
        model.divergence(x, 5e-324)
    model = ScoreModel(MLP(2, (8,), "silu", "linear", rng=0), OU(), "noise")
    x = np.random.default_rng(0).standard_normal((3, 2))
    assert np.all(np.isfinite(model.network.jvp(x, 1e-10, np.full((3, 1, 2), 1e305))[1]))
    with pytest.raises(ValueError, match=r"^the score or its Jacobian-vector product overflows; use larger t"):
        model.jvp(x, 1e-10, np.full((3, 1, 2), 1e305))


@pytest.mark.parametrize("beta", [0.99, 0.999])
def test_bias_corrections_between_one_half_and_one_are_within_the_documented_error(beta):
    """1 - beta^k for every k with beta^k in (1/2, 1), against mpmath (40 digits): within 3.6e-16, the
    module docstring's figure (2.0e-16 measured). Mutant survived: beta^k <= 0.9 for <= 0.5 as the bound
    of the plain 1 - beta**k in optim._one_minus_power (5.0e-16 off at beta = 0.999: the rounding of
    beta**k, which the subtraction keeps; the tests met beta^k in (1/2, 0.9) only through Adam's
    trajectories, at rtol 3e-15)."""
    import mpmath as mp

    from sgm_ref.optim import _one_minus_power

    worst, k = 0.0, 1
    with mp.workdps(40):
        while beta**k > 0.5:
            exact = 1 - mp.mpf(beta) ** k
            worst = max(worst, float(abs(mp.mpf(_one_minus_power(beta, k)) - exact) / exact))
            k += 1
    assert worst <= 3.6e-16


def test_adam_refuses_a_weight_decay_whose_decayed_gradient_squares_overflow():
    """weight_decay * max|params| must stay below sqrt(max) = 1.34e154 (float64), else g = grad +
    weight_decay p squares to inf in v: refused at construction where it is 1e155 (below max itself).
    Mutant survived: the bound taken as max rather than sqrt(max) in Adam._check_scales (the test
    used weight_decay = 1e308, past both)."""
    with pytest.raises(ValueError, match=r"^weight_decay = 100000 is too large for params \(largest \|entry\| "
                                         r"1e\+150\): weight_decay \* \|params\| must stay below 1\.34e\+154"):
        Adam(np.array([1e150, 1.0]), weight_decay=1e5)


def test_a_refused_step_counts_the_second_moments_that_overflowed():
    """A gradient 1.2e154 and a decay term weight_decay p = 1e154, each inside its own bound, sum to
    g = 2.2e154, whose square overflows v with beta2 = 0 (v = g^2); the parameter stays finite
    (m / sqrt(inf) = 0). Adam refuses the step and its message counts that entry of v: "made 1 entry
    of params or v non-finite". Mutant survived: only the non-finite params counted in
    Adam._refuse_step ("made 0 entries")."""
    from sgm_ref.optim import NonFiniteStepError

    opt = Adam(np.array([1e154, 1.0]), lr=1e-3, betas=(0.9, 0.0), weight_decay=1.0)
    with pytest.raises(NonFiniteStepError, match=r"^Adam step 1 made 1 entry of params or v non-finite: "):
        opt.step(np.array([1.2e154, 0.0]))
    assert np.isinf(opt.v[0]) and np.all(np.isfinite(opt.params)) and opt.step_count == 0
