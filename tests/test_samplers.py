"""Reverse-time samplers: grids, one-step formulas, reproducibility, bad input."""

import ctypes
import re
from contextlib import nullcontext

import numba
import numpy as np
import pytest

from sgm_ref import EDM, OU, VP, GaussianMixture
from sgm_ref.kernels.sampler import (affine_noise_step, generator_handle, standard_normal_float32_into,
                                     standard_normal_into)
from sgm_ref.samplers import (METHODS, check_grid, euler_maruyama, exponential_integrator, probability_flow, sample,
                              time_grid)

PROCESSES = {"OU": (OU(), 6.0), "VP": (VP(), 1.0)}


def mixture_1d():
    return GaussianMixture([0.3, 0.7], [[-2.0], [1.5]], [[0.25], [0.5]])


# -- grids -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["uniform", "geometric"])
def test_time_grid_runs_from_T_to_t0(kind):
    grid = time_grid(5.0, 1e-3, 40, kind)
    assert grid.shape == (41,) and grid[0] == 5.0 and grid[-1] == 1e-3
    assert np.all(np.diff(grid) < 0)


def test_uniform_grid_has_equal_steps_and_geometric_has_equal_ratios():
    np.testing.assert_allclose(np.diff(time_grid(2.0, 0.5, 3, "uniform")), -0.5, rtol=1e-14)
    g = time_grid(1.0, 1e-4, 4, "geometric")
    np.testing.assert_allclose(g[1:] / g[:-1], 0.1, rtol=1e-13)


@pytest.mark.parametrize("args, match", [
    ((5.0, 0.0, 10), "t0"), ((5.0, -1.0, 10), "t0"), ((1.0, 2.0, 10), "t0 < T"),
    ((5.0, 1e-3, 0), "n_steps"), ((np.nan, 1e-3, 10), "T"),
])
def test_time_grid_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        time_grid(*args)


@pytest.mark.parametrize("kind", ["uniform", "geometric"])
def test_time_grid_too_fine_for_float64_is_refused(kind):
    with pytest.raises(ValueError, match="n_steps=100 .* finer than float64"):
        time_grid(1.0, 1.0 - 1e-15, 100, kind)


def test_time_grid_unknown_kind():
    with pytest.raises(ValueError, match="grid kind"):
        time_grid(1.0, 0.1, 3, "cosine")


def test_time_grid_beyond_vp_horizon():
    with pytest.raises(ValueError, match="T must be <= 1.0"):
        time_grid(2.0, 1e-3, 10, process=VP())


@pytest.mark.parametrize("grid, match", [
    ([1.0, 0.5, 0.5, 0.1], "strictly decreasing"),
    ([0.1, 0.5, 1.0], "strictly decreasing"),
    ([1.0, 0.5, 0.0], "t0 > 0"),
    ([1.0, 0.5, -0.1], "t0 > 0"),
    ([1.0, np.nan, 0.1], "non-finite"),
    ([1.0], "at least 2"),
    ([[1.0, 0.1]], "1-D"),
    ([1.0 + 0.5j, 0.1], "real"),
    (["1.0", "0.1"], "real"),
])
def test_check_grid_rejects(grid, match):
    with pytest.raises(ValueError, match=match):
        check_grid(grid, OU())


def test_check_grid_rejects_start_beyond_horizon():
    with pytest.raises(ValueError, match="T <= 1.0"):
        check_grid([1.5, 0.5, 0.1], VP())


# -- one step against the formula --------------------------------------------------------------

def _one_step(method, process, t_hi, t_lo, x, s_value, seed):
    grid = np.array([t_hi, t_lo])
    score = lambda y, t: np.full_like(y, s_value)  # noqa: E731  constant score isolates the update
    rng = np.random.default_rng(seed)
    if method == "probability_flow":
        return probability_flow(score, process, grid, x)
    fn = euler_maruyama if method == "euler_maruyama" else exponential_integrator
    return fn(score, process, grid, x, rng)


@pytest.mark.parametrize("pname", ["OU", "VP"])
def test_euler_maruyama_step(pname):
    process, _ = PROCESSES[pname]
    x = np.random.default_rng(0).standard_normal((5, 3))
    y = _one_step("euler_maruyama", process, 0.7, 0.6, x, 0.25, seed=1)
    dB = process.integrated_beta(0.7) - process.integrated_beta(0.6)
    xi = np.random.default_rng(1).standard_normal((5, 3))
    np.testing.assert_allclose(y, x + dB * (0.5 * x + 0.25) + np.sqrt(dB) * xi, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("pname", ["OU", "VP"])
def test_exponential_integrator_step(pname):
    process, _ = PROCESSES[pname]
    x = np.random.default_rng(0).standard_normal((5, 3))
    y = _one_step("exponential", process, 0.7, 0.6, x, 0.25, seed=1)
    dB = process.integrated_beta(0.7) - process.integrated_beta(0.6)
    xi = np.random.default_rng(1).standard_normal((5, 3))
    expected = np.exp(dB / 2) * x + 2 * (np.exp(dB / 2) - 1) * 0.25 + np.sqrt(np.exp(dB) - 1) * xi
    np.testing.assert_allclose(y, expected, rtol=1e-13, atol=1e-15)


def test_exponential_integrator_is_exact_for_a_constant_score():
    """With s constant, the reverse SDE is linear: its exact solution is the exponential step."""
    process = OU()
    x = np.zeros((200_000, 1))
    y = _one_step("exponential", process, 1.0, 0.2, x, 0.5, seed=3)
    # dY = (Y + 2 s) dtau + sqrt(2) dB on tau in [0, 0.8]: mean 2 s (e^0.8 - 1), variance e^1.6 - 1
    mean, var = 2 * 0.5 * np.expm1(0.8), np.expm1(1.6)
    se = np.sqrt(var / x.shape[0])
    assert abs(y.mean() - mean) < 5 * se  # 5 standard errors
    assert abs(y.var() - var) < 5 * var * np.sqrt(2 / x.shape[0])


@pytest.mark.parametrize("pname", ["OU", "VP"])
def test_probability_flow_heun_step(pname):
    process, _ = PROCESSES[pname]
    x = np.random.default_rng(0).standard_normal((4, 2))
    y = _one_step("probability_flow", process, 0.7, 0.6, x, 0.25, seed=1)
    h, b0, b1 = 0.1, process.beta(0.7), process.beta(0.6)
    f0 = 0.5 * b0 * (x + 0.25)
    pred = x + h * f0
    f1 = 0.5 * b1 * (pred + 0.25)
    np.testing.assert_allclose(y, x + 0.5 * h * (f0 + f1), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_noise_kernel_is_numpys_draw(dtype):
    """The sampler's N(0, I) kernel draws exactly rng.standard_normal(shape), rounded to dtype."""
    rng, reference = np.random.default_rng(11), np.random.default_rng(11)
    out = np.empty((37, 5), dtype=dtype)
    standard_normal_into(out, rng)
    expected = reference.standard_normal((37, 5))
    assert np.array_equal(out, expected.astype(dtype))
    assert rng.bit_generator.state == reference.bit_generator.state  # same draws consumed
    standard_normal_into(out, rng)  # and the stream continues where numpy's would
    assert np.array_equal(out, reference.standard_normal((37, 5)).astype(dtype))


def _same_state(a, b):
    """Two bit_generator.state dicts are equal (MT19937's holds an array)."""
    return a.keys() == b.keys() and all(_same_state(a[k], b[k]) if isinstance(a[k], dict)
                                        else np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bit_generator", [np.random.PCG64, np.random.MT19937, np.random.Philox, np.random.SFC64])
def test_generator_handle_draws_the_generators_bits(bit_generator, dtype):
    """The kernels draw through generator_handle(rng) exactly what numpy's rng.standard_normal
    draws, for every numpy bit generator, and leave rng where numpy would: the step's noise
    (three 2048-entry blocks and a partial one) and the plain draw after it."""
    rng, reference = np.random.Generator(bit_generator(7)), np.random.Generator(bit_generator(7))
    y = np.random.default_rng(0).standard_normal((1500, 5)).astype(dtype)
    s = np.random.default_rng(1).standard_normal((1500, 5)).astype(dtype)
    a, b, c = (dtype(v) for v in (1.25, -0.5, 0.75))
    expected = a * y + b * s + c * reference.standard_normal(y.shape).astype(dtype)
    assert affine_noise_step(y, s, generator_handle(rng), a, b, c, np.empty(2048, dtype), 1e30) == 0
    assert np.array_equal(y, expected)
    assert _same_state(rng.bit_generator.state, reference.bit_generator.state)
    out = np.empty((9, 7), dtype)
    standard_normal_into(out, generator_handle(rng))
    assert np.array_equal(out, reference.standard_normal(out.shape).astype(dtype))
    assert _same_state(rng.bit_generator.state, reference.bit_generator.state)


@pytest.mark.parametrize("bit_generator", [np.random.PCG64, np.random.MT19937, np.random.Philox, np.random.SFC64])
def test_float32_kernel_is_numpys_float32_stream(bit_generator):
    """standard_normal_float32_into draws rng.standard_normal(shape, dtype=np.float32) bit for
    bit, through the Generator and through generator_handle, for every numpy bit generator,
    and leaves rng where numpy would. 3,000,000 draws take each path of the ziggurat: the
    fast return (98.5%), the wedge test with its double exponential (1.5%) and the tail
    beyond R = 3.654 (~750 draws); interpreted (NUMBA_DISABLE_JIT) a few thousand."""
    rng, reference = np.random.Generator(bit_generator(3)), np.random.Generator(bit_generator(3))
    shape = (3000, 1000) if not numba.config.DISABLE_JIT else (30, 100)
    out = np.empty(shape, np.float32)
    standard_normal_float32_into(out, rng)
    expected = reference.standard_normal(shape, dtype=np.float32)
    assert np.array_equal(out.view(np.uint32), expected.view(np.uint32))  # -0.0 and 0.0 apart
    assert out.size < 10**6 or np.sum(np.abs(expected) > 3.6541529) > 500  # the tail was drawn
    assert _same_state(rng.bit_generator.state, reference.bit_generator.state)
    small = np.empty(7, np.float32)  # an odd count: PCG64 and SFC64 keep half a uint64 for the next call
    standard_normal_float32_into(small, generator_handle(rng))
    assert np.array_equal(small.view(np.uint32), reference.standard_normal(7, dtype=np.float32).view(np.uint32))
    assert _same_state(rng.bit_generator.state, reference.bit_generator.state)
    assert rng.random() == reference.random()


def test_float32_kernel_takes_the_wedge_test_in_double_precision():
    """numpy's wedge test compares with exp(-0.5 * x * x) in double precision; the same test
    with a float32 exponential (as numba's own copy of the algorithm has it) first gives
    another number at draw 250,736 of PCG64(73) (found by a search over seeds)."""
    out = np.empty(300_000, np.float32)
    standard_normal_float32_into(out, np.random.default_rng(73))
    expected = np.random.default_rng(73).standard_normal(300_000, dtype=np.float32)
    assert np.array_equal(out.view(np.uint32), expected.view(np.uint32))


class _ScriptedBitGenerator(ctypes.Structure):
    """numpy's bitgen_t (numpy/random/bitgen.h) whose next_uint32 returns the words of a script
    in turn (then 3: layer 3, magnitude 0, which the fast path turns into 0.0)."""

    NEXT64 = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p)
    NEXT32 = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p)
    NEXTD = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_void_p)
    _fields_ = [("state", ctypes.c_void_p), ("next_uint64", NEXT64), ("next_uint32", NEXT32),
                ("next_double", NEXTD), ("next_raw", NEXT64)]

    def __init__(self, words):
        self.words, self.position = [int(w) for w in words], 0

        def next32(_):
            self.position += 1
            return self.words[self.position - 1] if self.position <= len(self.words) else 3

        def unused(_):  # the float32 ziggurat draws only uint32 words
            raise AssertionError("a 64-bit draw")

        self._callbacks = (self.NEXT64(unused), self.NEXT32(next32), self.NEXTD(unused))
        super().__init__(None, self._callbacks[0], self._callbacks[1], self._callbacks[2], self._callbacks[0])

    def handle(self):
        """generator_handle's six fields for this bit generator."""
        def address(fn):
            return ctypes.cast(fn, ctypes.c_void_p).value
        return (ctypes.addressof(self), 0, *(address(fn) for fn in self._callbacks), 0)


