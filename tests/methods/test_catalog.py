"""The catalog: every MergeKit name is registered, importable, described, and checked."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from meldkit.methods import get_method, list_methods, load_merge_function
from meldkit.methods.describe import methods_json, methods_table
from meldkit.methods.task_vector_family import TASK_VECTOR_FAMILY

MERGEKIT_NAMES = {
    "linear",
    "slerp",
    "nuslerp",
    "multislerp",
    "karcher",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "sce",
    "ram",
    "ramplus_tl",
    "model_stock",
    "arcee_fusion",
    "nearswap",
    "passthrough",
}


def test_methods_json_lists_all_mergekit_names() -> None:
    names = {m["name"] for m in methods_json()}
    assert MERGEKIT_NAMES <= names
    json.dumps(methods_json())  # JSON-ready: no callables or tuples of objects


@pytest.mark.parametrize("name", sorted(MERGEKIT_NAMES))
def test_every_entry_imports(name: str) -> None:
    spec = get_method(name)
    fn = load_merge_function(spec)
    assert callable(fn)
    module = sys.modules[spec.impl.partition(":")[0]]
    doc = module.__doc__ or ""
    # Each method module documents its formula with a YAML example (passthrough/linear
    # predate this suite but follow the same rule); the task-vector family shares one module,
    # whose table lists every member.
    assert "```yaml" in doc
    if name in TASK_VECTOR_FAMILY:
        assert f"| {name} |" in doc and "merge_method: " in doc
    else:
        assert f"merge_method: {name}" in doc


def _module_of(name: str) -> str:
    return "task_vectors" if name in TASK_VECTOR_FAMILY else name


def test_merge_functions_are_named_like_their_method() -> None:
    for spec in list_methods():
        assert spec.impl == f"meldkit.methods.{_module_of(spec.name)}:{spec.name}"
        if spec.fast_impl is not None:  # a FastPath in meldkit.kernels, named like the method
            assert spec.fast_impl.startswith("meldkit.kernels.")
            assert spec.fast_impl.endswith(f":{spec.name}")


@pytest.mark.parametrize(
    ("name", "param", "scope", "default"),
    [
        ("ties", "normalize", "shared", True),
        ("ties", "rescale", "shared", False),
        ("dare_ties", "normalize", "shared", False),
        ("dare_ties", "rescale", "shared", True),
        ("dare_linear", "rescale", "shared", True),
        ("della", "normalize", "shared", True),
        ("della", "rescale", "shared", True),
        ("della", "epsilon", "per_non_base", 0.15),
        ("della_linear", "normalize", "shared", False),
        ("breadcrumbs", "gamma", "per_non_base", 0.01),
        ("breadcrumbs_ties", "gamma", "per_non_base", 0.01),
        ("task_arithmetic", "density", "per_non_base", 1.0),
        ("task_arithmetic", "lambda", "shared", 1.0),
        ("ties", "int8_mask", "shared", False),
        ("nuslerp", "nuslerp_flatten", "shared", True),
        ("nuslerp", "nuslerp_row_wise", "shared", False),
        ("multislerp", "normalize_weights", "shared", True),
        ("multislerp", "eps", "shared", 1e-8),
        ("karcher", "max_iter", "shared", 10),
        ("karcher", "tol", "shared", 1e-5),
        ("sce", "select_topk", "shared", 1.0),
        ("ram", "epsilon", "shared", 1e-5),
        ("ramplus_tl", "r", "shared", 0.1),
        ("ramplus_tl", "alpha", "shared", 0.2),
        ("model_stock", "filter_wise", "shared", False),
        ("linear", "normalize", "shared", True),
    ],
)
def test_parameters_match_mergekit(name: str, param: str, scope: str, default: object) -> None:
    p = get_method(name).param(param)
    assert p is not None and p.scope == scope and p.default == default and not p.required


@pytest.mark.parametrize(
    ("name", "param", "scope"),
    [
        ("linear", "weight", "per_input"),
        ("slerp", "t", "shared"),
        ("nearswap", "t", "shared"),
        ("nuslerp", "weight", "per_non_base"),
        ("multislerp", "weight", "per_non_base"),
        *[(n, "weight", "per_non_base") for n in TASK_VECTOR_FAMILY],
    ],
)
def test_required_parameters(name: str, param: str, scope: str) -> None:
    p = get_method(name).param(param)
    assert p is not None and p.required and p.scope == scope


def test_gamma_and_epsilon_only_where_mergekit_has_them() -> None:
    for name in TASK_VECTOR_FAMILY:
        spec = get_method(name)
        assert (spec.param("gamma") is not None) == name.startswith("breadcrumbs")
        assert (spec.param("epsilon") is not None) == name.startswith("della")


@pytest.mark.parametrize(
    ("name", "base", "min_inputs", "max_inputs", "min_nb", "max_nb", "policy"),
    [
        ("linear", "ignored", 1, None, 0, None, "merge_available"),
        ("karcher", "ignored", 1, None, 0, None, "merge_available"),
        ("slerp", "required", 2, 2, 0, None, "passthrough_single"),
        ("nuslerp", "optional", 2, 3, 2, 2, "passthrough_single"),
        ("multislerp", "optional", 1, None, 1, None, "merge_available"),
        ("ties", "required", 1, None, 0, None, "merge_available"),
        ("sce", "required", 1, None, 0, None, "merge_available"),
        ("model_stock", "required", 3, None, 2, None, "need_three"),
        ("arcee_fusion", "required", 2, 2, 0, None, "passthrough_single"),
        ("nearswap", "required", 2, 2, 0, None, "passthrough_base"),
        ("passthrough", "optional", 1, 1, 0, None, "merge_available"),
    ],
)
def test_input_contracts(
    name: str,
    base: str,
    min_inputs: int,
    max_inputs: int | None,
    min_nb: int,
    max_nb: int | None,
    policy: str,
) -> None:
    spec = get_method(name)
    assert (spec.base, spec.min_inputs, spec.max_inputs) == (base, min_inputs, max_inputs)
    assert (spec.min_non_base, spec.max_non_base, spec.optional_policy) == (min_nb, max_nb, policy)


def test_randomized_flags() -> None:
    random = {s.name for s in list_methods() if s.randomized}
    assert random == {"dare_ties", "dare_linear", "della", "della_linear", "arcee_fusion"}


def test_della_check() -> None:
    check = get_method("della").check
    assert check is not None
    ok = [{}, {"weight": 1, "density": 0.5, "epsilon": 0.1}]
    assert check({}, ok, 0) == []
    low = [{}, {"weight": 1, "density": 0.1, "epsilon": 0.15}]  # 0.1 - 0.15 < 0
    high = [{}, {"weight": 1, "density": 0.9, "epsilon": 0.1}]  # 0.9 + 0.1 == 1, not < 1
    assert len(check({}, low, 0)) == 1 and "input 1" in check({}, low, 0)[0]
    assert len(check({}, high, 0)) == 1
    # density >= 1 does not prune, so epsilon does not matter (see docs/compatibility.md).
    assert check({}, [{}, {"weight": 1, "density": 1.0, "epsilon": 0.15}], 0) == []
    assert get_method("della_linear").check is check


def test_linear_zero_weight_sum_is_refused() -> None:
    check = get_method("linear").check
    assert check is not None
    assert check({"normalize": True}, [{"weight": 0.1}, {"weight": 0.2}, {"weight": -0.3}], None)
    assert check({"normalize": False}, [{"weight": 1.0}, {"weight": -1.0}], None) == []
    assert check({"normalize": True}, [{"weight": 1.0}, {"weight": 0.0}], None) == []


def test_multislerp_zero_weight_sum_is_refused() -> None:
    check = get_method("multislerp").check
    assert check is not None
    assert check({"normalize_weights": True}, [{}, {"weight": 1.0}, {"weight": -1.0}], 0)
    assert check({"normalize_weights": False}, [{"weight": 1.0}, {"weight": -1.0}], None) == []
    # One model ignores its weight.
    assert check({"normalize_weights": True}, [{"weight": 0.0}], None) == []


def test_methods_table_mentions_every_method_and_param() -> None:
    table = methods_table()
    for spec in list_methods():
        assert f"{spec.name} (" in table
        for p in spec.params:
            assert p.name in table
    assert "https://arxiv.org/abs/2306.01708" in table  # TIES paper


def test_methods_json_fields() -> None:
    ties = next(m for m in methods_json() if m["name"] == "ties")
    assert ties["base"] == "required" and ties["reference_url"].startswith("https://")
    weight = next(p for p in ties["params"] if p["name"] == "weight")
    assert weight == {
        "name": "weight",
        "scope": "per_non_base",
        "kind": "float",
        "default": None,
        "required": True,
        "minimum": None,
        "maximum": None,
        "doc": weight["doc"],
    }


def test_describe_and_catalog_do_not_import_torch() -> None:
    code = (
        "import sys; from meldkit.methods.describe import methods_json, methods_table; "
        "methods_json(); methods_table(); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registering_first_does_not_hide_builtins() -> None:
    code = (
        "from meldkit.methods.registry import MethodSpec, register, get_method, list_methods; "
        "register(MethodSpec(name='my_method', pretty_name='Mine', impl='x:merge')); "
        "get_method('ties'); assert len(list_methods()) >= 21"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# describe_method / method_docs: one method in full, read from its module without importing it.


def test_method_docs_reads_the_module_docstring() -> None:
    from meldkit.methods.describe import method_docs

    formula, example = method_docs(get_method("slerp"))
    assert formula.startswith("SLERP: spherical interpolation between the base `a`")
    assert "out = sin((1-t)θ)/sin θ · a + sin(tθ)/sin θ · b" in formula
    assert "```" not in formula and "merge_method" not in formula
    assert example == (
        "merge_method: slerp\n"
        "base_model: ./chat\n"
        "models: [{model: ./chat}, {model: ./code}]\n"
        "parameters:\n"
        "  t: [{filter: self_attn, value: [0, 0.5, 1]}, {value: 0.5}]\n"
    )


@pytest.mark.parametrize("name", sorted(TASK_VECTOR_FAMILY))
def test_family_members_show_their_own_row(name: str) -> None:
    from meldkit.methods.describe import method_docs

    formula, example = method_docs(get_method(name))
    rows = [line for line in formula.splitlines() if line.startswith("|")]
    assert rows[0] == "| method | sparsifier | signs | normalize | rescale |"
    assert rows[1] == "|---|---|---|---|---|"
    assert len(rows) == 3 and rows[2].startswith(f"| {name} |")
    assert "sparsify(δ_i, density_i" in formula
    assert "TASK_VECTOR_FAMILY holds this table" in formula  # the :data: role is gone
    assert yaml.safe_load(example)["merge_method"] == name


def test_family_member_examples_use_their_own_parameters() -> None:
    from meldkit.methods.describe import method_docs

    _, example = method_docs(get_method("della"))
    recipe = yaml.safe_load(example)
    assert recipe["base_model"] == "./base"
    assert [m["parameters"] for m in recipe["models"]] == [
        {"weight": 0.5, "density": 0.5, "epsilon": 0.15}
    ] * 2
    _, example = method_docs(get_method("breadcrumbs"))
    assert yaml.safe_load(example)["models"][0]["parameters"]["gamma"] == 0.01


def test_a_method_whose_module_cannot_be_found_is_still_described() -> None:
    from meldkit.methods.describe import describe_method, method_docs
    from meldkit.methods.registry import MethodSpec, ParamSpec

    spec = MethodSpec(
        name="mine",
        pretty_name="Mine",
        impl="no_such_package.merges:mine",
        params=(ParamSpec("weight", "per_input", required=True, doc="how much"),),
        base="forbidden",
        min_inputs=2,
        max_inputs=2,
    )
    formula, example = method_docs(spec)
    assert formula == ""
    assert example == (
        "merge_method: mine\n"
        "models:\n"
        "  - {model: ./model_a, parameters: {weight: 0.5}}\n"
        "  - {model: ./model_b, parameters: {weight: 0.5}}\n"
    )
    text = describe_method(spec)
    assert "formula (no_such_package.merges):\n  (not documented)\n" in text
    assert "  base model: not allowed\n  input models: exactly 2\n" in text
    assert "paper: none\n" in text


def test_describe_method_does_not_import_torch() -> None:
    code = (
        "import sys; from meldkit.methods.describe import describe_method, method_detail_json; "
        "from meldkit.methods import list_methods; "
        "[describe_method(s) and method_detail_json(s) for s in list_methods()]; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
