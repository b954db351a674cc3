"""The numba primitives every kernel shares (:mod:`meldkit.kernels.primitives`) are the
reference's streams and roundings bit for bit: the hash stream and its uniforms (random masks
and samples), the multiply-shift draws, bfloat16 loads and stores rounded as torch rounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meldkit.kernels import runner
from meldkit.methods import MergeContext, arcee_fusion, sparsify

primitives = runner.load("primitives")
pytestmark = pytest.mark.skipif(primitives is None, reason="numba not installed")

if primitives is not None:
    from numba import njit

    @njit(cache=False)
    def _hashes(k0, k1, start, out):  # type: ignore[no-untyped-def]
        for i in range(out.shape[0]):
            out[i] = primitives.hash32(k0, k1, start + i)
        return out

    @njit(cache=False)
    def _draws(k0, k1, size, n, out):  # type: ignore[no-untyped-def]
        for k in range(size):
            out[k] = primitives.scaled_draw(k0, k1, k, n)
        return out

    @njit(cache=False)
    def _round_trip(values, bits, loaded, abs_out):  # type: ignore[no-untyped-def]
        for i in range(values.shape[0]):
            primitives.store(bits, True, i, values[i])
            abs_out[i] = primitives.abs_bits(values[i])
        for i in range(values.shape[0]):
            loaded[i] = primitives.load(bits, i)
        return bits

    @njit(cache=False)
    def _store_f32(values, out):  # type: ignore[no-untyped-def]
        for i in range(values.shape[0]):
            primitives.store(out, False, i, primitives.load(values, i))
        return out


def _halves(key: int) -> tuple[np.uint64, np.uint64]:
    return runner.key_halves(key)


@pytest.mark.parametrize("start", [0, 12345, (1 << 32) - 5])
def test_kernel_stream_equals_torch_stream(start: int) -> None:
    key = MergeContext("w", 3).stream_key("1")
    k0, k1 = _halves(key)
    assert (int(k0), int(k1)) == (key & 0xFFFFFFFF, key >> 32)
    out = primitives.uniform_range(k0, k1, start, np.empty(1000, dtype=np.float32))
    assert torch.equal(torch.from_numpy(out), sparsify.uniform(key, start, start + 1000))
    hashes = _hashes(k0, k1, start, np.empty(1000, dtype=np.uint32))
    assert torch.equal(
        torch.from_numpy(hashes.astype(np.int64)), sparsify.hash32(key, start, start + 1000)
    )


@pytest.mark.parametrize("n", [1, 7, 1100, (1 << 30) + 3])
def test_scaled_draws_equal_the_reference(n: int) -> None:
    key = MergeContext("w", 4).stream_key("arcee_fusion/rows")
    got = _draws(*_halves(key), 5000, n, np.empty(5000, dtype=np.int64))
    want = arcee_fusion.scaled_draws(key, 5000, n)
    assert torch.equal(torch.from_numpy(got), want)
    assert int(want.min()) >= 0 and int(want.max()) < n


def test_bf16_stores_round_as_torch_and_loads_are_exact() -> None:
    rng = np.random.default_rng(0)
    special = np.array(
        [
            0x3F808000,
            0x3F818000,
            0x3F80C000,
            0x7F800000,
            0xFF800000,
            0x00000001,
            0x80000000,
            0x7F7FFFFF,
            0x807FFFFF,
            0x3F7FFFFF,
        ],
        dtype=np.uint32,
    )
    bits32 = np.concatenate(
        [special, rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)]
    )
    values = bits32.view(np.float32)
    finite = np.isfinite(values)
    bits16 = np.zeros(values.shape, dtype=np.uint16)
    loaded = np.empty(values.shape, dtype=np.float32)
    magnitudes = np.empty(values.shape, dtype=np.uint32)
    _round_trip(values, bits16, loaded, magnitudes)
    expected = torch.from_numpy(values.copy()).to(torch.bfloat16)
    got = torch.from_numpy(bits16.view(np.int16).copy()).view(torch.bfloat16)
    nan = torch.from_numpy(~np.isnan(values))
    assert torch.equal(got[nan].view(torch.int16), expected[nan].view(torch.int16))  # ties to even
    assert bool(got[~nan].isnan().all())
    assert np.array_equal(loaded[finite], got.float().numpy()[finite])  # the widening is exact
    assert np.array_equal(magnitudes, bits32 & np.uint32(0x7FFFFFFF))  # |v| bits
    assert np.array_equal(_store_f32(values, np.empty_like(values)).view(np.uint32), bits32)


def test_chunk_is_the_kernels_unit() -> None:
    from meldkit.kernels import sce

    assert primitives.CHUNK == sce.CHUNK == 1 << 14
    assert runner.chunk_count(0, primitives.CHUNK) == 1  # an empty tensor still runs one chunk
    assert runner.chunk_count(primitives.CHUNK + 1, primitives.CHUNK) == 2