def _numpys_float32_normals(words):
    """numpy's own compiled random_standard_normal_f (exported by numpy.random._generator) over a
    script of uint32 words: the numbers until the script is used up, and the words it took."""
    import numpy.random._generator as generator
    normal_f = ctypes.CDLL(generator.__file__).random_standard_normal_f
    normal_f.restype, normal_f.argtypes = ctypes.c_float, [ctypes.POINTER(_ScriptedBitGenerator)]
    bit_generator, out = _ScriptedBitGenerator(words), []
    while bit_generator.position < len(words):
        out.append(normal_f(ctypes.byref(bit_generator)))
    return np.array(out, np.float32), bit_generator.position


def _wedge_and_tail_scripts(rng, cases=3000):
    """uint32 words that put the ziggurat on the edges of its decisions: the wedge test with u
    at the 24-bit values on either side of exp(-x^2 / 2) (random layers and magnitudes past
    the fast path), layer 1 at magnitude 0 where u = 1 - 2^-24 meets exp(0) = 1 exactly
    (< rejects it, <= would not), the tail with u2 on either side of its acceptance, and each
    layer's fast-path bound KI[idx] - 1 and KI[idx]. Both signs throughout."""
    from sgm_ref.kernels.sampler import _FI32, _INV_R32, _KI32, _WI32
    ki, fi = _KI32.astype(np.int64), _FI32.astype(np.float64)
    words = []
    idx = rng.integers(1, 256, cases)
    rabs = rng.integers(ki[idx], 2**23)
    x = (rabs.astype(np.float32) * _WI32[idx]).astype(np.float64)  # the float32 candidate, exactly
    u = (np.exp(-0.5 * x * x) - fi[idx]) / (fi[idx - 1] - fi[idx])
    for shift in (-1, 0, 1, 2):
        k = np.clip(np.floor(u * 2**24).astype(np.int64) + shift, 0, 2**24 - 1)
        r = idx | rng.integers(0, 2, cases) << 8 | rabs << 9
        words += np.stack([r, k << 8 | rng.integers(0, 256, cases)], 1).ravel().tolist()
    words += [1, 0xFFFFFF00, 1 | 1 << 8, 0xFFFFFFFF]
    u1 = rng.integers(0, 2**24, cases)
    xx = np.float32(-_INV_R32 * np.log1p(-(u1 * 2.0**-24))).astype(np.float64)
    u2 = -np.expm1(-0.5 * xx * xx)  # yy + yy > xx^2 for u2 above this
    for shift in (-1, 0, 1, 2):
        k = np.clip(np.floor(u2 * 2**24).astype(np.int64) + shift, 0, 2**24 - 1)
        r = rng.integers(0, 2, cases) << 8 | rng.integers(ki[0], 2**23, cases) << 9
        # a rejected tail pair is followed by an accepted one (u2 = 1 - 2^-24)
        accept = np.full(cases, 0xFFFFFFFF)
        words += np.stack([r, u1 << 8, k << 8, 0 * accept, accept], 1).ravel().tolist()
    for layer in range(256):
        for magnitude in (ki[layer] - 1, ki[layer]):
            if 0 <= magnitude < 2**23:
                words += [layer | sign << 8 | int(magnitude) << 9 for sign in (0, 1)]
                words += rng.integers(0, 2**32, 4).tolist()  # whatever the slow paths ask for next
    return np.array(words, np.uint32)


def test_float32_kernel_decides_as_numpys_c_on_every_edge():
    """On scripted uint32 streams that sit on each decision's edge (the wedge test, its exact
    tie at exp(0) = 1, the tail's acceptance, the fast path's bound), the kernel returns the
    numbers numpy's own compiled function returns and takes the same words. Random streams
    reach these edges too rarely to test them (a wedge test written <= passes 3e6 draws)."""
    if numba.config.DISABLE_JIT:
        pytest.skip("interpreted, the kernel is the Generator's own method; this checks the compiled ziggurat")
    words = _wedge_and_tail_scripts(np.random.default_rng(17))
    expected, taken = _numpys_float32_normals(words)
    bit_generator = _ScriptedBitGenerator(words)
    out = np.empty(expected.size, np.float32)
    standard_normal_float32_into(out, bit_generator.handle())
    assert np.array_equal(out.view(np.uint32), expected.view(np.uint32))  # -0.0 and 0.0 apart
    assert bit_generator.position == taken


def test_euler_maruyama_noise_is_the_rngs_stream():
    """Step k's noise is the k-th block of rng.standard_normal: a sampler in any library can replay it."""
    x = np.random.default_rng(0).standard_normal((6, 2))
    grid = np.array([1.0, 0.6, 0.3])
    y = euler_maruyama(lambda z, t: np.zeros_like(z), OU(), grid, x, np.random.default_rng(2))
    xi = np.random.default_rng(2).standard_normal((2, 6, 2))
    expected = x.copy()
    for k in range(2):
        dB = 2.0 * (grid[k] - grid[k + 1])
        expected = (1 + 0.5 * dB) * expected + np.sqrt(dB) * xi[k]
    np.testing.assert_allclose(y, expected, rtol=1e-14, atol=1e-15)


def test_score_is_called_with_one_time_per_row():
    seen = []

    def score(x, t):
        seen.append((x.shape, np.array(t)))
        return -x

    euler_maruyama(score, OU(), np.array([1.0, 0.5, 0.1]), np.zeros((7, 2)), np.random.default_rng(0))
    assert [s for s, _ in seen] == [(7, 2), (7, 2)]
    assert np.array_equal(seen[0][1], np.full(7, 1.0)) and np.array_equal(seen[1][1], np.full(7, 0.5))


# -- reproducibility, trajectories, dtypes -------------------------------------------------------

@pytest.mark.parametrize("method", ["euler_maruyama", "exponential", "probability_flow"])
def test_same_seed_same_bits(method):
    g = mixture_1d()
    score = lambda x, t: g.score(x, t)  # noqa: E731
    runs = [sample(score, OU(), 500, 1, np.random.default_rng(4), T=5.0, t0=1e-2, n_steps=30, method=method)
            for _ in range(2)]
    assert np.array_equal(runs[0], runs[1])


@pytest.mark.parametrize("method", ["euler_maruyama", "exponential", "probability_flow"])
def test_trajectory(method):
    g = mixture_1d()
    y, path = sample(lambda x, t: g.score(x, t), OU(), 50, 1, np.random.default_rng(0), T=3.0, t0=0.1,
                     n_steps=8, method=method, trajectory=True)
    assert path.shape == (9, 50, 1)
    assert np.array_equal(path[-1], y)



@pytest.mark.parametrize("method", ["euler_maruyama", "exponential", "residual_exponential", "probability_flow"])
def test_a_trajectory_beyond_memory_is_refused_before_the_first_step(method, monkeypatch):
    """The trajectory's (N + 1, n, d) array is taken before the first step: beyond memory
    (here a machine of 1 MB against 201 x 100 x 10 float64 points, 1.6 MB) a ValueError
    naming n_steps, not a MemoryError (or the OS's kill) after the steps that fit; and
    within it the rows are the points at each grid time, as stepping one step at a time gives."""
    import sgm_ref._validation as validation

    calls = []

    def score(x, t):
        calls.append(t[0])
        return -x

    grid = time_grid(1.0, 0.01, 200)
    x = np.random.default_rng(0).standard_normal((100, 10))
    run = (lambda g, x, rng: METHODS[method](score, VP(), g, x, rng, trajectory=True)) if method != "probability_flow" \
        else (lambda g, x, rng: probability_flow(score, VP(), g, x, trajectory=True))
    with monkeypatch.context() as m:
        m.setattr(validation, "_physical_memory", lambda: 10**6)
        with pytest.raises(ValueError, match=r"^n_steps = 200 \(a trajectory of 201 x 100 x 10 float64 points\) "
                                             r"asks for .* GiB .* lower n_steps"):
            run(grid, x, np.random.default_rng(1))
    assert calls == []  # refused before any score call
    y, path = run(grid, x, np.random.default_rng(1))
    assert path.shape == (201, 100, 10) and path.dtype == np.float64
    assert np.array_equal(path[0], x) and np.array_equal(path[-1], y)
    rng, z = np.random.default_rng(1), x  # the rows against one step at a time, same noise stream
    for k in range(3):
        z = run(grid[k:k + 2], z, rng)[0]
        assert np.array_equal(path[k + 1], z)


def test_float32_stays_float32():
    g = mixture_1d()
    y = sample(lambda x, t: g.score(x, t), OU(), 64, 1, np.random.default_rng(0), T=3.0, t0=0.1, n_steps=5,
               dtype=np.float32)
    assert y.dtype == np.float32


def test_explicit_grid_must_match():
    g = mixture_1d()
    with pytest.raises(ValueError, match="explicit grid"):
        sample(lambda x, t: g.score(x, t), OU(), 10, 1, np.random.default_rng(0), T=3.0, t0=0.1, n_steps=5,
               grid=np.array([3.0, 1.0, 0.1]))


