"""sgm_ref.likelihood: the probability-flow ODE's log q against the exact log p_t0 of mixtures,
Heun's order, Hutchinson's unbiasedness, the MLP's exact divergence against torch autograd,
the NLL gap of trained models, and an independent ODE solver (torchdiffeq)."""

import numpy as np
import pytest

from sgm_ref.likelihood import bits_per_dim, log_prob, nll_report, prior_log_prob
from sgm_ref.nn import MLP
from sgm_ref.processes import DDPM, EDM, OU, VE, VP, FlowMatching, SubVP, VPCosine
from sgm_ref.score_model import ScoreModel
from sgm_ref.targets import GaussianMixture

from _peers import peer


def full_mixture(d=8, K=3, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((K, d, d))
    cov = A @ A.transpose(0, 2, 1) / d + 0.2 * np.eye(d)
    return GaussianMixture(np.array([0.2, 0.5, 0.3]), rng.standard_normal((K, d)), cov, "full")


@pytest.mark.parametrize("name", ["ring", "full8"])
def test_exact_score_reproduces_exact_log_p(name):
    """1,000 points of p_0; OU to T = 15 (alpha_T = 3e-7, so the N(0, I) prior's mismatch is ~1e-6)."""
    target = GaussianMixture.ring() if name == "ring" else full_mixture()
    x = target.sample(1000, np.random.default_rng(1))
    exact = target.log_prob(x, 0.0)
    errors = {}
    for tol in (1e-5, 1e-8):
        res = log_prob(target, OU(), x, 0.0, 15.0, rtol=tol, atol=tol)
        errors[tol] = np.max(np.abs(res.log_q - exact))
        np.testing.assert_allclose(res.log_q, res.prior + res.integral, rtol=0, atol=1e-12)
        np.testing.assert_allclose(res.prior, prior_log_prob(OU(), res.endpoint, 15.0), rtol=0, atol=0)
        assert res.se is None and res.n_evaluations > 10 and res.endpoint.shape == x.shape
    assert errors[1e-8] <= 1e-4
    assert errors[1e-8] < errors[1e-5] / 10


PROCESSES = [(OU(), 0.0, 4.0), (VP(), 0.0, 1.0), (VPCosine(), 0.0, 0.9), (SubVP(), 0.0, 1.0),
             (VE(), 0.0, 1.0), (EDM(), 0.0, 20.0), (FlowMatching(), 0.0, 0.9)]


@pytest.mark.parametrize("process,t0,T", PROCESSES, ids=lambda p: repr(p) if not isinstance(p, float) else str(p))
def test_every_process_with_the_exact_prior(process, t0, T):
    """With prior = the exact log p_T only the solver's error is left, for every process."""
    target = full_mixture(d=3)
    rng = np.random.default_rng(2)
    x = process.perturb(target.sample(60, rng), 0.05, rng)[0]
    res = log_prob(target, process, x, 0.05, T, rtol=1e-9, atol=1e-9,
                   prior=lambda y: target.log_prob(y, T, process))
    np.testing.assert_allclose(res.log_q, target.log_prob(x, 0.05, process), rtol=0, atol=1e-5)


def test_ddpm_with_heun_on_its_knots():
    """DDPM's beta jumps at every knot j / N: Heun on the knots integrates a smooth field per step."""
    process = DDPM()
    target = full_mixture(d=3)
    rng = np.random.default_rng(2)
    x = process.perturb(target.sample(60, rng), 0.05, rng)[0]
    res = log_prob(target, process, x, 0.05, 0.99, solver="heun", grid=np.arange(50, 991) / 1000,
                   prior=lambda y: target.log_prob(y, 0.99, process))
    # Heun's error with h = 1e-3 is ~2e-5 here; stages that saw the next knot's beta made it first
    # order (1.5e-4 on this grid, 5e-3 at T = 0.2)
    np.testing.assert_allclose(res.log_q, target.log_prob(x, 0.05, process), rtol=0, atol=5e-5)


def test_prior_is_the_samplers_start():
    y = np.random.default_rng(3).standard_normal((4, 2))
    np.testing.assert_allclose(prior_log_prob(VP(), y, 1.0), -np.log(2 * np.pi) - 0.5 * np.sum(y**2, axis=1))
    s = VE().sigma(1.0)
    np.testing.assert_allclose(prior_log_prob(VE(), y, 1.0),
                               -np.log(2 * np.pi * s * s) - 0.5 * np.sum(y**2, axis=1) / s**2)


def test_heun_converges_with_order_two():
    target = GaussianMixture.ring()
    rng = np.random.default_rng(4)
    x = OU().perturb(target.sample(200, rng), 0.05, rng)[0]
    exact = target.log_prob(x, 0.05)
    prior = lambda y: target.log_prob(y, 3.0)  # noqa: E731
    steps = [20, 40, 80, 160]
    errors = [np.max(np.abs(log_prob(target, OU(), x, 0.05, 3.0, solver="heun", n_steps=k, prior=prior).log_q
                            - exact)) for k in steps]
    slopes = -np.diff(np.log(errors)) / np.diff(np.log(steps))
    assert np.all((slopes > 1.8) & (slopes < 2.3)), (errors, slopes)
    grid = np.geomspace(0.05, 3.0, 41)
    res = log_prob(target, OU(), x, 0.05, 3.0, solver="heun", grid=grid, prior=prior)
    assert res.n_evaluations == 80


def small_model(d=3, seed=0, parameterization="residual", activation="silu", embedding="linear"):
    return ScoreModel(MLP(d, (16, 16), activation, embedding, rng=seed), OU(), parameterization)


@pytest.mark.parametrize("probes", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probes):
    """Same Heun grid: the trajectory is the exact run's, so only the probes differ. d = 8:
    60 Rademacher probes are distinct classes of the 128 (finite-population standard error)."""
    rng = np.random.default_rng(5)
    target = full_mixture(d=8)
    x = target.sample(30, rng)
    plain_score = lambda y, t: target.score(y, t, OU())  # noqa: E731  (its jvp: finite differences)
    for score in (small_model(d=8), target, plain_score):
        exact_div = (lambda y, t: target.divergence(y, t, OU())) if score is plain_score else "exact"
        kw = dict(solver="heun", n_steps=12)
        exact = log_prob(score, OU(), x, 0.1, 3.0, divergence=exact_div, **kw)
        hut = log_prob(score, OU(), x, 0.1, 3.0, divergence="hutchinson", probes=probes, n_probes=60, rng=rng, **kw)
        assert hut.divergence == "hutchinson" and hut.se.shape == (30,) and np.all(hut.se > 0)
        np.testing.assert_allclose(hut.endpoint, exact.endpoint, rtol=0, atol=1e-12)
        z = (hut.log_q - exact.log_q) / hut.se
        assert np.all(np.abs(z) < 4), z
        assert abs(z.mean()) < 4 / np.sqrt(z.size)


def test_rademacher_probes_never_claim_a_false_zero_standard_error():
    """Independent Rademacher probes in d = 2 fall in 2 classes up to sign, so two probes of a
    point coincided half the time: standard error 0, estimate off by up to 4.8 nats (found by
    a review). Now each point's probes are distinct classes: with n_probes >= 2^(d - 1) every
    class is used once, the mean is the exact trace and the standard error 0 is true; with
    fewer, no point has a zero standard error unless its estimate is exact."""
    rng = np.random.default_rng(7)
    ring = GaussianMixture.ring()
    x = ring.sample(200, rng)
    kw = dict(solver="heun", n_steps=20)
    exact = log_prob(ring, OU(), x, 0.05, 4.0, **kw)
    for m in (2, 4):
        hut = log_prob(lambda y, t: ring.score(y, t, OU()), OU(), x, 0.05, 4.0, divergence="hutchinson",
                       n_probes=m, rng=rng, **kw)
        assert np.all(hut.se == 0.0)
        np.testing.assert_allclose(hut.log_q, exact.log_q, rtol=0, atol=1e-7)  # the finite difference's bias
    target = full_mixture(d=4)
    y = target.sample(300, rng)
    exact4 = log_prob(target, OU(), y, 0.1, 3.0, **kw)
    hut4 = log_prob(target, OU(), y, 0.1, 3.0, divergence="hutchinson", n_probes=3, rng=rng, **kw)
    error = np.abs(hut4.log_q - exact4.log_q)
    assert np.all((hut4.se > 1e-6) | (error < 1e-9)), (hut4.se.min(), error[hut4.se <= 1e-6])
    z = (hut4.log_q - exact4.log_q) / hut4.se
    assert 0.7 < np.mean(np.abs(z) < 1.96) < 0.92  # Student's t with 2 dof covers 0.81 (measured 0.82)
    mix1d = GaussianMixture([1.0], [[0.3]], [[0.5]])
    one = log_prob(mix1d, OU(), mix1d.sample(5, rng), 0.1, 3.0, divergence="hutchinson", n_probes=3, rng=rng, **kw)
    assert np.all(one.se == 0.0)  # d = 1: one class, the exact trace (it was None, a review)


def test_rademacher_standard_error_has_the_finite_population_factor():
    """One point repeated 4000 times, each copy with its own 2 of the 4 sign classes (d = 3):
    the spread of log_q over the copies is the standard error's. sqrt(1 - m / M) is the
    factor for a mean of m draws without replacement from M (the unbiased s^2 estimates the
    population's variance with M - 1); a factor of sqrt((M - m) / (M - 1)) would read 15% high."""
    target = full_mixture(d=3)
    x = np.repeat(target.sample(1, np.random.default_rng(4)), 4000, axis=0)
    res = log_prob(target, OU(), x, 0.1, 3.0, divergence="hutchinson", n_probes=2, rng=np.random.default_rng(5),
                   solver="heun", n_steps=8)
    ratio = np.sqrt(np.mean(res.se**2)) / res.log_q.std(ddof=1)
    assert abs(ratio - 1.0) < 0.05, ratio


@pytest.mark.parametrize("activation", ["silu", "tanh", "softplus", "relu"])
@pytest.mark.parametrize("parameterization", ["score", "noise", "residual"])
def test_mlp_divergence_equals_torch_autograd_trace(torch_ref, activation, parameterization):
    torch = torch_ref.torch
    model = small_model(d=4, seed=1, parameterization=parameterization, activation=activation,
                        embedding="fourier" if activation == "tanh" else "linear")
    rng = np.random.default_rng(6)
    x, t = rng.standard_normal((7, 4)), rng.uniform(0.05, 2.0, 7)
    s, div = model.divergence(x, t)
    params = torch_ref.parameters(model.network)
    tt = torch.tensor(t)
    sigma = torch.sqrt(torch_ref.coefficients(model.process, tt)[1])
    want = []
    for i in range(7):
        def score_row(xi, i=i):
            out = torch_ref.forward(model.network, params, xi[None], tt[i:i + 1])[0]
            return {"score": out, "noise": -out / sigma[i], "residual": out - xi}[parameterization]
        J = torch.autograd.functional.jacobian(score_row, torch.tensor(x[i]))
        want.append(float(torch.trace(J)))
    np.testing.assert_allclose(div, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s, model(x, t), rtol=1e-14, atol=1e-14)
    V = rng.standard_normal((7, 2, 4))
    _, jv = model.jvp(x, t, V)
    for i in range(7):
        J = torch.autograd.functional.jacobian(
            lambda xi: {"score": lambda o: o, "noise": lambda o: -o / sigma[i], "residual": lambda o: o - xi}[
                parameterization](torch_ref.forward(model.network, params, xi[None], tt[i:i + 1])[0]),
            torch.tensor(x[i])).numpy()
        np.testing.assert_allclose(jv[i], V[i] @ J.T, rtol=1e-12, atol=1e-12)


def test_mlp_trace_without_hidden_layers_and_float32():
    net = MLP(3, (), "silu", rng=0)
    x = np.random.default_rng(7).standard_normal((4, 3))
    np.testing.assert_allclose(net.jacobian_trace(x, 0.5)[1], np.trace(net.weights[0][:3]), rtol=1e-14)
    model = ScoreModel(MLP(3, (8,), dtype=np.float32, rng=0), OU())
    res = log_prob(model, OU(), x, 0.1, 2.0, solver="heun", n_steps=4)
    ref64 = ScoreModel(MLP(3, (8,), rng=0), OU())
    ref64.network.set_params(model.params.astype(np.float64))
    np.testing.assert_allclose(res.log_q, log_prob(ref64, OU(), x, 0.1, 2.0, solver="heun", n_steps=4).log_q,
                               rtol=1e-5)


def test_nll_gap_is_positive_and_smaller_for_a_better_trained_model():
    from sgm_ref.train import fit
    ring = GaussianMixture.ring()
    data = ring.sample(2000, np.random.default_rng(0))
    gaps = []
    for steps in (60, 400):
        model = ScoreModel(MLP(2, (32, 32), rng=1), OU(), "residual")
        fit(model, data, steps=steps, batch_size=256, lr=3e-3, t0=1e-2, T=8.0, rng=np.random.default_rng(2))
        r = nll_report(model, ring, OU(), t0=1e-2, T=8.0, n=300, rng=np.random.default_rng(3))
        gap = r["kl_gap"]
        assert gap["value"] > 3 * gap["standard_error"] > 0
        np.testing.assert_allclose(gap["value"], r["model_nll"]["value"] - r["target_nll"]["value"], rtol=1e-12)
        gaps.append(gap)
    assert gaps[0]["value"] - gaps[1]["value"] > 3 * np.hypot(gaps[0]["standard_error"], gaps[1]["standard_error"])
    exact = nll_report(ring, ring, OU(), t0=1e-2, T=8.0, n=300, rng=np.random.default_rng(3))
    assert abs(exact["kl_gap"]["value"]) < 1e-4


def test_torchdiffeq_driven_by_the_same_oracle_agrees():
    torch = peer("torch")
    torchdiffeq = peer("torchdiffeq")
    target = full_mixture(d=4)
    process = VP()
    x = target.sample(50, np.random.default_rng(8))
    n, d = x.shape

    def rhs(t, state):  # written here from the formulas, not through sgm_ref.likelihood
        tn = float(t)
        y = state[:, :d].numpy()
        f, g2 = float(process.f(tn)), float(process.g2(tn))
        s = target.score(y, tn, process)
        div = target.divergence(y, tn, process)
        return torch.from_numpy(np.concatenate([f * y - 0.5 * g2 * s, (d * f - 0.5 * g2 * div)[:, None]], axis=1))

    state0 = torch.from_numpy(np.concatenate([x, np.zeros((n, 1))], axis=1))
    sol = torchdiffeq.odeint(rhs, state0, torch.tensor([0.0, 0.9], dtype=torch.float64), method="dopri5",
                             rtol=1e-10, atol=1e-10)[-1].numpy()
    y_T, integral = sol[:, :d], sol[:, d]
    theirs = -0.5 * (d * np.log(2 * np.pi) + np.sum(y_T**2, axis=1)) + integral
    ours = log_prob(target, process, x, 0.0, 0.9, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ours.log_q, theirs, rtol=0, atol=1e-7)


def test_bits_per_dim_convention():
    # the uniform density on [0, 1]^d (log q = 0) of 256-level data: 8 bits, all of the bytes' entropy
    assert bits_per_dim(0.0, 3, scale=1.0) == 8.0
    assert bits_per_dim(0.0, 3, scale=2.0) == 7.0  # [-1, 1]: score_sde's offset 7
    np.testing.assert_allclose(bits_per_dim(np.array([-3 * np.log(2.0), 0.0]), 3, bins=16, scale=1.0), [5.0, 4.0])
    with pytest.raises(ValueError, match="scale"):
        bits_per_dim(0.0, 3, scale=0.0)
    with pytest.raises(ValueError, match="bins"):
        bits_per_dim(0.0, 3, bins=1, scale=1.0)


def test_bad_arguments_are_named():
    target = full_mixture(d=2)
    x = target.sample(5, np.random.default_rng(9))
    plain_score = lambda y, t: target.score(y, t, OU())  # noqa: E731
    cases = [
        (dict(score=plain_score), "divergence='exact' needs"),
        (dict(solver="euler"), "solver"),
        (dict(divergence="trace"), "divergence"),
        (dict(divergence="hutchinson"), "rng"),
        (dict(divergence="hutchinson", probes="sphere", rng=np.random.default_rng(0)), "probes"),
        (dict(solver="heun"), "n_steps"),
        (dict(n_steps=4), "Heun"),
        (dict(solver="heun", grid=[0.0, 0.5, 0.4, 1.0]), "grid"),
        (dict(solver="heun", grid=[0.1, 1.0]), "grid must start"),
        (dict(t0=1.0), "t0 < T"),
        (dict(x=x.astype(np.float32)), "float64"),
        (dict(x=x[:, :1]), "x"),
        (dict(score=ScoreModel(MLP(2, (4,), rng=0), VP())), "process"),
        (dict(score=lambda y, t: np.full_like(y, np.nan), divergence="hutchinson", rng=np.random.default_rng(0)),
         "non-finite"),
        (dict(prior="normal"), "prior"),
        (dict(score=3), "score must be"),
    ]
    for kw, match in cases:
        args = dict(score=target, process=OU(), x=x, t0=0.0, T=1.0)
        args.update(kw)
        with pytest.raises(ValueError, match=match):
            log_prob(args.pop("score"), args.pop("process"), args.pop("x"), args.pop("t0"), args.pop("T"), **args)


def test_finite_difference_step_is_each_points_own():
    """The finite-difference Hutchinson step was 1e-5 (1 + max |x|) over the whole batch, so one
    far point coarsened every other point's divergence (a review: 1.8e-3 nats at 500). Now each
    point has its own: on Heun's fixed grid the other points' log q do not move by a bit, and
    in d = 1 (Rademacher eps J eps is the divergence itself) they stay within 1e-8 of exact."""
    mix = GaussianMixture([0.5, 0.5], [[-0.5], [0.5]], [[0.05**2], [0.05**2]])
    rng = np.random.default_rng(1)
    x = mix.sample(20, rng)
    score = lambda y, t: mix.score(y, t, VE())  # noqa: E731  (finite differences)
    kw = dict(solver="heun", n_steps=16, divergence="hutchinson", n_probes=1)
    alone = log_prob(score, VE(), x, 1e-3, 1.0, rng=np.random.default_rng(2), **kw)
    beside = log_prob(score, VE(), np.vstack([x, [[500.0]]]), 1e-3, 1.0, rng=np.random.default_rng(2), **kw)
    np.testing.assert_array_equal(beside.log_q[:20], alone.log_q)
    exact = log_prob(mix, VE(), x, 1e-3, 1.0, solver="heun", n_steps=16)
    np.testing.assert_allclose(alone.log_q, exact.log_q, rtol=1e-8)


def test_messages_name_the_argument_and_a_fix_that_works():
    """Found by a review: nll_report with process="ou" was an AttributeError, and a t0 past the
    horizon named "t"; a float32 score was told to "use points of the score's dtype", which
    log_prob then refuses; a ScoreModel at t0 = 0 named "t"; a point far out got solve_ivp's
    bare message."""
    ring = GaussianMixture.ring()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="process must be"):
        nll_report(ring, ring, "ou", t0=0.01, T=1.0, n=4, rng=rng)
    with pytest.raises(ValueError, match=r"need t0 < T <= 1.0 .* got t0 = 2.0"):
        nll_report(ring, ring, VP(), t0=2.0, T=3.0, n=4, rng=rng)
    x = ring.sample(4, rng)
    with pytest.raises(ValueError, match=r"score returned dtype float32: .*return s.astype\(np.float64\)"):
        log_prob(lambda y, t: ring.score(y, t, OU()).astype(np.float32), OU(), x, 0.01, 2.0,
                 divergence=lambda y, t: ring.divergence(y, t, OU()))
    with pytest.raises(ValueError, match="t0 must be > 0 for a ScoreModel"):
        log_prob(small_model(d=2), OU(), x, 0.0, 2.0)
    # a score far too stiff for the tolerances (the ring at x = 1e30 was this test's case while its
    # divergence there was rounding noise, 5e30; it is now exact, -3.0, and the solve succeeds)
    far = np.array([[1e30, 0.0]])
    with pytest.raises(ValueError, match=r"solve_ivp failed: .*largest \|x\| is 1e\+30.*rescale x"):
        log_prob(lambda y, t: -1e30 * y, OU(), far, 0.01, 2.0, divergence=lambda y, t: np.full(y.shape[0], -2e30))
    assert np.isfinite(log_prob(ring, OU(), far, 0.01, 2.0).log_q).all()


