"""sgm_ref.interop: networks of any convention in, the exact oracle out, and the peers' own
samplers run on it.

torch tests skip without torch unless SGM_REF_REQUIRE_TORCH=1 (tests/conftest.py's
convention); the JAX tests skip without jax (an optional extra not pinned in CI); the
diffusers / k-diffusion tests follow SGM_REF_REQUIRE_PEERS (tests/_peers.py).

"Reproduces the target" is judged by the sliced Wasserstein-2 distance of the sampler's
n points to an exact sample `ref` of the law the sampler should output, against its null
distribution: the same distance from R independent exact samples of size n to the same
ref (same projection directions). The sampler passes when its distance lies within
Z_MAX null standard deviations of the null mean; a deliberately wrong adapter lands
hundreds of standard deviations out (test_wrong_time_map_is_detected).
"""

import os
import warnings

import numpy as np
import pytest
from _peers import load_k_diffusion, peer

from sgm_ref import DDPM, EDM, OU, VE, VP, FlowMatching, GaussianMixture, SubVP, VPCosine
from sgm_ref.conventions import KINDS, convert
from sgm_ref.interop import ModelError, convert_score, from_jax, from_torch, to_torch
from sgm_ref.metrics import score_error_profile, sliced_wasserstein

EPS = np.finfo(np.float64).eps
N_POINTS = 2000
N_NULL = 40
Z_MAX = 5.0


@pytest.fixture(scope="module")
def torch():
    if os.environ.get("SGM_REF_REQUIRE_TORCH") == "1":
        import torch
        return torch
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def jax():
    return peer("jax")  # the peers extra installs it; required in CI


def full_mixture():
    """2-D, three components, full covariances: no axis is special."""
    return GaussianMixture([0.5, 0.3, 0.2], [[-1.0, 0.5], [1.5, -0.5], [0.2, 2.0]],
                           [[[0.3, 0.1], [0.1, 0.2]], [[0.5, -0.2], [-0.2, 0.4]], [[0.1, 0.0], [0.0, 0.6]]])


def edm_score_direct(target, x, sigma):
    """grad log p_sigma under EDM without any time conversion: the mixture with Sigma_k + sigma^2 I
    (one sigma for all rows), evaluated at t = 0."""
    if target.covariance_type == "full":
        covs = target.covariances + sigma**2 * np.eye(target.dim)
    else:
        covs = (1.0 if target.covariances is None else target.covariances) + sigma**2 * np.ones_like(target.means)
    return GaussianMixture(target.weights, target.means, covs).score(x, 0.0)


# -- a network in another convention, in ---------------------------------------------------------


def gaussian_eps_model(torch, process, mu, var, dtype):
    """The exact epsilon of N(mu, diag var) under a DDPM process, written in torch, taking
    diffusers' integer timesteps: eps = sigma_i (x - alpha_i mu) / (alpha_i^2 var + sigma_i^2)."""
    i = np.arange(process.num_train_timesteps)
    alpha, sigma = process.marginal(process.time_of_timestep(i))

    class GaussianEps(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for name, v in [("mu", mu), ("var", var), ("alpha", alpha), ("sigma", sigma)]:
                self.register_buffer(name, torch.tensor(np.asarray(v), dtype=dtype))

        def forward(self, x, timestep):
            a, s = self.alpha[timestep][:, None], self.sigma[timestep][:, None]
            return s * (x - a * self.mu) / (a * a * self.var + s * s)

    return GaussianEps()


@pytest.mark.parametrize("dtype_name, rtol", [("float64", 8 * EPS), ("float32", 2e-6)])
def test_torch_eps_model_audited(torch, dtype_name, rtol):
    """A diffusers-style epsilon model (integer timesteps) through from_torch: its score is
    the target's exact score to the model's precision, and score_error_profile takes it."""
    p = DDPM("scaled_linear", 0.00085, 0.012, 1000)
    mu, var = np.array([0.5, -1.0]), np.array([0.3, 2.0])
    target = GaussianMixture([1.0], [mu], [var])
    model = gaussian_eps_model(torch, p, mu, var, getattr(torch, dtype_name))
    s = from_torch(model, p, output="eps", time="timestep", batch_size=300)
    assert s.dtype == np.dtype(dtype_name)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 2)).astype(s.dtype)
    t = p.time_of_timestep(rng.integers(0, 1000, 1000))
    got = s(x, t)
    assert got.dtype == s.dtype
    exact = target.score(x.astype(np.float64), t, p)
    err = np.linalg.norm(got - exact, axis=1) / np.linalg.norm(exact, axis=1)
    assert err.max() <= rtol
    # the metrics take it at its own dtype; their default float64 points are refused, not mixed
    ts = p.time_of_timestep(np.array([0, 99, 499, 999]))
    errors, _ = score_error_profile(s, target, p, ts, 500, np.random.default_rng(1), dtype=s.dtype)
    assert np.all(errors <= (10 * rtol) ** 2 * 100)  # |score|^2 < 100 for these points
    if s.dtype == np.float32:
        with pytest.raises(ValueError, match="dtype"):
            score_error_profile(s, target, p, ts, 50, np.random.default_rng(1))
        wide = from_torch(model, p, output="eps", time="timestep", cast_output=True)
        assert wide(x.astype(np.float64), t).dtype == np.float64
        # the same float64 conversion, rounded once to float32 or not at all
        np.testing.assert_array_equal(wide(x.astype(np.float64), t).astype(np.float32), got)


def test_torch_model_batching_and_no_gradients(torch):
    """A tiny MLP: the answer does not depend on batch_size, no autograd graph is built, the
    model gets (b, d) points and (b,) times in its own dtype."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
    seen = []

    def model(x, t):
        seen.append((tuple(x.shape), tuple(t.shape), x.dtype, t.dtype, torch.is_grad_enabled()))
        return net(torch.cat([x, t[:, None]], dim=1))

    rng = np.random.default_rng(2)
    x, t = rng.standard_normal((37, 2)), rng.uniform(0.1, 1.0, 37)
    whole = from_torch(model, VP(), output="v", dtype=torch.float64, batch_size=100)(x, t)
    seen.clear()
    parts = from_torch(model, VP(), output="v", dtype=torch.float64, batch_size=10)(x, t)
    np.testing.assert_allclose(whole, parts, rtol=1e-14, atol=1e-14)  # BLAS may block a batch differently
    assert [s[0][0] for s in seen] == [10, 10, 10, 7]
    assert all(s[1] == (s[0][0],) and s[2] == s[3] == torch.float64 and not s[4] for s in seen)
    assert all(p.grad is None for p in net.parameters())
    v = net(torch.cat([torch.from_numpy(x), torch.from_numpy(t)[:, None]], dim=1)).detach().numpy()
    np.testing.assert_allclose(whole, convert(v, x, t, VP(), "v", "score"), rtol=1e-13, atol=1e-13)


def test_torch_module_dtype_and_device_are_its_own(torch):
    net = torch.nn.Linear(2, 2)  # float32 parameters
    s = from_torch(lambda x, t: net(x), OU(), output="score", dtype=None)
    assert s.dtype == np.dtype(torch.get_default_dtype().__repr__().replace("torch.", ""))

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(2, 2).double()

        def forward(self, x, t):
            return self.net(x)

    assert from_torch(Wrapped(), OU(), output="score").dtype == np.float64
    mixed = Wrapped()
    mixed.register_buffer("b", torch.zeros(1, dtype=torch.float32))
    with pytest.raises(ValueError, match="several dtypes"):
        from_torch(mixed, OU())
    for dtype in ["float64", np.float64, torch.float64]:
        assert from_torch(mixed, OU(), dtype=dtype).dtype == np.float64


def test_from_torch_refusals(torch):
    """Wrong shape, dtype, type, non-finite output and the model's own exceptions name the model."""
    x, t = np.ones((4, 2)), np.full(4, 0.5)

    def shape(x, t):
        return x[:, :1]

    def dtype(x, t):
        return x.float()

    def nan(x, t):
        return x * float("nan")

    def numpy_out(x, t):
        return x.numpy()

    def broken(x, t):
        return x @ torch.ones(3, 3, dtype=x.dtype)

    for fn, match in [(shape, r"'test_from_torch_refusals.<locals>.shape' returned shape \(4, 1\)"),
                      (dtype, "returned dtype float32 for inputs of dtype float64"),
                      (nan, "returned 8 non-finite"), (numpy_out, "returned a ndarray")]:
        with pytest.raises(ValueError, match=match):
            from_torch(fn, OU(), dtype="float64")(x, t)
    with pytest.raises(ModelError, match="'broken' raised RuntimeError at rows 0:4") as info:
        from_torch(broken, OU(), dtype="float64", name="broken")(x, t)
    assert isinstance(info.value.__cause__, RuntimeError)
    ok = from_torch(lambda x, t: x, OU(), dtype="float64")
    for kwargs, match in [({"output": "noise"}, "output must be one of"), ({"time": "step"}, "time must be one of"),
                          ({"time": "timestep"}, "needs a DDPM process"), ({"batch_size": 0}, "batch_size"),
                          ({"dtype": "float16"}, "dtype must be float32 or float64")]:
        with pytest.raises(ValueError, match=match):
            from_torch(lambda x, t: x, OU(), **kwargs)
    with pytest.raises(ValueError, match="not defined"):  # eps -> score at sigma = 0
        ok(x, 0.0)
    with pytest.raises(ValueError, match="<= 1.0"):
        from_torch(lambda x, t: x, VP(), dtype="float64")(x, 1.5)
    dropout = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1))
    with pytest.raises(ValueError, match=r"training mode with \['Dropout'\].*model.eval\(\)"):
        from_torch(dropout, OU())
    from_torch(dropout.eval(), OU())


