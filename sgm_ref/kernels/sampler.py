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
noise is always numpy's float64 ziggurat, rounded to the points' dtype: numba's float32
ziggurat (rng.standard_normal(dtype=np.float32)) measured 1.6-5x slower
(`python benchmarks/sampler.py --draws`; docs/sampler_speed.md), and the rounded
float64 draws are the stream the float32 sampler has always used.

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
from numba.np.random.distributions import random_standard_normal

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
    samplers pass the handle); xi is scratch of y's dtype, any length (a few
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