def test_mlp_jvp_checks_its_tangents_and_leaves_no_tape():
    net = MLP(3, (8,), rng=0)
    x = np.zeros((2, 3))
    for bad in (np.zeros((2, 3)), np.zeros((3, 1, 3)), np.zeros((2, 1, 4)), np.full((2, 1, 3), np.nan)):
        with pytest.raises(ValueError, match="tangents"):
            net.jvp(x, 0.5, bad)
    net.forward(x, 0.5, keep=True)
    net.jvp(x, 0.5, np.ones((2, 1, 3)))  # overwrote the same workspace: backward must refuse, not use it
    with pytest.raises(ValueError, match="preceding forward"):
        net.backward(np.ones((2, 3)))


def test_overflow_and_bad_priors_raise_naming_them():
    """Review: a far-out x gave log_q = -inf silently; a bad prior was blamed on 'the divergence';
    nll_report named t instead of t0 and raised AttributeError for a non-target."""
    far = np.full((2, 2), 1e300)
    with pytest.raises(ValueError, match="overflow"):
        log_prob(lambda y, t: -y, OU(), far, 0.0, 1.0, divergence="hutchinson", rng=np.random.default_rng(0),
                 solver="heun", n_steps=2)
    target = GaussianMixture.ring()
    x = target.sample(5, np.random.default_rng(0))
    for bad in (lambda y: np.zeros(3), lambda y: np.full(5, np.nan)):
        with pytest.raises(ValueError, match=r"prior\(y\)"):
            log_prob(target, OU(), x, 0.0, 1.0, prior=bad)
    with pytest.raises(ValueError, match="t0 must be finite"):
        nll_report(target, target, OU(), t0=np.nan, T=1.0, n=5, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="target must be"):
        nll_report(target, "ring", OU(), t0=0.1, T=1.0, n=5, rng=np.random.default_rng(0))


