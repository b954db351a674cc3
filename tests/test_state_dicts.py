"""merge_state_dicts / prepare_state_dict_merge: in-memory merges, equal to recipe merges."""

from __future__ import annotations

import pytest
import torch

from meldkit.api import merge_state_dicts, prepare_state_dict_merge, run_merge
from meldkit.errors import (
    InputError,
    MeldError,
    MergeRuntimeError,
    OptionError,
    PlanError,
    RecipeError,
)
from meldkit.testing import read_model


def _t(rows: list[list[float]], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


A = {"x.weight": _t([[1, 2], [3, 4]])}
B = {"x.weight": _t([[5, 6], [7, 8]])}


# -- equal to `meldkit merge` on the same tensors -------------------------------------------
RECIPES = {
    # method: (recipe body over base/ft1/ft2, merge_state_dicts keywords over [ft1, ft2])
    "linear": (
        {
            "models": [
                {"model": "ft1", "parameters": {"weight": [0.2, 0.8]}},
                {"model": "ft2", "parameters": {"weight": 0.5}},
            ]
        },
        {"model_parameters": [{"weight": [0.2, 0.8]}, {"weight": 0.5}]},
    ),
    "ties": (
        {
            "base_model": "base",
            "models": [
                {"model": "ft1", "parameters": {"weight": 0.6, "density": 0.5}},
                {"model": "ft2", "parameters": {"weight": 0.4, "density": [0.3, 0.9]}},
            ],
            "parameters": {"normalize": False},
        },
        {
            "base": "base",
            "parameters": {"normalize": False},
            "model_parameters": {
                "ft1": {"weight": 0.6, "density": 0.5},
                "ft2": {"weight": 0.4, "density": [0.3, 0.9]},
            },
        },
    ),
    "dare_ties": (
        {
            "base_model": "base",
            "models": [
                {"model": "ft1", "parameters": {"weight": 0.6, "density": 0.5}},
                {"model": "ft2", "parameters": {"weight": 0.4, "density": 0.7}},
            ],
        },
        {
            "base": "base",
            "seed": 11,
            "model_parameters": {
                "ft1": {"weight": 0.6, "density": 0.5},
                "ft2": {"weight": 0.4, "density": 0.7},
            },
        },
    ),
    "slerp": (
        {
            "base_model": "base",
            "models": [{"model": "ft1"}],
            "parameters": {
                "t": [{"filter": "self_attn", "value": [0.0, 0.5, 1.0]}, {"value": 0.3}]
            },
        },
        {
            "base": "base",
            "parameters": {
                "t": [{"filter": "self_attn", "value": [0.0, 0.5, 1.0]}, {"value": 0.3}]
            },
        },
    ),
}


def _with_paths(body: object, folders: dict[str, str]) -> object:
    if isinstance(body, dict):
        return {k: _with_paths(v, folders) for k, v in body.items()}
    if isinstance(body, list):
        return [_with_paths(v, folders) for v in body]
    return folders.get(body, body) if isinstance(body, str) else body


@pytest.mark.parametrize("method", sorted(RECIPES))
def test_equals_recipe_merge(method, llama_family, tmp_path):
    base, fts = llama_family
    folders = {"base": str(base), "ft1": str(fts[0]), "ft2": str(fts[1])}
    body, keywords = RECIPES[method]
    recipe = {"merge_method": method, **_with_paths(body, folders)}
    run_merge(recipe, tmp_path / "out", quiet=True, seed=keywords.get("seed"))
    expected = read_model(tmp_path / "out")
    # In the recipe's input order (the base last, as the planner appends it): random methods
    # draw their masks input by input.
    used = {k: read_model(folders[k]) for k in ("ft1", "ft2", "base") if k in str(body)}
    got = merge_state_dicts(used, method, **keywords)
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype
        assert torch.equal(got[name], tensor), name


# -- golden values ----------------------------------------------------------------------------
def test_linear_golden_2x2():
    got = merge_state_dicts([A, B], "linear", model_parameters=[{"weight": 1.0}, {"weight": 3.0}])
    # normalised weights 0.25, 0.75: 0.25*A + 0.75*B
    assert torch.equal(got["x.weight"], _t([[4, 5], [6, 7]]))


def test_task_arithmetic_golden_2x2():
    base = {"x.weight": _t([[1, 1], [1, 1]])}
    a = {"x.weight": _t([[2, 3], [4, 5]])}
    b = {"x.weight": _t([[0, 1], [1, 3]])}
    got = merge_state_dicts(
        [a, b], "task_arithmetic", base=base, model_parameters=[{"weight": 1.0}, {"weight": 0.5}]
    )
    # base + 1.0*(a - base) + 0.5*(b - base)
    assert torch.equal(got["x.weight"], _t([[1.5, 3], [4, 6]]))


def test_gradient_over_layer_index_and_filters():
    def model(value: float) -> dict[str, torch.Tensor]:
        return {
            f"layers.{i}.{part}": torch.full((2,), value)
            for i in range(3)
            for part in ("mlp", "attn")
        }

    weight = [{"filter": "attn", "value": 0.5}, {"value": [0.0, 1.0]}]
    got = merge_state_dicts(
        [model(0.0), model(8.0)],
        "linear",
        model_parameters=[{"weight": 1.0}, {"weight": weight}],
        parameters={"normalize": True},
    )
    # mlp: weight of the second input is t = i/2 (layer i of 3): 0, 0.5, 1 -> 8t/(1+t)
    mlp = [got[f"layers.{i}.mlp"][0].item() for i in range(3)]
    assert mlp == [0.0, pytest.approx(8 * 0.5 / 1.5, rel=1e-6), 4.0]
    # attn: a constant 0.5 -> 8*0.5/1.5 everywhere
    assert all(got[f"layers.{i}.attn"][0].item() == pytest.approx(8 / 3) for i in range(3))


def test_bf16_inputs_float32_math_one_cast():
    a = {"w": _t([[1.0, 1.0]], torch.bfloat16)}
    b = {"w": _t([[1.0 + 2**-7, 3.0]], torch.bfloat16)}
    got = merge_state_dicts([a, b], "linear", {"weight": 1.0})
    assert got["w"].dtype == torch.bfloat16
    exact = (a["w"].float() + b["w"].float()) / 2
    assert torch.equal(got["w"], exact.to(torch.bfloat16))
    wide = merge_state_dicts([a, b], "linear", {"weight": 1.0}, out_dtype="float32")
    assert wide["w"].dtype == torch.float32 and torch.equal(wide["w"], exact)


# -- properties --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "keywords"),
    [
        ("linear", {"parameters": {"weight": 1.0}}),
        ("ties", {"base": 0, "parameters": {"weight": 1.0, "density": 0.5}}),
        ("slerp", {"base": 0, "parameters": {"t": 0.4}}),
    ],
)
def test_identical_inputs_return_the_input(method, keywords, llama_family):
    state = read_model(llama_family[0])
    got = merge_state_dicts([state, state], method, **keywords)
    assert sorted(got) == sorted(state)
    for name, tensor in state.items():
        assert torch.allclose(got[name], tensor, rtol=0, atol=1e-6), name


