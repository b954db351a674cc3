"""Property tests: hostile recipes and model files end in a MeldError, never in anything else.

The safetensors header parser itself is fuzzed in tests/io/test_header.py; here the same idea
goes one level up, through the recipe loader and the planner (index, config.json, pickles),
which is everything that runs before a merge computes anything.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meldkit.config.load import load_config
from meldkit.errors import MeldError, RecipeError
from meldkit.plan import plan_merge
from meldkit.testing import make_tiny_model
from tests.reliability.helpers import Family

_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Module scope: hypothesis runs a test body many times within one function-scoped call.
    return tmp_path_factory.mktemp("recipe-fuzz")


# -- the recipe loader -----------------------------------------------------------------------

# Fragments that exercise YAML's dark corners: tags, anchors, merge keys, timestamps, flow and
# block syntax, directives, multi-document markers.
_YAML_TOKENS = [
    *list(":-[]{}!&*#|>'\"%@`,?\n\t abc019.e+_<=~\\"),
    "merge_method",
    "models",
    "slices",
    "model",
    "parameters",
    "layer_range",
    "linear",
    "!!python/object:os.system",
    "!!python/name:os.system",
    "!!int",
    "!!float",
    "!!timestamp",
    "!!binary",
    "!!set",
    "!!omap",
    "!!map",
    "!!seq",
    "!!str",
    "!!bool",
    "2001-13-45",
    "<<",
    "&a",
    "*a",
    "*b",
    "---",
    "...",
    "%YAML 1.1",
    "%TAG",
    "1e400",
    "-.inf",
    ".nan",
    "0x1G",
    "\ufeff",
    "\x00",
    "\x85",
    "  ",
    "- ",
    ": ",
]


@_SETTINGS
@given(st.lists(st.sampled_from(_YAML_TOKENS), max_size=40).map("".join))
def test_random_yaml_text_only_raises_meld_errors(text: str) -> None:
    try:
        load_config(text)
    except MeldError:
        pass


@_SETTINGS
@given(st.binary(max_size=200))
def test_random_recipe_file_bytes_only_raise_recipe_errors(scratch: Path, data: bytes) -> None:
    path = scratch / "recipe.yaml"
    path.write_bytes(data)
    try:
        load_config(path)
    except RecipeError:
        pass


# -- random recipes against real models ---------------------------------------------------------

_METHODS = [
    "linear",
    "passthrough",
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
    "model_stock",
    "nearswap",
    "arcee_fusion",
    "ram",
    "ramplus_tl",
    "no_such_method",
]
_PARAMS = [
    "weight",
    "density",
    "epsilon",
    "gamma",
    "t",
    "lambda",
    "normalize",
    "int8_mask",
    "rescale",
    "select_topk",
    "eps",
    "max_iter",
    "tol",
    "scale",
    "filter_wise",
    "nuslerp_flatten",
    "bogus",
]
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(-2, 2),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2)
    ),
    max_leaves=6,
)
_param_values = st.one_of(
    _scalars,
    st.lists(st.floats(-0.5, 1.5), min_size=1, max_size=4),  # gradients
    st.lists(
        st.fixed_dictionaries(
            {"filter": st.sampled_from(["mlp", "self_attn", "x"]), "value": _scalars}
        ),
        max_size=2,
    ),
    _values,
)
_params = st.one_of(st.dictionaries(st.sampled_from(_PARAMS), _param_values, max_size=4), _values)


def _recipes(models: list[str]) -> st.SearchStrategy[dict]:
    ref = st.one_of(st.sampled_from(models), _values)
    model = st.one_of(
        st.sampled_from(models),
        st.fixed_dictionaries({"model": ref}, optional={"parameters": _params}),
        _values,
    )
    layer_range = st.one_of(st.lists(st.integers(-1, 6), min_size=2, max_size=2), _values)
    source = st.fixed_dictionaries(
        {"model": ref}, optional={"layer_range": layer_range, "parameters": _params}
    )
    slice_ = st.fixed_dictionaries(
        {"sources": st.lists(source, max_size=3)},
        optional={"parameters": _params, "base_model": ref},
    )
    stack = st.one_of(
        st.fixed_dictionaries({"models": st.one_of(st.lists(model, max_size=3), _values)}),
        st.fixed_dictionaries({"slices": st.one_of(st.lists(slice_, max_size=2), _values)}),
        st.fixed_dictionaries(
            {
                "modules": st.one_of(
                    st.dictionaries(
                        st.sampled_from(["text", "vision"]),
                        st.fixed_dictionaries({"models": st.lists(model, max_size=2)}),
                        max_size=2,
                    ),
                    _values,
                )
            }
        ),
    )
    extra = st.fixed_dictionaries(
        {},
        optional={
            "base_model": ref,
            "parameters": _params,
            "dtype": st.one_of(
                st.sampled_from(["float16", "bfloat16", "float32", "int64", "float33"]), _values
            ),
            "out_dtype": st.sampled_from(["float16", "bfloat16", "float32", "fp8"]),
            "tokenizer_source": st.one_of(st.sampled_from(["union", "base", *models]), _values),
            "tokenizer": st.one_of(
                st.fixed_dictionaries(
                    {"source": st.sampled_from(["union", "base", *models])},
                    optional={"tokens": _values, "pad_to_multiple_of": _scalars},
                ),
                _values,
            ),
            "chat_template": st.one_of(st.sampled_from(["chatml", "auto", "{{ x }}"]), _values),
        },
    )
    return st.tuples(st.one_of(st.sampled_from(_METHODS), _values), stack, extra).map(
        lambda t: {"merge_method": t[0], **t[1], **t[2]}
    )


@pytest.fixture(scope="module")
def model_refs(family: Family, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    other = make_tiny_model(
        tmp_path_factory.mktemp("other") / "wide", "llama", num_layers=2, hidden=32
    )
    return [
        str(family.base),
        str(family.ft1),
        str(family.ft2),
        str(other),
        "/no/such/model",
        "org/not-cached",
    ]


def test_random_recipes_against_real_models_only_raise_meld_errors(
    model_refs: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # hub ids must fail fast, not download

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_recipes(model_refs))
    def check(doc: dict) -> None:
        text = yaml.safe_dump(doc, allow_unicode=True)
        try:
            plan_merge(text)
        except MeldError:
            pass

    check()


# -- random bytes in the files of an input model -------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pristine")
    return {
        "single": make_tiny_model(root / "single", "llama", num_layers=2, seed=4),
        "sharded": make_tiny_model(
            root / "sharded", "llama", num_layers=2, seed=4, shard_size=10000
        ),
        "bin": make_tiny_model(root / "bin", "llama", num_layers=2, seed=4, fmt="bin"),
    }


_TARGETS = {
    "single": ["model.safetensors", "config.json"],
    "sharded": ["model.safetensors.index.json", "model-00001-of-*.safetensors", "config.json"],
    "bin": ["pytorch_model.bin"],
}


def _plan_one(folder: Path) -> None:
    try:
        plan_merge(
            f"merge_method: linear\nmodels:\n  - model: {folder}\n    parameters: {{weight: 1}}\n"
        )
    except MeldError:
        pass


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.sampled_from([(k, f) for k, files in _TARGETS.items() for f in files]),
    st.one_of(
        st.binary(max_size=300),
        st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),  # splice
        st.integers(0, 10**6),  # truncate
        st.recursive(
            st.one_of(st.none(), st.integers(-2, 10**4), st.text(max_size=4), st.booleans()),
            lambda i: (
                st.lists(i, max_size=3) | st.dictionaries(st.text(max_size=12), i, max_size=3)
            ),
            max_leaves=8,
        ),  # valid JSON of the wrong shape
    ),
)
def test_damaged_model_files_only_raise_meld_errors(
    pristine: dict[str, Path], scratch: Path, target: tuple[str, str], damage: object
) -> None:
    kind, name = target
    folder = scratch / f"damaged-{kind}"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(pristine[kind], folder)
    path = sorted(folder.glob(name))[0]
    data = path.read_bytes()
    if isinstance(damage, bytes):
        data = damage
    elif isinstance(damage, tuple):
        pos, chunk = damage
        pos %= len(data)
        data = data[:pos] + chunk + data[pos + len(chunk) :]
    elif isinstance(damage, int) and not isinstance(damage, bool):
        data = data[: damage % len(data)]
    else:
        text = json.dumps(damage).encode()
        data = struct.pack("<Q", len(text)) + text if name.endswith(".safetensors") else text
    path.write_bytes(data)
    _plan_one(folder)
