"""Numba kernels for the reverse-time samplers' update steps (sgm_ref.samplers).

Serial on purpose: the score call between steps may use BLAS threads, and a second
spinning thread pool would compete with them for the cores.

A step draws its noise a block at a time into scratch that stays in L1 and uses it at
once: the noise is never written to an (n, d) array and read back. While a block's
noise is drawn, the next block's points and score are prefetched (one hint per cache
line), so that the update finds them in cache rather than in L3 or memory (4096 points,
float64, after a cache sweep as after a score call: the kernel 1.15x the time of the
draw alone instead of 1.33x at d = 32, 1.12x instead of 1.23x at d = 128, medians;
`python benchmarks/sampler.py --kernel`, docs/sampler_speed.md). The arithmetic is
the points' dtype (float32 points: float32 coefficients and float32 operations). The
noise is always numpy's float64 ziggurat, rounded to the points' dtype: the stream the
float32 sampler has always used. numpy's own float32 stream (rng.standard_normal(dtype=
np.float32), which the float32 training batches draw) has its kernel here too,
standard_normal_float32_into.

The samplers pass the Generator as generator_handle(rng), six addresses numba unboxes in
under a microsecond, instead of the Generator, which numba unboxes through ctypes on
every call (5-10 us, more right after a score call has left the caches cold); the draws
are the same (numba's ziggurat on the same bit generator) and the kernels accept either.
"""

import ctypes

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload
from numba.np.random._constants import fi_float, ki_float, wi_float, ziggurat_nor_inv_r_f, ziggurat_nor_r_f
from numba.np.random.distributions import random_standard_normal
from numba.np.random.generator_core import next_uint32

# the fields of numba's unboxed bit generator that generator_handle carries, in its order
_HANDLE_FIELDS = ("state_address", "state", "fnptr_next_uint64", "fnptr_next_uint32", "fnptr_next_double",
                  "bit_generator")
_BIT_GENERATOR = types.NumPyRandomBitGeneratorType("bit_generator")


def generator_handle(rng):
    """What the step kernels take for the Generator rng: the same draws, ~10x cheaper to pass.

    numba unboxes a Generator argument on every call (three ctypes.cast calls and an
    allocation: measured 5-10 us per call here, a quarter of a step's draw at d = 2 with
    4096 points); this tuple of rng.bit_generator.ctypes's six addresses (its state and
    its next_uint64 / next_uint32 / next_double functions) passes in under 1 us, and the
    kernels draw through it with numba's own ziggurat (rng.standard_normal(), the same
    bits, the same state advanced). Valid while rng lives: hold rng while it is used.
    With numba's JIT disabled it is rng itself.
    """
    if numba.config.DISABLE_JIT:
        return rng
    ct = rng.bit_generator.ctypes

    def address(fn):
        return ctypes.cast(fn, ctypes.c_void_p).value

    return (ct.state_address, ct.state.value, address(ct.next_uint64), address(ct.next_uint32),
            address(ct.next_double), ct.bit_generator.value)


