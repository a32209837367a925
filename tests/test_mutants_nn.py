"""Tests written by mutation testing of sgm_ref/nn/mlp.py, sgm_ref/nn/embedding.py,
sgm_ref/kernels/dense.py, sgm_ref/kernels/dsm.py, sgm_ref/kernels/adam.py, sgm_ref/optim.py,
sgm_ref/losses.py and sgm_ref/likelihood.py: each pins a regime or a convention that the other
tests let a mutated line through in (named in its docstring), against an independent reference
(torch autograd, mpmath, NumPy)."""
import numpy as np
import pytest

from sgm_ref import MLP


def test_relu_derivative_at_an_exact_zero_pre_activation_is_torchs_zero(torch_ref):
    """relu'(0) = 0, as torch.relu's autograd (and plain.relu) take it. Mutant survived: h' = 1[z >= 0]
    in kernels/dense.py (every test kept z away from 0). A unit whose weights and bias are all 0 has
    z = 0 exactly on every row (a pruned or zero-initialised unit): its incoming weights then get a
    gradient of exactly 0, not h^T (dL/dh)."""
    torch = torch_ref.torch
    net = MLP(2, (5, 4), "relu", "linear", rng=3)
    W0, b0 = net.weights[0], net.biases[0]
    W0[:, 1] = 0.0
    b0[1] = 0.0                      # unit 1 of the first layer: z = 0 exactly
    net.weights[1][:, 2] = 0.0
    net.biases[1][2] = 0.0           # unit 2 of the second layer too
    rng = np.random.default_rng(0)
    x, t, w = rng.standard_normal((6, 2)), rng.uniform(0.1, 1.0, 6), rng.standard_normal((6, 2))
    net.forward(x, t, keep=True)
    grad, grad_x = net.backward(w, input_grad=True)
    params = torch_ref.parameters(net)
    xt = torch.tensor(x, requires_grad=True)
    torch.sum(torch.tensor(w) * torch_ref.forward(net, params, xt, torch.tensor(t))).backward()
    want = torch_ref.flat([p.grad for p in params])
    gW0, gb0 = net.layer_views(grad)[0][0], net.layer_views(grad)[1][0]
    assert np.all(gW0[:, 1] == 0.0) and gb0[1] == 0.0
    assert np.abs(grad - want).max() <= 1e-13 * np.abs(want).max()
    assert np.abs(grad_x - xt.grad.numpy()).max() <= 1e-13 * np.abs(xt.grad.numpy()).max()


def test_load_state_dict_copies_the_ema_it_is_given():
    """load_state_dict takes copies of every array it is given, the EMA too: a later step must not
    write into the caller's state dict, nor a change to that dict reach the optimiser. Mutant
    survived: self.ema = arrays["ema"] without .copy() in sgm_ref/optim.py (params, m and v are
    copied into the optimiser's own arrays; the EMA was aliased)."""
    from sgm_ref.optim import Adam

    rng = np.random.default_rng(1)
    source = Adam(rng.standard_normal(5), lr=0.1, ema_decay=0.5)
    source.step(rng.standard_normal(5))
    state = source.state_dict()
    saved = {key: np.copy(value) for key, value in state.items()}
    opt = Adam(np.zeros(5), ema_decay=0.9)
    opt.load_state_dict(state)
    opt.step(rng.standard_normal(5))
    for key in ("params", "m", "v", "ema"):
        np.testing.assert_array_equal(state[key], saved[key], err_msg=key)
    ema = opt.ema.copy()
    state["ema"][...] = 7.0
    np.testing.assert_array_equal(opt.ema, ema)


def test_nll_report_standard_errors_are_the_sample_standard_deviation_over_root_n():
    """nll_report's standard errors are stdev / sqrt(n) with the n - 1 divisor (Python's
    statistics.stdev here), of -log q, -log p and log p - log q at the points it drew (target.sample,
    then the forward process to t0, from rng: its docstring). Mutant survived: ddof=0 in its est()
    (every test read the values, or only the gap's error's order of magnitude); with n = 4 the
    errors were sqrt(3 / 4) = 0.87 of what they should be."""
    import statistics

    from sgm_ref.likelihood import log_prob, nll_report
    from sgm_ref.processes import OU
    from sgm_ref.targets import GaussianMixture

    ring, ou, n = GaussianMixture.ring(), OU(), 4
    report = nll_report(ring, ring, ou, t0=0.05, T=3.0, n=n, rng=np.random.default_rng(0))
    rng = np.random.default_rng(0)
    x = ou.perturb(ring.sample(n, rng), 0.05, rng)[0]
    log_p = ring.log_prob(x, 0.05, ou)
    log_q = log_prob(ring, ou, x, 0.05, 3.0, rtol=1e-5, atol=1e-5).log_q
    for key, values in (("model_nll", -log_q), ("target_nll", -log_p), ("kl_gap", log_p - log_q)):
        values = [float(v) for v in values]
        assert report[key]["value"] == pytest.approx(statistics.fmean(values), rel=1e-12, abs=1e-14), key
        assert report[key]["standard_error"] == pytest.approx(statistics.stdev(values) / n**0.5, rel=1e-12), key


