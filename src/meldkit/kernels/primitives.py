"""numba primitives shared by every kernel module: loads and stores of stored dtypes, the
counter-based hash stream, and the chunk size.

* :func:`load`: element ``i`` of a stored array as float32 (bfloat16 arrives as its ``uint16``
  bits, see :func:`meldkit.kernels.runner.as_numpy`);
* :func:`store` / :func:`to_bf16_bits`: write a float32 result as float32 or as bfloat16 bits,
  rounded to nearest even as torch rounds;
* :func:`hash32` / :func:`uniform` / :func:`scaled_draw`: the counter-based streams of
  :mod:`meldkit.methods.sparsify` (``hash32``, ``uniform``), bit for bit, so that random masks
  and samples do not depend on the path, the device or the thread count;
* :func:`abs_bits`: ``|d|`` as float32 bits, which order like the values (radix selection);
* :data:`CHUNK`: elements per fixed chunk, the unit of parallel work and of partial sums.

Kernel modules import these names and numba inlines them (``inline="always"``). numba's
on-disk cache notices changes to a kernel's own file only: after editing this module, touch
the ``*_numba.py`` files (or delete ``__pycache__/*.nbi``) in a working tree; installed
releases replace every file and start afresh.

Import kernel modules only through :func:`meldkit.kernels.runner.load`, which returns None
when numba is not installed.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

__all__ = [
    "CHUNK",
    "load",
    "store",
    "to_bf16_bits",
    "abs_bits",
    "hash32",
    "uniform",
    "uniform_range",
    "scaled_draw",
]

# Elements per chunk: the unit of parallel work, of float64 partial sums and of tie counting.
CHUNK = 1 << 14


def load(a, i):  # pragma: no cover - replaced by the overload below inside kernels
    raise NotImplementedError


@overload(load, inline="always")
def _load_impl(a, i):
    # An unsigned index: numba then skips the negative-index wrap-around, which otherwise
    # keeps LLVM from vectorizing the loops.
    if a.dtype == types.uint16:  # bfloat16 bits: the float32 with the same top 16 bits

        def impl(a, i):
            return np.uint32(np.uint32(a[np.uint64(i)]) << np.uint32(16)).view(np.float32)

        return impl

    def impl_f32(a, i):
        return np.float32(a[np.uint64(i)])

    return impl_f32


@njit(inline="always")
def abs_bits(d):
    # |d| as float32 bits: non-negative floats order like their bit patterns.
    return np.float32(d).view(np.uint32) & np.uint32(0x7FFFFFFF)


@intrinsic
def mix32(typingctx, x):  # type: ignore[no-untyped-def]
    """lowbias32 of a uint32, in 32-bit arithmetic. numba widens uint32 products to 64 bits,
    and LLVM then vectorizes the hash 4 lanes wide with emulated 64-bit multiplies; as 32-bit
    IR it runs 8 lanes wide (vpmulld), about twice as fast (0.7 against 1.5 ns a draw)."""
    if x != types.uint32:
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        i32 = ir.IntType(32)
        (v,) = args
        v = builder.xor(v, builder.lshr(v, ir.Constant(i32, 16)))
        v = builder.mul(v, ir.Constant(i32, 0x7FEB352D))
        v = builder.xor(v, builder.lshr(v, ir.Constant(i32, 15)))
        v = builder.mul(v, ir.Constant(i32, 0x846CA68B))
        return builder.xor(v, builder.lshr(v, ir.Constant(i32, 16)))

    return types.uint32(types.uint32), codegen


@njit(inline="always")
def hash32(k0, k1, i):
    """Element ``i`` of the 32-bit hash stream with key halves ``k0``/``k1`` (uint32):
    sparsify.hash32, bit for bit."""
    i = np.uint64(i)
    h = mix32(np.uint32(np.uint32(i & np.uint64(0xFFFFFFFF)) ^ np.uint32(k0)))  # type: ignore[call-arg,var-annotated]
    return mix32(np.uint32(h ^ np.uint32(i >> np.uint64(32)) ^ np.uint32(k1)))  # type: ignore[call-arg]


@njit(inline="always")
def uniform(k0, k1, i):
    """Element ``i`` of the stream with key halves ``k0``/``k1``: sparsify.uniform, bit for bit."""
    # 24 bits convert exactly through int32, which AVX2 converts 8 lanes at a time.
    return np.float32(np.int32(hash32(k0, k1, i) >> np.uint32(8))) * np.float32(2.0**-24)


@njit(cache=True)
def uniform_range(k0, k1, start, out):
    """``out[i] = uniform(key)[start + i]``: the kernels' stream, for checking it against
    :func:`meldkit.methods.sparsify.uniform`."""
    for i in range(out.shape[0]):
        out[i] = uniform(k0, k1, start + i)
    return out


@njit(inline="always")
def scaled_draw(k0, k1, k, n):
    # Draw k of the hash stream scaled to [0, n) by Lemire's multiply-shift (no division):
    # arcee_fusion's sampled rows and columns, as arcee_fusion.scaled_draws computes them.
    return np.int64((np.uint64(hash32(k0, k1, k)) * np.uint64(n)) >> np.uint64(32))


@njit(inline="always")
def to_bf16_bits(v):
    # Round to nearest even, as torch converts float32 to bfloat16.
    u = np.float32(v).view(np.uint32)
    bias = ((u >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF)
    return np.uint16(0x7FC0) if v != v else np.uint16((u + bias) >> np.uint32(16))


@njit(inline="always")
def store(out, out_bf16, i, v):
    """``out[i] = v``: a float32 array, or bfloat16 bits (rounded to nearest even)."""
    if out_bf16:
        out[i] = to_bf16_bits(v)
    else:
        out[i] = v
