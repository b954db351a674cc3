"""docs/adding_a_method.md works as written: its method module, catalog entry, fast path and
tests are run here, verbatim, and the new method merges a real checkpoint."""

from __future__ import annotations

import dataclasses
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import meldkit
from meldkit.methods import registry
from meldkit.methods.registry import (
    MethodSpec,
    ParamSpec,
    get_method,
    load_merge_function,
    register,
)
from meldkit.testing import make_model_family

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding_a_method.md"


def _blocks() -> dict[str, str]:
    """The page's Python blocks by role, in page order: the method module (fenced with four
    backticks, since its docstring holds a YAML block), then the entry, the tests, the fast
    path and its test."""
    text = DOC.read_text(encoding="utf-8")
    module = re.findall(r"^````python\n(.*?)^````$", text, re.S | re.M)
    others = re.findall(r"^```python\n(.*?)^```$", text, re.S | re.M)
    assert len(module) == 1 and len(others) == 4, (len(module), len(others))
    return dict(zip(["module", "entry", "tests", "fast", "fast_test"], module + others))


def _load_module(name: str, code: str, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__file__ = f"{DOC}:{name}"
    monkeypatch.setitem(sys.modules, name, module)
    exec(compile(code, module.__file__, "exec"), module.__dict__)
    return module


def _run_tests(code: str, label: str) -> int:
    namespace: dict[str, Any] = {"__name__": label}
    exec(compile(code, f"{DOC}:{label}", "exec"), namespace)
    tests = [fn for name, fn in namespace.items() if name.startswith("test_") and callable(fn)]
    for fn in tests:
        fn()
    return len(tests)


@pytest.fixture
def median(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The example registered as the page says, in a registry restored afterwards."""
    get_method("linear")  # the built-in catalog first, so the copies below hold it
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_LOADED", dict(registry._LOADED))
    blocks = _blocks()
    _load_module("meldkit.methods.median", blocks["module"], monkeypatch)
    exec(blocks["entry"], {"register": register, "MethodSpec": MethodSpec, "ParamSpec": ParamSpec})
    return blocks


def test_one_file_and_one_entry_make_a_method(median: dict[str, str]) -> None:
    spec = get_method("median")
    assert spec.impl == "meldkit.methods.median:median" and spec.fast_impl is None
    fn = load_merge_function(spec)
    assert fn is sys.modules["meldkit.methods.median"].median
    assert _run_tests(median["tests"], "test_median") == 2
    # An even count without a base: columns (1, 5) -> 3 and (4, 2) -> 3.
    out = fn(
        [torch.tensor([1.0, 4.0]), torch.tensor([5.0, 2.0])],
        None,
        {},
        [{}, {}],
        registry.MergeContext("w"),
    )
    assert torch.equal(out, torch.tensor([3.0, 3.0]))


def test_fast_path_is_chosen_by_the_registry(
    median: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = _load_module("meldkit.kernels.median", median["fast"], monkeypatch)
    register(dataclasses.replace(get_method("median"), fast_impl="meldkit.kernels.median:median"))
    assert _run_tests(median["fast_test"], "test_median_fast") == 1
    calls: list[int] = []
    original = fast.median.merge

    def spy(*args: Any) -> torch.Tensor:
        calls.append(len(args[0]))
        return original(*args)

    monkeypatch.setattr(fast, "median", registry.FastPath(fast.median.supports, spy))
    register(get_method("median"))  # forget the loaded function: the spy is looked up anew
    fn = load_merge_function(get_method("median"))
    x = [torch.randn(5, 7, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    reference = sys.modules["meldkit.methods.median"].median
    ctx = registry.MergeContext("w")
    assert torch.equal(fn(x, 0, {}, [{}] * 4, ctx), reference(x, 0, {}, [{}] * 4, ctx))
    assert calls == [4]  # base + three models: the fast path
    assert torch.equal(fn(x[:3], 0, {}, [{}] * 3, ctx), reference(x[:3], 0, {}, [{}] * 3, ctx))
    assert calls == [4]  # two models: the reference
    monkeypatch.setenv("MELDKIT_REFERENCE_MATH", "1")
    assert load_merge_function(get_method("median")) is reference


def test_example_merges_a_checkpoint(median: dict[str, str], tmp_path: Path) -> None:
    base, fts = make_model_family(tmp_path / "models", n=3)
    recipe = {
        "merge_method": "median",
        "base_model": str(base),
        "models": [{"model": str(f)} for f in fts],
        "dtype": "float32",
    }
    meldkit.run_merge(recipe, tmp_path / "out", quiet=True)
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    name = "model.layers.1.mlp.down_proj.weight"
    b = load_file(str(base / "model.safetensors"))[name]
    deltas = torch.stack([load_file(str(f / "model.safetensors"))[name] - b for f in fts])
    # median of three = the one that is neither the smallest nor the largest
    middle = deltas.sum(0) - deltas.max(0).values - deltas.min(0).values
    torch.testing.assert_close(out[name], b + middle, rtol=0, atol=1e-6)