def test_seeded_and_reproducible():
    torch.manual_seed(0)
    base = {"w": torch.randn(8, 8)}
    fts = [{"w": base["w"] + torch.randn(8, 8)} for _ in range(2)]
    kw = {"base": base, "parameters": {"weight": 0.5, "density": 0.5}}
    one = merge_state_dicts(fts, "dare_ties", seed=3, **kw)
    assert torch.equal(one["w"], merge_state_dicts(fts, "dare_ties", seed=3, **kw)["w"])
    assert not torch.equal(one["w"], merge_state_dicts(fts, "dare_ties", seed=4, **kw)["w"])


def test_prepared_merge_many_parameter_sets_inputs_untouched():
    a, b = {k: v.clone() for k, v in A.items()}, {k: v.clone() for k, v in B.items()}
    prepared = prepare_state_dict_merge(
        [a, b], "linear", model_parameters=[{"weight": 1}, {"weight": 1}]
    )
    assert prepared.names == ["model_0", "model_1"]
    assert torch.equal(prepared.merge()["x.weight"], _t([[3, 4], [5, 6]]))
    got = prepared.merge(model_parameters=[{"weight": 3.0}, {"weight": 1.0}])
    assert torch.equal(got["x.weight"], _t([[2, 3], [4, 5]]))
    assert torch.equal(a["x.weight"], A["x.weight"]) and torch.equal(b["x.weight"], B["x.weight"])