def test_importance_weights_keep_their_digits_for_t_close_to_t0():
    """importance_times' weights w = 2 / (1 + (T - t0) / (t log(T / t0))) against mpmath (50 digits,
    at the drawn t): log(T / t0) from log1p of the exact T - t0 where T / t0 < 2 (the difference of
    logs cancels: T / t0 = 1 + 2e-10 lost 6 digits, its comment). Mutant survived: span = log T - log t0
    everywhere in losses._draw_importance_times (the tests' ranges were all wide)."""
    import mpmath as mp

    from sgm_ref.losses import importance_times

    t0 = 0.3
    T = t0 * (1.0 + 2e-10)
    t, w = importance_times(64, t0, T, np.random.default_rng(4))
    assert np.all((t >= t0) & (t <= T))
    with mp.workdps(50):
        span = mp.log(mp.mpf(T) / mp.mpf(t0))
        want = np.array([float(2 / (1 + (mp.mpf(T) - mp.mpf(t0)) / (mp.mpf(float(ti)) * span))) for ti in t])
    assert np.max(np.abs(w - want) / want) <= 1e-15  # 2.2e-16 measured; log T - log t0: 5e-11


@pytest.mark.parametrize("scale", [1e-306, 3e-300, 0.7, 1e300])
@pytest.mark.parametrize("bins", [2, 255, 256])
def test_bits_per_dim_for_extreme_scales_matches_mpmath(scale, bins):
    """bpd = -log q / (d ln 2) + log2(bins) - log2(scale) against mpmath (40 digits): finite where
    bins / scale overflows float64 (scale ~ 1e-306, its comment), and to the last digits. Mutant
    survived: log2(bins / scale) in likelihood.bits_per_dim, which raised 'beyond float64' at
    scale = 1e-306 (no test had a scale off order 1)."""
    import mpmath as mp

    from sgm_ref.likelihood import bits_per_dim

    log_q = np.array([-5.0, 1234.5])
    got = bits_per_dim(log_q, 3, bins=bins, scale=scale)
    with mp.workdps(40):
        want = np.array([float(-mp.mpf(v) / (3 * mp.log(2)) + mp.log(bins, 2) - mp.log(mp.mpf(scale), 2))
                         for v in log_q])
    np.testing.assert_allclose(got, want, rtol=4e-16, atol=0)


def test_variance_preserving_prior_log_prob_matches_mpmath():
    """prior_log_prob of a variance-preserving process is log N(y; 0, I) = -(d log 2 pi + |y|^2) / 2,
    against mpmath (40 digits) to 1e-15 relative, rows near 0 and far out. Mutant survived: |y|^2
    off by a relative 1e-12 in that branch (the tests compared it at looser tolerances or through
    log_prob's solver error)."""
    import mpmath as mp

    from sgm_ref.likelihood import prior_log_prob
    from sgm_ref.processes import OU, VP

    y = np.random.default_rng(2).standard_normal((5, 3)) * np.array([[1e-3], [1.0], [3.0], [30.0], [1e5]])
    with mp.workdps(40):
        want = np.array([float(-(3 * mp.log(2 * mp.pi) + sum(mp.mpf(float(v)) ** 2 for v in row)) / 2) for row in y])
    for process, T in ((OU(), 4.0), (VP(), 1.0)):
        got = prior_log_prob(process, y, T)
        assert np.max(np.abs(got - want) / np.abs(want)) <= 1e-15, process


@pytest.mark.parametrize("kind", ["log", "fourier"])
def test_time_embedding_is_within_an_ulp_of_mpmath(kind):
    """e(t) = [log t, sin(w_j log t), cos(w_j log t)], w_j = 2^j / 4, within 1 ulp of mpmath (40 digits):
    log t of t, and the sines and cosines of w_j times the float64 log t (w_j a power of 2, so the
    product is exact). Mutant survived: log t off by 4 ulps (a relative 2^-50) in nn/embedding.py
    (test_nn compares at rtol 1e-15, which 4 ulps pass)."""
    import mpmath as mp

    from sgm_ref.nn import TimeEmbedding

    t = np.array([1e-6, 3.7e-3, 0.5, 0.999, 1.25, 17.0, 900.0])
    emb = TimeEmbedding(kind, n_frequencies=4)
    got = emb(t, np.empty((t.size, emb.dim)))
    want = np.empty_like(got)
    with mp.workdps(40):
        for i, ti in enumerate(t):
            want[i, 0] = float(mp.log(mp.mpf(float(ti))))
            tau = np.log(ti)
            for j in range(emb.n_frequencies if kind == "fourier" else 0):
                arg = mp.mpf(float(2.0**j / 4.0 * tau))
                want[i, 1 + 2 * j], want[i, 2 + 2 * j] = float(mp.sin(arg)), float(mp.cos(arg))
    assert np.all(np.abs(got - want) <= np.spacing(np.abs(want)))


@pytest.mark.parametrize("t0, T", [(1e-320, 1e-300), (5e-324, 2e-308)])
def test_importance_weights_of_subnormal_times_match_mpmath(t0, T):
    """Where t log(T / t0) is subnormal the weight is formed as 2 s / (1 + s), s = (t / (T - t0)) log(T / t0)
    (the usual form rounds t log(T / t0) to a few digits: its comment). Against mpmath (50 digits) at the
    drawn t the weights, normal numbers here, keep 1e-14 (1.5e-15 and 4.3e-16 measured); the usual form
    everywhere (the tiny-ts test of losses._draw_importance_times dropped, a mutant that survived) was
    2.8e-6 and 1.8e-3 off."""
    import mpmath as mp

    from sgm_ref.losses import importance_times

    t, w = importance_times(200, t0, T, np.random.default_rng(6))
    assert np.sum(t * np.log(T / t0) < np.finfo(np.float64).tiny) >= 20  # the regime is met
    with mp.workdps(50):
        span = mp.log(mp.mpf(T) / mp.mpf(t0))
        want = np.array([float(2 / (1 + (mp.mpf(T) - mp.mpf(t0)) / (mp.mpf(float(ti)) * span))) for ti in t])
    assert np.all(want >= np.finfo(np.float64).tiny)  # a normal result: full precision is owed
    assert np.max(np.abs(w - want) / want) <= 1e-14