def test_a_module_in_training_mode_behind_a_function_or_switched_back_is_refused(torch):
    """A dropout module in training mode was refused only when passed itself, when from_torch
    was built: behind the wrapper the docstring recommends (lambda x, t: unet(x, t).sample),
    a bound method, functools.partial or a callable object, or switched back to train()
    after from_torch, its score was random without a word (dropout 0.5: each entry zeroed or
    doubled at random). Now each is refused, naming the module and the fix."""
    import functools

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))

        def forward(self, x, t=None):
            return self.layers(x)

    torch.manual_seed(0)
    net = Net().double()

    class Holder:
        def __call__(self, x, t):
            return self.net(x)

    holder = Holder()
    holder.net = net
    wrappers = {"closure": (lambda n: (lambda x, t: n(x)))(net), "global": _global_net_model(net),
                "bound method": net.forward, "partial": functools.partial(lambda n, x, t: n(x), net),
                "object": holder}
    x = np.random.default_rng(24).standard_normal((50, 2))
    for kind, model in wrappers.items():
        with pytest.raises(ValueError, match=r"calls a Net module that is in training mode with "
                                             r"\['Dropout'\] layers .*call model\.eval\(\) first on that module$"):
            from_torch(model, OU(), "score", dtype="float64")
    net.eval()
    want = net(torch.from_numpy(x)).detach().numpy()
    for kind, model in wrappers.items():
        s = from_torch(model, OU(), "score", dtype="float64")
        np.testing.assert_array_equal(s(x, 0.5), want)
        net.train()
        with pytest.raises(ValueError, match=r"training mode with \['Dropout'\]"):
            s(x, 0.5)
        net.eval()
    s = from_torch(net, OU(), "score", dtype="float64")
    net.train()
    with pytest.raises(ValueError, match=r"^model 'Net' is in training mode with \['Dropout'\] layers"):
        s(x, 0.5)


_NET = None


def _global_net_model(net):
    """A model function reading its module as a global (the notebook pattern)."""
    global _NET
    _NET = net

    def model(x, t):
        return _NET(x)

    return model


def test_outputs_without_values_and_return_dict_false_tuples_are_named(torch):
    """A sparse tensor or one on the meta device (a model whose weights were never loaded)
    passed the shape and dtype checks and then crashed reading its values (torch's TypeError
    / NotImplementedError, a traceback); now a ValueError naming the model. A diffusers model
    called with return_dict=False returns (sample,): the message says to take [0]."""
    x = np.ones((3, 2))
    for fn in (lambda x, t: x.to_sparse(), lambda x, t: torch.empty_like(x, device="meta")):
        with pytest.raises(ValueError, match=r"^torch model 'm' returned an array whose values cannot be read at "
                                             r"rows 0:3 .*; return a dense array holding the values$"):
            from_torch(fn, OU(), "score", dtype="float64", name="m")(x, 0.5)
    with pytest.raises(ValueError, match=r"returned a tuple .*return_dict=False\? pass lambda x, t: "
                                         r"model\(x, t\)\[0\]"):
        from_torch(lambda x, t: (x,), OU(), "score", dtype="float64")(x, 0.5)
    with pytest.raises(ValueError, match=r"returned a tuple at rows 0:3 \(t from 0\.5 to 0\.5\); expected an array of "
                                         r"shape \(3, 2\)$"):  # no hint for a tuple of something else
        from_torch(lambda x, t: (x[:, :1],), OU(), "score", dtype="float64")(x, 0.5)


def test_timestep_argument(torch):
    """time="timestep" passes N t - 1: int64 at integer timesteps, refused between them
    unless fractional=True, refused outside 0..N-1."""
    p = DDPM(num_train_timesteps=10)
    seen = []

    def model(x, ts):
        seen.append(ts.clone())
        return torch.zeros_like(x)

    s = from_torch(model, p, output="eps", time="timestep", dtype="float64")
    x = np.zeros((3, 2))
    s(x, np.array([0.1, 0.5, 1.0]))
    assert seen[-1].dtype == torch.int64 and seen[-1].tolist() == [0, 4, 9]
    s(x, p.time_of_timestep(np.array([1, 2, 8])))  # (i + 1) / N * N may round off i by an ulp
    assert seen[-1].tolist() == [1, 2, 8]
    with pytest.raises(ValueError, match="not an integer.*fractional=True"):
        s(x, 0.55)
    with pytest.raises(ValueError, match=r"outside 0..9"):
        s(x, 0.05)
    frac = from_torch(model, p, output="eps", time="timestep", dtype="float64", fractional=True)
    frac(x, 0.55)
    assert seen[-1].dtype == torch.float64 and np.allclose(seen[-1].numpy(), 4.5)
    sig = from_torch(model, VE(), output="eps", time="sigma", dtype="float64")
    sig(x, 0.5)
    assert np.allclose(seen[-1].numpy(), VE().sigma(0.5), rtol=1e-15)


def test_float32_times_at_timesteps_are_those_timesteps(torch):
    """t = (i + 1) / N held in float32 is off by up to N t 2^-24 in timestep (6e-5 at N = 1000,
    against the float64 snap of 1e-9 N): it still means timestep i, with or without
    fractional=True. Before, 881 of the 1000 were refused as "not an integer", and with
    fractional=True the model got 249.99998 for 250, which a model indexing its table by
    timestep.long() reads as 249: 2.5% score error (found by a review). A float32 time really
    between timesteps is still refused."""
    p = DDPM("linear", 1e-4, 0.02, 1000)
    seen = []

    def model(x, ts):
        seen.append(ts.clone())
        return torch.zeros_like(x)

    i = np.arange(1000)
    t32 = p.time_of_timestep(i).astype(np.float32)
    assert np.any(t32.astype(np.float64) * 1000 - 1 - i > 1e-6)  # the case: beyond the float64 snap
    for fractional in (False, True):
        s = from_torch(model, p, output="eps", time="timestep", dtype="float32", fractional=fractional)
        s(np.zeros((1000, 2), np.float32), t32)
        np.testing.assert_array_equal(seen[-1].numpy(), i)
        s(np.zeros((1, 2), np.float32), t32[250])  # a scalar float32 time too
        assert seen[-1].tolist() == [250]
    for off in (0.5, 0.01):  # timesteps 249.5 and 249.01: really between timesteps, refused
        with pytest.raises(ValueError, match="not an integer"):
            from_torch(model, p, output="eps", time="timestep", dtype="float32")(
                np.zeros((1, 2), np.float32), np.float32((250 + off) / 1000))


@pytest.mark.parametrize("output", ["eps", "v", "x0"])
def test_a_time_taken_as_a_timestep_is_converted_at_that_timestep(torch, output):
    """A float32 t = (i + 1) / N (or a float64 one within the snap of it) runs the model at
    timestep i; the conversion to a score was made at t itself, not at i's time: a float64
    model exact at every timestep was 5.0e-8 off the exact score at timestep i (eps, at
    timestep 67; 3.0e-7 for a float64 t 5e-7 timesteps above timestep 0). Now the score is
    the exact score at timestep i to float64 rounding."""
    p = DDPM("linear", 1e-4, 0.02, 1000)
    target = GaussianMixture([1.0], [[0.5, -1.0, 0.3]], [[0.3, 2.0, 1.0]])
    i = np.arange(1000)
    t_i = p.time_of_timestep(i)
    alpha, sigma = (torch.from_numpy(v)[:, None] for v in p.marginal(t_i))

    def model(x, ts):  # the target's exact output at integer timesteps, from the GaussianMixture oracle
        xs, tt = x.numpy(), t_i[ts.numpy()]
        return torch.from_numpy(convert(target.score(xs, tt, p), xs, tt, p, "score", output))

    s = from_torch(model, p, output, "timestep", dtype="float64")
    x = np.random.default_rng(23).standard_normal((1000, 3))
    exact = target.score(x, t_i, p)
    rtol = 1e-12 if output == "x0" else 1e-14  # x0 -> score at sigma = 0.01 costs |x| / sigma^2 of x0's digits
    for t in (t_i.astype(np.float32), t_i[:-1] + 5e-7 / 1000):  # (t_999 = 1 is the end of the range)
        k = len(t)
        assert np.max(np.abs(t * 1000 - 1 - i[:k])) > 1e-7  # not the timesteps' times themselves
        assert _row_rel(s(x[:k], t), exact[:k]).max() <= rtol


@pytest.mark.parametrize("sigma_min, sigma_max", [(0.01, 50.0), (0.02, 100.0), (0.002, 80.0)])
def test_ve_denoiser_takes_k_diffusions_float32_karras_sigmas(sigma_min, sigma_max):
    """get_sigmas_karras(n, sigma_min, sigma_max) in torch's default float32 ends up to 5.6
    ulps below sigma_min (0.009999996 for 0.01): those are sigma_min, and k-diffusion's
    sample_euler runs on to_torch(target, VE(sigma_min, sigma_max)) (before: refused at its last
    step, with the whole batch printed). A float64 sigma below sigma_min by 1e-9 relative, or a
    float32 one well below, is still refused, naming the value and its entry."""
    k = load_k_diffusion()
    torch = k.torch
    ve = VE(sigma_min, sigma_max)
    model = to_torch(GaussianMixture.ring(), ve)
    sigmas = k.sampling.get_sigmas_karras(10, sigma_min, sigma_max)
    assert sigmas.dtype == torch.float32
    x = sigmas[0] * torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    out = k.sampling.sample_euler(model, x, sigmas, disable=True)
    assert torch.isfinite(out).all()
    np.testing.assert_array_equal(model(x, sigmas[-2].expand(16)).numpy(), model(x, torch.tensor(sigma_min)).numpy())
    below64 = torch.tensor([sigma_min, sigma_min * (1 - 1e-9)], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"sigma = .* \(entry 1 of 2\) is outside the range"):
        model(x[:2].double(), below64)
    with pytest.raises(ValueError, match="outside the range"):
        model(x[:1], torch.tensor([sigma_min * (1 - 200 * 2.0**-23)], dtype=torch.float32))  # 200 ulps below
    edge = np.float32(sigma_min * (1 - 20 * 2.0**-23))  # a numpy float32 scalar, 20 ulps below: the end
    np.testing.assert_array_equal(model(x[:1], edge).numpy(), model(x[:1], torch.tensor(sigma_min)).numpy())
    # a low-precision dtype gets one of its own ulps, not 64: bfloat16 70 is not VE's sigma_max 50
    with pytest.raises(ValueError, match="outside the range"):
        model(x[:1].to(torch.bfloat16), torch.tensor([1.4 * sigma_max], dtype=torch.bfloat16))