def test_out_fills_a_models_parameters_in_place():
    layer = torch.nn.Linear(2, 2, bias=False)
    states = [{"weight": A["x.weight"]}, {"weight": B["x.weight"]}]
    target = dict(layer.named_parameters())
    storage = layer.weight.data_ptr()
    returned = merge_state_dicts(states, "linear", {"weight": 1.0}, out=target)
    assert returned is target and layer.weight.data_ptr() == storage
    assert torch.equal(layer.weight.detach(), _t([[3, 4], [5, 6]]))


def test_intersection_and_union():
    a = {"x.weight": A["x.weight"], "only_a": torch.ones(2)}
    b = {"x.weight": B["x.weight"], "only_b": torch.full((3,), 2.0)}
    inter = merge_state_dicts([a, b], "linear", {"weight": 1.0}, missing="intersection")
    assert sorted(inter) == ["x.weight"]
    union = merge_state_dicts([a, b], "linear", {"weight": 1.0}, missing="union")
    assert sorted(union) == ["only_a", "only_b", "x.weight"]
    assert torch.equal(union["only_a"], torch.ones(2))  # from the one input that has it
    assert torch.equal(union["only_b"], torch.full((3,), 2.0))
    assert torch.equal(union["x.weight"], _t([[3, 4], [5, 6]]))


# -- errors, exact text --------------------------------------------------------------------------
def test_unknown_method_suggests():
    with pytest.raises(RecipeError) as err:
        merge_state_dicts([A, B], "lineer")
    assert err.value.message == "unknown merge_method 'lineer'. Did you mean 'linear'?"


def test_missing_tensor_every_one_at_once():
    a = {"x.weight": A["x.weight"], "y": torch.ones(2), "z": torch.ones(1)}
    with pytest.raises(PlanError) as err:
        merge_state_dicts([a, B], "linear", {"weight": 1.0})
    assert err.value.problems == [
        "tensor y is missing from model_1 (present in model_0)",
        "tensor z is missing from model_1 (present in model_0)",
    ]
    assert err.value.hint == (
        'merge only the tensors every input has (missing="intersection"), or every tensor from '
        'the inputs that have it (missing="union")'
    )


def test_shape_mismatch_names_the_tensor():
    with pytest.raises(PlanError) as err:
        merge_state_dicts({"a": A, "b": {"x.weight": torch.ones(3, 2)}}, "linear", {"weight": 1})
    assert err.value.message == "tensor x.weight has different shapes: a [2, 2], b [3, 2]"


def test_bad_parameters_and_inputs():
    with pytest.raises(PlanError) as err:
        merge_state_dicts([A, B], "linear", {"weight": "heavy"})
    assert err.value.problems == [
        "parameter 'weight' for model model_0: expected a number, got 'heavy'",
        "parameter 'weight' for model model_1: expected a number, got 'heavy'",
    ]
    with pytest.raises(PlanError) as err:
        merge_state_dicts([A, B], "ties", {"weight": 1.0, "density": 0.5})
    assert err.value.message == "ties needs a base model; add `base_model:` to the recipe"
    with pytest.raises(InputError) as err:
        merge_state_dicts([A, {"x.weight": 1}], "linear", {"weight": 1})
    assert err.value.message == "state dict model_1: 'x.weight' is a int, not a tensor"
    with pytest.raises(OptionError) as err:
        merge_state_dicts(A, "linear")
    assert err.value.message == "merge_state_dicts takes several state dicts; got a single one"


def test_device_is_checked_and_cpu_results_stay_on_it():
    got = merge_state_dicts([A, B], "linear", {"weight": 1.0}, device="auto")
    assert got["x.weight"].device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(MeldError) as err:
            merge_state_dicts([A, B], "linear", {"weight": 1.0}, device="cuda")
        assert err.value.message == "device 'cuda' was asked for but no CUDA GPU is available"
        assert err.value.hint == 'use device="cpu" (the default) or device="auto"'


