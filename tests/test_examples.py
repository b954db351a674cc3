"""Every recipe in examples/ plans on the stand-in models of examples/make_models.py, and a few
merge end to end with the values their formulas give.

New ``examples/*.yaml`` files are picked up by the glob. Each is planned from the folder that
holds ``models/`` (the recipes' paths are relative to the current directory) and checked
against an independent reading of the recipe: the method, the output tensors (names, shapes,
layer count), where every tensor comes from, and every parameter the recipe writes, resolved
for every tensor with MergeKit's rules (precedence, substring filters, gradients).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import yaml

import meldkit
from meldkit.testing import expected_tensor_shapes, read_model
from meldkit.verify import verify_folder

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def _load_make_models() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "examples_make_models", EXAMPLES_DIR / "make_models.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKE_MODELS = _load_make_models()
DIMS: dict[str, int] = MAKE_MODELS.DIMS


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding models/{base,math,code,writer,chat,lora}, as the README describes."""
    root = tmp_path_factory.mktemp("examples")
    MAKE_MODELS.make_models(root)
    return root


@pytest.fixture
def in_workdir(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(workdir)
    return workdir


def _recipe(path: Path) -> dict[str, Any]:
    recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(recipe, dict), path
    return recipe


# -- an independent reading of the recipe --------------------------------------------------------


def _model_refs(recipe: dict[str, Any]) -> set[str]:
    """Every model reference a recipe names (``a+b`` counts once, as written)."""
    refs: set[str] = set()
    if recipe.get("base_model"):
        refs.add(recipe["base_model"])
    for entry in recipe.get("models") or ():
        refs.add(entry["model"])
    for sl in recipe.get("slices") or ():
        refs.update(src["model"] for src in sl["sources"])
        if sl.get("base_model"):
            refs.add(sl["base_model"])
    tok = recipe.get("tokenizer") or {}
    for source in [tok.get("source"), recipe.get("tokenizer_source")] + [
        (t or {}).get("source") for t in (tok.get("tokens") or {}).values()
    ]:
        if isinstance(source, dict):
            source = source.get("model")
        if isinstance(source, str) and source not in ("union", "base"):
            refs.add(source)
    assert all(isinstance(r, str) for r in refs), refs
    return refs


def _gradient(values: list[Any], t: float) -> Any:
    """MergeKit's gradient: linear interpolation between list entries at position t in [0, 1]."""
    if not isinstance(values[0], (int, float)) or isinstance(values[0], bool):
        return values[math.floor(t * (len(values) - 1))]
    scaled = t * (len(values) - 1)
    i0 = math.floor(scaled)
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * values[i0] + frac * values[i1]


def _resolve(setting: Any, name: str, t: float) -> Any:
    """A setting's value for tensor ``name`` at slice position ``t``; None if no filter matches."""
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, list) and setting and isinstance(setting[0], dict):
        for entry in setting:
            f = entry.get("filter")
            if f is None or f == "*" or f in name:
                return _resolve(entry["value"], name, t)
        return None
    if isinstance(setting, list):
        return _gradient(setting, t) if setting else None
    return setting


def _first(scopes: list[dict[str, Any] | None], param: str, name: str, t: float) -> Any:
    for scope in scopes:
        if scope and param in scope:
            value = _resolve(scope[param], name, t)
            if value is not None:
                return value
    return None


def _slice_of(recipe: dict[str, Any], tensor: Any, n_layers: int) -> tuple[dict[str, Any], float]:
    """The (output) slice a planned tensor belongs to, and its position t inside it.

    A ``models:`` recipe is one slice over all layers. Tensors outside the layers sit at t = 0
    and belong to the slice whose models they are read from (first slice on a tie).
    """
    slices = recipe.get("slices") or [
        {
            "sources": [
                {"model": m["model"], "layer_range": [0, n_layers], **m} for m in recipe["models"]
            ]
        }
    ]
    m = _LAYER.match(tensor.name)
    if m is None:
        used = {s.model for s in tensor.sources}
        for sl in slices:
            if used <= {src["model"] for src in sl["sources"]} | {recipe.get("base_model")}:
                return sl, 0.0
        raise AssertionError(f"{tensor.name}: no slice reads from {used}")
    layer, offset = int(m.group(1)), 0
    for sl in slices:
        start, end = sl["sources"][0]["layer_range"]
        if layer < offset + end - start:
            length = end - start
            return sl, ((layer - offset) / (length - 1) if length > 1 else 1.0)
        offset += end - start
    raise AssertionError(f"{tensor.name}: beyond the recipe's {offset} output layers")