def test_prior_log_prob_validates_its_arguments():
    """Review: a 1-D y was an unpacking error, a far-out row -inf, a process name an AttributeError."""
    for args, match in [((OU(), np.zeros(3), 1.0), "y must have shape"),
                        ((OU(), np.full((1, 2), 1e200), 1.0), "overflows"),
                        (("ou", np.zeros((2, 2)), 1.0), "process must be"),
                        ((VE(), np.zeros((2, 2)), np.nan), "T must be finite"),
                        # a review: VE's own check named "t", and VP took any T
                        ((VE(), np.zeros((2, 2)), 1e9), r"T must be <= 1.0 \(the horizon of VE\(.*got 1000000000.0"),
                        ((VP(), np.zeros((2, 2)), 5.0), r"T must be <= 1.0 \(the horizon of VP\(.*got 5.0")]:
        with pytest.raises(ValueError, match=match):
            prior_log_prob(*args)


def test_nll_report_says_how_many_probes_each_point_used():
    """In d = 2 there are two Rademacher sign classes: nll_report(n_probes=4) uses both (the
    exact trace) and says 2 and 'every sign class', where it said '4 probes' (a review); in
    d = 4 (8 classes) 4 probes are 4, not every class."""
    from sgm_ref.likelihood import nll_lines

    ring = GaussianMixture.ring()
    r = nll_report(ring, ring, OU(), t0=0.05, T=3.0, n=4, rng=np.random.default_rng(0), divergence="hutchinson")
    assert (r["n_probes"], r["every_sign_class"]) == (2, True)
    assert "Hutchinson divergence, 2 probes (every sign class: the exact trace)" in "\n".join(nll_lines(r))
    exact = nll_report(ring, ring, OU(), t0=0.05, T=3.0, n=4, rng=np.random.default_rng(0))
    assert abs(r["model_nll"]["value"] - exact["model_nll"]["value"]) < 1e-3  # the same trace, to the solver
    target = GaussianMixture([1.0], [np.zeros(4)], [np.eye(4)])
    r = nll_report(target, target, OU(), t0=0.05, T=3.0, n=4, rng=np.random.default_rng(0), divergence="hutchinson")
    assert (r["n_probes"], r["every_sign_class"]) == (4, False)
    assert "Hutchinson divergence, 4 probes):" in "\n".join(nll_lines(r))


