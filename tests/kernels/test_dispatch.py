"""The one door between the reference math and the fast paths.

* every spec's ``fast_impl`` names a FastPath in ``meldkit.kernels``, named like the method;
* :func:`~meldkit.methods.registry.load_merge_function` picks, per call, the fast path for the
  calls it supports (CPU bf16) and the reference for the others (float64);
* ``MELDKIT_REFERENCE_MATH=1`` gives the reference function itself;
* no module of ``meldkit.methods`` imports ``meldkit.kernels``.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import meldkit.methods
from meldkit.kernels import runner
from meldkit.methods import MergeContext, get_method, list_methods, load_merge_function, registry
from meldkit.methods.registry import FastPath
from tests.kernels.helpers import fast_path
from tests.methods.helpers import reference_function, resolve_params

FAST = sorted(spec.name for spec in list_methods() if spec.fast_impl is not None)

# Per method: (number of inputs, base index, shared parameters) for a small valid call.
CALLS: dict[str, tuple[int, int | None, dict[str, Any]]] = {
    "arcee_fusion": (2, 0, {}),
    "nearswap": (2, 0, {"t": 0.01}),
    "slerp": (2, 0, {"t": 0.3}),
    "nuslerp": (3, 0, {}),
    "karcher": (3, None, {}),
    "model_stock": (3, 0, {}),
}


def _call(
    name: str, dtype: torch.dtype
) -> tuple[list[torch.Tensor], int | None, dict[str, Any], list[dict[str, Any]], MergeContext]:
    n, base_index, shared = CALLS.get(name, (3, 0, {}))
    g = torch.Generator().manual_seed(len(name))
    base = torch.randn(16, 24, generator=g)
    inputs = [base.to(dtype)] + [
        (base + 0.1 * torch.randn(16, 24, generator=g)).to(dtype) for _ in range(n - 1)
    ]
    shared_v, per_v = resolve_params(
        get_method(name), n, base_index, shared, {"weight": 0.5, "density": 0.5}
    )
    return inputs, base_index, shared_v, per_v, MergeContext("model.layers.0.mlp.up_proj.weight", 1)


@pytest.fixture
def fresh_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An empty cache of loaded merge functions (restored afterwards)."""
    monkeypatch.setattr(registry, "_LOADED", {})
    yield


def test_fast_impls_are_fast_paths_named_like_their_method() -> None:
    assert {"ties", "sce", "slerp", "ram", "nearswap", "arcee_fusion"} <= set(FAST)
    for name in FAST:
        spec = get_method(name)
        assert spec.fast_impl is not None and spec.fast_impl.startswith("meldkit.kernels.")
        assert spec.fast_impl.endswith(f":{name}")
        assert isinstance(fast_path(name), FastPath)


@pytest.mark.parametrize("value", ["1", "yes"])
def test_reference_math_gives_the_reference_function(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MELDKIT_REFERENCE_MATH", value)
    assert registry.reference_math_only()
    import meldkit.methods.task_vectors

    assert load_merge_function(get_method("ties")) is meldkit.methods.task_vectors.ties
    for spec in list_methods():
        assert load_merge_function(spec) is reference_function(spec.name)


@pytest.mark.parametrize("value", [None, "", "0"])
def test_without_reference_math_the_fast_paths_are_dispatched(
    value: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv("MELDKIT_REFERENCE_MATH", raising=False)
    else:
        monkeypatch.setenv("MELDKIT_REFERENCE_MATH", value)
    assert not registry.reference_math_only()
    for name in FAST:
        assert load_merge_function(get_method(name)) is not reference_function(name)
    # Methods without a fast path: their reference, as it is.
    assert load_merge_function(get_method("linear")) is reference_function("linear")


def test_the_variable_is_read_when_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MELDKIT_REFERENCE_MATH", raising=False)
    dispatched = load_merge_function(get_method("sce"))
    monkeypatch.setenv("MELDKIT_REFERENCE_MATH", "1")
    assert load_merge_function(get_method("sce")) is reference_function("sce")
    monkeypatch.setenv("MELDKIT_REFERENCE_MATH", "0")
    assert load_merge_function(get_method("sce")) is dispatched  # cached per setting


@pytest.mark.skipif(runner.load("primitives") is None, reason="numba not installed")
@pytest.mark.parametrize("name", FAST)
def test_dispatch_picks_the_fast_path_for_cpu_bf16_and_the_reference_for_float64(
    name: str, monkeypatch: pytest.MonkeyPatch, fresh_cache: None
) -> None:
    monkeypatch.delenv("MELDKIT_REFERENCE_MATH", raising=False)
    spec = get_method(name)
    assert spec.fast_impl is not None
    module_name, _, attr = spec.fast_impl.partition(":")
    real = fast_path(name)
    calls: list[torch.dtype] = []

    def spy(inputs: Any, *args: Any) -> torch.Tensor:
        calls.append(inputs[0].dtype)
        return real.merge(inputs, *args)

    monkeypatch.setattr(importlib.import_module(module_name), attr, FastPath(real.supports, spy))
    fn = load_merge_function(spec)

    bf16 = _call(name, torch.bfloat16)
    assert real.supports(*bf16)
    out = fn(*bf16)
    assert calls == [torch.bfloat16]
    assert torch.equal(out, real.merge(*_call(name, torch.bfloat16)))

    f64 = _call(name, torch.float64)
    assert not real.supports(*f64)
    out = fn(*f64)
    assert calls == [torch.bfloat16]  # the reference ran
    assert out.dtype == torch.float64
    assert torch.equal(out, reference_function(name)(*_call(name, torch.float64)))


@pytest.mark.skipif(runner.load("primitives") is None, reason="numba not installed")
def test_reference_math_skips_the_fast_path(
    monkeypatch: pytest.MonkeyPatch, fresh_cache: None
) -> None:
    monkeypatch.setenv("MELDKIT_REFERENCE_MATH", "1")
    import meldkit.kernels.task_vectors as fast_tv

    real = fast_tv.ties
    monkeypatch.setattr(
        fast_tv, "ties", FastPath(real.supports, lambda *a: pytest.fail("fast path"))
    )
    inputs = _call("ties", torch.bfloat16)
    assert real.supports(*inputs)
    out = load_merge_function(get_method("ties"))(*inputs)
    assert torch.equal(out, reference_function("ties")(*_call("ties", torch.bfloat16)))


def _imported_modules(path: Path, package: str) -> Iterator[tuple[int, str]]:
    """``(line, module)`` of every import statement in ``path`` (module level or inside
    functions, relative imports resolved against ``package``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{anchor}.{node.module}" if node.module else anchor
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:  # `from meldkit import kernels`
                yield node.lineno, f"{module}.{alias.name}"


def test_methods_never_import_kernels() -> None:
    root = Path(meldkit.methods.__file__).parent
    files = sorted(root.rglob("*.py"))
    assert len(files) > 10
    offenders = []
    for path in files:
        package = "meldkit." + ".".join(path.relative_to(root.parent).with_suffix("").parts[:-1])
        for line, module in _imported_modules(path, package):
            if module == "meldkit.kernels" or module.startswith("meldkit.kernels."):
                offenders.append(f"{path.relative_to(root.parent)}:{line}: {module}")
    assert not offenders, offenders


def test_the_import_check_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "def f():\n    from ..kernels import runner\n    import meldkit.kernels.sce\n"
        "from meldkit import kernels\n",
        encoding="utf-8",
    )
    found = [m for _, m in _imported_modules(source, "meldkit.methods")]
    assert "meldkit.kernels" in found and "meldkit.kernels.sce" in found
    assert "meldkit.kernels.runner" in found