@pytest.mark.parametrize("n_steps", [None, 2.0, 0])
def test_n_steps_is_checked_with_an_explicit_grid_too(n_steps):
    g = mixture_1d()
    with pytest.raises(ValueError, match="n_steps"):
        sample(lambda x, t: g.score(x, t), OU(), 10, 1, np.random.default_rng(0), T=3.0, t0=0.1, n_steps=n_steps,
               grid=np.array([3.0, 1.0, 0.1]))


@pytest.mark.slow  # 40,000 particles x 400 steps: minutes without the JIT
def test_samplers_reach_the_target_moments():
    """With the oracle and a fine grid every scheme reproduces the mixture's mean and variance."""
    g = mixture_1d()
    mean, var = g.mean()[0], g.covariance()[0, 0]
    n = 40_000
    for method in ("euler_maruyama", "exponential", "probability_flow"):
        y = sample(lambda x, t: g.score(x, t), OU(), n, 1, np.random.default_rng(5), T=8.0, t0=1e-3,
                   n_steps=400, method=method, grid="geometric")[:, 0]
        # 5 standard errors of the sample mean and variance, plus the O(h) bias (measured < 0.02)
        assert abs(y.mean() - mean) < 5 * np.sqrt(var / n) + 0.02, method
        assert abs(y.var() - var) < 5 * var * np.sqrt(2 / n) * 2 + 0.04, method


# -- bad score functions -------------------------------------------------------------------------

def test_wrong_shape_names_step_and_time():
    calls = []

    def score(x, t):
        calls.append(1)
        return -x if len(calls) < 3 else -x[:, :1]

    with pytest.raises(ValueError, match=r"shape .* at step 2 \(t = 0\.6"):
        euler_maruyama(score, OU(), np.array([1.0, 0.8, 0.6, 0.4]), np.zeros((3, 2)), np.random.default_rng(0))


def test_non_finite_names_step_and_time():
    def score(x, t):
        return np.where(t[:, None] < 0.7, np.nan, -x)

    with pytest.raises(ValueError, match=r"non-finite .* at step 2 \(t = 0\.6"):
        exponential_integrator(score, OU(), np.array([1.0, 0.8, 0.6, 0.4]), np.zeros((3, 2)),
                               np.random.default_rng(0))


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_one_non_finite_entry_is_caught(bad):
    def score(x, t):
        s = -x
        s[-1, -1] = bad
        return s

    with pytest.raises(ValueError, match="non-finite .* at step 0"):
        euler_maruyama(score, OU(), np.array([1.0, 0.5]), np.zeros((4, 3)), np.random.default_rng(0))


def test_score_not_an_array():
    with pytest.raises(ValueError, match="shape"):
        probability_flow(lambda x, t: 0.0, OU(), np.array([1.0, 0.5]), np.zeros((3, 2)))