def test_nll_report_draws_ve_samples_at_t0_zero():
    """VE's p_0 is already noised (sigma_0 = sigma_min = 0.01): the target blurred by
    N(0, 1e-4), the law target.log_prob(x, 0, VE) and the ODE use. nll_report drew the raw
    target's samples at t0 = 0 (it perturbed only if t0 > 0), so target_nll was -2.7833
    against the true entropy -2.3815 (a review). The entropy here is scipy's quadrature of
    the blurred 1-D mixture; the exact score's gap is the prior's KL, also by quadrature
    (the ODE is invertible: KL(p_0 || q) = KL(p_T || pi)), plus the solver's error."""
    from scipy import integrate, stats
    from scipy.special import logsumexp

    process = VE()
    tgt = GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [[0.005**2], [0.005**2]])

    def log_mix(y, s):
        return logsumexp([stats.norm.logpdf(y, -1.0, s), stats.norm.logpdf(y, 1.0, s)], axis=0) - np.log(2.0)

    s0 = np.sqrt(0.005**2 + process.sigma2(0.0))
    entropy = -sum(integrate.quad(lambda y: np.exp(log_mix(y, s0)) * log_mix(y, s0), c - 30 * s0, c + 30 * s0,
                                  epsabs=1e-13, epsrel=1e-13)[0] for c in (-1.0, 1.0))
    sT2 = float(process.sigma2(1.0))
    sT = np.sqrt(0.005**2 + sT2)
    kl_prior = integrate.quad(
        lambda y: np.exp(log_mix(y, sT)) * (log_mix(y, sT) - stats.norm.logpdf(y, 0.0, np.sqrt(sT2))),
        -40 * sT, 40 * sT, epsabs=1e-15, epsrel=1e-12, limit=200)[0]
    r = nll_report(tgt, tgt, process, t0=0.0, T=1.0, n=2000, rng=np.random.default_rng(1), rtol=1e-8, atol=1e-8)
    target_nll, gap = r["target_nll"], r["kl_gap"]
    assert abs(target_nll["value"] - entropy) < 3 * target_nll["standard_error"], (target_nll, entropy)
    assert abs(gap["value"] - kl_prior) < 3 * gap["standard_error"] + 1e-6, (gap, kl_prior)


def test_nll_report_keeps_the_random_stream_where_p_t0_is_not_noised():
    """The VE fix draws the perturbation only where p_t0 differs from p_0: OU at t0 = 0 still
    uses target.sample alone, t0 > 0 target.sample then perturb, from the same rng."""
    ring = GaussianMixture.ring()
    for t0 in (0.0, 0.05):
        r = nll_report(ring, ring, OU(), t0=t0, T=3.0, n=50, rng=np.random.default_rng(6))
        rng = np.random.default_rng(6)
        x = ring.sample(50, rng)
        if t0 > 0:
            x = OU().perturb(x, t0, rng)[0]
        assert r["target_nll"]["value"] == float(np.mean(-ring.log_prob(x, t0, OU())))


@pytest.mark.parametrize("kw", [dict(), dict(divergence="hutchinson", n_probes=2, rng=np.random.default_rng(0)),
                                dict(solver="heun", n_steps=3),
                                dict(solver="heun", n_steps=3, divergence="hutchinson", rng=np.random.default_rng(0))],
                         ids=["rk45-exact", "rk45-hutchinson", "heun-exact", "heun-hutchinson"])
def test_an_empty_x_is_refused_by_every_path(kw):
    """x of shape (0, d): exact returned empty arrays, Hutchinson and Heun an IndexError (a review)."""
    ring = GaussianMixture.ring()
    for shape in ((0, 2), (3, 0)):
        with pytest.raises(ValueError, match=r"x must have at least one point and one dimension, got shape"):
            log_prob(ring, OU(), np.zeros(shape), 0.0, 1.0, **kw)


def test_arguments_of_another_divergence_or_solver_are_refused():
    """Review: probes, n_probes, rng (even a non-Generator) and jvp were silently ignored with
    divergence='exact', rtol/atol with Heun, and rtol = 1e-20 was raised to 2.22e-14 by scipy
    with a warning that did not name log_prob's rtol."""
    import warnings

    ring = GaussianMixture.ring()
    x = ring.sample(3, np.random.default_rng(0))
    div = lambda y, t: ring.divergence(y, t, OU())  # noqa: E731
    cases = [
        (dict(n_probes=2), r"n_probes is Hutchinson's, unused with divergence='exact'"),
        (dict(probes="gaussian"), r"probes is Hutchinson's"),
        (dict(rng=np.random.default_rng(0)), r"rng is Hutchinson's"),
        (dict(rng=5), r"rng is Hutchinson's"),
        (dict(jvp=lambda y, t, V: V), r"jvp is Hutchinson's"),
        (dict(n_probes=2, rng=np.random.default_rng(0)), r"n_probes, rng are Hutchinson's.*drop them"),
        (dict(score=lambda y, t: ring.score(y, t, OU()), divergence=div, n_probes=3),
         r"n_probes is Hutchinson's, unused with a callable divergence"),
        (dict(solver="heun", n_steps=3, rtol=1e-6), r"rtol is rk45's.*solver='heun'"),
        (dict(solver="heun", n_steps=3, atol=1e-6), r"atol is rk45's"),
        (dict(solver="heun", n_steps=3, rtol=1e-6, atol=1e-6), r"rtol and atol are rk45's"),
        (dict(rtol=1e-20, atol=1e-20), r"rtol must be >= 2\.220446049250313e-14 \(100 machine epsilons"),
        (dict(rtol=2e-14), r"rtol must be >= 2\.220446049250313e-14"),
        # the floor printed in full: "pass rtol >= 2.22e-14" was refused in turn (2.22e-14 < 100 eps)
        (dict(rtol=2.22e-14), r"got 2\.22e-14; pass rtol >= 2\.220446049250313e-14$"),
    ]
    for kw, match in cases:
        args = dict(score=ring)
        args.update(kw)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # scipy's clipping warning was the only sign
            with pytest.raises(ValueError, match=match):
                log_prob(args.pop("score"), OU(), x, 0.0, 1.0, **args)
    # the floor itself, as the message prints it, is accepted, without scipy's warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        log_prob(ring, OU(), x[:1], 0.0, 0.1, rtol=float("2.220446049250313e-14"), atol=1e-12)
    # the defaults: one Rademacher probe, rtol = atol = 1e-5 (unchanged)
    one = log_prob(lambda y, t: ring.score(y, t, OU()), OU(), x, 0.0, 1.0, divergence="hutchinson",
                   rng=np.random.default_rng(1))
    assert one.se is None
    np.testing.assert_array_equal(log_prob(ring, OU(), x, 0.0, 1.0).log_q,
                                  log_prob(ring, OU(), x, 0.0, 1.0, rtol=1e-5, atol=1e-5).log_q)
    with pytest.raises(ValueError, match=r"n_probes is Hutchinson's"):
        nll_report(ring, ring, OU(), t0=0.05, T=1.0, n=4, rng=np.random.default_rng(0), n_probes=4)


def test_an_out_of_scale_score_is_named_not_x():
    """Review: a score of 1e308 at points of size 2.4 was reported as 'a point far beyond the
    target's scale ...; rescale x' (solve_ivp) or 'x is too far out' (Heun), after scipy's
    overflow RuntimeWarnings. Now the messages give the largest |x| and |score| met (the
    reader can see which is out of scale), name the score and t where the drift itself
    overflows, and no warning escapes."""
    import warnings

    x = np.random.default_rng(0).standard_normal((100, 2))
    huge = lambda y, t: np.full_like(y, 1e308)  # noqa: E731
    zero_div = lambda y, t: np.zeros(len(y))  # noqa: E731
    cases = [
        (OU(), dict(), r"largest \|x\| is 2.4 \(at t0\).*largest \|score\| met 1e\+308 \(t = 0.01\).*if the score"),
        (OU(), dict(solver="heun", n_steps=3), r"prior's log-density at the ODE's endpoint.*largest \|score\| met "
                                               r"1e\+308.*the score is at fault"),
        (VP(), dict(solver="heun", n_steps=3), r"drift f\(t\) x - g\(t\)\^2 / 2 s\(x, t\) overflows float64 at "
                                               r"t = [0-9.]+: the score reaches \|s\| = 1e\+308.*check the score"),
        (VP(), dict(), r"largest \|score\| met 1e\+308"),
    ]
    for process, kw, match in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ValueError, match=match):
                log_prob(huge, process, x, 0.01, 1.0 if process == VP() else 3.0, divergence=zero_div, **kw)
    # a huge divergence: named as the divergence
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"divergence term .* overflows float64 at t = .*\|div s\| = 1e\+308"):
            log_prob(lambda y, t: -y, VP(), x, 0.01, 1.0, divergence=lambda y, t: np.full(len(y), 1e308),
                     solver="heun", n_steps=3)