def test_prepared_parameters_are_replaced_one_at_a_time():
    prepared = prepare_state_dict_merge(
        [A, B], "linear", {"normalize": False}, model_parameters=[{"weight": 1}, {"weight": 1}]
    )
    assert torch.equal(prepared.merge()["x.weight"], A["x.weight"] + B["x.weight"])
    # new model weights, the prepared normalize=False kept
    got = prepared.merge(model_parameters=[{"weight": 0.5}, {"weight": 0.0}])
    assert torch.equal(got["x.weight"], 0.5 * A["x.weight"])
    # new shared parameters, the prepared weights kept
    assert torch.equal(prepared.merge({})["x.weight"], _t([[3, 4], [5, 6]]))


def test_out_with_a_wrong_shape_is_refused_before_any_write():
    out = {"x.weight": torch.zeros(3, 2)}
    with pytest.raises(PlanError) as err:
        merge_state_dicts([A, B], "linear", {"weight": 1.0}, out=out)
    assert err.value.message == "out['x.weight'] has shape [3, 2]; the merged tensor has [2, 2]"
    assert torch.equal(out["x.weight"], torch.zeros(3, 2))


def test_union_still_needs_equal_layer_counts_and_integers_must_agree():
    two = {f"layers.{i}.w": torch.ones(2) for i in range(2)}
    three = {f"layers.{i}.w": torch.ones(2) for i in range(3)}
    with pytest.raises(PlanError) as err:
        merge_state_dicts([two, three], "linear", {"weight": 1.0}, missing="union")
    assert err.value.message == (
        "the models have different numbers of layers: model_0 (2 layers), model_1 (3 layers)"
    )
    same = merge_state_dicts(
        [{"n": torch.tensor(3), "w": torch.ones(1)}, {"n": torch.tensor(3), "w": torch.zeros(1)}],
        "linear",
        {"weight": 1.0},
    )
    assert same["n"].dtype == torch.int64 and same["n"].item() == 3
    with pytest.raises(MergeRuntimeError) as err2:
        merge_state_dicts(
            [{"n": torch.tensor(3)}, {"n": torch.tensor(4)}], "linear", {"weight": 1.0}
        )
    assert err2.value.message == "integer tensor n differs between the inputs and cannot be merged"


def test_norm_match_equals_the_engines_pre_pass(llama_family, tmp_path):
    base, fts = llama_family
    recipe = {
        "merge_method": "task_arithmetic",
        "base_model": str(base),
        "models": [{"model": str(f), "parameters": {"weight": 1.0}} for f in fts],
        "parameters": {"lambda": 0.5, "norm_match": "mean"},
    }
    run_merge(recipe, tmp_path / "out", quiet=True)
    expected = read_model(tmp_path / "out")
    used = {"ft1": read_model(fts[0]), "ft2": read_model(fts[1]), "base": read_model(base)}
    weights = {"ft1": {"weight": 1.0}, "ft2": {"weight": 1.0}}
    got = merge_state_dicts(
        used,
        "task_arithmetic",
        {"lambda": 0.5, "norm_match": "mean"},
        base="base",
        model_parameters=weights,
    )
    for key, tensor in expected.items():
        assert torch.equal(got[key], tensor), key


def test_norm_match_in_memory_golden():
    # ft2's task vector is 10x ft1's: both are scaled to the mean norm (5.5x ft1's), so the
    # merge is base + 0.5 * (5.5 + 5.5) * tau1.
    base = {"w": _t([[1.0, 2.0], [3.0, 4.0]])}
    tau = _t([[0.5, -1.0], [0.25, 2.0]])
    dicts = {"ft1": {"w": base["w"] + tau}, "ft2": {"w": base["w"] + 10 * tau}, "base": base}
    got = merge_state_dicts(
        dicts,
        "task_arithmetic",
        {"lambda": 0.5, "norm_match": "mean"},
        base="base",
        model_parameters={"ft1": {"weight": 1.0}, "ft2": {"weight": 1.0}},
    )
    assert torch.allclose(got["w"], base["w"] + 5.5 * tau, rtol=1e-6, atol=1e-6)