def test_ve_denoiser_takes_k_diffusions_float64_karras_sigmas():
    """get_sigmas_karras computed in float64 (torch's default dtype float64) for VE(1e-3, 1e4)
    and the default rho = 7 ends 11 ulps below sigma_min (0.0009999999999999976): it was
    refused, a float64 sigma getting no allowance, so k-diffusion could not run on the oracle
    in float64. Now 64 float64 ulps: it is sigma_min, sample_heun runs; 1e-12 relative below
    (k-diffusion's rho = 1 line ends ~2e-13 below for VE(0.01, 50)) is still refused."""
    k = load_k_diffusion()
    torch = k.torch
    ve = VE(1e-3, 1e4)
    model = to_torch(GaussianMixture.ring(), ve)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        sigmas = k.sampling.get_sigmas_karras(10, 1e-3, 1e4)
    finally:
        torch.set_default_dtype(default)
    assert sigmas.dtype == torch.float64 and float(sigmas[-2]) < 1e-3  # the peer's own rounding
    x = sigmas[0] * torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = k.sampling.sample_heun(model, x, sigmas, disable=True)
    assert torch.isfinite(out).all()
    np.testing.assert_array_equal(model(x, sigmas[-2].expand(8)).numpy(), model(x, 1e-3).numpy())
    with pytest.raises(ValueError, match="outside the range"):
        model(x[:1], torch.tensor([1e-3 * (1 - 1e-12)], dtype=torch.float64))


# -- the oracle out, and back -----------------------------------------------------------------------


@pytest.mark.parametrize("output", KINDS)
def test_denoiser_is_the_exact_edm_oracle(torch, output):
    """to_torch(signature="denoiser") at sigma equals the mixture with Sigma_k + sigma^2 I
    (no time conversion at all), converted to `output`."""
    target = full_mixture()
    model = to_torch(target, EDM(), output=output)
    rng = np.random.default_rng(3)
    x = 2 * rng.standard_normal((50, 2))
    for sigma in [0.01, 0.3, 1.0, 7.0, 80.0]:
        got = model(torch.from_numpy(x), torch.tensor(sigma, dtype=torch.float64)).numpy()
        want = convert(edm_score_direct(target, x, sigma), x, sigma, EDM(), "score", output)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())


@pytest.mark.parametrize("process, signature, output, arg", [
    (DDPM("squaredcos_cap_v2"), "diffusers", "v", 999), (DDPM(), "diffusers", "v", 999),
    (DDPM("squaredcos_cap_v2"), "diffusers", "x0", 995), (EDM(), "denoiser", "x0", 80.0),
    (VE(0.01, 50.0), "denoiser", "x0", 50.0), (EDM(), "denoiser", "velocity", 80.0)])
def test_oracle_x0_and_v_keep_their_digits_where_tweedie_cancels(torch, process, signature, output, arg):
    """to_torch formed x0 and v from the score by Tweedie, (x + sigma^2 score) / alpha, which
    cancels the digits of x / alpha where alpha is small or sigma large: measured against a
    40-digit closed form for N(mu, diag var), v at the last cosine DDPM timestep was 5.1e-12
    off (relative to the row's largest entry), 8.6e-14 at the last linear one, the EDM
    denoiser at sigma 80 4.5e-14. Now from the exact posterior mean: a few ulps."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 40
    rng = np.random.default_rng(25)
    mu, var = np.array([0.7, -1.2, 0.3]), np.array([0.4, 1.7, 0.9])
    model = to_torch(GaussianMixture([1.0], [mu], [var]), process, output, signature)
    if signature == "diffusers":
        abar = mp.fprod(1 - mp.mpf(float(b)) for b in process.betas()[:arg + 1])
        a, s = mp.sqrt(abar), mp.sqrt(1 - abar)
        da = ds = None
    else:
        a, s, da, ds = mp.mpf(1), mp.mpf(arg), mp.mpf(0), mp.mpf(1)  # EDM: sigma_t = t
    x = float(a) * (mu + np.sqrt(var) * rng.standard_normal((20, 3))) + float(s) * rng.standard_normal((20, 3))
    got = model(torch.from_numpy(x), arg).numpy()
    for row, x_row in zip(got, x):
        want = []
        for xj, mj, vj in zip(*(map(mp.mpf, v.tolist()) for v in (x_row, mu, var))):
            c = a * a * vj + s * s
            eps, x0 = s * (xj - a * mj) / c, mj + vj * a * (xj - a * mj) / c
            want.append(float({"x0": x0, "v": a * eps - s * x0, "velocity": (da * x0 + ds * eps) if da is not None
                               else None}[output]))
        want = np.array(want)
        assert np.max(np.abs(row - want)) <= 4 * EPS * np.max(np.abs(want)), (row - want) / np.max(np.abs(want))


def test_oracle_x0_at_extreme_sigmas_takes_the_better_of_tweedie_and_the_posterior_mean(torch):
    """EDM's denoiser at sigma = 1e30 at a point x ~ sigma z: Tweedie's x + sigma^2 score gave
    1.4e14 (and 0 at sigma = 1e100) for an x0 that is the mixture's mean (-0.8, -0.1) to
    1e-30 (the posterior weights are the prior's there; a few ulps of |mu| allowed, its
    0.4 (-1) + 0.6 (0.5) rounding so). At sigma -> 0 the other way round:
    x0 = x + sigma^2 score to its last digit by Tweedie, where the posterior mean keeps only
    the digits of |mu| (1.8e-17 for an x0 of 1e-30): each row takes the better one."""
    g = GaussianMixture([0.4, 0.6], [[1.0, -1.0], [-2.0, 0.5]], [[[0.3, 0.1], [0.1, 0.2]], [[0.5, 0.0], [0.0, 0.4]]])
    D = to_torch(g, EDM(), "x0")
    prior_mean = np.array([-0.8, -0.1])
    for sigma in (1e30, 1e100):
        x = torch.tensor([[1.0, 2.0], [sigma, -sigma], [-0.3 * sigma, 2.0 * sigma]], dtype=torch.float64)
        got = D(x, torch.tensor(sigma, dtype=torch.float64)).numpy()
        np.testing.assert_allclose(got, np.tile(prior_mean, (3, 1)), rtol=0, atol=8 * EPS)  # ulps of |mu| = 2
    for sigma in (1e-30, 1e-160):
        x = torch.tensor([[1.0, 2.0], [sigma, -sigma], [0.0, 3 * sigma]], dtype=torch.float64)
        want = x.numpy() + sigma**2 * g.score(x.numpy(), 0.0)  # the data's score: p_sigma's to 1e-60 relative
        np.testing.assert_allclose(D(x, torch.tensor(sigma, dtype=torch.float64)).numpy(), want, rtol=4 * EPS, atol=0)


@pytest.mark.parametrize("process", [EDM(), VE(0.01, 1e200)], ids=repr)
def test_the_oracle_s_x0_and_v_where_their_coefficient_from_the_score_overflows(torch, process):
    """score -> v multiplies the score by -sigma (1 + sigma^2) and score -> x0 by sigma^2, beyond
    float64 for sigma > 5.6e102 and 1.3e154, where v ~ -sigma x0 and x0 ~ the mean are finite:
    the oracle refused them ("converting score to v is not defined there or overflows float64"),
    though the posterior mean it takes for x0 and v where Tweedie cancels holds them. Now that
    value, against a 40-digit closed form for N(mu, diag var): a few ulps. A target without a
    posterior mean is refused as before."""
    mp = pytest.importorskip("mpmath")
    mu, var = np.array([0.7, -1.2]), np.array([0.4, 1.7])
    target = GaussianMixture([1.0], [mu], [var])
    rng = np.random.default_rng(27)
    for output in ("x0", "v"):
        model = to_torch(target, process, output)
        for sigma in (1e103, 1e150, 1e160, 1e200):
            x = sigma * rng.standard_normal((3, 2))
            got = model(torch.from_numpy(x), torch.tensor(sigma, dtype=torch.float64)).numpy()
            with mp.workdps(40):
                s = mp.mpf(sigma)
                for row, xr in zip(got, x):
                    x0 = [mp.mpf(m) + mp.mpf(v) * (mp.mpf(xj) - mp.mpf(m)) / (mp.mpf(v) + s * s)
                          for xj, m, v in zip(xr.tolist(), mu.tolist(), var.tolist())]
                    want = np.array([float(u if output == "x0" else (mp.mpf(xj) - u) / s - s * u)
                                     for u, xj in zip(x0, xr.tolist())])
                    assert np.max(np.abs(row - want)) <= 4 * EPS * np.max(np.abs(want)), (output, sigma, row, want)

    class ScoreOnly:  # an exact score, but no posterior mean to take x0 from
        dim = 2

        def score(self, x, t, process):
            return target.score(x, t, process)

    with pytest.raises(ValueError, match=r"^t = 1e\+150: converting score to v is not defined there or overflows"):
        to_torch(ScoreOnly(), EDM(), "v")(torch.ones(2, 2, dtype=torch.float64), 1e150)


@pytest.mark.parametrize("output", ["score", "eps"])
def test_the_edm_oracle_keeps_its_digits_at_small_sigma(torch, output):
    """to_torch(EDM()) took the score through OU, c score_OU(c x, u): rounding c x cost the
    digits of x - mu, eps / sigma of them, near the data (4.5e-12 of eps and the score at
    sigma = 3e-6 against a 40-digit closed form for N(mu, c^2 I), x = mu + sigma z). Now the
    mixture's own EDM score: a few ulps; and a sigma whose square overflows (1e200) still
    goes through OU, one row of a batch with an ordinary sigma."""
    mp = pytest.importorskip("mpmath")
    mu, c2 = np.array([1.3, -0.7]), 0.36
    model = to_torch(GaussianMixture([1.0], [mu], [[c2, c2]]), EDM(), output)
    rng = np.random.default_rng(4)
    sigma = np.array([3e-6, 1e-4, 2e-3, 1e200])
    x = mu + sigma[:, None] * rng.standard_normal((4, 2))
    got = model(torch.from_numpy(x), torch.from_numpy(sigma)).numpy()
    with mp.workdps(40):
        for row, xr, s in zip(got, x, sigma):
            s = mp.mpf(float(s))
            score = [-(mp.mpf(float(xj)) - mp.mpf(float(mj))) / (mp.mpf(c2) + s * s) for xj, mj in zip(xr, mu)]
            want = np.array([float(v if output == "score" else -s * v) for v in score])
            assert np.max(np.abs(row - want)) <= 4 * EPS * np.max(np.abs(want)), (s, (row - want) / want)


@pytest.mark.parametrize("process", [VE(), VE(1e-3, 1e4)], ids=repr)
def test_the_ve_denoiser_is_exact_at_the_sigma_given(torch, process):
    """to_torch(VE) evaluated at VE's time t = time_of(sigma), whose sigma_t comes back 13
    ulps off sigma (20 for VE(1e-3, 1e4)): eps and the score were 4.6e-15 off a 40-digit
    closed form for N(mu, c^2 I) (9e-15 for the wider VE). Now at sigma itself (EDM's p_sigma),
    the velocity as sigma' eps = sigma log(sigma_max / sigma_min) eps: a few ulps."""
    mp = pytest.importorskip("mpmath")
    mu, c2 = np.array([1.3, -0.7]), 0.36
    target = GaussianMixture([1.0], [mu], [[c2, c2]])
    sigma = np.geomspace(process.sigma_min, process.sigma_max, 13)
    x = mu + sigma[:, None] * np.random.default_rng(5).standard_normal((sigma.size, 2))
    for output in ("score", "eps", "velocity"):
        got = to_torch(target, process, output)(torch.from_numpy(x), torch.from_numpy(sigma)).numpy()
        with mp.workdps(40):
            rate = mp.log(mp.mpf(process.sigma_max) / mp.mpf(process.sigma_min))
            for row, xr, s in zip(got, x, sigma):
                s = mp.mpf(float(s))
                score = [-(mp.mpf(float(xj)) - mp.mpf(float(mj))) / (mp.mpf(c2) + s * s) for xj, mj in zip(xr, mu)]
                factor = {"score": 1, "eps": -s, "velocity": -s * s * rate}[output]
                want = np.array([float(factor * v) for v in score])
                assert np.max(np.abs(row - want)) <= 4 * EPS * np.max(np.abs(want)), (output, s, (row - want) / want)


def test_to_torch_keeps_dtype_device_and_shape(torch):
    target = GaussianMixture.ring()
    model = to_torch(target, EDM())
    x = torch.randn(5, 1, 2)  # (n, *shape) with prod(shape) = d
    out = model(x, 1.5)
    assert out.dtype == torch.float32 and out.device == x.device and out.shape == x.shape
    want = convert(edm_score_direct(target, x.double().reshape(5, 2).numpy(), 1.5), x.double().reshape(5, 2).numpy(),
                   1.5, EDM(), "score", "x0")
    np.testing.assert_allclose(out.reshape(5, 2).numpy(), want, rtol=1e-6, atol=1e-6)
    assert not out.requires_grad


def test_to_torch_refusals(torch):
    target = GaussianMixture.ring()
    for args, kwargs, match in [((target, OU()), {}, "EDM\\(\\) or a VE"),
                                ((target, EDM()), {"signature": "diffusers"}, "must be a DDPM"),
                                ((target, EDM()), {"signature": "k"}, "signature must be one of"),
                                ((target, EDM()), {"output": "noise"}, "output must be one of"),
                                ((object(), EDM()), {}, "score")]:
        with pytest.raises(ValueError, match=match):
            to_torch(*args, **kwargs)
    D = to_torch(target, VE(0.01, 50.0))
    x = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="outside the range"):
        D(x, 60.0)
    with pytest.raises(ValueError, match="must have shape"):
        D(x, torch.ones(2))
    with pytest.raises(ValueError, match="d = 2"):
        D(torch.zeros(3, 3), 1.0)
    M = to_torch(target, DDPM(), signature="diffusers")
    with pytest.raises(ValueError, match="not an integer"):
        M(x, 10.5)
    with pytest.raises(ValueError, match="outside 0..999"):
        M(x, torch.tensor(1000))
    M(x, torch.tensor([999]))
    frac = to_torch(target, DDPM(), signature="diffusers", fractional=True)
    ts = torch.tensor([10.5, 3.0, 998.25], dtype=torch.float64)
    t = (ts.numpy() + 1) / 1000
    np.testing.assert_allclose(frac(x, ts).numpy(), convert(target.score(x.numpy(), t, DDPM()), x.numpy(), t, DDPM(),
                                                            "score", "eps"), rtol=1e-14, atol=1e-14)