def _offset(recipe: dict[str, Any], sl: dict[str, Any]) -> int:
    """The output layer a slice starts at."""
    offset = 0
    for other in recipe["slices"]:
        if other is sl:
            return offset
        start, end = other["sources"][0]["layer_range"]
        offset += end - start
    raise AssertionError("not a slice of this recipe")


def _output_layers(recipe: dict[str, Any]) -> int:
    if recipe.get("slices"):
        return sum(e - s for s, e in (sl["sources"][0]["layer_range"] for sl in recipe["slices"]))
    return DIMS["num_layers"]


def _check_parameters(recipe: dict[str, Any], plan: Any) -> int:
    """Every parameter the recipe writes has, in every tensor's plan, the value MergeKit's rules
    give. Returns how many values were compared."""
    top = recipe.get("parameters") or {}
    compared = 0
    for tensor in plan.tensors:
        sl, t = _slice_of(recipe, tensor, plan.output_layers)
        for spec in plan.method.params:
            if spec.scope == "shared":
                want = _first([sl.get("parameters"), top], spec.name, tensor.name, t)
                if want is not None:
                    assert tensor.shared[spec.name] == pytest.approx(want), (tensor.name, spec.name)
                    compared += 1
                continue
            for i, source in enumerate(tensor.sources):
                if spec.scope == "per_non_base" and i == tensor.base_index:
                    continue
                entry = next((s for s in sl["sources"] if s["model"] == source.model), {})
                scopes = [entry.get("parameters"), sl.get("parameters"), top]
                want = _first(scopes, spec.name, source.name, t)
                if want is not None:
                    got = tensor.per_input[i][spec.name]
                    assert got == pytest.approx(want), (tensor.name, source.model, spec.name)
                    compared += 1
    return compared


# -- the examples as a set ------------------------------------------------------------------------


def test_examples_cover_the_method_families() -> None:
    recipes = {p.stem: _recipe(p) for p in EXAMPLES}
    methods = {r["merge_method"] for r in recipes.values()}
    assert {
        "linear", "slerp", "task_arithmetic", "ties", "dare_ties", "della", "breadcrumbs_ties",
        "model_stock", "multislerp", "sce", "nearswap", "ram", "passthrough",
    } <= methods  # fmt: skip
    assert any(r.get("slices") and r["merge_method"] == "passthrough" for r in recipes.values())
    assert any("+" in ref for r in recipes.values() for ref in _model_refs(r))
    assert any(r.get("tokenizer") or r.get("tokenizer_source") for r in recipes.values())
    readme = (EXAMPLES_DIR / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in EXAMPLES if f"]({p.name})" not in readme]
    assert not missing, f"examples/README.md does not list {missing}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_header(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    text = "\n".join(header)
    assert len(header) >= 8, f"{path.name}: start with a header comment (purpose, parameters, run)"
    assert "Purpose:" in text and "Key parameters:" in text, path.name
    assert f"meldkit plan examples/{path.name}" in text, path.name
    assert f"meldkit merge examples/{path.name} ./out" in text, path.name


