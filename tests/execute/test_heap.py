"""Trimming the C heap before large reads gives freed memory back."""

from __future__ import annotations

import sys

import pytest
import torch

from meldkit.execute import heap


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_trim_returns_freed_heap_pages() -> None:
    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    if not heap.release_free_memory():
        pytest.skip("not glibc")
    # Freeing a mapped 8 MB block raises glibc's mmap threshold to 8 MB, as the first
    # tensors of a merge do; then 200 tensors of 1 MB come from the heap, touched; every tenth
    # stays, so the freed ones are holes that free() itself does not give back.
    block = torch.ones(2 << 20)
    del block
    tensors = [torch.ones(1 << 18) for _ in range(200)]
    survivors = tensors[::10]
    before = rss_mb()
    del tensors
    assert rss_mb() > before - 20
    assert heap.release_free_memory()
    assert rss_mb() < before - 100  # most of the 180 MB of holes went back to the OS
    assert all(float(t[0]) == 1.0 for t in survivors)


def test_without_glibc_it_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_malloc_trim", lambda: None)
    assert heap.release_free_memory() is False