PROCESSES = [OU(), VP(), VPCosine(), DDPM("squaredcos_cap_v2"), SubVP(), VE(), EDM(), FlowMatching(t_max=0.999)]


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
def test_round_trip_through_torch(torch, process):
    """Oracle out (any process, any output, time="t"), network in: target.score back in
    float64. For DDPM the oracle comes through the diffusers signature at integer
    timesteps; for EDM/VE through the k-diffusion denoiser signature. The error allowed is
    the conversion's own: a few ulps of |score| + |x| / sigma^2 (x0 keeps eps's digits only
    down to eps_mach |x| / sigma)."""
    target = full_mixture()
    rng = np.random.default_rng(4)
    n = 400
    lo, hi = process.time_range
    hi = min(hi, 50.0)
    t = np.sort(np.concatenate([rng.uniform(lo, hi, n // 2), np.exp(rng.uniform(np.log(hi) - 12, np.log(hi), n // 2))]))
    t = np.clip(t, 1e-6 + lo, hi)
    signature, time = "t", "t"
    if isinstance(process, DDPM):
        t = process.time_of_timestep(rng.integers(0, 1000, n))
        signature, time = "diffusers", "timestep"
    elif isinstance(process, (EDM, VE)):
        signature, time = "denoiser", "sigma"
    alpha, sigma = process.marginal(t)
    x = alpha[:, None] * target.sample(n, rng) + sigma[:, None] * rng.standard_normal((n, 2))
    exact = OracleFree(target, process).score(x, t)
    for output in KINDS:
        if signature == "t":
            model = _t_signature(torch, target, process, output)
        else:
            model = to_torch(target, process, output=output, signature=signature)
        s = from_torch(model, process, output=output, time=time, dtype="float64")(x, t)
        scale = np.linalg.norm(exact, axis=1) + np.linalg.norm(x, axis=1) / sigma**2
        err = np.linalg.norm(s - exact, axis=1)
        assert np.all(err <= 64 * EPS * scale), (output, (err / scale).max() / EPS)
        rel = err / np.linalg.norm(exact, axis=1)
        if output in ("score", "eps", "v"):
            assert rel.max() <= 1e-12, (output, rel.max())


class OracleFree:
    """target.score under any process from the EDM form alone (the mixture with covariance
    Sigma_k + (sigma/alpha)^2 I at x / alpha): an oracle that shares nothing with
    convert_time."""

    def __init__(self, target, process):
        self.target, self.process = target, process

    def score(self, x, t):
        out = np.empty_like(x)
        for i, ti in enumerate(np.atleast_1d(t)):
            a, s = self.process.marginal(ti)
            if a == 0:
                raise ValueError("alpha = 0")
            out[i] = edm_score_direct(self.target, x[i:i + 1] / a, s / a)[0] / a
        return out


def _t_signature(torch, target, process, output):
    """The oracle in the process's own time as a torch model(x, t) (built on to_torch's
    OracleModel.score, the through-OU path)."""
    oracle = to_torch(target, EDM())
    oracle.process = process  # the general path of OracleModel.score

    def model(x, t):
        xs, ts = x.numpy(), t.numpy()
        return torch.from_numpy(convert(oracle.score(xs, ts), xs, ts, process, "score", output))

    return model


def test_convert_score_moves_between_processes():
    """convert_score of the exact OU score is the exact EDM / VE / FlowMatching score."""
    target = full_mixture()
    ou = lambda x, t: target.score(x, t, OU())  # noqa: E731
    rng = np.random.default_rng(5)
    x = rng.standard_normal((30, 2))
    for process in [EDM(), VE(), FlowMatching(t_max=0.99), SubVP()]:
        t = rng.uniform(0.02, 0.98, 30) * min(process.t_max, 10.0)
        got = convert_score(ou, OU(), process)(x, t)
        want = OracleFree(target, process).score(x, t)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
    with pytest.raises(ValueError, match="score must be a callable"):
        convert_score(3, OU(), EDM())



def test_convert_score_names_what_is_not_finite_instead_of_returning_it():
    """s_to(x, t) = c score(c x, u): c x beyond float64 (EDM's score seen from OU at t = 700,
    c = sigma_EDM / sigma_OU = 1e304) was handed to the score as inf and its NaN returned
    with only a RuntimeWarning; a score's NaN went through as the result, and so did c times
    a score's value that overflows. Each is a ValueError naming the row; mpmath's N(0, 1)
    score, -x under OU, where nothing overflows."""
    import mpmath

    def edm_score(x, t):  # N(0, 1) data under EDM: p_sigma = N(0, 1 + sigma^2)
        return -x / (1.0 + np.asarray(t)[:, None] ** 2)

    s = convert_score(edm_score, EDM(), OU())
    x = np.array([[1e5], [1.0]])
    with pytest.raises(ValueError, match=r"^x in EDM\(t_max=inf\)'s scale overflows float64 at row 0 \(t = 700\.0, "
                                         r"EDM\(t_max=inf\) time 1\.01\d+e\+304, x_from = 1\.01e\+304 x\); use a smaller t "
                                         r"or smaller x$"):
        s(x, 700.0)
    with pytest.raises(ValueError, match=r"or smaller x, or float64 x$"):
        s(np.full((1, 1), 1e37, np.float32), 5.0)
    for t in (1e-3, 3.0, 40.0):  # against mpmath's score of N(0, 1) under OU: -x
        with mpmath.workdps(50):
            want = [float(-mpmath.mpf(float(v))) for v in x[:, 0]]
        np.testing.assert_allclose(s(x, t)[:, 0], want, rtol=8 * EPS, atol=0)
    with pytest.raises(ValueError, match=r"^score returned a non-finite value at row 1 \(t = 1\.0, .*a score of finite "
                                         r"points is finite$"):
        convert_score(lambda x, t: np.where(x > 0, np.nan, x), OU(), EDM())(np.array([[-1.0], [1.0]]), 1.0)
    with pytest.raises(ValueError, match=r"^the converted score, x_from / x times score's value, overflows float64 at "
                                         r"row 0 \(t = 3\.0, .*use a smaller t$"):
        convert_score(lambda x, t: np.full_like(x, 1e307), EDM(), OU())(np.ones((1, 1)), 3.0)
    # no rows: the score's own empty answer (convert_time refused the empty times, naming t's shape)
    assert convert_score(edm_score, EDM(), OU())(np.ones((0, 2), np.float32), 1.0).shape == (0, 2)


def test_convert_score_refuses_a_score_that_is_not_real_floating_point():
    """convert_score returns c score(c x, u) in the dtype score returns: an integer score came
    back as c times it truncated to integers ([[-21], [-8]] for c score = [[-21.75], [-8.15]] at
    OU's t = 1, c = e), a complex one as complex, without a word. A ValueError naming the dtype;
    a float32 or float64 score is converted as before (against mpmath's e^2 (-x) here)."""
    import mpmath

    x = np.array([[3.0], [1.0]])
    for dtype in (np.int64, np.bool_, np.complex128):
        s = convert_score(lambda x, t: np.round(-x).astype(dtype), EDM(), OU())
        with pytest.raises(ValueError, match=rf"^score returned dtype {np.dtype(dtype)}; a score is real: return a "
                                             r"floating-point array \(e\.g\. of x's dtype, float64\)$"):
            s(x, 1.0)
    with mpmath.workdps(30):  # OU's t = 1 is EDM's sigma = sqrt(e^2 - 1), x_EDM = e x: c^2 = e^2
        want = np.array([[float(-mpmath.e**2 * v)] for v in (3, 1)])
    for dtype in (np.float32, np.float64):
        got = convert_score(lambda x, t: -x.astype(dtype), EDM(), OU())(x, 1.0)
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=4 * np.finfo(dtype).eps, atol=0)


# -- JAX ---------------------------------------------------------------------------------


def test_jax_eps_model_audited(jax):
    """The Gaussian's exact epsilon in jax.numpy (float32 by default, float64 in x64 mode)."""
    jnp = jax.numpy
    p = VP()
    mu, var = np.array([0.5, -1.0]), np.array([0.3, 2.0])
    target = GaussianMixture([1.0], [mu], [var])

    def eps(x, t):
        B = t * (0.1 + 0.5 * t * 19.9)
        a, s2 = jnp.exp(-0.5 * B)[:, None], -jnp.expm1(-B)[:, None]
        m, v = jnp.asarray(mu, dtype=x.dtype), jnp.asarray(var, dtype=x.dtype)
        return jnp.sqrt(s2) * (x - a * m) / (a * a * v + s2)

    rng = np.random.default_rng(6)
    x, t = rng.standard_normal((500, 2)), rng.uniform(0.01, 1.0, 500)
    exact = target.score(x, t, p)
    s = from_jax(jax.jit(eps), p, output="eps", batch_size=128)
    assert s.dtype == np.float32
    got = s(x.astype(np.float32), t)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max())
    with pytest.raises(ValueError, match="jax_enable_x64"):
        from_jax(eps, p, dtype="float64")
    with jax.enable_x64(True):
        s64 = from_jax(eps, p, output="eps")
        assert s64.dtype == np.float64
        np.testing.assert_allclose(s64(x, t), exact, rtol=1e-13, atol=1e-13 * np.abs(exact).max())
    with pytest.raises(ValueError, match="returned shape"):
        from_jax(lambda x, t: x[:, 0], p)(x.astype(np.float32), t)
    with pytest.raises(ModelError, match="jax model 'bad' raised"):
        from_jax(lambda x, t: x @ jnp.ones((3, 3)), p, name="bad")(x.astype(np.float32), t)
    seen = []

    def by_timestep(x, ts):
        seen.append(ts)
        return jnp.zeros_like(x)

    from_jax(by_timestep, DDPM(num_train_timesteps=10), time="timestep")(np.zeros((2, 2), np.float32), [0.1, 1.0])
    assert seen[-1].dtype == jnp.int32 and seen[-1].tolist() == [0, 9]  # JAX's integer without x64


def _jax_mixture_model(jax, target, process, output, time, bug=None):
    """target's exact `output` in jax.numpy at the model's time argument: the score is jax.grad of
    log p_t = log sum_k w_k N(x; alpha mu_k, alpha^2 var_k + sigma^2) (diagonal covariances),
    an independent computation; `bug` plants a convention error."""
    jnp = jax.numpy
    ac = np.asarray(process.alphas_cumprod()) if isinstance(process, DDPM) else None

    def fn(x, arg):
        dt = x.dtype
        if time == "timestep":  # diffusers: timestep i has alphas_cumprod[i]
            i = jnp.minimum(arg + 1, len(ac) - 1) if bug == "timestep + 1" else arg
            abar = jnp.asarray(ac, dtype=dt)[i]
            a, s, da, ds = jnp.sqrt(abar), jnp.sqrt(1 - abar), None, None
        elif time == "sigma":  # EDM
            a, s, da, ds = jnp.ones_like(arg), arg, jnp.zeros_like(arg), jnp.ones_like(arg)
        else:  # VP(0.1, 20): B = int_0^t beta
            B, beta = arg * (0.1 + 0.5 * arg * 19.9), 0.1 + 19.9 * arg
            a = jnp.exp(-0.5 * B) ** (2 if bug == "alpha^2" else 1)
            s = -jnp.expm1(-B) if bug == "sigma^2" else jnp.sqrt(-jnp.expm1(-B))
            da, ds = -0.5 * beta * a, 0.5 * beta * a * a / s
        w, mu, var = (jnp.asarray(v, dtype=dt) for v in (target.weights, target.means, target.covariances))

        def log_p(xi, ai, si):
            v = ai * ai * var + si * si
            return jax.scipy.special.logsumexp(
                jnp.log(w) - 0.5 * jnp.sum((xi - ai * mu) ** 2 / v + jnp.log(2 * jnp.pi * v), axis=1))

        score = jax.vmap(jax.grad(log_p))(x, a, s)
        a, s = a[:, None], s[:, None]
        eps = -s * score * (-1 if bug == "eps sign" else 1)
        x0 = (x - s * eps) / a
        v = a * eps - s * x0
        if bug == "x0 for v":
            v = x0
        if output == "velocity":
            return da[:, None] * x0 + ds[:, None] * eps
        return {"score": score, "eps": eps, "x0": x0, "v": v}[output]

    return fn


@pytest.mark.parametrize("x64", [False, True])
def test_exact_jax_models_in_every_convention_audit_as_exact(jax, x64):
    """The exact mixture in jax.numpy (jax.grad of its log density), in each output and time
    convention, jitted: its score matches the oracle to the rounding of its dtype (float32,
    or float64 with jax_enable_x64), and the relative error is that rounding, the x0 -> score
    conversion's 1 / sigma^2 aside."""
    target = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.5, -0.5]], [[0.3, 0.2], [0.5, 0.4]])
    cases = [(VP(), o, "t") for o in ("score", "eps", "v", "velocity")] + [
        (EDM(), "x0", "sigma"), (DDPM(), "eps", "timestep"), (DDPM(), "v", "timestep")]
    rng = np.random.default_rng(20)
    with jax.enable_x64(x64):
        dtype = np.float64 if x64 else np.float32
        rtol = 50 * np.finfo(dtype).eps
        for process, output, time in cases:
            s = from_jax(jax.jit(_jax_mixture_model(jax, target, process, output, time)), process, output, time)
            assert s.dtype == dtype
            ts = process.time_of_timestep(np.array([99, 499, 999])) if time == "timestep" else [0.1, 0.5, 1.0]
            for t in ts:
                x = process.perturb(target.sample(200, rng), np.full(200, t), rng)[0].astype(dtype)
                exact = target.score(x.astype(np.float64), np.full(200, t), process)
                got = s(x, np.full(200, t))
                assert got.dtype == dtype
                np.testing.assert_allclose(got, exact, rtol=rtol, atol=rtol * np.abs(exact).max(),
                                           err_msg=f"{process!r} {output} at {time}, t = {t}")