def test_nll_lines_label_a_monte_carlo_targets_log_p():
    """A TiltedGaussian's log_prob is a Monte-Carlo estimate from fixed draws: nll_lines said
    'target (exact log p_t0)' (a review measured the exact score's gap 8.8e-4 +- 1.1e-4, a
    systematic part the standard error misses). Mixtures stay 'exact'."""
    from sgm_ref.likelihood import nll_lines
    from sgm_ref.targets import TiltedGaussian

    tg = TiltedGaussian.barron(2, rng=np.random.default_rng(0), n_mc=2_000)
    r = nll_report(tg, tg, OU(), t0=0.05, T=3.0, n=4, rng=np.random.default_rng(1))
    text = "\n".join(nll_lines(r))
    assert r["target_log_prob"] == "monte carlo" and r["divergence"] == "monte carlo"
    assert "target (Monte-Carlo log p_t0" in text and "exact log p_t0" not in text
    ring = GaussianMixture.ring()
    r = nll_report(ring, ring, OU(), t0=0.05, T=3.0, n=4, rng=np.random.default_rng(1))
    assert r["target_log_prob"] == "exact" and "target (exact log p_t0)" in "\n".join(nll_lines(r))


def test_nll_report_names_a_dimension_mismatch():
    """Review: a score in d = 2 with a target in d = 3 gave 'x must have shape (n, 2), got
    shape (3, 3)', about an x the caller never passed."""
    ring = GaussianMixture.ring()
    target3 = full_mixture(d=3)
    for score in (ring, small_model(d=2)):
        with pytest.raises(ValueError, match=r"the score's and the target's dimensions differ: the score works in "
                                             r"d = 2, the target in d = 3"):
            nll_report(score, target3, OU(), t0=0.05, T=1.0, n=3, rng=np.random.default_rng(0))


def test_rk45_hutchinson_trajectory_depends_on_the_probes_within_the_tolerance():
    """With rk45 the probes' integrals enter solve_ivp's error norm (one RMS over all unknowns),
    so the steps and the trajectory depend on the probes: the docs said they did not (a
    review). Measured, full mixture d = 8, 50 points, OU 0 to 10, rtol = atol = 1e-5: the
    endpoint moves 1.1e-5, 2.5e-5, 3.1e-5 from the exact run's with 1, 8, 64 Gaussian probes,
    evaluations 80, 86, 92 against 80. Heun keeps the exact run's trajectory
    (test_hutchinson_is_unbiased)."""
    tgt = full_mixture(d=8)
    x = tgt.sample(50, np.random.default_rng(0))
    exact = log_prob(tgt, OU(), x, 0.0, 10.0)
    moved, evaluations = [], []
    for m in (1, 8, 64):
        h = log_prob(tgt, OU(), x, 0.0, 10.0, divergence="hutchinson", probes="gaussian", n_probes=m,
                     rng=np.random.default_rng(1))
        moved.append(float(np.max(np.abs(h.endpoint - exact.endpoint))))
        evaluations.append(h.n_evaluations)
    assert exact.n_evaluations == 80 and evaluations == [80, 86, 92], (exact.n_evaluations, evaluations)
    assert all(1e-6 < e < 5e-5 for e in moved), moved


@pytest.mark.parametrize("d,probes,low,high", [(3, "gaussian", 0.77, 0.85), (6, "rademacher", 0.85, 0.91)])
def test_coverage_of_the_standard_error_with_five_probes(d, probes, low, high):
    """+-1.96 se with 5 probes covers about Student's t_4's 0.878 for Rademacher probes
    (measured 0.879 in d = 6, 0.873 in d = 24), but Gaussian probes in low d cover less:
    0.808 in d = 3 (a review; eps^T J eps is then skewed and its spread correlates with the
    estimate). 1,500 points, Heun's 6 steps (the exact run's trajectory), the binomial
    standard error of a coverage about 0.01."""
    from scipy import stats

    tgt = full_mixture(d=d)
    x = tgt.sample(1500, np.random.default_rng(0))
    kw = dict(solver="heun", n_steps=6)
    exact = log_prob(tgt, OU(), x, 0.1, 3.0, **kw)
    hut = log_prob(tgt, OU(), x, 0.1, 3.0, divergence="hutchinson", probes=probes, n_probes=5,
                   rng=np.random.default_rng(1), **kw)
    coverage = np.mean(np.abs(hut.log_q - exact.log_q) < 1.96 * hut.se)
    assert low < coverage < high, coverage
    t4 = 2 * stats.t.cdf(1.96, 4) - 1
    assert (coverage < t4 - 0.03) == (probes == "gaussian"), (coverage, t4)


def test_x_of_another_dtype_is_told_to_cast_to_float64_and_grid_ends_print_as_numbers():
    """A float16 or bool x was told 'must be a float64 or float32 array', and float32 is then
    refused; a grid with wrong ends printed 'np.float64(0.9)'."""
    ring = GaussianMixture.ring()
    for dtype in (np.float16, np.float32, bool):
        with pytest.raises(ValueError, match=r"x must be float64 .*got (float16|float32|bool); cast it") as info:
            log_prob(ring, OU(), np.zeros((2, 2), dtype=dtype), 0.0, 1.0)
        assert "float32 array" not in str(info.value)
    ints = log_prob(ring, OU(), np.zeros((2, 2), dtype=np.int64), 0.0, 1.0)  # integers are promoted (exact)
    np.testing.assert_array_equal(ints.log_q, log_prob(ring, OU(), np.zeros((2, 2)), 0.0, 1.0).log_q)
    with pytest.raises(ValueError, match=r"got 0\.0 to 0\.9$"):
        log_prob(ring, OU(), np.zeros((2, 2)), 0.0, 1.0, solver="heun", grid=np.array([0.0, 0.5, 0.9]))


@pytest.mark.parametrize("process, t0, T", [(VP(), 0.0, 1.0), (VE(), 0.0, 1.0), (EDM(), 0.2, 40.0),
                                            (FlowMatching(), 0.05, 0.99)])
