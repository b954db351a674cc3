"""PCB-merging: a hand-worked mask, and numpy's sort-based reading of the formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meldkit.methods.pcb import kth_smallest, pcb_weights, tail_pair
from tests.methods.helpers import run_method, t


def test_pcb_hand_worked() -> None:
    # τ_1 = [1, -2, 0.5, 0], τ_2 = [1, 2, -0.5, 1], Σ = [2, 0, 0, 1]; clamp 0 (no clamping)
    # inter_1 = tanh([2, 0, 0, 0]),  inter_2 = tanh([2, 0, 0, 1])
    # |τ_1| minmax = [.5, 1, .25, 0] -> intra_1 = exp(2·[.25, 1, .0625, 0])
    # |τ_2| minmax = [1/3, 1, 0, 1/3] -> intra_2 = exp(2·[1/9, 1, 0, 1/9])
    # score_1 = [e^.5 tanh 2, 0, 0, 0]; score_2 = e^(2/9) · [tanh 2, 0, 0, tanh 1]
    # ratio 0.75: threshold = ascending rank ⌊4·0.25⌋ = 1, which is 0 in both rows
    # m_1 = [1, 0, 0, 0];  m_2 = [1, 0, 0, tanh 1 / tanh 2]
    # merged = [(1 + 1)/2, 0, 0, (tanh1/tanh2 · 1)/(tanh1/tanh2)] = [1, 0, 0, 1]
    flat = torch.tensor([[1.0, -2.0, 0.5, 0.0], [1.0, 2.0, -0.5, 1.0]], dtype=torch.float64)
    clamped = flat.clone()
    weights = pcb_weights(clamped, 0.75, 0.0)  # clamps in place: nothing to clamp here
    want = torch.tensor(
        [[1.0, 0, 0, 0], [1.0, 0, 0, math.tanh(1) / math.tanh(2)]], dtype=torch.float64
    )
    torch.testing.assert_close(weights, want)
    assert torch.equal(clamped, flat)
    b = t(0.5, 0.5, 0.5, 0.5)
    out = run_method("pcb", [b, b + flat[0].float(), b + flat[1].float()], 0, {"ratio": 0.75})
    torch.testing.assert_close(out, t(1.5, 0.5, 0.5, 1.5))


def _numpy_pcb(taus: np.ndarray, ratio: float, clamp: float, lam: float) -> np.ndarray:
    """The formula with sorts, as written in the module docstring."""
    n_tasks, n = taus.shape

    def ranked(row: np.ndarray, i: int) -> float:
        return float(np.sort(row)[min(max(i, 0), n - 1)])

    def minmax(row: np.ndarray) -> np.ndarray:
        span = row.max() - row.min()
        return (row - row.min()) / span if span > 0 else np.zeros_like(row)

    mags = np.abs(taus)
    for i in range(n_tasks):
        lo, hi = ranked(mags[i], int(n * clamp)), ranked(mags[i], int(n * (1 - clamp) - 1))
        mags[i] = np.clip(mags[i], lo, hi)
    clamped = np.sign(taus) * mags
    score = np.exp(n_tasks * np.stack([minmax(m) ** 2 for m in mags])) * np.tanh(taus * taus.sum(0))
    m = np.stack([minmax(np.maximum(s, ranked(s, int(n * (1 - ratio))))) for s in score])
    return lam * (m * clamped).sum(0) / np.maximum(m.sum(0), 1e-12)


def test_pcb_matches_numpy_with_clamping() -> None:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(40, 50, generator=g, dtype=torch.float64)
    taus = [torch.randn(40, 50, generator=g, dtype=torch.float64) ** 3 for _ in range(3)]
    taus[1][:2, :3] = 0  # 6 zeros, fewer than the 20 clamped: they stay zero all the same
    # clamp 0.01 of 2000 entries: 20 per tail, so the heavy cubed tails are clamped
    out = run_method(
        "pcb", [base, *(base + x for x in taus)], 0, {"ratio": 0.2, "clamp": 0.01, "lambda": 0.8}
    )
    flat = np.stack([x.reshape(-1).numpy() for x in taus])
    want = _numpy_pcb(flat, 0.2, 0.01, 0.8).reshape(40, 50)
    np.testing.assert_allclose((out - base).numpy(), want, atol=1e-12)


@pytest.mark.parametrize(
    "data",
    [
        "normal",  # sampled band in the middle, topk at the ends
        "ties",  # few distinct values: the band holds long runs of one value
        "signed_zeros",  # -0.0 and 0.0 compare equal; the answer is one of them
        "biased_sample",  # every 61st entry is huge: the sample misses, the full search runs
    ],
)
def test_kth_smallest_is_exact_on_every_route(data: str) -> None:
    g = torch.Generator().manual_seed(7)
    n = 200_003
    row = torch.randn(n, generator=g)
    if data == "ties":
        row = torch.randint(0, 5, (n,), generator=g).float()
    elif data == "signed_zeros":
        row[::3] = 0.0
        row[1::3] = -0.0
    elif data == "biased_sample":
        row[::61] = 1e6
    ordered = torch.sort(row).values
    for k in (1, 20, 4096, 4097, n // 10, n // 2, n - 4096, n - 4095, n - 20, n):
        got = kth_smallest(row, k)
        assert got == ordered[k - 1], (data, k)


@pytest.mark.parametrize("data", ["normal", "ties", "signed_zeros", "biased_sample", "short"])
def test_tail_pair_is_exact_on_every_route(data: str) -> None:
    # The clamp's two bounds: a cut of the sampled tails when both ranks are near an end,
    # the single-rank search when the cut holds too few entries (biased sample) or the row
    # is short or the ranks are far from the ends.
    g = torch.Generator().manual_seed(11)
    n = 1000 if data == "short" else 200_003
    row = torch.randn(n, generator=g).abs()
    if data == "ties":
        row = torch.randint(0, 3, (n,), generator=g).float()
    elif data == "signed_zeros":
        row[::3] = 0.0
        row[1::3] = -0.0
    elif data == "biased_sample":
        # Every sampled entry is tiny, so the low cut holds too few entries for the ranks
        # away from the bottom (the high cut then holds nearly the whole row).
        row[::61] = torch.linspace(0, 1e-9, row[::61].numel())
    ordered = torch.sort(row).values
    pairs = [(1, n), (20, n - 19), (n // 5, n - n // 5), (n // 3, n // 2)]
    if n > 8192:
        pairs.append((4097, n - 4096))  # beyond topk's reach from either end
    for k_low, k_high in pairs:
        low, high = tail_pair(row, k_low, k_high)
        assert (low, high) == (ordered[k_low - 1], ordered[k_high - 1]), (data, k_low, k_high)