@pytest.mark.parametrize("output, time, bug, where", [
    ("eps", "t", "eps sign", "everywhere"), ("eps", "t", "sigma^2", "small t"), ("eps", "t", "alpha^2", "middle t"),
    ("v", "t", "x0 for v", "small t"), ("eps", "timestep", "timestep + 1", "small t")])
def test_a_jax_model_with_a_convention_bug_is_charged_where_the_bug_is(jax, output, time, bug, where):
    """Planted convention bugs in float64 JAX models: the relative score error is ~0 for the
    exact model and clearly not where the bug matters (eps sign: 4 at every t; sigma for
    sigma^2 and timestep + 1 at small t; alpha^2 for alpha in the middle, where alpha is
    neither 1 nor 0)."""
    target = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.5, -0.5]], [[0.3, 0.2], [0.5, 0.4]])
    process = DDPM() if time == "timestep" else VP()
    ts = process.time_of_timestep(np.array([0, 9, 99, 998])) if time == "timestep" else [0.001, 0.01, 0.3, 1.0]
    with jax.enable_x64(True):
        relative = {}
        for b in (None, bug):
            s = from_jax(_jax_mixture_model(jax, target, process, output, time, b), process, output, time)
            errors, _ = score_error_profile(s, target, process, ts, 400, np.random.default_rng(21))
            norms, _ = score_error_profile(lambda x, t: np.zeros_like(x), target, process, ts, 400,
                                           np.random.default_rng(21))
            relative[b] = errors / norms
    assert np.all(relative[None] < 1e-20), relative[None]
    big = {"everywhere": [0, 1, 2, 3], "small t": [0, 1], "middle t": [2]}[where]
    assert np.all(relative[bug][big] > 1e-3), relative[bug]