def test_bad_start_points_and_rng():
    grid = np.array([1.0, 0.5])
    with pytest.raises(ValueError, match="x"):
        euler_maruyama(lambda x, t: -x, OU(), grid, np.array([0.0, np.inf])[None, :], np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        euler_maruyama(lambda x, t: -x, OU(), grid, np.zeros((2, 2)), 0)
    with pytest.raises(ValueError, match="process"):
        euler_maruyama(lambda x, t: -x, "OU", grid, np.zeros((2, 2)), np.random.default_rng(0))


def test_unknown_method():
    with pytest.raises(ValueError, match="method"):
        sample(lambda x, t: -x, OU(), 10, 1, np.random.default_rng(0), T=1.0, t0=0.1, n_steps=3, method="ddim")


@pytest.mark.slow  # 4,000 particles x 2 x 200 steps of the oracle: a minute without the JIT
def test_probability_flow_reproduces_the_target():
    """Heun on the probability-flow ODE with the oracle: sliced Wasserstein to fresh target
    samples is no larger than between two independent target samples (the noise floor)."""
    from sgm_ref.metrics import sliced_wasserstein

    g = GaussianMixture.ring()
    n = 4000
    y = sample(lambda x, t: g.score(x, t), OU(), n, 2, np.random.default_rng(6), T=8.0, t0=1e-3, n_steps=200,
               method="probability_flow", grid="geometric")
    a = g.sample(n, np.random.default_rng(7))
    b = g.sample(n, np.random.default_rng(8))
    flow = sliced_wasserstein(y, a, np.random.default_rng(9), n_projections=64, p=2)
    floor = sliced_wasserstein(b, a, np.random.default_rng(9), n_projections=64, p=2)
    print(f"SW2(flow, target) = {flow.value:.4f}, SW2(target, target) = {floor.value:.4f}")
    # Monte-Carlo error of SW2 between two n-samples is ~floor itself; allow 1.5x of it
    assert flow.value < 1.5 * floor.value
    # and a wrong score is seen: shifting it moves the output by far more than the floor
    shifted = sample(lambda x, t: g.score(x, t) + 0.2, OU(), n, 2, np.random.default_rng(6), T=8.0, t0=1e-3,
                     n_steps=200, method="probability_flow", grid="geometric")
    assert sliced_wasserstein(shifted, a, np.random.default_rng(9), n_projections=64, p=2).value > 3 * floor.value


def test_score_of_another_dtype_is_refused():
    grid = np.array([1.0, 0.5])
    x = np.zeros((3, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="dtype float64 for points of dtype float32"):
        euler_maruyama(lambda y, t: -y.astype(np.float64), OU(), grid, x, np.random.default_rng(0))


def test_vp_steps_use_the_exact_step_integral():
    """On a fine VP grid the Euler–Maruyama step uses int beta over the step, not B - B."""
    process = VP()
    grid = np.array([0.5, 0.5 - 1e-9])
    x = np.ones((1, 1))
    y = euler_maruyama(lambda z, t: np.zeros_like(z), process, grid, x, np.random.default_rng(0))
    dB = process.integrated_beta_between(0.5, 0.5 - 1e-9)
    xi = np.random.default_rng(0).standard_normal((1, 1))
    assert y[0, 0] == pytest.approx(1 + 0.5 * dB + np.sqrt(dB) * xi[0, 0], rel=1e-15, abs=0)


# -- extreme inputs (issue 11, item 9): the right argument named, no numpy reprs ------------------


def test_sample_names_a_T_whose_integrated_beta_overflows():
    g = GaussianMixture([1.0], [[0.0, 0.0]])

    def score(x, t):
        return g.score(x, t, OU())

    # said "x contains non-finite values" (the oracle's complaint about diverged points)
    for grid in ("uniform", "geometric"):
        with pytest.raises(ValueError, match=r"T = 1e\+308 is too large for OU\(\): B\(T\) = int_0\^T beta overflows"):
            sample(score, OU(), 10, 2, np.random.default_rng(0), T=1e308, t0=0.01, n_steps=10, grid=grid)
    with pytest.raises(ValueError, match=r"grid\[0\] = T = 1e\+308 is too large"):
        check_grid(np.array([1e308, 1.0]), OU())


@pytest.mark.parametrize("method", ["euler_maruyama", "exponential", "probability_flow"])
def test_a_diverging_sampler_is_named_not_blamed_on_the_score(method):
    g = GaussianMixture([1.0], [[0.0, 0.0]])

    def score(x, t):
        return g.score(x, t, OU())

    # uniform steps of int beta = 2e5: the stochastic schemes blow up and the oracle refused x (the
    # probability flow's drift vanishes for this exact score: it stays put)
    with pytest.raises(ValueError, match=r"the sampler diverged") if method != "probability_flow" else nullcontext():
        sample(score, OU(), 10, 2, np.random.default_rng(0), T=1e7, t0=0.01, n_steps=100, method=method, grid="uniform")
    with pytest.raises(ValueError, match=r"the sampler diverged: its points overflowed \(or nearly\) before step "
                                         r"\d+ .*largest step has int beta = 2e\+05"):
        sample(score if method != "probability_flow" else (lambda x, t: -np.tanh(x)), OU(), 10, 2,
               np.random.default_rng(0), T=1e7, t0=0.01, n_steps=100, method=method, grid="uniform")

    def tame(x, t):  # never fails, so the overflow shows only in the result
        return -np.tanh(x)

    with pytest.raises(ValueError, match=r"the sampler diverged"):
        sample(tame, OU(), 10, 2, np.random.default_rng(0), T=1e7, t0=0.01, n_steps=100, method=method, grid="uniform")


def test_grid_messages_print_plain_floats():
    with pytest.raises(ValueError, match=r"grid\[1\] = 0\.5 <= grid\[2\] = 0\.5$") as info:
        check_grid(np.array([1.0, 0.5, 0.5, 0.1]), OU())
    assert "np.float64" not in str(info.value)
    with pytest.raises(ValueError, match=r"from 1\.0 to 0\.1$") as info:
        sample(lambda x, t: -x, OU(), 4, 1, np.random.default_rng(0), T=2.0, t0=0.1, n_steps=2,
               grid=np.array([1.0, 0.5, 0.1]))
    assert "np.float64" not in str(info.value)


def test_geometric_grid_spanning_more_than_float64_ratios():
    # t0 / T = 1e-600 underflowed to 0: the grid came out [T, 0, 0, 0, t0] and was refused
    # as "finer than float64 resolves"
    grid = time_grid(1e300, 1e-300, 4, "geometric")
    np.testing.assert_allclose(grid, [1e300, 1e150, 1.0, 1e-150, 1e-300], rtol=1e-12)


def test_n_steps_beyond_numpy_is_named():
    with pytest.raises(ValueError, match=r"^n_steps = 4611686018427387904 asks for .* lower n_steps$"):
        time_grid(1.0, 0.1, 2**62)


# -- the fused step kernels (issue 16, items 3 and 5) --------------------------------------------

def _reference_sde(score, process, grid, x, rng, method):
    """The stochastic schemes as NumPy writes them: draw the step's noise as an (n, d) array,
    then y <- a y + b s + c xi in y's dtype (coefficients rounded to it), one operation at a time."""
    from sgm_ref.samplers import STEP_COEFFICIENTS

    y = x.copy()
    coefficients = np.transpose(STEP_COEFFICIENTS[method](process, grid[:-1], grid[1:]))  # (N, 3)
    for k in range(grid.size - 1):
        s = score(y, np.full(len(y), grid[k]))
        a, b, c = (y.dtype.type(v) for v in coefficients[k])
        xi = rng.standard_normal(y.shape).astype(y.dtype)
        y = a * y + b * s + c * xi
    return y


def _reference_heun(score, process, grid, x):
    y = x.copy()
    beta = process.beta(grid)
    for k in range(grid.size - 1):
        h = grid[k] - grid[k + 1]
        a = 0.5 * h * beta[k]
        c_now, c_next = (y.dtype.type(v) for v in (0.5 * h * 0.5 * beta[k], 0.5 * h * 0.5 * beta[k + 1]))
        s = score(y, np.full(len(y), grid[k]))
        y_pred = y * y.dtype.type(1.0 + a) + y.dtype.type(a) * s
        s_pred = score(y_pred, np.full(len(y), grid[k + 1]))
        y = y + c_now * (y + s) + c_next * (y_pred + s_pred)
    return y


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("method", ["euler_maruyama", "exponential", "probability_flow"])
@pytest.mark.parametrize("pname", ["OU", "VP"])
def test_fused_kernels_give_numpys_bits(pname, method, dtype):
    """Drawing the noise a block at a time inside the update changes no bit: float64 steps are
    what drawing it first and updating in float64 gives (as before the fusion), and float32
    points step in float32 arithmetic (before: float64 arithmetic rounded to float32 storage),
    with the same rounded float64 noise."""
    process, T = PROCESSES[pname]
    g = GaussianMixture([0.4, 0.6], [[-1.0, 0.5], [1.5, 0.0]], [[0.3, 0.6], [0.8, 0.2]])
    score = lambda y, t: g.score(y.astype(np.float64), t, process).astype(y.dtype)  # noqa: E731
    grid = time_grid(T, 1e-3, 12, "geometric", process)
    # interpreted (tests/test_nojit.py) the kernels take ~25 s for this case; there one seed
    # and 1100 rows (2200 entries, still more than one 2048-entry block) show the same
    seeds, rows = ((0,), 1100) if numba.config.DISABLE_JIT else ((0, 1, 2), 5000)
    for seed in seeds:
        x = np.random.default_rng(seed).standard_normal((rows, 2)).astype(dtype)  # > one 2048-entry block
        if method == "probability_flow":
            y, expected = probability_flow(score, process, grid, x), _reference_heun(score, process, grid, x)
        else:
            fn = euler_maruyama if method == "euler_maruyama" else exponential_integrator
            rng, reference = np.random.default_rng(10 + seed), np.random.default_rng(10 + seed)
            y, expected = fn(score, process, grid, x, rng), _reference_sde(score, process, grid, x, reference, method)
            assert rng.bit_generator.state == reference.bit_generator.state
        assert y.dtype == dtype and np.array_equal(y, expected)


@pytest.mark.parametrize("method", ["euler_maruyama", "exponential", "probability_flow"])
@pytest.mark.parametrize("pname", ["OU", "VP"])
def test_float32_loses_order_n_steps_roundings(pname, method):
    """float32 against float64 from the same points and noise, the score rounded to float32:
    after N steps the output differs by <= 2 N 2^-24 of its largest entry (measured 0.04-1.5)."""
    process, T = PROCESSES[pname]
    g = GaussianMixture([1.0], [[0.5, -1.0]], [[[1.0, 0.3], [0.3, 0.5]]])
    score = lambda y, t: g.score(y.astype(np.float64), t, process).astype(y.dtype)  # noqa: E731
    x = np.random.default_rng(1).standard_normal((500, 2))
    for n_steps in (10, 100):
        grid = time_grid(T, 1e-3, n_steps, "geometric", process)
        if method == "probability_flow":
            y64, y32 = probability_flow(score, process, grid, x), probability_flow(score, process, grid, x.astype(np.float32))
        else:
            fn = euler_maruyama if method == "euler_maruyama" else exponential_integrator
            y64 = fn(score, process, grid, x, np.random.default_rng(3))
            y32 = fn(score, process, grid, x.astype(np.float32), np.random.default_rng(3))
        assert y32.dtype == np.float32
        assert np.max(np.abs(y32 - y64)) <= 2 * n_steps * 2.0**-24 * np.max(np.abs(y64))


@pytest.mark.parametrize("bad", [np.float16, np.int32, "complex128", None, "float128"])
def test_sample_dtype_is_named(bad):
    with pytest.raises(ValueError, match=r"^dtype must be float64 or float32, got"):
        sample(lambda x, t: -x, OU(), 4, 2, np.random.default_rng(0), T=1.0, t0=0.1, n_steps=2, dtype=bad)


@pytest.mark.parametrize("fn", [euler_maruyama, exponential_integrator, probability_flow])
def test_points_of_another_dtype_are_named(fn):
    args = () if fn is probability_flow else (np.random.default_rng(0),)
    with pytest.raises(ValueError, match=r"^x must be a float64 or float32 array, got dtype float16"):
        fn(lambda x, t: -x, OU(), np.array([1.0, 0.5]), np.zeros((3, 2), np.float16), *args)
    with pytest.raises(ValueError, match=r"score returned dtype float32 for points of dtype float64 at step 0 .*; use "
                                          r"points of dtype float32 \(the dtype= argument"):
        fn(lambda x, t: -x.astype(np.float32), OU(), np.array([1.0, 0.5]), np.zeros((3, 2)), *args)
    # an int, bool, float16 or complex score was told to use points of its dtype, which x refuses
    for bad in (np.int64, np.float16, np.complex128, np.bool_):
        with pytest.raises(ValueError, match=r"score returned dtype .* at step 0 .*; make the score return the "
                                              r"points' dtype, float64$"):
            fn(lambda x, t: np.ones(x.shape, bad), OU(), np.array([1.0, 0.5]), np.zeros((3, 2)), *args)


@pytest.mark.parametrize("where", [0, 4099, -1])
@pytest.mark.parametrize("method", ["euler_maruyama", "exponential", "probability_flow"])
def test_a_non_finite_entry_anywhere_is_caught(method, where):
    """The kernels' finiteness pass sees every entry (first, in the second block, last), for
    the predictor's and the corrector's score calls of Heun too."""
    for call in (1, 2) if method == "probability_flow" else (1,):
        calls = []

        def score(x, t):
            calls.append(1)
            s = -x
            if len(calls) == call:
                s.reshape(-1)[where] = np.nan
            return s

        t = "1" if call == 1 else "0.5"  # Heun's corrector calls the score at t_1
        with pytest.raises(ValueError, match=rf"^score returned non-finite values at step 0 \(t = {t}\)$"):
            sample(score, OU(), 2100, 2, np.random.default_rng(0), T=1.0, t0=0.5, n_steps=1, method=method)


@pytest.mark.parametrize("method", ["euler_maruyama", "exponential", "probability_flow"])
def test_non_finite_score_at_overflowed_points_names_the_divergence(method):
    """A NaN from the score at points beyond sqrt(max) / 1e4 is the sampler's divergence, as
    when the score raises there (the points are the ones it was called at, untouched)."""
    x = np.zeros((3, 2))
    x[1, 1] = 1e160

    def score(y, t):
        return np.where(np.abs(y) > 1e150, np.nan, -y)

    args = () if method == "probability_flow" else (np.random.default_rng(0),)
    fn = {"euler_maruyama": euler_maruyama, "exponential": exponential_integrator,
          "probability_flow": probability_flow}[method]
    with pytest.raises(ValueError, match=r"^the sampler diverged"):
        fn(score, OU(), np.array([1.0, 0.5]), x, *args)
    x[1, 1] = 1e100  # large but not overflowing: the score is blamed
    with pytest.raises(ValueError, match=r"^score returned non-finite values at step 0"):
        fn(lambda y, t: np.where(np.abs(y) > 1e90, np.nan, -y), OU(), np.array([1.0, 0.5]), x, *args)


def test_a_score_keeping_its_time_array_sees_it_unchanged():
    """The (n,) time array is refilled in place between steps only when the score kept no
    reference to it."""
    kept, views = [], []

    def score(x, t):
        kept.append(t)
        return -x

    def score_keeping_a_view(x, t):
        views.append(t[:, None])
        return -x

    grid = np.array([1.0, 0.5, 0.2, 0.1])
    euler_maruyama(score, OU(), grid, np.zeros((3, 2)), np.random.default_rng(0))
    probability_flow(score_keeping_a_view, OU(), grid, np.zeros((3, 2)))
    assert [t.tolist() for t in kept] == [[1.0] * 3, [0.5] * 3, [0.2] * 3]
    assert [t.ravel().tolist() for t in views] == [[1.0] * 3, [0.5] * 3, [0.5] * 3, [0.2] * 3, [0.2] * 3, [0.1] * 3]


def test_float32_coefficients_beyond_float32_are_the_divergence():
    """A step whose coefficients exceed float32's range overflows the float32 points: the
    sampler says it diverged (no overflow warning from rounding the coefficients)."""
    import warnings

    with warnings.catch_warnings():  # (run without the JIT, the kernel's numpy scalars warn about inf - inf)
        warnings.filterwarnings("error", message="overflow encountered in cast")
        with pytest.raises(ValueError, match=r"^the sampler diverged"):
            euler_maruyama(lambda x, t: -np.tanh(x), OU(), np.array([1e39, 1.0]), np.ones((3, 2), np.float32),
                           np.random.default_rng(0))


def test_a_sampler_driven_out_by_its_score_on_small_steps_blames_the_score():
    """A model trained with lr = 1e20 made the sampler overflow on a grid whose steps all
    had int beta below 0.3, and the message said to use more steps (a review)."""
    def exploding(x, t):
        with np.errstate(over="ignore"):
            return 1e6 * x

    with pytest.raises(ValueError, match=r"Its steps are small \(the largest has int beta = 0\.\d+\), so the score "
                                         r"drove the points out"):
        sample(exploding, OU(), 10, 2, np.random.default_rng(0), T=5.0, t0=0.01, n_steps=100)



def test_probability_flow_with_a_score_that_refills_one_output_buffer():
    """A score that writes every output into one buffer it keeps (returning it or a view
    of it) overwrote the score at t_k with the one at t_{k+1} before Heun's corrector read
    it: a silently wrong sample (std 5.9 instead of 8.3 here). Now the same bits as a score
    returning fresh arrays."""
    class Refilling:
        def __init__(self, view):
            self.buffer, self.view = None, view

        def __call__(self, x, t):
            if self.buffer is None:
                self.buffer = np.empty((x.shape[0] + self.view, x.shape[1]), x.dtype)
            out = self.buffer[1:] if self.view else self.buffer
            np.multiply(x, -0.5, out=out)
            return out

    grid = time_grid(1.0, 0.01, 10)
    for dtype in (np.float64, np.float32):
        x = np.random.default_rng(1).standard_normal((4, 2)).astype(dtype)
        fresh = probability_flow(lambda z, t: -0.5 * z, VP(), grid, x)
        for view in (False, True):
            assert np.array_equal(probability_flow(Refilling(view), VP(), grid, x), fresh)
        _, path = probability_flow(Refilling(False), VP(), grid, x, trajectory=True)
        assert np.array_equal(path[-1], fresh)


@pytest.mark.parametrize("process, method", [(OU(), m) for m in sorted(METHODS)]
                         + [(EDM(), m) for m in sorted(METHODS) if m != "residual_exponential"])
def test_score_and_trajectory_are_checked(process, method):
    """A score that is not callable raised a bare TypeError "'NoneType' object is not
    callable" from inside the first step (after the prior draw), and trajectory="no" (any
    truthy non-bool) silently returned a (sample, trajectory) tuple."""
    kwargs = dict(T=1.0, t0=0.1, n_steps=2, method=method)
    with pytest.raises(ValueError, match=r"^score must be a callable \(x, t\) -> ndarray, got NoneType"):
        sample(None, process, 3, 2, np.random.default_rng(0), **kwargs)
    with pytest.raises(ValueError, match=r"^trajectory must be True or False, got 'no'"):
        sample(lambda x, t: -x, process, 3, 2, np.random.default_rng(0), trajectory="no", **kwargs)
    fn, args = (probability_flow, ()) if method == "probability_flow" else \
        (METHODS[method], (np.random.default_rng(0),))
    grid, x = np.array([1.0, 0.5]), np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"^score must be a callable"):
        fn(None, process, grid, x, *args)
    with pytest.raises(ValueError, match=r"^trajectory must be True or False, got 1"):
        fn(lambda x, t: -x, process, grid, x, *args, trajectory=1)
    y, path = fn(lambda x, t: -x, process, grid, x, *args, trajectory=np.bool_(True))  # numpy's bool is a bool
    assert path.shape == (2, 3, 2) and np.array_equal(path[-1], y)


def test_a_T_whose_sigma_squared_overflows_is_named():
    """EDM (t_max = inf) at T = 1e200, or VE with sigma_max = 1e200: sigma_T^2 and the
    steps' int g^2 overflow, and the samplers said they diverged with a step ratio of nan
    and the advice to use more steps. Now T is refused as VP's T with B(T) beyond float64 is."""
    from sgm_ref import VE

    def score(x, t):
        return -x / (1.0 + t[:, None] ** 2)

    with pytest.raises(ValueError, match=r"^T = 1e\+200 is too large for EDM\(t_max=inf\): sigma_T\^2 overflows"):
        sample(score, EDM(), 2, 1, np.random.default_rng(0), T=1e200, t0=1.0, n_steps=2000)
    with pytest.raises(ValueError, match=r"^T = 1e\+200 is too large for EDM"):
        time_grid(1e200, 1.0, 10, process=EDM())
    for fn in (euler_maruyama, exponential_integrator):
        with pytest.raises(ValueError, match=r"^grid\[0\] = T = 1e\+200 is too large for EDM"):
            fn(score, EDM(), np.geomspace(1e200, 1.0, 2001), np.ones((2, 1)), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"^T = 1\.0 is too large for VE\(sigma_min=0\.01, sigma_max=1e\+200\)"):
        sample(score, VE(sigma_max=1e200), 2, 1, np.random.default_rng(0), T=1.0, t0=0.5, n_steps=10)
    # below the limit nothing changes: sigma_T^2 = 1e306, steps of ratio ~0.7
    y = sample(score, EDM(), 2, 1, np.random.default_rng(0), T=1e153, t0=1.0, n_steps=2000)
    assert np.all(np.isfinite(y))


@pytest.mark.parametrize("method", ["euler_maruyama", "exponential", "probability_flow"])
def test_a_T_whose_sigma_squared_overflows_float32_is_named(method):
    """Float32 points round the steps' int g^2 (up to sigma_T^2) to float32: EDM at T = 1e20
    (sigma_T^2 = 1e40 > 3.4e38) took its first step with int g^2 = inf and was reported as a
    sampler diverging on steps too large (more steps would not help), and sample at T = 1e39
    drew start points of float32(1e39) = inf, refused as "x contains non-finite values", an
    argument sample has not. Now T is named with the float32 limit; at T = 1e19 (sigma_T^2 =
    1e38) the float32 sampler runs, and ends where the float64 one started from the same
    points does, to float32's rounding over the steps. The probability flow off the VP
    processes (karras_heun, in sigma) never forms sigma_T^2: only its start is checked."""
    from sgm_ref import VE

    def score(x, t):  # the exact score of N(0, I) under EDM: -x / (1 + t^2)
        return (-x / (1.0 + t[:, None] ** 2)).astype(x.dtype)

    if method == "probability_flow":
        # karras_heun works in sigma and never forms sigma_T^2: T = 1e20 and 1e30 run (they did
        # before the check; they agree with float64 from the same points to ~1e-6); only a start
        # N(0, sigma_T^2 I) beyond float32 is refused
        for T in (1e20, 1e30):
            out = sample(score, EDM(), 3, 2, np.random.default_rng(0), T=T, t0=0.01, n_steps=50, method=method,
                         dtype=np.float32)
            assert out.dtype == np.float32 and np.all(np.isfinite(out))
        with pytest.raises(ValueError, match=r"^T = 1e\+37 is too large for float32 points on EDM\(t_max=inf\): "
                                             r"the start N\(0, sigma_T\^2 I\) has sigma_T = 1e\+37, .* below "
                                             r"about 5\.3e\+36\); use a smaller T, or float64 points"):
            sample(score, EDM(), 3, 2, np.random.default_rng(0), T=1e37, t0=0.01, n_steps=50, method=method,
                   dtype=np.float32)
    for T in (1e20, 1e39) if method != "probability_flow" else ():
        with pytest.raises(ValueError, match=rf"^T = {re.escape(repr(T))} is too large for float32 points on EDM\(t_max=inf\): "
                                             r"sigma_T\^2 = 1e\+\d\d overflows float32 .* below about 1\.8e\+19, "
                                             r"or float64 points"):
            sample(score, EDM(), 3, 2, np.random.default_rng(0), T=T, t0=0.01, n_steps=50, method=method,
                   dtype=np.float32)
    if method != "probability_flow":
        with pytest.raises(ValueError, match=r"^grid\[0\] = T = 1e\+20 is too large for float32 points on EDM"):
            METHODS[method](score, EDM(), time_grid(1e20, 0.01, 50), np.ones((3, 2), np.float32),
                            np.random.default_rng(0))
        with pytest.raises(ValueError, match=r"^grid\[0\] = T = 1\.0 is too large for float32 points on VE"):
            METHODS[method](score, VE(sigma_max=1e20), np.array([1.0, 0.5]), np.ones((3, 2), np.float32),
                            np.random.default_rng(0))
    grid = time_grid(1e19, 0.01, 400, "geometric")
    x = np.random.default_rng(1).standard_normal((3, 2)) * 1e19
    run = (lambda x: METHODS[method](score, EDM(), grid, x, np.random.default_rng(2))) \
        if method != "probability_flow" else (lambda x: probability_flow(score, EDM(), grid, x))
    y32, y64 = run(x.astype(np.float32)), run(x)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=400 * 2.0**-24, atol=0)