@pytest.mark.parametrize("c", [0.9, 1.2])
def test_a_scaled_gaussian_score_gives_the_pushed_forward_gaussian(process, t0, T, c):
    """The score c * s_exact of N(m, S) is affine, so the ODE's flow is x_T = U (phi * U^T x + r) with
    phi, r from scalar linear ODEs per eigen-coordinate (solved here by DOP853 at 1e-13), and
    log q(x) = log pi(x_T) + sum log phi: log_prob must agree to its tolerance."""
    from scipy.integrate import solve_ivp
    from sgm_ref.replays.laws import gaussian_score
    m, S = np.array([0.5, -1.0]), np.array([[1.0, 0.6], [0.6, 0.8]])
    lam, U = np.linalg.eigh(S)
    mu = U.T @ m

    def rhs(t, y):
        a, s2, f, g2 = process.alpha(t), process.sigma2(t), process.f(t), process.g2(t)
        v = a * a * lam + s2
        A = f + c * g2 / (2 * v)
        return np.concatenate([A * y[:2], A * y[2:4] - c * g2 * a * mu / (2 * v), A])

    y = solve_ivp(rhs, (t0, T), [1.0, 1.0, 0.0, 0.0, 0.0, 0.0], method="DOP853", rtol=1e-13, atol=1e-14).y[:, -1]
    x = m + np.random.default_rng(0).standard_normal((20, 2)) * 2.0
    truth = prior_log_prob(process, ((x @ U) * y[:2] + y[2:4]) @ U.T, T) + y[4:].sum()
    s = gaussian_score(m, S, process)

    def div(z, t):
        a, s2 = process.alpha(float(t[0])), process.sigma2(float(t[0]))
        return np.full(len(z), -c * np.trace(np.linalg.inv(a * a * S + s2 * np.eye(2))))

    res = log_prob(lambda z, t: c * s(z, t), process, x, t0, T, divergence=div, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(res.log_q, truth, rtol=0, atol=1e-6)
    hut = log_prob(lambda z, t: c * s(z, t), process, x, t0, T, divergence="hutchinson", n_probes=2,
                   rng=np.random.default_rng(1), solver="heun", n_steps=4000)
    assert np.all(hut.se == 0)  # d = 2: both sign classes, the exact trace
    np.testing.assert_allclose(hut.log_q, truth, rtol=2e-4, atol=1e-3)  # Heun on a uniform grid


def test_array_valued_options_are_named_not_numpys_ambiguous_truth_value():
    """A review: prior=, solver= or probes= given an array ("prior=target.log_prob(x_T)", the
    values instead of the function) raised numpy's "The truth value of an array with more than
    one element is ambiguous", naming neither the argument nor the fix."""
    target = full_mixture(d=2)
    x = target.sample(5, np.random.default_rng(9))
    cases = [(dict(prior=np.zeros(5)), r"prior must be 'process' or a callable log_pi\(y\) -> \(n,\), got array"),
             (dict(solver=np.array(["rk45", "heun"])), "solver must be 'rk45' or 'heun', got array"),
             (dict(divergence="hutchinson", rng=np.random.default_rng(0), probes=np.array(["gaussian", "gaussian"])),
              "probes must be 'rademacher' or 'gaussian', got array")]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            log_prob(target, OU(), x, 0.0, 1.0, **kw)


def test_too_many_heun_steps_for_a_short_window_name_n_steps():
    """A review: 10 steps over t0 = 0.5 to T = 0.5 + 1e-15 (9 floats apart) gave "grid must be a
    1-D array of ... strictly increasing times", naming a grid the caller had not passed."""
    ring = GaussianMixture.ring()
    x = ring.sample(3, np.random.default_rng(0))
    T = 0.5 + 1e-15
    with pytest.raises(ValueError, match=r"n_steps = 10 is too many for t0 = 0.5 to T = 0.500000000000001: .* fewer"):
        log_prob(ring, OU(), x, 0.5, T, solver="heun", n_steps=10)
    # 4 steps fit (2 or 3 floats apart) and give log p_0.5 to rounding with the exact prior
    res = log_prob(ring, OU(), x, 0.5, T, solver="heun", n_steps=4, prior=lambda y: ring.log_prob(y, T, OU()))
    np.testing.assert_allclose(res.log_q, ring.log_prob(x, 0.5, OU()), rtol=0, atol=1e-14)


def test_a_T_whose_coefficients_overflow_is_named_as_T():
    """EDM's sigma_T^2 = T^2 overflows past T ~ 1.3e154: log_prob names T (the process's own
    refusal, which the pointwise functions now raise, named its argument t)."""
    g = GaussianMixture([1.0], [[0.0]], [[1.0]])
    with pytest.raises(ValueError, match=r"^T = 1e\+200 is too large for EDM\(.*\): its coefficients overflow; "
                                         r"use a smaller T$"):
        log_prob(g, EDM(), np.zeros((1, 1)), 0.1, 1e200)


def test_prior_log_prob_where_sigma_T_squared_leaves_float64():
    # EDM at T = 1e200 (sigma_T^2 overflows) and 1e-170 (it underflows to 0): the prior
    # N(0, sigma_T^2 I) is an ordinary Gaussian there; it was refused, naming the process's "t"
    # (since process.sigma2 raises rather than returns inf) or saying "no Gaussian prior".
    # Checked against 50-digit mpmath
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(50):  # not mp.dps = 50, which stayed set for every later test
        process = EDM(t_max=1e300)
        for T in (1e200, 1e-170):
            y = np.array([[0.3, -1.0], [0.0, 0.1], [2.5, 1.7]]) * T
            got = prior_log_prob(process, y, T)
            s = mpmath.mpf(T)
            want = [float(-mpmath.log(2 * mpmath.pi * s * s) - (mpmath.mpf(a) ** 2 + mpmath.mpf(b) ** 2) / (2 * s * s))
                    for a, b in y]
            np.testing.assert_allclose(got, want, rtol=4e-16, atol=0)
        with pytest.raises(ValueError, match="T = 0.0 gives sigma_T = 0"):
            prior_log_prob(EDM(), np.zeros((1, 2)), 0.0)


def test_prior_log_prob_refuses_a_row_whose_quadratic_form_overflows_where_sigma_T_is_below_1():
    """|y|^2 finite but |y|^2 / sigma_T^2 beyond float64 (VE at T = 0: sigma_T = 0.01): it
    returned -inf with a RuntimeWarning, and log_prob passed it on as log_q = -inf (EDM,
    x = 1e153 from 0 to 0.01; a review). The rows just inside the range are exact (mpmath)."""
    import warnings

    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(50):  # not mp.dps = 50, which stayed set for every later test
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for process, T, far in ((VE(), 0.0, 1e153), (EDM(), 1e-110, 1e100), (EDM(), 0.01, 1e153)):
                with pytest.raises(ValueError, match=r"y has a row too far out for sigma_T = .*overflows float64; "
                                                     r"rescale y"):
                    prior_log_prob(process, np.array([[0.5, 0.0], [far, 0.0]]), T)
            ring = GaussianMixture.ring()
            with pytest.raises(ValueError,
                               match=r"the prior's log-density at the ODE's endpoint x_T overflows float64"):
                log_prob(ring, EDM(), np.array([[1e153, 0.0]]), 0.0, 0.01, solver="heun", n_steps=20)
            for process, T, y in ((VE(), 0.0, np.array([[1.3e152, -2.0], [3.0, 0.5]])),
                                  (EDM(), 1e-110, np.array([[1e-100, 0.0], [7e-111, 3e-108]]))):
                s = mpmath.mpf(float(process.sigma(T)))
                want = [float(-mpmath.log(2 * mpmath.pi * s * s)
                              - (mpmath.mpf(a) ** 2 + mpmath.mpf(b) ** 2) / (2 * s * s)) for a, b in y]
                np.testing.assert_allclose(prior_log_prob(process, y, T), want, rtol=4e-16, atol=0)


def test_a_divergence_jvp_or_prior_of_complex_strings_or_bools_is_refused_not_cast():
    """_check_div and _check_jvp cast with np.asarray(..., dtype=float64): a complex divergence
    lost its imaginary part under a ComplexWarning and log_q was returned (a review: + 1j on
    the ring's exact divergence gave the exact log_q, silently), strings were parsed as numbers
    and a bool divergence read as 1.0 (log_q off by 8.9 nats). The score itself was already
    refused for such dtypes (call_score)."""
    import warnings

    ring = GaussianMixture.ring()
    x = ring.sample(3, np.random.default_rng(0))
    score = lambda y, t: ring.score(y, t, OU())  # noqa: E731
    exact_div = lambda y, t: ring.divergence(y, t, OU())  # noqa: E731
    std_normal = lambda y: -0.5 * np.sum(y * y, axis=1) - np.log(2.0 * np.pi)  # noqa: E731
    cases = [
        (dict(divergence=lambda y, t: exact_div(y, t) + 0j), score, r"the divergence must be 3 real .*complex128"),
        (dict(divergence=lambda y, t: exact_div(y, t).astype(str)), score, r"the divergence must be 3 real .*<U"),
        (dict(divergence=lambda y, t: np.ones(len(y), dtype=bool)), score, r"the divergence must be 3 real .*bool"),
        (dict(divergence="hutchinson", rng=np.random.default_rng(0), jvp=lambda y, t, V: -V + 0j), score,
         r"jvp must return real numbers \(any float or integer dtype, read as float64\) of the tangents' shape "
         r"\(3, 1, 2\), got dtype complex128"),
        (dict(prior=lambda y: std_normal(y) + 0j), ring, r"prior\(y\) .* must be 3 real numbers .*complex128"),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ComplexWarning is not an answer either
        for kw, s, match in cases:
            with pytest.raises(ValueError, match=match):
                log_prob(s, OU(), x, 0.1, 3.0, **kw)
        # real dtypes still pass: integers are promoted, the result is the float64 one
        int_prior = log_prob(ring, OU(), x, 0.1, 3.0, prior=lambda y: np.zeros(len(y), dtype=np.int64))
        zero_prior = log_prob(ring, OU(), x, 0.1, 3.0, prior=lambda y: np.zeros(len(y)))
        np.testing.assert_array_equal(int_prior.log_q, zero_prior.log_q)


def test_divergence_and_jvp_messages_say_which_dtypes_are_accepted_and_what_is_wrong():
    """_check_div and _check_jvp said "real numbers (float64)" while any float or integer
    dtype is accepted and read as float64 (float32 and int64 results pass); a jvp of the
    right shape with a NaN read "of the tangents' shape (3, 1, 2), got (3, 1, 2)", and a
    longdouble beyond float64's range was called non-finite (after a RuntimeWarning)."""
    import warnings

    ring = GaussianMixture.ring()
    x = ring.sample(3, np.random.default_rng(0))
    score = lambda y, t: ring.score(y, t, OU())  # noqa: E731
    div = lambda y, t: ring.divergence(y, t, OU())  # noqa: E731
    hutch = dict(divergence="hutchinson", rng=np.random.default_rng(0))
    accepted = r"real numbers \(any float or integer dtype, read as float64\)"
    cases = [
        (dict(divergence=lambda y, t: div(y, t) + 0j),
         rf"^the divergence must be 3 {accepted}, got dtype complex128 at t = 0.1$"),
        (dict(jvp=lambda y, t, V: -V + 0j, **hutch), rf"^jvp must return {accepted} of the tangents' shape"),
        (dict(jvp=lambda y, t, V: np.full_like(V, np.nan), **hutch),
         r"^jvp must return finite values of the tangents' shape \(3, 1, 2\), got a non-finite entry \(point 0\) "
         r"at t = 0.1$"),
        (dict(jvp=lambda y, t, V: V[:, :, :1], **hutch),
         r"^jvp must return finite values of the tangents' shape \(3, 1, 2\), got shape \(3, 1, 1\) at t = 0.1$"),
    ]
    if np.finfo(np.longdouble).max > np.finfo(np.float64).max:  # x87 / quad longdouble
        big = np.longdouble(np.finfo(np.float64).max) * 4
        cases += [(dict(divergence=lambda y, t: np.full(len(y), big)),
                   r"^the divergence must be 3 finite numbers, got shape \(3,\) with an entry beyond float64's range "
                   r"\(dtype float128\) at t = 0.1$"),
                  (dict(jvp=lambda y, t, V: np.full(V.shape, big), **hutch),
                   r"^jvp must return finite values of the tangents' shape \(3, 1, 2\), got an entry beyond "
                   r"float64's range \(dtype float128\) at t = 0.1$")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning from the cast is not an answer
        for kw, match in cases:
            with pytest.raises(ValueError, match=match):
                log_prob(score, OU(), x, 0.1, 3.0, **kw)
        # what the message says is accepted is: a float32 divergence and an int64 jvp give the float64 answer
        f32 = lambda y, t: div(y, t).astype(np.float32)  # noqa: E731
        np.testing.assert_array_equal(log_prob(score, OU(), x, 0.1, 3.0, divergence=f32).log_q,
                                      log_prob(score, OU(), x, 0.1, 3.0, divergence=lambda y, t: f32(y, t) * 1.0).log_q)
        jvp = lambda y, t, V: -V  # noqa: E731 (J = -I on Rademacher tangents: integers)
        np.testing.assert_array_equal(
            log_prob(score, OU(), x, 0.1, 3.0, divergence="hutchinson", rng=np.random.default_rng(0),
                     jvp=lambda y, t, V: jvp(y, t, V).astype(np.int64)).log_q,
            log_prob(score, OU(), x, 0.1, 3.0, divergence="hutchinson", rng=np.random.default_rng(0), jvp=jvp).log_q)


def test_nll_report_records_the_tolerances_used_and_checks_them_before_sampling():
    """rtol=None is log_prob's default (1e-5), and nll_report passed it on but recorded None:
    nll_lines then raised a TypeError formatting it (a review). Now None is recorded as the
    1e-5 used, a numpy tolerance as a float, and a bad one is refused before any sampling."""
    from sgm_ref.likelihood import nll_lines

    ring = GaussianMixture.ring()
    kw = dict(t0=0.05, T=3.0, n=4)
    r = nll_report(ring, ring, OU(), rng=np.random.default_rng(0), rtol=None, atol=np.float64(1e-6), **kw)
    assert (r["rtol"], r["atol"]) == (1e-5, 1e-6) and type(r["atol"]) is float
    assert "RK45 rtol 1e-05" in "\n".join(nll_lines(r))
    same = nll_report(ring, ring, OU(), rng=np.random.default_rng(0), rtol=1e-5, atol=1e-6, **kw)
    assert r["model_nll"] == same["model_nll"] and r["kl_gap"] == same["kl_gap"]
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    for bad, match in ((dict(rtol=1e-20), r"rtol must be >= 2\.220446049250313e-14"),
                       (dict(atol=0.0), "atol must be > 0")):
        with pytest.raises(ValueError, match=match):
            nll_report(ring, ring, OU(), rng=rng, **bad, **kw)
    assert rng.bit_generator.state == state  # refused before drawing


def test_prior_log_prob_of_a_row_whose_squares_overflow_where_sigma_T_is_above_1():
    """|y|^2 beyond float64 but |y|^2 / sigma_T^2 not (EDM at T = 1e100, y = 1e160: the
    log-density is -5e119): it was refused as 'too far out for float64; its prior
    log-density overflows'. The same rows against mpmath; a row whose quadratic form itself
    overflows is still refused."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(50):
        for T, y in ((1e100, np.array([[1e160, -3e159], [0.3, 1e100], [-2e154, 1e154]])),
                     (1e150, np.array([[1e300, 1e-300], [1e155, 1e155]]))):
            s = mpmath.mpf(T)
            want = [float(-mpmath.log(2 * mpmath.pi * s * s) - (mpmath.mpf(a) ** 2 + mpmath.mpf(b) ** 2) / (2 * s * s))
                    for a, b in y]
            np.testing.assert_allclose(prior_log_prob(EDM(), y, T), want, rtol=4e-16, atol=0)
    with pytest.raises(ValueError, match=r"y has a row too far out for sigma_T = 1e\+30: its prior log-density "
                                         r"overflows float64"):
        prior_log_prob(EDM(), np.array([[1e200, 1e200]]), 1e30)


def test_rk45_keeps_only_the_current_state_with_solve_ivps_bits():
    """solve_ivp without t_eval kept every step's state, steps x n (d + m) floats, and copied them
    once more at the end (found by a review: 103 states' worth at the peak for these 46 steps, 17 now;
    DDPM at 1e-9, up to 5,700 steps, up to 180 MB twice per 1,000 points in d = 3). log_prob now steps
    scipy's RK45 itself and keeps the current state only, with solve_ivp's bits."""
    import tracemalloc

    from scipy.integrate import solve_ivp
    process, x = OU(), np.random.default_rng(0).standard_normal((1000, 2))
    n, d = x.shape
    kw = dict(divergence=lambda y, t: np.full(y.shape[0], -4.0), rtol=1e-9, atol=1e-9)
    score = lambda y, t: -2.0 * y  # noqa: E731  (cheap: the memory measured is the solver's)
    log_prob(score, process, x[:2], 0.0, 3.0, **kw)  # first-call allocations out of the measurement
    tracemalloc.start()
    try:
        res = log_prob(score, process, x, 0.0, 3.0, **kw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    state = n * (d + 1) * 8
    assert peak < 40 * state, (peak / state, res.n_evaluations)  # 17 states now, 103 before

    def rhs(t, y):  # the ODE written out here, as solve_ivp sees it
        f, g2 = float(process.f(t)), float(process.g2(t))
        xt = y[:n * d].reshape(n, d)
        return np.concatenate([(f * xt - 0.5 * g2 * score(xt, t)).ravel(), d * f - 0.5 * g2 * np.full(n, -4.0)])

    sol = solve_ivp(rhs, (0.0, 3.0), np.concatenate([x.ravel(), np.zeros(n)]), method="RK45", rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(res.endpoint, sol.y[:n * d, -1].reshape(n, d))
    np.testing.assert_array_equal(res.integral, sol.y[n * d:, -1])
    assert res.n_evaluations == sol.nfev


def test_log_prob_of_a_tilted_gaussian_from_t0_zero_is_close_not_garbage():
    """Review: heun from t0 = 0 evaluates 64 ulps after t = 0, where the earlier Monte-Carlo divergence of
    a TiltedGaussian was noise of order 1 / sigma_t (1.2e5 at t = 1e-17): log_q was -428 nats against
    -2.06, then refused. The covariance form is O(1) there: log_q is the Monte-Carlo log p_0 to 1e-3,
    as from t0 = 1e-3; the 'stein' estimator still refuses."""
    from sgm_ref.targets import TiltedGaussian

    tg = TiltedGaussian.barron(2, rng=np.random.default_rng(0), n_mc=4096)
    x = np.array([[0.3, -0.5]])
    res = log_prob(tg, OU(), x, 0.0, 3.0, solver="heun", n_steps=64)
    assert abs(res.log_q[0] - tg.log_prob(x, 0.0)[0]) < 2e-3  # measured: -2.06174 against -2.06212
    stein = TiltedGaussian(tg.f, None, 2, n_mc=4096, rng=np.random.default_rng(1), estimator="stein", n_normaliser=2)
    with pytest.raises(ValueError, match=r"standard error .* t0 > 0"):
        log_prob(stein, OU(), x, 0.0, 3.0, solver="heun", n_steps=64)


def test_log_prob_of_a_float32_score_model_rounds_each_state_and_names_one_beyond_float32():
    """log_prob's docstring, pinned: a float32 ScoreModel is given each state x_t rounded to
    float32 and its float32 score and divergence are read as float64 (the bits of float64
    callables doing so), which is not its float64 twin's answer (6.5e-9 to 1.8e-8 relative). A
    state beyond float32's range became inf in the cast, under a RuntimeWarning, and the model
    said "x contains 1 non-finite value(s) (NaN or inf)" of an x that was finite; it is named."""
    import warnings

    f32, f64 = np.float32, np.float64
    model = ScoreModel(MLP(2, (8,), dtype=f32, rng=0), OU())
    twin = ScoreModel(MLP(2, (8,), rng=0), OU())
    twin.network.set_params(model.params.astype(f64))
    x = np.random.default_rng(1).standard_normal((3, 2))

    def run(score, **kw):
        return log_prob(score, OU(), x, 0.01, 2.0, solver="heun", n_steps=10, **kw)

    got = run(model)
    rounded = run(lambda y, t: model.divergence(y.astype(f32), t)[0].astype(f64),
                  divergence=lambda y, t: model.divergence(y.astype(f32), t)[1].astype(f64))
    np.testing.assert_array_equal(got.log_q, rounded.log_q)
    np.testing.assert_array_equal(got.endpoint, rounded.endpoint)
    gap = np.abs(got.log_q / run(twin).log_q - 1)
    assert np.all((3e-9 < gap) & (gap < 3e-8)), gap  # 6.5e-9, 1.3e-8, 1.8e-8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kw in ({}, dict(divergence="hutchinson", rng=np.random.default_rng(0))):
            with pytest.raises(ValueError, match=r"x_t reaches \|x_t\| = 1e\+39 at t = 0\.01 .*beyond the largest "
                                                 r"float32, 3\.4e\+38, .*rescale x, or use a float64 model"):
                log_prob(model, OU(), np.array([[1e39, 0.0]]), 0.01, 2.0, solver="heun", n_steps=2, **kw)


def test_a_callables_bad_output_is_named_with_its_time_and_row():
    """What a score, divergence or jvp callable returned was refused without saying when: "score
    returned non-finite values" for a score that fails only late in the ODE, the same for one
    finite at x_t that fails only at Hutchinson's shifted points x_t +- h eps, and "the divergence
    must be 3 finite numbers, got shape (3,) with a non-finite entry" naming neither the time nor
    the row (a review). Heun's stages on linspace(0.1, 3, 5) are at 0.1, 0.825, 1.55, ... (each
    64 ulps inside its step)."""
    ring = GaussianMixture.ring()
    x = ring.sample(3, np.random.default_rng(0))
    heun = dict(solver="heun", n_steps=4)
    exact_div = lambda y, t: ring.divergence(y, t, OU())  # noqa: E731

    def late(value, row=1):  # value(y, t) with row `row` NaN from t = 1 on
        def fn(y, t, *rest):
            out = np.array(value(y, t, *rest), dtype=np.float64)
            if t[0] > 1.0:
                out[row] = np.nan
            return out
        return fn

    score = lambda y, t: ring.score(y, t, OU())  # noqa: E731
    with pytest.raises(ValueError, match=r"^score returned non-finite values at t = 1\.55$"):
        log_prob(late(score), OU(), x, 0.1, 3.0, divergence=exact_div, **heun)
    with pytest.raises(ValueError, match=r"^the divergence must be 3 finite numbers, got shape \(3,\) with a "
                                         r"non-finite entry \(row 2\) at t = 1\.55$"):
        log_prob(score, OU(), x, 0.1, 3.0, divergence=late(exact_div, row=2), **heun)
    with pytest.raises(ValueError, match=r"^jvp must return finite values of the tangents' shape \(3, 2, 2\), got a "
                                         r"non-finite entry \(point 1\) at t = 1\.55$"):
        log_prob(score, OU(), x, 0.1, 3.0, divergence="hutchinson", n_probes=2, rng=np.random.default_rng(0),
                 jvp=late(lambda y, t, V: -V), **heun)

    def only_at_the_points(y, t):  # finite at the ODE's own 3 points, not at the 6 shifted ones
        return score(y, t) if len(y) == 3 else np.full(y.shape, np.nan)

    with pytest.raises(ValueError, match=r"^score returned non-finite values at t = 0\.1 at the finite-difference "
                                         r"points x_t \+- h eps of Hutchinson's J eps$"):
        log_prob(only_at_the_points, OU(), x, 0.1, 3.0, divergence="hutchinson", n_probes=2,
                 rng=np.random.default_rng(0), **heun)


def test_the_finite_difference_step_is_absolute_and_biased_where_the_score_turns_over():
    """The figures of the module docstring and docs/likelihood.md on the finite-difference J eps
    (h = 1e-5 (1 + max |x|), Rademacher probes in d = 1: the divergence itself, se = 0): modes
    +-1 of width 0.01 under VP are 5.5 nats off at x = 0 (log p = -4996), where the posterior
    turns over a width of 10 h; and h is absolute, so the same kind of mixture at scale 1e-6
    is off everywhere, by 0.23 nats at a mode, while at scale 1 it is 1e-10 (a review)."""
    mix = GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [[[1e-4]], [[1e-4]]])
    x = np.array([[0.0], [0.995], [-1.01]])
    exact = log_prob(mix, VP(), x, 0.0, 1.0)
    fd = log_prob(lambda y, t: mix.score(y, t, VP()), VP(), x, 0.0, 1.0, divergence="hutchinson",
                  rng=np.random.default_rng(0))
    assert np.all(fd.se == 0.0) and exact.log_q[0] == pytest.approx(-4996.4, abs=0.05)
    assert fd.log_q[0] - exact.log_q[0] == pytest.approx(5.54, abs=0.01)
    off = {}
    for scale in (1.0, 1e-6):
        mix = GaussianMixture([0.3, 0.7], [[-scale], [scale]], [[[(0.1 * scale) ** 2]], [[(0.2 * scale) ** 2]]])
        t0, T = 1e-3 * scale, 80.0
        x = np.array([[-scale], [0.0], [1.1 * scale]])
        kw = dict(solver="heun", grid=np.geomspace(t0, T, 40))
        exact = log_prob(mix, EDM(), x, t0, T, **kw)
        fd = log_prob(lambda y, t: mix.score(y, t, EDM()), EDM(), x, t0, T, divergence="hutchinson",  # noqa: B023
                      rng=np.random.default_rng(0), **kw)
        assert np.all(fd.se == 0.0)
        off[scale] = np.abs(fd.log_q - exact.log_q)
    assert np.all(off[1.0] < 3e-8), off[1.0]
    np.testing.assert_allclose(off[1e-6], [0.23, 4.97, 0.011], rtol=0.05)


def test_a_T_whose_sigma_squared_underflows_is_not_called_too_large():
    """EDM at T = 1e-170: sigma_T^2 = 1e-340 underflows to 0 while sigma_T does not. log_prob
    refused it as "too large: its coefficients overflow" (found by mutation testing), though
    prior_log_prob takes it (from sigma_T) and T = 1e-155 was accepted. At x = 0 the flow does
    not move in float64 and log q is the prior's log N(0; 0, T^2), here against 40-digit mpmath."""
    import mpmath

    target = GaussianMixture([1.0], [[0.0]], [[1.0]])
    for T in (1e-155, 1e-170, 1e-300, 5e-324):
        result = log_prob(target, EDM(), np.zeros((1, 1)), 0.0, T)
        with mpmath.workdps(40):
            exact = -mpmath.log(2 * mpmath.pi) / 2 - mpmath.log(mpmath.mpf(T))
        assert abs(result.log_q[0] - float(exact)) <= 4e-16 * abs(float(exact)), T
        assert result.prior[0] == prior_log_prob(EDM(), np.zeros((1, 1)), T)[0]


def test_an_overflowing_finite_difference_is_its_message_not_a_warning():
    """Hutchinson's finite difference s(x + h eps) - s(x - h eps) of a score of +-1e308 overflows:
    the subtraction warned "overflow encountered in subtract" before the refusal, and under
    warnings as errors the caller got the RuntimeWarning, not the message that names it (found by
    mutation testing)."""
    import warnings

    def score(y, t):
        return np.where(y > 0.5, 1e308, -1e308)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"the score's divergence \(Hutchinson's eps\^T J eps\) at t = 0.1 "
                                             r"overflows float64"):
            log_prob(score, OU(), np.array([[0.5, -0.25], [1.0, 2.0]]), 0.1, 1.0, divergence="hutchinson",
                     rng=np.random.default_rng(0), solver="heun", n_steps=2)