def test_a_jax_float64_score_refuses_a_call_with_x64_off(jax):
    """dtype float64 needs jax_enable_x64 at each call, not only when from_jax built the score:
    with x64 off since, JAX rounded x to float32 without a word, and a model handing back
    float64 NumPy passed every check with float32 digits (a float64 audit of the exact model
    reported errors ~1e-14 instead of ~1e-31)."""
    jnp = jax.numpy
    target = GaussianMixture([1.0], [[0.5, -1.0]], [[0.3, 2.0]])

    def score(x, t):  # the exact score, handed back as float64 NumPy
        a, s2 = jnp.exp(-t)[:, None], -jnp.expm1(-2 * t)[:, None]
        return np.asarray(-(x - a * jnp.asarray([0.5, -1.0])) / (a * a * jnp.asarray([0.3, 2.0]) + s2), np.float64)

    x = np.random.default_rng(22).standard_normal((50, 2))
    with jax.enable_x64(True):
        s = from_jax(score, OU(), output="score", name="score")
        assert s.dtype == np.float64
        np.testing.assert_allclose(s(x, 0.5), target.score(x, 0.5, OU()), rtol=1e-14)
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match=r"^jax model 'score' was built with dtype float64, but jax_enable_x64 "
                                             r"is off now \(JAX would round x to float32\)"):
            s(x, 0.5)
        # a float32 score is fine either way, and a DDPM timestep is JAX's int32 without x64
        seen = []
        s32 = from_jax(lambda x, ts: seen.append(ts) or x, DDPM(), output="x0", time="timestep")
    with jax.enable_x64(True):
        s32(x.astype(np.float32), 1.0)
    assert seen[-1].dtype == jnp.int64 and int(seen[-1][0]) == 999


def test_jax_tracers_are_named(jax):
    """A traced value escaping the model (saved from inside jax.jit) and the score itself
    called under jax.jit each raise a ValueError saying so (were jax's TypeError
    TracerArrayConversionError, a traceback in sgm-ref)."""
    jnp = jax.numpy
    saved = []

    def leaky(x, t):
        jax.jit(lambda y: saved.append(y) or y)(x)
        return saved[-1]

    x = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match=r"^jax model 'leaky' returned a DynamicJaxprTracer at rows 0:3 .*escaped "
                                         r"jax\.jit"):
        from_jax(leaky, OU(), output="eps", name="leaky")(x, 0.5)
    s = from_jax(lambda x, t: -x, OU(), output="score")
    with pytest.raises(ValueError, match=r"^x is a JAX tracer: the score of from_jax takes and returns NumPy"):
        jax.jit(s)(jnp.asarray(x), jnp.full(3, 0.5))
    assert np.array_equal(s(jnp.asarray(x), jnp.full(3, 0.5)), -x)  # concrete jax arrays are fine


def test_a_non_float_output_is_not_told_to_run_at_half_precision(jax):
    """An int, bool or complex output was given the float16 / bfloat16 hint (cast inside the
    model to half precision); it is told to return floats of the model's dtype."""
    jnp = jax.numpy
    x = np.ones((3, 2), np.float32)
    for dtype in (jnp.int32, jnp.bool_, jnp.complex64):
        with pytest.raises(ValueError, match=r"returned dtype \w+ for inputs of dtype float32 at rows 0:3 .*; a "
                                             r"score, eps, x0, v or velocity is real: return a floating-point array "
                                             r"of dtype float32$"):
            from_jax(lambda x, t: x.astype(dtype), OU())(x, 0.5)


def test_an_overflowing_score_names_its_time_as_a_plain_number(jax):
    """eps -> score at t = 1e-300 multiplies by -1 / sigma_t ~ -7e149, beyond float32: the
    message said t = np.float64(1e-300), after a RuntimeWarning of the cast. (That t is 0 in
    float32, and is now refused before the model sees 0 for it; the overflow is shown with an
    eps of 1e30 at t = 1e-20, -1 / sigma_t = -7e9.)"""
    s = from_jax(lambda x, t: jax.numpy.ones_like(x), OU(), output="eps", name="<lambda>")
    with warnings.catch_warnings(), pytest.raises(ValueError, match=r"^the time argument t = 1e-300 \(row 0\) is beyond "
                                                                    r"the range of float32, .*\(it would see 0\.0\)"):
        warnings.simplefilter("error")
        s(np.ones((2, 2), np.float32), 1e-300)
    s = from_jax(lambda x, t: jax.numpy.full_like(x, 1e30), OU(), output="eps", name="<lambda>")
    with warnings.catch_warnings(), pytest.raises(ValueError, match=r"^the score of jax model '<lambda>' overflows "
                                                                    r"float32 at row 0 \(t = 1e-20, eps -> score "
                                                                    r"multiplies by -7\.07e\+09\)$"):
        warnings.simplefilter("error")
        s(np.ones((2, 2), np.float32), 1e-20)


# -- the peers' own samplers on the oracle ---------------------------------------------------------


def _sw2(a, b):
    return sliced_wasserstein(a, b, np.random.default_rng(7), n_projections=128).value


def _z_score(out, draw, rng):
    """(SW2(out, ref) - mean of the null) / its standard deviation; draw(rng) gives an exact
    sample of the law out should have, ref one of them."""
    ref = draw(rng)
    null = np.array([_sw2(draw(rng), ref) for _ in range(N_NULL)])
    assert null.std(ddof=1) > 0
    return (_sw2(out, ref) - null.mean()) / null.std(ddof=1)


@pytest.fixture(scope="module")
def kd():
    return load_k_diffusion()


@pytest.mark.parametrize("sampler, n_steps", [("sample_heun", 40), ("sample_euler", 100)])
def test_k_diffusion_sampler_on_the_oracle(kd, sampler, n_steps):
    """k-diffusion's own ODE samplers, on sgm_ref's Karras grid from sigma 80 to 0.002 with
    the exact denoiser, reproduce the ring (measured z: heun 40 steps 1.2, and -1.5..2.5
    over six other seeds of the start; euler 100 steps 1.1)."""
    torch = kd.torch
    target = GaussianMixture.ring()
    sigmas = torch.from_numpy(EDM().karras_sigmas(n_steps, 0.002, 80.0))
    x = torch.randn(N_POINTS, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80.0
    out = getattr(kd.sampling, sampler)(to_torch(target, EDM()), x, sigmas, disable=True).numpy()
    z = _z_score(out, lambda rng: target.sample(N_POINTS, rng), np.random.default_rng(1))
    assert z < Z_MAX, z


def test_wrong_time_map_is_detected(kd):
    """The criterion has power: the denoiser with a plausible wrong EDM -> OU time map
    (t = sigma^2 / 2 instead of log1p(sigma^2) / 2) fails it: measured z ~ 1200."""
    torch = kd.torch
    target = GaussianMixture.ring()

    def wrong(x, sigma):
        xs, s = x.numpy(), sigma.numpy()
        t = s**2 / 2
        a = np.exp(-t)[:, None]
        return torch.from_numpy(xs + s[:, None] ** 2 * a * target.score(a * xs, t, OU()))

    sigmas = torch.from_numpy(EDM().karras_sigmas(20, 0.002, 80.0))
    x = torch.randn(N_POINTS, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80.0
    out = kd.sampling.sample_heun(wrong, x, sigmas, disable=True).numpy()
    assert _z_score(out, lambda rng: target.sample(N_POINTS, rng), np.random.default_rng(1)) > 100


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers' own np.array(tensor)
def test_diffusers_euler_scheduler_on_the_oracle():
    """diffusers' EulerDiscreteScheduler (Stable Diffusion's scaled_linear schedule, 50
    "trailing" steps: integer timesteps 999, 979, ..., 19) with the exact epsilon model.
    The scheduler's last step to sigma = 0 returns its denoised estimate D(x; sigma_19), so
    the law it should output is that of E[x0 | X] with X ~ p at timestep 19, sampled
    exactly (x0 + noise, then sgm_ref's exact x0); measured z = 1.6."""
    diffusers = peer("diffusers")
    torch = peer("torch")
    target = GaussianMixture.ring()
    p = DDPM("scaled_linear", 0.00085, 0.012, 1000)
    sched = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                             num_train_timesteps=1000, timestep_spacing="trailing")
    sched.set_timesteps(50)
    model = to_torch(target, p, signature="diffusers")
    x = torch.randn(N_POINTS, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sched.init_noise_sigma
    for timestep in sched.timesteps:
        x = sched.step(model(sched.scale_model_input(x, timestep), timestep), timestep, x).prev_sample
    t_last = p.time_of_timestep(int(sched.timesteps[-1]))
    alpha, sigma = p.marginal(t_last)

    def draw(rng):
        xt = alpha * target.sample(N_POINTS, rng) + sigma * rng.standard_normal((N_POINTS, 2))
        return convert(target.score(xt, t_last, p), xt, t_last, p, "score", "x0")

    z = _z_score(x.numpy(), draw, np.random.default_rng(1))
    assert z < Z_MAX, z


def test_k_diffusion_eps_wrapper_around_the_diffusers_oracle(kd):
    """Both directions and a peer in between: k-diffusion's DiscreteEpsDDPMDenoiser wrapped
    around to_torch(signature="diffusers") is a denoiser D(x; sigma) in the EDM convention
    (it calls the model with c_in x and the timestep sigma_to_t(sigma)); audited through
    from_torch(time="sigma") it is the exact EDM score at the schedule's own sigmas, and
    convert_score takes it back to the DDPM process's exact score."""
    torch = kd.torch
    target = full_mixture()
    p = DDPM("scaled_linear", 0.00085, 0.012, 1000)
    wrapper = kd.external.DiscreteEpsDDPMDenoiser(to_torch(target, p, signature="diffusers"),
                                                  torch.from_numpy(p.alphas_cumprod()), quantize=False)
    s_edm = from_torch(wrapper, EDM(), output="x0", time="sigma", dtype="float64", batch_size=64)
    rng = np.random.default_rng(8)
    i = np.array([0, 1, 10, 250, 500, 998, 999])
    x = 3 * rng.standard_normal((i.size, 2))
    sigma = wrapper.sigmas.numpy()[i]
    want = np.concatenate([edm_score_direct(target, x[k:k + 1], sigma[k]) for k in range(i.size)])
    # measured: 3.4e-14 at timestep 0 (x0 -> score at sigma = 0.03 costs |x| / sigma of eps's digits)
    assert _row_rel(s_edm(x, sigma), want).max() <= 1e-12
    t = p.time_of_timestep(i)
    alpha = p.alpha(t)[:, None]
    s_ddpm = convert_score(s_edm, EDM(), p)
    assert _row_rel(s_ddpm(alpha * x, t), target.score(alpha * x, t, p)).max() <= 1e-12


def _row_rel(got, want):
    return np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)


def test_sample_shape_for_image_models(torch):
    """sample_shape reshapes each batch for an image-shaped model and flattens its output back;
    a diffusers-style output object is refused with the .sample hint."""
    seen = []

    def unet(x, t):  # eps = x / 2 per pixel, if and only if it gets (b, c, h, w)
        seen.append(tuple(x.shape))
        assert x.ndim == 4
        return x / 2

    s = from_torch(unet, OU(), output="eps", dtype="float64", sample_shape=(3, 2, 2), batch_size=4)
    rng = np.random.default_rng(9)
    x, t = rng.standard_normal((6, 12)), rng.uniform(0.1, 2.0, 6)
    np.testing.assert_allclose(s(x, t), convert(x / 2, x, t, OU(), "eps", "score"), rtol=1e-15)
    assert seen == [(4, 3, 2, 2), (2, 3, 2, 2)]
    with pytest.raises(ValueError, match="sample_shape"):
        s(np.ones((2, 5)), 1.0)
    for bad in [(3, 0), "32", (2.5,)]:
        with pytest.raises(ValueError, match="sample_shape must be"):
            from_torch(unet, OU(), sample_shape=bad)

    class Output:
        def __init__(self, sample):
            self.sample = sample

    with pytest.raises(ValueError, match=r"returned a Output.*model\(x, t\).sample"):
        from_torch(lambda x, t: Output(x), OU(), dtype="float64")(x, t)


def test_energy_model_with_autograd(torch):
    """A score written as -grad E(x) by torch.autograd.grad: refused as the model's own error
    in inference mode, exact with autograd=True, and nothing keeps a graph afterwards."""
    mu = torch.tensor([0.5, -1.0], dtype=torch.float64)

    def score(x, t):  # N(mu, I) under OU has p_t = N(e^-t mu, I): E = |x - e^-t mu|^2 / 2
        x = x.clone().requires_grad_(True)
        energy = 0.5 * ((x - torch.exp(-t)[:, None] * mu) ** 2).sum()
        return -torch.autograd.grad(energy, x)[0]

    rng = np.random.default_rng(10)
    x, t = rng.standard_normal((20, 2)), rng.uniform(0.0, 2.0, 20)
    with pytest.raises(ModelError, match="raised RuntimeError"):
        from_torch(score, OU(), output="score", dtype="float64")(x, t)
    s = from_torch(score, OU(), output="score", dtype="float64", autograd=True)(x, t)
    target = GaussianMixture([1.0], [mu.numpy()])
    np.testing.assert_allclose(s, target.score(x, t, OU()), rtol=1e-15, atol=1e-15)
    with pytest.raises(ValueError, match="autograd must be"):
        from_torch(score, OU(), autograd="yes")


def test_half_precision_models_are_told_to_cast_not_to_pass_their_dtype(torch, jax):
    """A model computing in float16 / bfloat16: the adapters take float32 or float64 only, so
    the hint is to cast inside the model (not dtype=float16, which is refused), and that works."""
    fix = r"only float32 and float64 are supported.*lambda x, t: model\(x\.half\(\), t\)\.float\(\)"
    x = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match=r"returned dtype float16 for inputs of dtype float32.*; " + fix) as info:
        from_torch(lambda x, t: x.half(), DDPM())(x, 0.5)
    assert "pass dtype=float16" not in str(info.value)
    with pytest.raises(ValueError, match=r"returned dtype bfloat16 .*; " + fix):
        from_torch(lambda x, t: x.bfloat16(), DDPM())(x, 0.5)
    for dtype in (torch.float16, torch.bfloat16, "float16", np.float16):
        with pytest.raises(ValueError, match=r"^dtype must be float32 or float64, got .*16.*; " + fix):
            from_torch(lambda x, t: x, DDPM(), dtype=dtype)
    with pytest.raises(ValueError, match=r"^dtype must be float32 or float64, got 'bfloat16'; " + fix):
        from_jax(lambda x, t: x, DDPM(), dtype="bfloat16")
    half = torch.nn.Linear(2, 2).half()
    with pytest.raises(ValueError, match=r"^the dtype of model 'Linear''s parameters must be float32 or float64, "
                                         r"got torch\.float16; " + fix):
        from_torch(half, DDPM())
    with pytest.raises(ValueError, match=r"^dtype must be float32 or float64, got 'int64'$"):  # no hint off 16 bits
        from_torch(lambda x, t: x, DDPM(), dtype="int64")
    # what the hint says to do: a float16 network at float32
    ours = from_torch(lambda x, t: (-x.half()).float(), OU(), output="score", dtype=torch.float32)(x, 0.5)
    assert ours.dtype == np.float32 and np.array_equal(ours, -x)


