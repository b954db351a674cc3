"""WUDI's closed form: the Gram factorisation against the stacked one, per shape.

    python benchmarks/wudi_forms.py                      # default shapes, 3 tasks
    python benchmarks/wudi_forms.py --tasks 2 --shapes 2048x5632 --repeat 3

``wudi_closed_form`` finds ``A⁺`` (``A = Σ_t τ_tᵀτ_t/‖τ_t‖²``, cols × cols) either from
``eigh`` of ``A`` (``gram``) or from the thin SVD of the stacked ``[τ_t/‖τ_t‖]``
(``stacked``, T·rows × cols); meldkit picks ``stacked`` when ``2·T·rows ≤ cols``. For each shape
both forms run on the same float32 random task vectors in one process, alternately, best of
``--repeat``; the table gives their times, the ratio stacked/gram, which one the rule picks,
and the largest difference between the two results relative to the largest entry.
"""

from __future__ import annotations

import argparse
import time

import torch

from meldkit.methods.wudi import wudi_closed_form

DEFAULT_SHAPES = ["512x512", "1408x512", "512x1408", "1024x1024"]


def _best(fn: object, repeat: int) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), torch.empty(0)
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="ROWSxCOLS")
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, T = {args.tasks}")
    print("| shape | gram s | stacked s | stacked/gram | rule picks | max rel. diff |")
    print("|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for shape in args.shapes:
        rows, cols = (int(v) for v in shape.split("x"))
        taus = [torch.randn(rows, cols, generator=g) * 1e-3 for _ in range(args.tasks)]
        t_gram, gram = _best(lambda t=taus: wudi_closed_form(t, 1e-5, "gram"), args.repeat)
        t_stack, stacked = _best(lambda t=taus: wudi_closed_form(t, 1e-5, "stacked"), args.repeat)
        picks = "stacked" if 2 * args.tasks * rows <= cols else "gram"
        diff = float((gram - stacked).abs().max() / gram.abs().max())
        print(
            f"| {shape} | {t_gram:.2f} | {t_stack:.2f} | {t_stack / t_gram:.2f} | {picks} "
            f"| {diff:.1e} |"
        )


if __name__ == "__main__":
    main()