# -- every example plans ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_plans(path: Path, in_workdir: Path) -> None:
    recipe = _recipe(path)
    refs = _model_refs(recipe)
    for ref in refs:
        for part in ref.split("+"):
            assert part.startswith("./models/"), f"{path.name}: {part} is not under ./models/"
            assert (in_workdir / part).is_dir(), f"{path.name}: make_models.py does not make {part}"

    if recipe.get("tokenizer") or recipe.get("tokenizer_source"):
        pytest.importorskip("tokenizers", reason="tokenizer recipes need meldkit[hf]")
    plan = meldkit.plan_merge(path)

    assert plan.method.name == recipe["merge_method"]
    assert plan.warnings == []  # no ignored or misspelled parameter
    layers = _output_layers(recipe)
    assert plan.output_layers == layers
    assert plan.out_config is not None and plan.out_config["num_hidden_layers"] == layers
    vocab = plan.vocabulary.size if plan.vocabulary is not None else DIMS["vocab"]
    assert plan.out_config["vocab_size"] == vocab
    dims = {**DIMS, "num_layers": layers, "vocab": vocab}
    expected = expected_tensor_shapes("llama", **dims)
    assert sorted(t.name for t in plan.tensors) == sorted(expected)
    for tensor in plan.tensors:
        assert tensor.shape == expected[tensor.name], tensor.name

    # Where each tensor is read from.
    used = {s.model for t in plan.tensors for s in t.sources}
    assert used == refs - ({recipe["base_model"]} if plan.method.base == "forbidden" else set())
    for tensor in plan.tensors:
        sl, _ = _slice_of(recipe, tensor, layers)
        allowed = {s["model"] for s in sl["sources"]} | ({recipe.get("base_model")} - {None})
        if recipe.get("models") and plan.method.name != "passthrough":
            assert {s.model for s in tensor.sources} == allowed, tensor.name
        else:
            assert {s.model for s in tensor.sources} <= allowed, tensor.name
        m = _LAYER.match(tensor.name)
        if m and recipe.get("slices"):  # output layer i of a slice is layer start + i of a source
            i = int(m.group(1)) - _offset(recipe, sl)
            for source in tensor.sources:
                (start, _), *_ = (
                    s["layer_range"] for s in sl["sources"] if s["model"] == source.model
                )
                assert source.name.startswith(f"model.layers.{start + i}."), source.name

    entries = list(recipe.get("models") or ()) + [
        s for sl in recipe.get("slices") or () for s in [sl, *sl["sources"]]
    ]
    written = bool(recipe.get("parameters")) or any(e.get("parameters") for e in entries)
    compared = _check_parameters(recipe, plan)
    assert compared > 0 or not written, f"{path.name}: none of its parameters reached the plan"

    check = SPECIFIC.get(path.stem)
    if check is not None:
        check(plan)


def _tensor(plan: Any, name: str) -> Any:
    return next(t for t in plan.tensors if t.name == name)


def _per_model(plan: Any, name: str, model: str, param: str) -> Any:
    t = _tensor(plan, name)
    return next(p[param] for s, p in zip(t.sources, t.per_input) if s.model == model)


def _check_slerp(plan: Any) -> None:
    t = {n: _tensor(plan, n).shared["t"] for n in (
        "model.layers.0.self_attn.q_proj.weight", "model.layers.7.self_attn.q_proj.weight",
        "model.layers.0.mlp.up_proj.weight", "model.layers.7.mlp.up_proj.weight",
        "model.layers.3.input_layernorm.weight", "model.embed_tokens.weight", "lm_head.weight",
    )}  # fmt: skip
    assert list(t.values()) == [0.0, 1.0, 1.0, 0.0, 0.5, 0.5, 0.5]
    # Layer 2 of 8 sits at 2/7 of the way: between the 2nd and 3rd of five values.
    assert _tensor(plan, "model.layers.2.self_attn.o_proj.weight").shared["t"] == pytest.approx(
        0.5 + (0.3 - 0.5) * (2 / 7 * 4 - 1)
    )


def _check_ties(plan: Any) -> None:
    first, last = "model.layers.0.mlp.up_proj.weight", "model.layers.7.mlp.up_proj.weight"
    assert _per_model(plan, first, "./models/code", "density") == pytest.approx(0.8)
    assert _per_model(plan, last, "./models/code", "density") == pytest.approx(0.4)
    assert _per_model(plan, last, "./models/writer", "density") == pytest.approx(0.3)
    assert _tensor(plan, first).shared["normalize"] is True


