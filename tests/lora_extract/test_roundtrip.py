"""`model: ./base+./extracted` in a merge recipe reproduces the fine-tune to the reported error."""

from __future__ import annotations

import pytest
import torch

import meldkit
from meldkit.extract_lora import extract_lora
from meldkit.testing import read_model


@pytest.mark.parametrize("rule", [{"rank": 4}, {"energy": 0.999}])
def test_merge_of_base_plus_adapter_is_the_finetune(tiny, tmp_path, rule):
    base, _, low = tiny
    adapter = tmp_path / "adapter"
    report = extract_lora(base, low, adapter, **rule)
    recipe = {
        "merge_method": "passthrough",
        "models": [{"model": f"{base}+{adapter}"}],
        "dtype": "float32",
    }
    meldkit.run_merge(recipe, tmp_path / "merged", quiet=True, copy_tokenizer=False)
    merged, want, before = read_model(tmp_path / "merged"), read_model(low), read_model(base)
    errors = {m.module + ".weight": m.error for m in report.decomposed}
    for name, value in want.items():
        if name in errors:
            delta = (value - before[name]).norm()
            measured = float((merged[name] - value).norm() / delta)
            assert measured == pytest.approx(errors[name], abs=2e-6), name
            assert measured < 1e-5  # the deltas have rank <= 3
        else:
            torch.testing.assert_close(merged[name], value, atol=0, rtol=0)
