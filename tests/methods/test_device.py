"""On a CUDA machine: every method gives the CPU's numbers, random masks are device-independent.

Skipped where no GPU is present (CI); run on a GPU box with ``pytest tests/methods``.
"""

from __future__ import annotations

import pytest
import torch

from meldkit.methods import list_methods
from tests.methods.helpers import run_method
from tests.methods.test_properties import layouts, params_for

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def inputs(n: int, shape: tuple[int, ...] = (64, 48)) -> list[torch.Tensor]:
    return [torch.randn(shape, generator=torch.Generator().manual_seed(i)) for i in range(n)]


@pytest.mark.parametrize("name", [s.name for s in list_methods()])
def test_cuda_matches_cpu(name: str) -> None:
    spec = next(s for s in list_methods() if s.name == name)
    for n, base_index in layouts(spec):
        xs = inputs(n)
        shared, per = params_for(spec, n)
        cpu = run_method(name, xs, base_index, shared, per, seed=3)
        gpu = run_method(name, [x.cuda() for x in xs], base_index, shared, per, seed=3)
        assert gpu.device.type == "cuda" and gpu.dtype == cpu.dtype
        if name.startswith("della"):
            # Keep probabilities are computed on the device: a draw within one ulp of p may
            # fall differently, so allow a handful of flipped elements.
            assert int((~torch.isclose(gpu.cpu(), cpu, atol=1e-5, rtol=1e-4)).sum()) <= 3
        else:
            torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-4, msg=name)


def test_dare_mask_is_identical_on_cuda() -> None:
    xs = inputs(2, (512, 512))
    per = {"weight": 1.0, "density": 0.3}
    cpu = run_method("dare_linear", xs, 0, {"rescale": False}, per, seed=9)
    gpu = run_method("dare_linear", [x.cuda() for x in xs], 0, {"rescale": False}, per, seed=9)
    assert torch.equal(gpu.cpu() != xs[0], cpu != xs[0])


def test_kth_smallest_on_cuda_matches_cpu() -> None:
    from meldkit.methods.sparsify import kth_smallest

    x = torch.randint(0, 50, (10_001,)).float()  # many ties
    for k in (1, 2, 17, 5000, 5001, 9999, 10_001):
        assert float(kth_smallest(x.cuda(), k)) == float(kth_smallest(x, k))