# -- inputs the model may change, scores at t = 0, outputs beyond x's dtype ---------------------


def test_a_model_working_in_place_on_its_input_changes_nothing_of_ours(torch, recwarn):
    """The model gets tensors of its own: x.mul_(...) inside it leaves the caller's x alone and
    the score is formed from the x the model was given (x0 -> score uses x); a read-only x
    is fine (no torch warning about non-writable arrays)."""
    def x0_model(x, t):  # x0 = x / 2, computed in place on its input
        t.zero_()
        return x.mul_(0.5)

    s = from_torch(x0_model, OU(), output="x0", dtype="float64")
    rng = np.random.default_rng(11)
    x, t = rng.standard_normal((5, 2)), rng.uniform(0.1, 2.0, 5)
    keep = x.copy()
    np.testing.assert_allclose(s(x, t), convert(x / 2, x, t, OU(), "x0", "score"), rtol=1e-14)
    assert np.array_equal(x, keep)
    x.setflags(write=False)
    np.testing.assert_allclose(s(x, t), convert(x / 2, x, t, OU(), "x0", "score"), rtol=1e-14)
    assert not [w for w in recwarn if "not writable" in str(w.message)]


def test_a_score_model_at_time_zero(torch, jax):
    """output="score" needs no conversion, so a score model is evaluated at t = 0 (sigma_t = 0,
    where the data's score is defined) as at any other time; an eps model there is refused."""
    target = full_mixture()
    x = np.random.default_rng(12).standard_normal((4, 2))
    exact = target.score(x, 0.0, VP())
    s = from_torch(lambda x, t: torch.from_numpy(target.score(x.numpy(), t.numpy(), VP())), VP(), output="score",
                   dtype="float64")
    assert np.array_equal(s(x, 0.0), exact)
    assert np.array_equal(s(x, np.array([0.0, 0.5, 0.0, 1.0]))[[0, 2]], exact[[0, 2]])
    sj = from_jax(lambda x, t: -x, VP(), output="score")
    assert np.array_equal(sj(x.astype(np.float32), 0.0), -x.astype(np.float32))
    with pytest.raises(ValueError, match=r"^t = 0\.0: converting eps to score is not defined"):
        from_torch(lambda x, t: x, VP(), output="eps", dtype="float64")(x, 0.0)
    # the oracle's own score at EDM sigma = 0 is the data's score
    got = to_torch(target, EDM(), "score")(torch.from_numpy(x), torch.zeros(4, dtype=torch.float64))
    np.testing.assert_allclose(got.numpy(), target.score(x, 0.0, OU()), rtol=1e-14)


def test_an_oracle_output_beyond_x_s_dtype_raises(torch):
    """A float16 x: the exact score near sigma = 0 of a narrow Gaussian is beyond float16's
    range (65504); a ValueError saying so instead of inf."""
    narrow = GaussianMixture([1.0], [[0.0, 0.0]], [[1e-4, 1e-4]])
    model = to_torch(narrow, EDM(), "score")
    x = torch.full((3, 2), 10.0, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"^the exact score overflows float16 at row 0 .*pass x as float32 or float64$"):
        model(x, torch.tensor(0.002))
    got = model(x.float(), torch.tensor(0.002))
    assert got.dtype == torch.float32 and bool(torch.isfinite(got).all())
    assert bool(torch.isfinite(model(x, torch.tensor(1.0))).all())  # in range: float16 as before


def test_time_argument_errors_show_plain_numbers(torch):
    """The refused timestep or sigma as the number it is, not np.float64(...) or array(...)."""
    g = full_mixture()
    m = to_torch(g, DDPM(), signature="diffusers")
    x = torch.ones(2, 2, dtype=torch.float64)
    for time, message in [(torch.tensor(1000), r"^timestep 1000\.0 is outside 0\.\.999"),
                          (torch.tensor(5.5), r"^timestep 5\.5 is not an integer"),
                          (torch.tensor([1.0, float("nan")]), r"^the timestep must be finite, got nan$")]:
        with pytest.raises(ValueError, match=message):
            m(x, time)
    with pytest.raises(ValueError, match=r"^sigma must be >= 0, got -1\.0$"):
        to_torch(g, VE())(x, torch.tensor(-1.0))
    with pytest.raises(ValueError, match=r"^the timestep N t - 1 = -0\.5 is outside 0\.\.999"):
        from_torch(lambda x, t: x, DDPM(), time="timestep")(np.ones((2, 2), np.float32), 0.0005)


def test_an_oracle_overflow_suggests_only_dtypes_that_hold_the_value(torch):
    """A score of 5e60 overflows float32 and bfloat16 as well as float16: the advice was
    "pass x as float32 or float64" even for a float32 x (a review); only float64 holds it.
    A float16 x whose score fits float32 is told both."""
    model = to_torch(GaussianMixture([1.0], [[0.0, 0.0]], [[1e-60, 1e-60]]), EDM(), "score")
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        with pytest.raises(ValueError, match=r"max \|score\| = 5e\+60 .*; pass x as float64$"):
            model(torch.full((3, 2), 10.0, dtype=dtype), torch.tensor(1e-30))
    narrow = to_torch(GaussianMixture([1.0], [[0.0, 0.0]], [[1e-4, 1e-4]]), EDM(), "score")
    with pytest.raises(ValueError, match=r"; pass x as float32 or float64$"):
        narrow(torch.full((3, 2), 10.0, dtype=torch.float16), torch.tensor(0.002))
    assert narrow(torch.full((3, 2), 10.0, dtype=torch.float32), torch.tensor(0.002)).dtype == torch.float32


def test_an_eps_model_on_ou_where_alpha_underflows(torch):
    """An eps model's score -eps / sigma needs only sigma_t: on OU beyond t ~ 745 (alpha_t =
    e^-t underflows to 0, p_t = N(0, I) to float64) it was refused as "not defined there",
    at a time inside OU's range. The exact eps of N(0, I) there is x, the score -x."""
    x = np.random.default_rng(3).standard_normal((4, 1))
    s = from_torch(lambda x, t: x.clone(), OU(), "eps", dtype="float64")
    assert np.array_equal(s(x, np.array([800.0, 750.0, 1e3, 746.0])), -x)