@intrinsic
def _bit_generator(typingctx, handle):
    """numba's unboxed bit generator built from generator_handle's six addresses."""
    if not (isinstance(handle, types.UniTuple) and handle.count == len(_HANDLE_FIELDS)
            and isinstance(handle.dtype, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        bit_generator = cgutils.create_struct_proxy(_BIT_GENERATOR)(context, builder)
        for name, value in zip(_HANDLE_FIELDS, cgutils.unpack_tuple(builder, args[0], handle.count)):
            setattr(bit_generator, name, context.cast(builder, value, handle.dtype, types.uintp))
        bit_generator.parent = cgutils.get_null_value(context.get_value_type(types.pyobject))
        return bit_generator._getvalue()

    return _BIT_GENERATOR(handle), codegen


def _bits(rng):
    """The source of _normal's draws for a Generator or its generator_handle: inside a
    kernel numba's unboxed bit generator, built once per call, before the loop (built per
    draw it measured 1.7x slower); run as Python (JIT disabled), the Generator itself."""
    return rng


@overload(_bits)
def _bits_compiled(rng):
    if isinstance(rng, types.NumPyRandomGeneratorType):
        return lambda rng: rng.bit_generator
    if isinstance(rng, types.UniTuple):
        return lambda rng: _bit_generator(rng)
    return None


def _normal(bits):
    """One rng.standard_normal() from _bits(rng): numba's ziggurat, numpy's bit for bit."""
    return bits.standard_normal()


@overload(_normal)
def _normal_compiled(bits):
    if isinstance(bits, types.NumPyRandomBitGeneratorType):
        return lambda bits: random_standard_normal(bits)  # what numba's rng.standard_normal() calls
    return None


@intrinsic
def _prefetch_intrinsic(typingctx, flat, index):
    """LLVM's prefetch of the cache line holding flat[index] (a read, kept in all cache levels)."""
    if not (isinstance(flat, types.Array) and flat.ndim == 1 and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        array = context.make_array(sig.args[0])(context, builder, args[0])
        index = context.cast(builder, args[1], sig.args[1], types.intp)
        pointer = cgutils.get_item_pointer(context, builder, sig.args[0], array, [index], wraparound=False,
                                           boundscheck=False)
        # declared on an i8 pointer, "llvm.prefetch.p0i8": the typed-pointer name, which newer LLVM
        # (opaque pointers) remangles to "llvm.prefetch.p0" (a prefetcht0 with numba 0.58 / LLVM 14
        # and numba 0.68 / LLVM 22, the same bits)
        i32, address = ir.IntType(32), cgutils.voidptr_t
        fn = builder.module.declare_intrinsic("llvm.prefetch", [address], ir.FunctionType(ir.VoidType(),
                                                                                        [address, i32, i32, i32]))
        builder.call(fn, [builder.bitcast(pointer, address), ir.Constant(i32, 0), ir.Constant(i32, 3),
                          ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(flat, index), codegen


def _prefetch(flat, index):
    """Ask the cache for flat[index]'s line ahead of its use: a hint, no effect on any value
    (run as Python, nothing). flat is 1-d and 0 <= index < flat.size."""


@overload(_prefetch)
def _prefetch_compiled(flat, index):
    return lambda flat, index: _prefetch_intrinsic(flat, index)


def _line_entries(flat):
    """Entries of flat's dtype per 64-byte cache line (a constant when compiled)."""
    return max(1, 64 // flat.itemsize)


@overload(_line_entries)
def _line_entries_compiled(flat):
    entries = max(1, 64 // (flat.dtype.bitwidth // 8))
    return lambda flat: entries


@njit(cache=True)
def standard_normal_into(out, rng):
    """Fill a C-contiguous out with N(0, 1) draws from the numpy Generator rng.

    The draws are rng.standard_normal() one after another in row-major order, so out
    equals rng.standard_normal(out.shape).astype(out.dtype) bit for bit and leaves rng
    in the same state. numba compiles numpy's own ziggurat into the loop, which is 1.7-6x
    faster than the Generator method called from Python, depending on the host
    (`benchmarks/sampler.py --draws`). rng may also be generator_handle(rng) (the same
    draws, without numba's per-call unboxing of rng).
    """
    flat, bits = out.reshape(-1), _bits(rng)
    for i in range(flat.size):
        flat[i] = _normal(bits)


# numpy's float32 ziggurat tables (256 layers; ziggurat_constants.h, as numba carries them):
# x = rabs * WI[idx] is a candidate, accepted at once when rabs < KI[idx]; FI[idx] is the
# density exp(-x^2 / 2) at the layer's edge; R the start of the tail, INV_R its inverse
_WI32, _KI32, _FI32 = wi_float.astype(np.float32), ki_float.astype(np.uint32), fi_float.astype(np.float32)
_R32, _INV_R32 = np.float32(ziggurat_nor_r_f), np.float32(ziggurat_nor_inv_r_f)


@njit(cache=True)
def _uniform_float32(bits):
    """numpy's next_float: the top 24 bits of a uint32 over 2^24, in [0, 1)."""
    return np.float32(next_uint32(bits) >> np.uint32(8)) * np.float32(1.0 / 16777216.0)


@njit(inline="always")  # inlined into the loop (numba IR): called per number it measured 2x slower
def _ziggurat_float32(bits):
    """One rng.standard_normal(dtype=np.float32), numpy's algorithm step for step.

    Marsaglia and Tsang's ziggurat (J. Stat. Softw. 5(8), 2000) as numpy writes it for
    float32 (random_standard_normal_f): one uint32 r gives the layer idx (its low 8 bits),
    the sign (bit 8) and a 23-bit magnitude rabs; x = rabs * WI[idx] is returned at once
    when rabs < KI[idx] (98.5% of draws with these tables). Otherwise, in the base layer
    (idx = 0, 0.03% of draws), a draw from the tail beyond R by Marsaglia's exponential
    method; in the others the wedge test  (FI[idx-1] - FI[idx]) u + FI[idx] < exp(-x^2 / 2),
    with the exponential in double precision as numpy's C has it (its -0.5 is a double),
    else a fresh r.

    numba carries its own copy of this function (numba.np.random.distributions), which
    takes that exponential in float32 and so is not numpy's stream (tests/test_samplers.py);
    called per number, not inlined, either copy measured 2x slower.
    """
    while True:
        r = next_uint32(bits)
        idx = r & np.uint32(0xFF)
        rabs = (r >> np.uint32(9)) & np.uint32(0x7FFFFF)
        x = np.float32(rabs) * _WI32[idx]
        if (r >> np.uint32(8)) & np.uint32(1):
            x = -x
        if rabs < _KI32[idx]:
            return x
        if idx == 0:
            while True:
                xx = -_INV_R32 * np.log1p(-_uniform_float32(bits))
                yy = -np.log1p(-_uniform_float32(bits))
                if yy + yy > xx * xx:
                    return -(_R32 + xx) if (rabs >> np.uint32(8)) & np.uint32(1) else _R32 + xx
        elif (_FI32[idx - 1] - _FI32[idx]) * _uniform_float32(bits) + _FI32[idx] < np.exp(-0.5 * np.float64(x) * x):
            return x


def _normal_float32(bits):
    """One rng.standard_normal(dtype=np.float32) from _bits(rng): _ziggurat_float32
    compiled, the Generator's own method run as Python (JIT disabled)."""
    return bits.standard_normal(dtype=np.float32)


@overload(_normal_float32, inline="always")
def _normal_float32_compiled(bits):
    if isinstance(bits, types.NumPyRandomBitGeneratorType):
        return lambda bits: _ziggurat_float32(bits)
    return None


@njit(cache=True)
def standard_normal_float32_into(out, rng):
    """Fill a C-contiguous float32 out with rng.standard_normal(out.shape, dtype=np.float32).

    numpy's own float32 stream (its float32 ziggurat, one uint32 per draw mostly: not the
    float64 draws rounded, which standard_normal_into gives), bit for bit and leaving rng
    in the same state, for every numpy bit generator; rng may be generator_handle(rng).
    3.0-3.3 ns per number here against 8.5-8.9 for the Generator method (its C loop) and 6.4
    for numba's own copy of the algorithm as numba calls it (`python benchmarks/sampler.py
    --draws`), plus ~7 us to hand a Generator (not a handle) to numba. numba's copy is also
    not numpy's stream: its wedge test takes the exponential in float32, and PCG64(73) gives
    another number at draw 250,736 (tests/test_samplers.py).
    """
    flat, bits = out.reshape(-1), _bits(rng)
    for i in range(flat.size):
        flat[i] = _normal_float32(bits)


@njit(cache=True)
def _score_status(s, y, limit):
    """0 if every entry of s is finite; else 2 if y holds an entry with |y| >= limit (or a
    non-finite one: the points had overflowed, or nearly, before the score call), else 1."""
    sf = s.reshape(-1)
    finite = True
    for e in range(sf.size):  # a branch-free and-reduction: vectorised, one cheap pass
        finite &= np.isfinite(sf[e])
    if finite:
        return 0
    yf = y.reshape(-1)
    for e in range(yf.size):
        if not abs(yf[e]) < limit:
            return 2
    return 1


@njit(cache=True)
def affine_noise_step(y, s, rng, a, b, c, xi, limit):
    """y <- a y + b s + c xi in place, xi ~ N(0, I) drawn here (Euler–Maruyama, exponential steps).

    y and s are C-contiguous (n, d); rng a Generator or its generator_handle (the
    samplers pass the handle); xi is scratch of y's dtype, any length >= 1 (a few
    thousand entries: it stays in L1). The noise is drawn xi.size entries at a time and
    used at once, never written to an (n, d) array and read back; the draws are
    rng.standard_normal(y.shape).astype(y.dtype) in row-major order (standard_normal_into),
    so y ends up bit for bit what drawing the noise first and then updating gives. The arithmetic is y's dtype
    when a, b, c are (pass float32 coefficients for float32 y). During each block's draws the
    next block's y and s are prefetched (a hint: it changes no value).

    Returns _score_status(s, y, limit): 0 after the step; 1 or 2, y untouched and no
    draw made, if s holds a NaN or inf.
    """
    status = _score_status(s, y, limit)
    if status:
        return status
    yf, sf, bits = y.reshape(-1), s.reshape(-1), _bits(rng)
    line = _line_entries(yf)
    for start in range(0, yf.size, xi.size):
        yc, sc = yf[start:start + xi.size], sf[start:start + xi.size]  # views: indices from 0, vectorised
        # while the draws compute, the next block's y and s come into the cache (a hint:
        # no value changes); the update below then finds its block there, not in L3 or memory
        ahead = min(xi.size, yf.size - start - yc.size)
        for e in range(yc.size):
            xi[e] = _normal(bits)  # rounded to xi's dtype on the store
            if e % line == 0 and e < ahead:  # once per cache line
                _prefetch(yf, start + yc.size + e)
                _prefetch(sf, start + yc.size + e)
        for e in range(yc.size):
            yc[e] = a * yc[e] + b * sc[e] + c * xi[e]
    return 0


@njit(cache=True)
def affine_step(y, s, xi, a, b, c):
    """y <- a y + b s + c xi in place with the noise xi (n, d) given: the unfused step
    (the samplers use affine_noise_step; kept for callers that bring their own noise)."""
    n, d = y.shape
    for i in range(n):
        for j in range(d):
            y[i, j] = a * y[i, j] + b * s[i, j] + c * xi[i, j]


@njit(cache=True)
def heun_predict(y_pred, y, s, one_plus_a, a, limit):
    """y_pred <- (1 + a) y + a s: the Euler predictor for the probability-flow ODE.

    one_plus_a is passed rounded to y's dtype, as a is. Returns _score_status(s, y, limit),
    y_pred untouched unless 0. All arrays C-contiguous (n, d).
    """
    status = _score_status(s, y, limit)
    if status:
        return status
    yf, sf, pf = y.reshape(-1), s.reshape(-1), y_pred.reshape(-1)
    for e in range(yf.size):
        pf[e] = yf[e] * one_plus_a + a * sf[e]
    return 0


@njit(cache=True)
def heun_correct(y, s, y_pred, s_pred, c_now, c_next, limit):
    """y <- y + c_now (y + s) + c_next (y_pred + s_pred): Heun's corrector for the ODE.

    Returns _score_status(s_pred, y_pred, limit) (y_pred: the points s_pred was computed
    at), y untouched unless 0. All arrays C-contiguous (n, d).
    """
    status = _score_status(s_pred, y_pred, limit)
    if status:
        return status
    yf, sf, pf, spf = y.reshape(-1), s.reshape(-1), y_pred.reshape(-1), s_pred.reshape(-1)
    for e in range(yf.size):
        yf[e] = yf[e] + c_now * (yf[e] + sf[e]) + c_next * (pf[e] + spf[e])
    return 0