def _check_dare_ties(plan: Any) -> None:
    first, last = "model.layers.0.self_attn.q_proj.weight", "model.layers.7.mlp.down_proj.weight"
    assert _per_model(plan, first, "./models/math", "density") == pytest.approx(0.9)
    assert _per_model(plan, last, "./models/math", "density") == pytest.approx(0.5)
    assert _per_model(plan, first, "./models/code", "weight") == pytest.approx(0.5)
    assert _per_model(plan, last, "./models/code", "weight") == pytest.approx(0.3)
    assert _tensor(plan, last).shared["lambda"] == pytest.approx(1.1)
    assert _tensor(plan, last).shared["rescale"] is True  # dare_ties' default


def _check_frankenmerge(plan: Any) -> None:
    def source(name: str) -> tuple[str, str]:
        (s,) = _tensor(plan, name).sources
        return s.model, s.name

    assert source("model.layers.5.mlp.up_proj.weight") == (
        "./models/base", "model.layers.5.mlp.up_proj.weight")  # fmt: skip
    assert source("model.layers.6.mlp.up_proj.weight") == (
        "./models/math", "model.layers.2.mlp.up_proj.weight")  # fmt: skip
    assert source("model.layers.11.self_attn.o_proj.weight") == (
        "./models/math", "model.layers.7.self_attn.o_proj.weight")  # fmt: skip
    assert _tensor(plan, "model.layers.6.self_attn.o_proj.weight").per_input[0]["scale"] == 0.8
    assert _tensor(plan, "model.layers.6.self_attn.q_proj.weight").per_input[0]["scale"] == 1.0
    assert source("model.embed_tokens.weight")[0] == "./models/base"
    assert source("lm_head.weight")[0] == "./models/math"


def _check_lora(plan: Any) -> None:
    (info,) = plan.models.values()
    assert info.lora_folder is not None and Path(info.lora_folder).name == "lora"


def _check_tokenizer_union(plan: Any) -> None:
    v = plan.vocabulary
    assert (v.size, v.tokenizer_length) == (80, 66)  # 66 tokens padded to a multiple of 16
    assert v.tokens[64:66] == ["<|im_start|>", "<|im_end|>"]
    assert "<|im_start|>" in plan.chat_template
    assert _tensor(plan, "model.embed_tokens.weight").vocab_axis == 0


SPECIFIC = {
    "slerp-gradient": _check_slerp,
    "ties": _check_ties,
    "dare-ties": _check_dare_ties,
    "frankenmerge": _check_frankenmerge,
    "lora-reference": _check_lora,
    "tokenizer-union": _check_tokenizer_union,
}


def test_every_specific_check_has_its_example() -> None:
    assert set(SPECIFIC) <= {p.stem for p in EXAMPLES}


# -- a few merged end to end -----------------------------------------------------------------------


def _merge(name: str, out: Path) -> dict[str, torch.Tensor]:
    meldkit.run_merge(EXAMPLES_DIR / f"{name}.yaml", out, quiet=True, seed=0)
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= files, files
    assert (out / "mergekit_config.yml").read_text() == (EXAMPLES_DIR / f"{name}.yaml").read_text()
    return read_model(out)