@pytest.mark.parametrize("method", ["euler_maruyama", "exponential", "residual_exponential", "probability_flow"])
def test_a_score_returning_an_ndarray_subclass(method):
    """A masked array passed call_score's checks (it is an ndarray) and then crashed the step
    kernel with numba's NumbaTypeError: now a ValueError naming the step. Other subclasses
    (np.matrix, a memmap, a subclass of one's own) are read as the plain array: the same bits
    as an ndarray score."""
    grid, x = np.array([1.0, 0.5, 0.1]), np.random.default_rng(0).standard_normal((3, 2))

    def run(score):
        if method == "probability_flow":
            return probability_flow(score, VP(), grid, x)
        return METHODS[method](score, VP(), grid, x, np.random.default_rng(1))

    with pytest.raises(ValueError, match=r"^score returned a masked array at step 0 \(t = 1\); return a plain "):
        run(lambda y, t: np.ma.masked_array(-0.5 * y))
    class Sub(np.ndarray):
        pass

    assert np.array_equal(run(lambda y, t: (-0.5 * y).view(Sub)), run(lambda y, t: -0.5 * y))


# -- probability flow on a DDPM schedule: beta from inside each step -----------------------------

def _ddpm_rates(schedule, N):
    """N (-log(1 - beta_i)) for diffusers' betas, written from their definitions (not DDPM.betas)."""
    if schedule == "linear":
        return -N * np.log1p(-np.linspace(1e-4, 0.02, N))
    import mpmath  # squaredcos_cap_v2 at 30 digits: 1 - abar((i + 1) / N) / abar(i / N) cancels in float64
    with mpmath.workdps(30):
        abar = lambda t: mpmath.cos((t + mpmath.mpf("0.008")) / mpmath.mpf("1.008") * mpmath.pi / 2) ** 2  # noqa: E731
        betas = [min(1 - abar(mpmath.mpf(i + 1) / N) / abar(mpmath.mpf(i) / N), mpmath.mpf("0.999")) for i in range(N)]
        return np.array([float(-N * mpmath.log(1 - b)) for b in betas])


@pytest.mark.parametrize("schedule, N, timesteps", [("linear", 1000, [0, 1, 500, 998, 999]),
                                                    ("linear", 100, [27, 28, 29, 56, 57, 58, 99]),
                                                    ("squaredcos_cap_v2", 1000, [1, 997, 998, 999])])
def test_probability_flow_step_between_timesteps_takes_that_timesteps_beta(schedule, N, timesteps):
    """A Heun step from timestep i's time (i + 1) / N down to i / N lies in the piece where
    beta = -N log(1 - beta_i): both of its ends take that rate, not the right-continuous
    beta((i + 1) / N) of timestep i + 1 (the capped cosine's 6908 against 1386 at i = 998).
    N = 100 holds times whose N t rounds an ulp below the knot (timesteps 28, 56, 57: the ends
    of the steps from 29, 57 and 58 down)."""
    from sgm_ref import DDPM
    process = DDPM(schedule, num_train_timesteps=N)
    rates = _ddpm_rates(schedule, N)
    x = np.random.default_rng(0).standard_normal((4, 2))
    for i in timesteps:
        t_hi = process.time_of_timestep(i)
        t_lo = process.time_of_timestep(i - 1) if i > 0 else 0.5 / N
        y = _one_step("probability_flow", process, t_hi, t_lo, x, 0.25, seed=1)
        h, b = t_hi - t_lo, rates[i]
        f0 = 0.5 * b * (x + 0.25)
        f1 = 0.5 * b * (x + h * f0 + 0.25)
        # the capped cosine's float64 betas near t = 1 carry cos's conditioning near pi / 2 (1.2e-13
        # of the rate at i = 997 against 30 digits); neighbouring pieces' rates differ by 1e-3 or more
        rtol = 4e-15 if schedule == "linear" else 2e-13
        np.testing.assert_allclose(y, x + 0.5 * h * (f0 + f1), rtol=rtol * max(1.0, h * b), atol=0)