def test_no_rows_give_an_empty_score_without_calling_the_model(torch):
    """x of shape (0, d) with a scalar t: conventions.convert gives an empty array; the
    adapter refused it with "t must be a scalar or have shape (n,), got shape (0,)", about
    a t that was a scalar. Now an empty score of the output dtype, the model not called."""
    calls = []

    def model(x, t):
        calls.append(x.shape)
        return x

    for cast_output, dtype in ((False, np.float32), (True, np.float64)):
        s = from_torch(model, VP(), "eps", dtype="float32", cast_output=cast_output)
        out = s(np.zeros((0, 3)), 0.5)
        assert out.shape == (0, 3) and out.dtype == dtype
        assert convert(np.zeros((0, 3)), np.zeros((0, 3)), 0.5, VP()).shape == (0, 3)
    assert calls == []
    with pytest.raises(ValueError, match=r"^t must be <= 1\.0"):  # t is still checked
        s(np.zeros((0, 3)), 2.0)


def test_a_bool_or_complex_time_tensor_is_refused(torch):
    """A bool timestep tensor was read as timestep 1 (True) and a complex sigma as its real
    part (with only torch's "Casting complex values to real" UserWarning): the oracle's value
    at another time. The Python True was refused already; now both tensors are."""
    g = full_mixture()
    x = torch.ones(2, 2, dtype=torch.float64)
    for model, time, message in [(to_torch(g, DDPM(), signature="diffusers"), torch.tensor(True),
                                  r"^timestep must be a real tensor or number, got a tensor of dtype bool$"),
                                 (to_torch(g, EDM()), torch.tensor([1 + 2j, 1.0]),
                                  r"^sigma must be a real tensor or number, got a tensor of dtype complex64$")]:
        with pytest.raises(ValueError, match=message):
            model(x, time)
    with pytest.raises(ValueError, match="must be a tensor or a number, got bool"):
        to_torch(g, EDM())(x, True)


def test_a_batch_norm_without_running_statistics_is_refused_in_eval_mode_too(torch):
    """BatchNorm(track_running_stats=False) normalises by the batch's own statistics in eval
    mode as well: a row's score depended on the rows batched with it (the same two points
    gave other outputs in a batch of 6 than in a batch of 2), without a word."""
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2, track_running_stats=False)).double()
    net.eval()
    x = np.random.default_rng(26).standard_normal((6, 2))
    assert not np.allclose(net(torch.from_numpy(x))[:2].detach().numpy(), net(torch.from_numpy(x[:2])).detach().numpy())
    with pytest.raises(ValueError, match=r"^model 'Sequential' has \['BatchNorm1d'\] layers with "
                                         r"track_running_stats=False: .*depend on the rows batched with it$"):
        from_torch(net, OU(), "score")
    from_torch(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)).eval(), OU(), "score")  # fine


def test_the_oracle_refuses_an_x_that_is_not_real_floating_point(torch):
    """to_torch's model returns a tensor of x's dtype: an int64 x came back as the exact D
    truncated to integers (1.088 -> 1), a bool one as True, a complex one with a UserWarning
    and its imaginary part dropped. A ValueError naming the dtype; a meta or sparse tensor's
    NotImplementedError / RuntimeError is one too. A float x is the exact oracle (predict)."""
    g = GaussianMixture.ring()
    model = to_torch(g, EDM())
    for dtype in (torch.int64, torch.int32, torch.bool, torch.complex64):
        with pytest.raises(ValueError, match=rf"^x must be a real floating-point tensor \(the sampler's state\), got "
                                             rf"dtype {str(dtype)[6:]}; pass x\.float\(\) or x\.double\(\)$"):
            model(torch.ones(2, 2, dtype=dtype), torch.tensor(1.0))
    for x in (torch.ones(2, 2, device="meta"), torch.ones(2, 2).to_sparse()):
        with pytest.raises(ValueError, match=r"^x is a tensor whose values cannot be read \(.*\); pass a dense tensor"):
            model(x, 1.0)
    x = torch.ones(2, 2, dtype=torch.float64)
    np.testing.assert_allclose(model(x, 1.0).numpy(), g.predict(x.numpy(), 1.0, EDM(), kind="x0"),
                               rtol=4 * EPS, atol=0)


def test_a_time_or_x_beyond_a_float32_model_s_range_is_refused(torch):
    """A float32 model was handed its time argument and x cast to float32 without a check:
    t = 1e-50 reached it as 0.0 (and its eps was converted with sigma_t of 1e-50: -x / 1.4e-25
    returned as the score at a time the model never saw), sigma = 1e39 as inf, x = 1e39 as
    inf. Each is a ValueError naming the row; times float32 holds give mpmath's -x / sigma_t."""
    import mpmath

    seen = []

    def eps_model(x, t):
        seen.append(t.clone())
        return x.clone()

    s = from_torch(eps_model, OU(), "eps", time="t", dtype="float32")
    x = np.ones((2, 2))
    with pytest.raises(ValueError, match=r"^the time argument t = 1e-50 \(row 0\) is beyond the range of float32, the "
                                         r"dtype of torch model 'test_a_time.*' \(it would see 0\.0\); use a time "
                                         r"float32 holds, or dtype=float64$"):
        s(x, 1e-50)
    assert not seen  # the model was not called
    sigma = from_torch(lambda x, t: x.clone(), EDM(), "x0", time="sigma", dtype="float32")
    with pytest.raises(ValueError, match=r"^the time argument sigma = 1e\+39 \(row 1\) .*\(it would see inf\)"):
        sigma(x, np.array([1.0, 1e39]))
    with pytest.raises(ValueError, match=r"^x at row 1 is beyond the range of float32, the dtype of torch model "
                                         r"'.*<lambda>' \(largest \|x\| 1e\+39\); rescale x, or dtype=float64$"):
        sigma(np.array([[1.0, 1.0], [1e39, 0.0]]), 1.0)
    for t in (1e-30, 0.5):
        with mpmath.workdps(30):
            want = float(-1 / mpmath.sqrt(-mpmath.expm1(-2 * mpmath.mpf(t))))
        assert np.array_equal(s(x, t), np.full((2, 2), np.float32(want)))


def test_a_float32_model_s_score_is_formed_from_the_points_it_saw(torch):
    """score = A x + B value is formed from x as the model saw it (rounded to its dtype): a
    float32 denoiser returning its input (x0 = x, no noise left: score 0) gives the score 0
    exactly for float64 x, not (x32 - x) / sigma^2 (up to 3e-4 |x| at sigma = 1e-2). No test had
    a float32 model, float64 x and an output whose conversion reads x: forming the score from
    the float64 x passed every test."""
    s = from_torch(lambda x, sigma: x.clone(), EDM(), "x0", time="sigma", dtype="float32", cast_output=True)
    x = np.random.default_rng(28).standard_normal((50, 3))
    assert np.all(x.astype(np.float32) != x)
    out = s(x, 1e-2)
    assert out.dtype == np.float64 and np.array_equal(out, np.zeros_like(x))


def test_a_float32_time_held_to_fewer_digits_than_float32_s_precision_is_refused(torch):
    """A float32 model's time argument t = 3e-45 is the subnormal 2.8e-45 (1e-44: 9.8e-45): the
    model ran at a time 6.6% (1.9%) off the t its eps was then converted at, and the exact eps
    of N(0, I) under OU (sigma x at the time the model saw) gave the score -0.9665 x for -x,
    without a word; only a time rounded to 0 was refused. Now any time float32 holds to less
    than its precision is refused likewise, naming what the model would see; float32's normal
    range (down to 1.2e-38) gives -x to float32's rounding, as before."""
    import re

    def eps_model(x, t):
        return (torch.sqrt(-torch.expm1(-2 * t.double()))[:, None] * x.double()).float()

    s = from_torch(eps_model, OU(), "eps", time="t", dtype="float32", cast_output=True)
    x = np.ones((2, 1))
    for t in (3e-45, 1e-44, 1e-40):
        seen = re.escape(repr(float(np.float32(t))))
        with pytest.raises(ValueError, match=rf"^the time argument t = {t!r} \(row 0\) is beyond the range of "
                                             rf"float32, .*\(it would see {seen}\); use a time float32 holds, or "
                                             r"dtype=float64$"):
            s(x, t)
    for t in (2e-38, 1e-30, 0.5):
        np.testing.assert_allclose(s(x, t), -x, rtol=2.0**-23, atol=0)


def test_a_device_torch_cannot_use_and_a_non_bool_cast_output_are_refused_when_built(torch, jax):
    """device="gpu" raised torch's RuntimeError (device=3.5 a TypeError) with a traceback, and
    device="cuda" on a machine without CUDA was charged to the model at its first call
    ("torch model raised AssertionError", a ModelError, though the adapter's own
    torch.tensor(x, device=...) raised). cast_output="no" was read as True (bool("no")), where
    fractional and autograd are checked. Each is a ValueError when built; CPU works (-x, the
    score of N(0, I) from its exact eps x under OU at t = 100, sigma_t = 1 in float64)."""
    model = lambda x, t: x.clone()  # noqa: E731
    with pytest.raises(ValueError, match=r"^device must be a torch device this machine has, such as 'cpu', got 'gpu' "
                                         r"\(Expected one of cpu, cuda"):
        from_torch(model, OU(), device="gpu")
    with pytest.raises(ValueError, match=r"^device must be a torch device .*, got 3\.5 \(not a device\)$"):
        from_torch(model, OU(), device=3.5)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^device must be a torch device this machine has, such as 'cpu', got "
                                             r"'cuda' \("):
            from_torch(model, OU(), device="cuda")
    for build in (lambda **k: from_torch(model, OU(), **k), lambda **k: from_jax(lambda x, t: x, OU(), **k)):
        with pytest.raises(ValueError, match=r"^cast_output must be True or False, got 'no'$"):
            build(cast_output="no")
    x = np.random.default_rng(8).standard_normal((3, 2))
    assert np.array_equal(from_torch(model, OU(), device="cpu", dtype="float64", cast_output=True)(x, 100.0), -x)