@pytest.fixture
def models(in_workdir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {m: read_model(in_workdir / "models" / m) for m in ("base", "math", "code", "writer")}


def test_linear_soup_merge(in_workdir: Path, tmp_path: Path, models: dict) -> None:
    out = _merge("linear-soup", tmp_path / "out")
    assert len(out) == len(models["math"])
    for name, value in out.items():
        assert value.dtype == torch.bfloat16
        want = (
            0.5 * models["math"][name] + 0.3 * models["code"][name] + 0.2 * models["writer"][name]
        )
        torch.testing.assert_close(value, want.to(torch.bfloat16), rtol=2**-7, atol=1e-6)
    # The weights matter: the equal-weight mean is farther off than bf16 rounding.
    name = "model.layers.3.mlp.up_proj.weight"
    mean = (models["math"][name] + models["code"][name] + models["writer"][name]) / 3
    ours = 0.5 * models["math"][name] + 0.3 * models["code"][name] + 0.2 * models["writer"][name]
    err = (out[name].float() - ours).abs().max()
    assert (out[name].float() - mean).abs().max() > 4 * err


def test_frankenmerge_merge(in_workdir: Path, tmp_path: Path, models: dict) -> None:
    out = _merge("frankenmerge", tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["num_hidden_layers"] == 12
    assert len(out) == len(expected_tensor_shapes("llama", **{**DIMS, "num_layers": 12}))

    def bf16(x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.bfloat16)

    base, math_ = models["base"], models["math"]
    for layer in range(12):
        src, src_layer = (base, layer) if layer < 6 else (math_, layer - 4)
        for suffix in (
            "self_attn.q_proj.weight",
            "self_attn.o_proj.weight",
            "mlp.down_proj.weight",
        ):
            scale = 0.8 if layer >= 6 and "q_proj" not in suffix else 1.0
            want = bf16(
                scale * src[f"model.layers.{src_layer}.{suffix}"].to(torch.bfloat16).float()
            )
            torch.testing.assert_close(
                out[f"model.layers.{layer}.{suffix}"], want, rtol=2**-7, atol=0
            )
    assert torch.equal(out["model.embed_tokens.weight"], bf16(base["model.embed_tokens.weight"]))
    assert torch.equal(out["lm_head.weight"], bf16(math_["lm_head.weight"]))


def test_lora_reference_merge(in_workdir: Path, tmp_path: Path, models: dict) -> None:
    from safetensors.torch import load_file

    out = _merge("lora-reference", tmp_path / "out")
    adapter = load_file(in_workdir / "models" / "lora" / "adapter_model.safetensors")
    scale = MAKE_MODELS.LORA_ALPHA / MAKE_MODELS.LORA_RANK
    changed = 0
    for name, w in models["base"].items():
        prefix = "base_model.model." + name.removesuffix(".weight")
        if f"{prefix}.lora_A.weight" in adapter:
            a, b = adapter[f"{prefix}.lora_A.weight"], adapter[f"{prefix}.lora_B.weight"]
            torch.testing.assert_close(out[name], w + scale * (b @ a), rtol=0, atol=1e-6)
            changed += 1
        else:
            assert torch.equal(out[name], w), name
    assert changed == 2 * DIMS["num_layers"]  # q_proj and v_proj of every layer


def test_tokenizer_union_merge(
    in_workdir: Path, tmp_path: Path, models: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tokenizers")
    # The reference torch formulas: no numba kernels to compile for this one merge.
    monkeypatch.setenv("MELDKIT_REFERENCE_MATH", "1")
    out_dir = tmp_path / "out"
    out = _merge("tokenizer-union", out_dir)
    # meldkit verify: weights, config and the tokenizer (loaded with transformers when
    # installed; the one place this file pays for importing it) agree.
    assert verify_folder(out_dir) == []
    chat = read_model(in_workdir / "models" / "chat")
    base, math_ = models["base"], models["math"]
    config = json.loads((out_dir / "config.json").read_text())
    assert config["vocab_size"] == 80
    tok = json.loads((out_dir / "tokenizer.json").read_text())
    added = {a["content"]: a["id"] for a in tok["added_tokens"]}
    assert added["<|im_start|>"] == 64 and added["<|im_end|>"] == 65
    template = json.loads((out_dir / "tokenizer_config.json").read_text()).get("chat_template")
    if template is None:
        template = (out_dir / "chat_template.jinja").read_text()
    assert "<|im_start|>" in template

    def bf(x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.bfloat16).float()

    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        emb = out[name].float()
        assert emb.shape == (80, DIMS["hidden"])
        # Only chat has the ChatML rows, so every model's copy is chat's row: b + 0 + 0.
        torch.testing.assert_close(emb[64:66], bf(chat[name][64:66]), rtol=0, atol=0)
        # Shared tokens: task arithmetic, base + (math - base) + (chat - base).
        b, m, c = bf(base[name]), bf(math_[name]), bf(chat[name][:64])
        torch.testing.assert_close(emb[:64], bf(m + c - b), rtol=2**-7, atol=1e-4)
        # The padding rows are the mean of the real ones.
        pad = emb[:66].mean(0).expand(14, -1)
        torch.testing.assert_close(emb[66:], pad, rtol=2**-7, atol=1e-5)