def test_probability_flow_on_ddpm_timesteps_converges_to_the_reverse_dynamics():
    """On grids of DDPM timesteps (every 20th, 10th, 5th, 2nd of 1000, linear schedule) the
    Heun law converges to the exact reverse dynamics' (sampler_limit_gaussian): the KL falls
    ~16x per halving of the step (second order in the law's mean and covariance), 1.4e-6,
    6.8e-8, 2.0e-9, 1.7e-11 (probability_flow's docstring). Reading beta(t_k) at the knot,
    the rate of the piece above the step, it did not converge (4.84e-6, 1.11e-5, 1.35e-5, 1.44e-5). The
    sampler itself is checked against a Heun loop with the schedule's own rates."""
    from sgm_ref import DDPM
    from sgm_ref.metrics import gaussian_kl, sampler_limit_gaussian, sampler_output_gaussian
    mean, cov = np.array([1.0, -1.0]), np.diag([0.25, 0.5])
    process = DDPM("linear")
    kls = []
    for stride in (20, 10, 5, 2):
        grid = process.time_of_timestep(np.arange(999, -1, -stride))
        limit = sampler_limit_gaussian(mean, cov, process, grid[0], grid[-1], "probability_flow")
        kls.append(gaussian_kl(*sampler_output_gaussian(mean, cov, process, grid, "probability_flow"), *limit))
    np.testing.assert_allclose(kls, [1.36e-6, 6.84e-8, 2.01e-9, 1.69e-11], rtol=0.01)
    # the capped cosine (the docstring's figures): from T = 1 the cap's step dominates; from 998, below it
    cosine = DDPM("squaredcos_cap_v2")
    for top, expected in ((999, [1.96e-4, 4.70e-5, 1.06e-5, 7.42e-7, 1.94e-6]),
                          (998, [2.46e-5, 5.59e-6, 1.15e-6, 5.12e-8, 1.60e-8])):
        got = []
        for stride in (20, 10, 5, 2, 1):
            grid = cosine.time_of_timestep(np.arange(top, -1, -stride))
            limit = sampler_limit_gaussian(mean, cov, cosine, grid[0], grid[-1], "probability_flow")
            got.append(gaussian_kl(*sampler_output_gaussian(mean, cov, cosine, grid, "probability_flow"), *limit))
        np.testing.assert_allclose(got, expected, rtol=0.01)
    # the same grids written as np.linspace, whose times sit up to a few ulps off the knots
    # (39 of linspace(1, 0.01, 100)'s; 291 of linspace(1, 1e-3, 1000)'s an ulp below): read as
    # the knots (1.6e-6 and 6.5e-7 when only exact knot times were)
    for lin, stride in ((np.linspace(1.0, 0.01, 100), 10), (np.linspace(1.0, 1e-3, 1000), 1)):
        exact = process.time_of_timestep(np.arange(999, -1, -stride))
        assert np.array_equal(np.rint(lin * 1000), np.rint(exact * 1000)) and not np.array_equal(lin, exact)
        limit = sampler_limit_gaussian(mean, cov, process, 1.0, lin[-1], "probability_flow")
        kl_lin = gaussian_kl(*sampler_output_gaussian(mean, cov, process, lin, "probability_flow"), *limit)
        kl_exact = gaussian_kl(*sampler_output_gaussian(mean, cov, process, exact, "probability_flow"), *limit)
        assert kl_lin == pytest.approx(kl_exact, rel=1e-6, abs=0), (stride, kl_lin, kl_exact)
    # the sampler's own steps: a Heun loop written here, beta_i on the step from t_i to t_{i-1}
    target = GaussianMixture([1.0], [mean], [cov])
    score = lambda y, t: target.score(y, t, process)  # noqa: E731
    grid = process.time_of_timestep(np.arange(999, 979, -1))
    rates = _ddpm_rates("linear", 1000)
    x = np.random.default_rng(2).standard_normal((6, 2))
    y = x.copy()
    for k, i in enumerate(range(999, 980, -1)):
        h = grid[k] - grid[k + 1]
        f0 = 0.5 * rates[i] * (y + score(y, grid[k]))
        pred = y + h * f0
        y = y + 0.5 * h * (f0 + 0.5 * rates[i] * (pred + score(pred, grid[k + 1])))
    np.testing.assert_allclose(probability_flow(score, process, grid, x), y, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("method", ["euler_maruyama", "exponential", "residual_exponential", "probability_flow"])
def test_a_score_keeping_its_points_sees_them_unchanged(method):
    """A score that keeps the points it was called with (a recording hook, a cache) saw them
    overwritten by the later steps: every kept x ended up as the last points (or, for Heun's
    predictor, the last predicted points). Now each kept x is the points of its call: the
    trajectory's row for the first call of a step, and for Heun's predictor call
    (1 + a) y + a s, a = h beta(t_k) / 2, computed here from the trajectory."""
    g = mixture_1d()
    process, grid = VP(), time_grid(1.0, 1e-2, 5, "geometric")
    kept, kept_t = [], []

    def score(x, t):
        kept.append(x)
        kept_t.append(float(t[0]))
        return g.score(x, t, process)

    x = np.random.default_rng(0).standard_normal((6, 1))
    args = (score, process, grid, x) + (() if method == "probability_flow" else (np.random.default_rng(1),))
    y, path = METHODS[method](*args, trajectory=True)
    if method != "probability_flow":
        assert len(kept) == 5 and all(np.array_equal(kept[k], path[k]) for k in range(5))
        return
    assert len(kept) == 10
    beta = process.beta(grid)
    for k in range(5):
        assert kept_t[2 * k] == grid[k] and kept_t[2 * k + 1] == grid[k + 1]
        assert np.array_equal(kept[2 * k], path[k])
        a = 0.5 * (grid[k] - grid[k + 1]) * beta[k]
        predicted = path[k] * (1.0 + a) + a * g.score(path[k], np.full(6, grid[k]), process)
        assert np.array_equal(kept[2 * k + 1], predicted)


@pytest.mark.parametrize("method", ["euler_maruyama", "probability_flow"])
def test_points_no_score_keeps_are_updated_in_place(method):
    """The copy of test_a_score_keeping_its_points_sees_them_unchanged is made only for a
    score that keeps its points: one that does not is called with the same one or two
    arrays at every step (a copy per step would alternate two addresses)."""
    addresses = []

    def score(x, t):
        addresses.append(x.ctypes.data)
        return -0.5 * x

    grid = time_grid(1.0, 1e-2, 6, "geometric")
    x = np.ones((5, 2))
    if method == "probability_flow":
        probability_flow(score, VP(), grid, x)
        assert len(set(addresses[0::2])) == 1 and len(set(addresses[1::2])) == 1
    else:
        euler_maruyama(score, VP(), grid, x, np.random.default_rng(0))
        assert len(set(addresses)) == 1


def _gaussian_score_ou(m, S):
    """The exact score of p_t = N(alpha m, alpha^2 S + sigma^2 I) under OU (alpha = e^{-t})."""
    def score(y, t):
        alpha = np.exp(-t[0])
        return -np.linalg.solve(alpha**2 * S + -np.expm1(-2 * t[0]) * np.eye(len(m)), (y - alpha * m).T).T
    return score


@pytest.mark.parametrize("method", ["euler_maruyama", "exponential", "residual_exponential"])
def test_output_law_on_a_gaussian_target_is_the_propagated_gaussian(method):
    """With the exact score of a Gaussian p_0 = N(m, S) each step is affine in y and the noise,
    so the output law is N(mu, P) with mu <- M mu + b C^-1 alpha m, P <- M P M^T + c^2 I,
    M = a I - b C^-1, C = alpha^2 S + sigma^2 I at t_k, the coefficients written here from OU's
    closed forms (h = t_k - t_k+1: EM 1 + h, 2h, sqrt(2h); exponential e^h, 2 expm1(h),
    sqrt(expm1(2h)); residual 2 - e^-h, -2 expm1(-h), sqrt(-expm1(-2h))). 100,000 points at a
    fixed seed: the mean by its chi^2 (Hotelling with known P), each covariance entry by its
    z-score (var of an empirical covariance (P_ii P_jj + P_ij^2) / n). Measured: p 0.030, 0.032,
    0.029 (one noise for the three); |z| <= 1.04."""
    from scipy import stats

    m, S, n = np.array([1.0, -0.5]), np.array([[0.5, 0.2], [0.2, 0.3]]), 100_000
    grid = time_grid(5.0, 1e-3, 30, "geometric")
    h = grid[:-1] - grid[1:]
    a, b, c = {"euler_maruyama": (1 + h, 2 * h, np.sqrt(2 * h)),
               "exponential": (np.exp(h), 2 * np.expm1(h), np.sqrt(np.expm1(2 * h))),
               "residual_exponential": (2 - np.exp(-h), -2 * np.expm1(-h), np.sqrt(-np.expm1(-2 * h)))}[method]
    mu, P = np.zeros(2), np.eye(2)
    for k, t in enumerate(grid[:-1]):
        C_inv = np.linalg.inv(np.exp(-2 * t) * S + -np.expm1(-2 * t) * np.eye(2))
        M = a[k] * np.eye(2) - b[k] * C_inv
        mu, P = M @ mu + b[k] * C_inv @ (np.exp(-t) * m), M @ P @ M.T + c[k] ** 2 * np.eye(2)
    rng = np.random.default_rng(2024)
    y = METHODS[method](_gaussian_score_ou(m, S), OU(), grid, rng.standard_normal((n, 2)), rng)
    chi2 = n * (y.mean(0) - mu) @ np.linalg.solve(P, y.mean(0) - mu)
    z = (np.cov(y.T) - P) / np.sqrt((np.outer(np.diag(P), np.diag(P)) + P ** 2) / n)
    assert stats.chi2.sf(chi2, 2) > 1e-3 and np.max(np.abs(z)) < 4.0


def test_probability_flow_is_second_order_and_euler_maruyama_first_order_in_law():
    """Weak order against the exact laws, solve_ivp (DOP853, rtol 1e-12) on the moment ODEs of
    the reverse SDE (dmu = K mu + h, dP = K P + P K^T + g^2 I) and of the probability-flow ODE
    (half the score term, no noise) from N(0, I) at T = 4, OU, p_0 = N(m, S). Heun's output
    law from the sampler itself (affine in x: its value at 0 and its Jacobian from the basis
    points); Euler–Maruyama's by propagating its affine steps (its steps against NumPy's:
    test_fused_kernels_give_numpys_bits). Error in mean and covariance halves (EM, measured
    ratios 2.19, 2.11) and quarters (Heun, 4.15, 4.14) as the uniform grid doubles."""
    from scipy.integrate import solve_ivp

    m, S, I2, T, t0 = np.array([1.0, -0.5]), np.array([[0.5, 0.2], [0.2, 0.3]]), np.eye(2), 4.0, 1e-2
    score = _gaussian_score_ou(m, S)
    C_inv = lambda t: np.linalg.inv(np.exp(-2 * t) * S + -np.expm1(-2 * t) * I2)  # noqa: E731

    def moments(tau, z, w, noise):  # dY = (Y + 2 w s) dtau + noise sqrt(2) dB (OU: f = -1, g^2 = 2)
        t = T - tau
        K, P = I2 - 2 * w * C_inv(t), z[2:].reshape(2, 2)
        return np.concatenate([K @ z[:2] + 2 * w * C_inv(t) @ (np.exp(-t) * m),
                               (K @ P + P @ K.T + 2 * noise * I2).ravel()])

    z0 = np.concatenate([np.zeros(2), I2.ravel()])
    exact = {w: solve_ivp(moments, (0, T - t0), z0, args=(w, w == 1.0), method="DOP853", rtol=1e-12,
                          atol=1e-14).y[:, -1] for w in (1.0, 0.5)}
    errors = {"em": [], "heun": []}
    for N in (40, 80, 160):
        grid = time_grid(T, t0, N)
        h = grid[:-1] - grid[1:]
        mu, P = np.zeros(2), I2.copy()
        for k, t in enumerate(grid[:-1]):
            M = (1 + h[k]) * I2 - 2 * h[k] * C_inv(t)
            mu, P = M @ mu + 2 * h[k] * C_inv(t) @ (np.exp(-t) * m), M @ P @ M.T + 2 * h[k] * I2
        errors["em"].append(np.max(np.abs(np.concatenate([mu, P.ravel()]) - exact[1.0])))
        out = probability_flow(score, OU(), grid, np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
        J = (out[1:] - out[0]).T
        errors["heun"].append(np.max(np.abs(np.concatenate([out[0], (J @ J.T).ravel()]) - exact[0.5])))
    em, heun = np.array(errors["em"]), np.array(errors["heun"])
    assert np.all((em[:-1] / em[1:] > 1.9) & (em[:-1] / em[1:] < 2.4))
    assert np.all((heun[:-1] / heun[1:] > 3.6) & (heun[:-1] / heun[1:] < 4.4))


@pytest.mark.parametrize("stop", [0, 3])
@pytest.mark.parametrize("method", ["euler_maruyama", "exponential"])
def test_an_interrupt_inside_the_score_leaves_the_generator_after_whole_steps(method, stop):
    """A KeyboardInterrupt raised in the score at step `stop` propagates as it is, with the
    Generator advanced by exactly `stop` steps' draws (rng.standard_normal((stop, n, d)),
    blocks of 2048 never half-drawn) and the caller's x untouched."""
    calls = []

    def score(x, t):
        if len(calls) == stop:
            raise KeyboardInterrupt
        calls.append(t[0])
        return -x

    x, rng, reference = np.ones((1500, 3)), np.random.default_rng(4), np.random.default_rng(4)
    with pytest.raises(KeyboardInterrupt):
        METHODS[method](score, OU(), time_grid(2.0, 0.01, 6), x, rng)
    reference.standard_normal((stop, 1500, 3))
    assert np.array_equal(rng.standard_normal(5), reference.standard_normal(5)) and np.all(x == 1.0)


def test_divergence_on_a_geometric_grid_does_not_advise_a_geometric_grid():
    """sample's default grid is geometric; its divergence message told to use a geometric grid
    (OU from T = 1e300, three steps of int beta 2e300, 2e200, 2e100)."""
    with pytest.raises(ValueError, match=r"are unstable: use more steps \(n_steps\) or a smaller T$"):
        sample(lambda x, t: -x, OU(), 2, 1, np.random.default_rng(0), T=1e300, t0=1.0, n_steps=3)
    with pytest.raises(ValueError, match=r"are unstable: use more steps \(n_steps\), a geometric grid or a smaller T$"):
        sample(lambda x, t: -x, OU(), 2, 1, np.random.default_rng(0), T=1e300, t0=1.0, n_steps=3, grid="uniform")


# -- review: empty point sets, start_variance's T, the routed replay's output -------------------

@pytest.mark.parametrize("shape", [(0, 2), (3, 0)])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_failing_score_on_no_points_raises_its_own_error(method, shape):
    """With no entries in x (n = 0 or d = 0) a score's own exception propagated as NumPy's 'zero-size
    array to reduction operation maximum which has no identity' (the divergence check took the
    max of |y| over no entries)."""
    def score(x, t):
        raise RuntimeError("the score's own failure")

    args = () if method == "probability_flow" else (np.random.default_rng(0),)
    with pytest.raises(RuntimeError, match="^the score's own failure$"):
        METHODS[method](score, OU(), np.array([1.0, 0.5]), np.zeros(shape), *args)
    y = METHODS[method](lambda x, t: -x, OU(), np.array([1.0, 0.5]), np.zeros(shape), *args)
    assert y.shape == shape


@pytest.mark.parametrize("process, T, match", [
    (OU(), -5.0, r"^T must be > 0.0, got -5.0$"), (VP(), 2.0, r"^T must be <= 1.0 for VP\(.*\), got 2.0$"),
    (VP(), float("nan"), r"^T must be finite, got nan$"), (OU(), "1", r"^T must be a real number, got '1'$"),
    (OU(), np.array([1.0, 2.0]), r"^T must be a real number"), (EDM(), 0.0, r"^T must be > 0.0, got 0.0$"),
    (EDM(), np.array([1.0, 2.0]), r"^T must be a real number"),
    (OU(), 1e308, r"^T = 1e\+308 is too large for OU\(\): B\(T\) = int_0\^T beta overflows float64"),
])
def test_start_variance_refuses_a_bad_T(process, T, match):
    """start_variance returned 1.0 for any T on a variance-preserving process (-5, 2 on VP whose
    t_max is 1, nan, a string), 0.0 for EDM at T = 0 (a start law of no spread) and NumPy's
    TypeError for an array T elsewhere, though its docstring says it raises for a T out of range."""
    from sgm_ref.samplers import start_variance

    with pytest.raises(ValueError, match=match):
        start_variance(process, T)


def test_start_variance_values():
    """1 on the variance-preserving processes (their stationary law), sigma_T^2 on the others:
    VE's sigma_max^2 at T = 1, EDM's T^2, FlowMatching's T^2 (sigma = t)."""
    from sgm_ref import VE, FlowMatching
    from sgm_ref.samplers import start_variance

    assert start_variance(OU(), 8e307) == start_variance(VP(), 1) == start_variance(OU(), 5e-324) == 1.0
    assert start_variance(VE(0.01, 50.0), 1.0) == 2500.0 and start_variance(EDM(), 3.0) == 9.0
    assert start_variance(FlowMatching(), 0.99999) == pytest.approx(0.99999 ** 2, rel=4e-16, abs=0)
    assert start_variance(EDM(), 1e150) == 1e150 ** 2


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # the replay's float32 rounding
@pytest.mark.parametrize("trajectory", [False, True])
def test_probability_flow_off_vp_names_an_output_that_overflowed(trajectory):
    """The probability flow on a process that is not variance-preserving (the replay karras_heun)
    returned inf for finite input without a word: one float32 Heun step of EDM from sigma = 1e36
    (the start N(0, sigma_T^2 I) that sample allows in float32) down to 1. Named now, as the own
    samplers name it; 40 geometric steps over the same range stay finite and are returned."""
    score = lambda x, t: (-x / (1.0 + t[:, None].astype(np.float64) ** 2)).astype(x.dtype)  # noqa: E731  N(0, I)
    x = (np.random.default_rng(0).standard_normal((3, 1)) * 1e36).astype(np.float32)
    ratio = r"int g\^2 / sigma_\{t_k\+1\}\^2 = 1e\+72 \(step 0\)"  # (1e72 - 1) / 1
    with pytest.raises(ValueError, match=r"^the sampler diverged: .* " + ratio):
        probability_flow(score, EDM(), np.array([1e36, 1.0]), x, trajectory)
    with pytest.raises(ValueError, match=r"^the sampler diverged"):
        sample(score, EDM(), 3, 1, np.random.default_rng(0), T=1e36, t0=1.0, n_steps=1, method="probability_flow",
               dtype=np.float32)
    out = probability_flow(score, EDM(), time_grid(1e36, 1.0, 40, "geometric"), x, trajectory)
    y = out[0] if trajectory else out
    assert y.dtype == np.float32 and np.all(np.isfinite(y))


def test_a_single_diverging_step_does_not_advise_a_geometric_grid():
    """One step is a geometric grid as much as a uniform one; sample(n_steps=1) (its grid geometric by
    default) diverging was told to use 'a geometric grid'."""
    with pytest.raises(ValueError, match=r"are unstable: use more steps \(n_steps\) or a smaller T$"):
        sample(lambda x, t: -x, OU(), 2, 1, np.random.default_rng(0), T=1e3, t0=1.0, n_steps=1, method="exponential")


def test_probability_flow_given_an_rng_says_it_takes_none():
    """probability_flow(score, process, grid, x, rng), in euler_maruyama's order, was told
    'trajectory must be True or False, got Generator(PCG64) at 0x...'."""
    with pytest.raises(ValueError, match=r"^probability_flow is deterministic and takes no rng: call it as "
                                         r"probability_flow\(score, process, grid, x\)"):
        probability_flow(lambda x, t: -x, OU(), np.array([1.0, 0.5]), np.zeros((2, 1)), np.random.default_rng(0))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_float32_probability_flow_whose_state_x_over_alpha_overflows_is_named():
    """Off the variance-preserving processes the probability flow (karras_heun) steps x / alpha_t.
    On SubVP(0.1, 1000) at T = 1, alpha_T = 2.6e-109, so in float32 that state is inf from the
    start, and sample(dtype=float32) and probability_flow were refused inside the replay as
    'x contains 2000 non-finite value(s) (NaN or inf)', x being points they drew or were given
    finite. Now T is named; from T = 0.5 (alpha_T = 7.1e-28, x / alpha_T ~ 1e28) both run, and
    the float32 flow from float64's start points ends where float64's does to float32 rounding
    over the steps (<= 2 N 2^-24 of the largest |entry| at N = 300 steps; measured 3.6e-7)."""
    from sgm_ref import SubVP

    process, target = SubVP(0.1, 1000.0), GaussianMixture([1.0], [[0.5]], [[[0.2]]])
    score = lambda x, t: target.score(x.astype(np.float64), t, process).astype(x.dtype)  # noqa: E731
    assert float(process.alpha(1.0)) == pytest.approx(2.6e-109, rel=0.01)
    with pytest.raises(ValueError, match=r"^T = 1\.0 is too large for float32 points on SubVP\(beta_min=0\.1, "
                                         r"beta_max=1000\.0\): the probability flow steps x / alpha_T .* "
                                         r"sigma_T / alpha_T = 3\.84e\+108, .* or float64 points$"):
        sample(score, process, 2000, 1, np.random.default_rng(0), T=1.0, t0=1e-3, n_steps=300,
               method="probability_flow", dtype=np.float32)
    x = np.random.default_rng(1).standard_normal((50, 1))
    with pytest.raises(ValueError, match=r"^grid\[0\] = T = 1\.0 is too large for float32 points on SubVP.*: the "
                                         r"probability flow steps x / alpha_T .* start the grid at a smaller time"):
        probability_flow(score, process, time_grid(1.0, 1e-3, 300), x.astype(np.float32))
    grid = time_grid(0.5, 1e-3, 300)
    y32, y64 = probability_flow(score, process, grid, x.astype(np.float32)), probability_flow(score, process, grid, x)
    assert y32.dtype == np.float32 and np.max(np.abs(y32 - y64)) <= 2 * 300 * 2.0**-24 * np.max(np.abs(y64))
    out = sample(score, process, 2000, 1, np.random.default_rng(0), T=0.5, t0=1e-3, n_steps=300,
                 method="probability_flow", dtype=np.float32)
    assert out.dtype == np.float32 and np.all(np.isfinite(out))


@pytest.mark.parametrize("trajectory", [False, True])
def test_probability_flow_off_vp_on_no_points(trajectory):
    """No points (n = 0): the probability flow off the variance-preserving processes (the
    replay karras_heun, which converts its score per row) was refused inside
    conventions.convert as 't must be a scalar or have shape (n,), got shape (0,)'; it now
    returns what it returns on VP: no points, and a path of grid.size empty states."""
    grid = np.geomspace(80.0, 1e-3, 5)
    vp = probability_flow(lambda x, t: -x, VP(), np.geomspace(1.0, 1e-3, 5), np.zeros((0, 2)), trajectory)
    out = probability_flow(lambda x, t: -x, EDM(), grid, np.zeros((0, 2)), trajectory)
    if trajectory:
        assert out[0].shape == vp[0].shape == (0, 2) and out[1].shape == vp[1].shape == (5, 0, 2)
    else:
        assert out.shape == vp.shape == (0, 2)


@pytest.mark.parametrize("model_dtype, dtype", [(np.float32, np.float64), (np.float64, np.float32)])
def test_a_score_model_of_another_dtype_is_named_as_samples_dtype_before_any_draw(model_dtype, dtype):
    """sample makes the points, so a ScoreModel of another dtype is its dtype argument's fault: the
    model's own refusal, "x must have dtype float32 (the network's), got float64; cast it explicitly",
    named an x the caller never passed, after the start points had been drawn."""
    from sgm_ref.nn import MLP
    from sgm_ref.score_model import ScoreModel

    model = ScoreModel(MLP(2, (4,), rng=0, dtype=model_dtype), OU(), "noise")
    rng = np.random.default_rng(0)
    name = np.dtype(model_dtype).name
    with pytest.raises(ValueError, match=rf"^dtype must be the model's dtype, {name}, got {np.dtype(dtype).name}: .* "
                                         rf"pass dtype=np.{name}$"):
        sample(model, OU(), 5, 2, rng, T=1.0, t0=0.1, n_steps=2, dtype=dtype)
    assert rng.bit_generator.state == np.random.default_rng(0).bit_generator.state  # nothing drawn
    assert sample(model, OU(), 5, 2, rng, T=1.0, t0=0.1, n_steps=2, dtype=model_dtype).dtype == model_dtype


@pytest.mark.parametrize("process, method", [(EDM(), "residual_exponential"), (OU(), ["euler_maruyama"]),
                                             (OU(), {"method": "exponential"})])
def test_sample_refuses_a_bad_method_before_any_draw(process, method):
    """A method that is not a string (a list, a dict) raised Python's "TypeError:
    unhashable type" from the lookup in METHODS; "residual_exponential" on a process that is not
    variance-preserving was refused only after the start points had been drawn from rng."""
    rng = np.random.default_rng(0)
    match = r"^method 'residual_exponential' needs a variance-preserving" if isinstance(method, str) else \
        r"^method must be one of \['euler_maruyama', 'exponential', 'probability_flow', 'residual_exponential'\], got"
    with pytest.raises(ValueError, match=match):
        sample(lambda x, t: -x, process, 5, 2, rng, T=1.0, t0=0.1, n_steps=2, method=method)
    assert rng.bit_generator.state == np.random.default_rng(0).bit_generator.state  # nothing drawn


@pytest.mark.parametrize("method", sorted(METHODS))
def test_sample_refuses_a_trajectory_beyond_memory_before_any_draw(method, monkeypatch):
    """sample drew its start points and only then had the sampler refuse the trajectory (the
    same message, naming n_steps, now given before the draw: rng untouched)."""
    import sgm_ref._validation as validation

    rng = np.random.default_rng(0)
    monkeypatch.setattr(validation, "_physical_memory", lambda: 5 * 10**5)  # 0.8 MB refused
    with pytest.raises(ValueError, match=r"^n_steps = 200 \(a trajectory of 201 x 100 x 10 float32 points\) asks "
                                         r"for .* GiB .* lower n_steps$"):
        sample(lambda x, t: -x, OU(), 100, 10, rng, T=1.0, t0=0.01, n_steps=200, method=method, dtype=np.float32,
               trajectory=True)
    assert rng.bit_generator.state == np.random.default_rng(0).bit_generator.state  # nothing drawn
    y, path = sample(lambda x, t: -x, OU(), 100, 10, rng, T=1.0, t0=0.01, n_steps=10, method=method,
                     dtype=np.float32, trajectory=True)
    assert path.shape == (11, 100, 10) and np.array_equal(path[-1], y)


def _zero_noise_rng():
    """A Generator whose every normal is 0.0: MT19937 with an all-zero key twists to zeros
    forever, and numpy's ziggurat maps the word 0 to 0 * WI[0] = 0 (checked below)."""
    bit_generator = np.random.MT19937(0)
    state = bit_generator.state
    state["state"]["key"], state["state"]["pos"] = np.zeros(624, np.uint32), 624
    bit_generator.state = state
    return np.random.Generator(bit_generator)


@pytest.mark.parametrize("method", ["euler_maruyama", "exponential", "residual_exponential"])
def test_the_samplers_own_output_law_is_the_exact_gaussian_to_a_few_ulps(method):
    """With the exact score of p_0 = N(m, S) under OU the sampler is affine in its start x and
    its noises: y = A x + u + sum_k J_k c_k xi_k. Run with noises of 0 (_zero_noise_rng) it
    gives A and u exactly as it computes them (A from the basis points), and the Jacobian J_k
    of the steps after step k from the same sampler on grid[k + 1:]; so its output law from
    N(0, I) is N(u, A A^T + sum_k c_k^2 J_k J_k^T), a law of the sampler itself, not a
    statistic of it (c_k its own STEP_COEFFICIENTS; that the kernel scales the noise by it,
    test_fused_kernels_give_numpys_bits). Against the law propagated at 40 digits from OU's closed forms
    (h = t_k - t_k+1; EM 1 + h, 2h, sqrt(2h); exponential e^h, 2 expm1(h), sqrt(expm1(2h));
    residual 2 - e^-h, -2 expm1(-h), sqrt(-expm1(-2h))): measured 1.6, 1.5, 1.1 ulps of the
    largest mean entry, 2.3, 12.5, 0.9 of the largest covariance entry."""
    import mpmath

    assert np.all(_zero_noise_rng().standard_normal(5) == 0.0)
    m, S = np.array([1.0, -0.5]), np.array([[0.5, 0.2], [0.2, 0.3]])
    score, grid, basis = _gaussian_score_ou(m, S), time_grid(5.0, 1e-3, 12, "geometric"), np.eye(3, 2, -1)

    def deterministic(g):  # A and u of the steps on grid g, noises 0
        out = METHODS[method](score, OU(), g, basis, _zero_noise_rng())
        return (out[1:] - out[0]).T, out[0]

    from sgm_ref.samplers import STEP_COEFFICIENTS
    c = STEP_COEFFICIENTS[method](OU(), grid[:-1], grid[1:])[2]
    A, u = deterministic(grid)
    cov = A @ A.T
    for k in range(grid.size - 1):
        J = deterministic(grid[k + 1:])[0] if k < grid.size - 2 else np.eye(2)
        cov = cov + c[k] ** 2 * J @ J.T
    with mpmath.workdps(40):
        mp_m, mp_S, I2 = mpmath.matrix(m.tolist()), mpmath.matrix(S.tolist()), mpmath.eye(2)
        mu, P = mpmath.matrix([0, 0]), mpmath.eye(2)
        for k in range(grid.size - 1):
            t, h = mpmath.mpf(grid[k]), mpmath.mpf(grid[k]) - mpmath.mpf(grid[k + 1])
            a, b, c2 = {"euler_maruyama": (1 + h, 2 * h, 2 * h),
                        "exponential": (mpmath.exp(h), 2 * mpmath.expm1(h), mpmath.expm1(2 * h)),
                        "residual_exponential": (2 - mpmath.exp(-h), -2 * mpmath.expm1(-h),
                                                 -mpmath.expm1(-2 * h))}[method]
            C_inv = (mpmath.exp(-2 * t) * mp_S + -mpmath.expm1(-2 * t) * I2) ** -1
            M = a * I2 - b * C_inv
            mu, P = M * mu + b * C_inv * (mpmath.exp(-t) * mp_m), M * P * M.T + c2 * I2
        mu, P = np.array(mu.tolist(), float).ravel(), np.array(P.tolist(), float)
    eps = np.finfo(np.float64).eps
    assert np.max(np.abs(u - mu)) <= 8 * eps * np.max(np.abs(mu))
    assert np.max(np.abs(cov - P)) <= 50 * eps * np.max(np.abs(P))
