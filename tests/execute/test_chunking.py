"""Large tensors of element-wise methods are computed in row blocks, with identical bytes."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from meldkit.api import run_merge
from meldkit.execute import tensors as tensor_module
from meldkit.execute.policy import EnginePolicy
from meldkit.methods.registry import get_method
from meldkit.plan import plan_merge


def _linear(a, b):
    return f"merge_method: linear\nmodels: [{{model: {a}, parameters: {{weight: 0.3}}}}, {{model: {b}, parameters: {{weight: 0.7}}}}]\n"


def test_split_pieces_covers_every_row_once(llama_family):
    base, (a, b) = llama_family
    plan = plan_merge(_linear(a, b))
    pieces = list(tensor_module.split_pieces(plan.tensors, plan.method, set(), max_elements=100))
    by_tensor: dict[str, list] = {}
    for p in pieces:
        by_tensor.setdefault(p.tensor.name, []).append(p)
    emb = by_tensor["model.embed_tokens.weight"]  # 64 x 16 = 1024 elements -> blocks of 6 rows
    assert [p.rows for p in emb][:2] == [(0, 6), (6, 12)] and emb[-1].rows == (60, 64)
    assert [p.last for p in emb].count(True) == 1 and emb[-1].last
    norm = by_tensor["model.norm.weight"]  # 16 elements: whole
    assert [(p.rows, p.last) for p in norm] == [(None, True)]
    ties = get_method("ties")  # not element-wise: never split
    assert all(
        p.rows is None
        for p in tensor_module.split_pieces(plan.tensors, ties, set(), max_elements=100)
    )


@pytest.mark.parametrize("recipe_kind", ["linear", "passthrough", "task_arithmetic"])
def test_chunked_merge_equals_whole_tensor_merge(llama_family, tmp_path, recipe_kind):
    base, (a, b) = llama_family
    recipe = {
        "linear": _linear(a, b),
        "passthrough": f"merge_method: passthrough\nslices:\n  - sources: [{{model: {a}, layer_range: [0, 4], parameters: {{scale: 0.5}}}}]\n",
        "task_arithmetic": f"merge_method: task_arithmetic\nbase_model: {base}\nmodels: [{{model: {a}, parameters: {{weight: 0.5}}}}, {{model: {b}, parameters: {{weight: 0.8}}}}]\n",
    }[recipe_kind]
    run_merge(recipe, tmp_path / "whole", quiet=True)
    run_merge(recipe, tmp_path / "chunked", quiet=True, policy=EnginePolicy(chunk_elements=100))
    assert (tmp_path / "whole" / "model.safetensors").read_bytes() == (
        tmp_path / "chunked" / "model.safetensors"
    ).read_bytes()


def test_compute_order_pulls_big_tensors_forward(llama_family):
    base, (a, b) = llama_family
    plan = plan_merge(_linear(a, b))
    names = [t.name for t in plan.tensors]
    assert names[0] == "model.embed_tokens.weight" and names[-2:] == [
        "lm_head.weight",
        "model.norm.weight",
    ]
    order = [t.name for t in tensor_module.compute_order(plan.tensors)]
    assert sorted(order) == sorted(names)  # every tensor once
    largest = max(math.prod(t.shape) for t in plan.tensors)
    big = {
        t.name for t in plan.tensors if math.prod(t.shape) >= largest / 2
    }  # vocabulary tensors, MLPs
    for group in (big, set(names) - big):  # each group keeps the plan's order
        assert [n for n in order if n in group] == [n for n in names if n in group]
    assert all(order.index(n) <= names.index(n) for n in big)  # big ones only move forward
    assert all(order.index(n) <= names.index(n) + len(big) for n in names)
    assert (
        order[-1] == "model.norm.weight"
        and order.index("lm_head.weight") < names.index("lm_head.weight") - 10
    )
    # With a gap no run of small tensors fills, only the first big tensor would move: here it
    # is already first, so the plan's order stays.
    assert [t.name for t in tensor_module.compute_order(plan.tensors, 1 << 60)] == names


def test_compute_order_gaps():
    class T:
        def __init__(self, name: str, n: int) -> None:
            self.name, self.shape = name, (n,)
            self.sources = [
                SimpleNamespace(info=SimpleNamespace(nbytes=2 * n))
            ] * 2  # two bf16 inputs

    # a, e, f, g, h are small; b, c, d big (at least half of the largest, 100)
    ts = [
        T("a", 10),
        T("b", 100),
        T("e", 1),
        T("f", 30),
        T("c", 60),
        T("g", 20),
        T("h", 5),
        T("d", 100),
    ]
    order = tensor_module.compute_order
    assert [t.name for t in order(ts)] == ["b", "a", "c", "e", "d", "f", "g", "h"]
    # 80 bytes of small inputs after each big one: c stays in place (a, e, f make 164), and d
    # comes once g (80) has passed
    assert [t.name for t in order(ts, 80)] == ["b", "a", "e", "f", "c", "g", "d", "h"]
    assert [t.name for t in order([T("z", 0)])] == ["z"]
    assert order([]) == []


def _consensus(base, a, b, base_method: str) -> str:
    return (
        f"merge_method: consensus\nbase_model: {base}\n"
        f"models: [{{model: {a}, parameters: {{weight: 0.6}}}}, {{model: {b}}}]\n"
        f"parameters: {{base_method: {base_method}, k: 1, lambda: 0.9}}\n"
    )


def test_consensus_is_split_over_task_arithmetic_only(llama_family):
    # Its masks compare entries of one position; over TIES the density trims by the whole
    # tensor's magnitudes, so a block of rows would rank against the wrong entries.
    base, (a, b) = llama_family
    consensus = get_method("consensus")
    for base_method, split in (("task_arithmetic", True), ("ties", False)):
        plan = plan_merge(_consensus(base, a, b, base_method))
        pieces = list(tensor_module.split_pieces(plan.tensors, consensus, set(), max_elements=100))
        emb = [p for p in pieces if p.tensor.name == "model.embed_tokens.weight"]
        assert (len(emb) > 1) is split, base_method


def test_chunked_consensus_equals_whole_tensor_merge(llama_family, tmp_path):
    base, (a, b) = llama_family
    recipe = _consensus(base, a, b, "task_arithmetic")
    run_merge(recipe, tmp_path / "whole", quiet=True)
    run_merge(recipe, tmp_path / "chunked", quiet=True, policy=EnginePolicy(chunk_elements=100))
    assert (tmp_path / "whole" / "model.safetensors").read_bytes() == (
        tmp_path / "chunked" / "model.safetensors"
    ).read_bytes()
