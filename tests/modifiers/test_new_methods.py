"""The modifiers with each of the methods beyond MergeKit, whatever their math: LiNeS scales
the method's own result, and identical inputs still return the base with both modifiers on.
Slow (two merges per method): ``pytest -m slow tests/modifiers``."""

from __future__ import annotations

import pytest
import torch

from meldkit.api import run_merge
from meldkit.errors import RecipeError
from meldkit.methods.registry import get_method
from meldkit.testing import read_model

from .test_lines import expected_scale

NEW_METHODS = ("tsv", "iso_c", "iso_cts", "wudi", "pcb", "magmax", "consensus")


def _recipe(method: str, base, fts, extra: str = "") -> str:
    models = "".join(f"  - model: {f}\n" for f in fts)
    text = f"merge_method: {method}\nbase_model: {base}\nmodels:\n{models}"
    return text + (f"parameters:\n{extra}" if extra else "")


@pytest.mark.slow
@pytest.mark.parametrize("method", NEW_METHODS)
def test_lines_scales_the_methods_result(method, family, tmp_path):
    try:
        get_method(method)
    except RecipeError:
        pytest.skip(f"{method} is not registered")
    base, fts = family
    run_merge(_recipe(method, base, fts), tmp_path / "plain", quiet=True, seed=1)
    lines = "  lines: {alpha: 0.3, beta: 0.6}\n"
    run_merge(_recipe(method, base, fts, lines), tmp_path / "lines", quiet=True, seed=1)
    plain, scaled, b = (read_model(p) for p in (tmp_path / "plain", tmp_path / "lines", base))
    for name in b:
        want = b[name] + expected_scale(name) * (plain[name] - b[name])
        torch.testing.assert_close(scaled[name], want, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("method", NEW_METHODS)
def test_identical_inputs_return_the_base_with_both_modifiers(method, family, tmp_path):
    try:
        get_method(method)
    except RecipeError:
        pytest.skip(f"{method} is not registered")
    base, _ = family
    extra = "  lines: {alpha: 0.3, beta: 0.6}\n  norm_match: mean\n"
    run_merge(_recipe(method, base, [base, base], extra), tmp_path / "out", quiet=True)
    out, b = read_model(tmp_path / "out"), read_model(base)
    for name in b:
        torch.testing.assert_close(out[name], b[name], rtol=0, atol=1e-7, msg=name)
