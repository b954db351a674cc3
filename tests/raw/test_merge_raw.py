"""meldkit merge-raw / merge_raw: recipes over single .safetensors and .pt/.bin state dicts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from meldkit.api import merge_raw, run_merge
from meldkit.cli.main import main
from meldkit.errors import InputError, OutputError, PlanError, RecipeError
from meldkit.io.sizes import format_size
from meldkit.testing import read_model


@pytest.fixture(scope="module")
def raw_family(llama_family, tmp_path_factory) -> dict[str, Path]:
    """The Llama family's tensors as raw files: base .safetensors, ft1 .pt, ft2 .bin."""
    base, fts = llama_family
    root = tmp_path_factory.mktemp("raw")
    files = {"base": root / "base.safetensors", "ft1": root / "ft1.pt", "ft2": root / "ft2.bin"}
    save_file(read_model(base), files["base"])
    torch.save(read_model(fts[0]), files["ft1"])
    torch.save(read_model(fts[1]), files["ft2"])
    return {**files, "base_dir": base, "ft1_dir": fts[0], "ft2_dir": fts[1]}


def _recipe(method: str, paths: dict[str, Path], suffix: str = "") -> dict[str, object]:
    base, ft1, ft2 = (str(paths[k + suffix]) for k in ("base", "ft1", "ft2"))
    return {
        "merge_method": method,
        "base_model": base,
        "models": [
            {"model": ft1, "parameters": {"weight": [0.2, 0.8], "density": 0.5}},
            {
                "model": ft2,
                "parameters": {
                    "weight": 0.5,
                    "density": [{"filter": "mlp", "value": 0.3}, {"value": 0.7}],
                },
            },
        ],
        "parameters": {"normalize": True},
    }


def _write(path: Path, recipe: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("method", ["ties", "dare_ties", "task_arithmetic"])
def test_raw_merge_equals_folder_merge(method, raw_family, tmp_path):
    run_merge(_recipe(method, raw_family, "_dir"), tmp_path / "hf", quiet=True, seed=5)
    out = merge_raw(_recipe(method, raw_family), tmp_path / "raw.safetensors", quiet=True, seed=5)
    expected, got = read_model(tmp_path / "hf"), load_file(out)
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def test_cli_writes_one_file_or_a_folder(raw_family, tmp_path, capsys):
    recipe = _write(tmp_path / "r.yaml", _recipe("ties", raw_family))
    assert main(["merge-raw", str(recipe), str(tmp_path / "m.safetensors")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'm.safetensors'}"
    assert main(["merge-raw", str(recipe), str(tmp_path / "folder"), "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "m.safetensors", "r.yaml"]
    assert [p.name for p in (tmp_path / "folder").iterdir()] == ["model.safetensors"]
    one, two = (
        load_file(tmp_path / "m.safetensors"),
        load_file(tmp_path / "folder/model.safetensors"),
    )
    assert all(torch.equal(one[k], two[k]) for k in one)


def test_existing_output_needs_overwrite_and_an_input_is_never_one(raw_family, tmp_path, capsys):
    recipe = _write(tmp_path / "r.yaml", _recipe("ties", raw_family))
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"old")
    assert main(["merge-raw", str(recipe), str(target)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: output file {target} already exists",
        "hint: pass --overwrite to replace it",
    ]
    assert target.read_bytes() == b"old"
    assert main(["merge-raw", str(recipe), str(target), "--overwrite", "--quiet"]) == 0
    assert sorted(load_file(target)) == sorted(read_model(raw_family["base_dir"]))
    with pytest.raises(OutputError) as err:
        merge_raw(recipe, raw_family["base"], overwrite=True)
    assert (
        err.value.message == f"output file {raw_family['base']} is the input {raw_family['base']}"
    )


# -- tensors the inputs do not share -------------------------------------------------------------
@pytest.fixture()
def uneven(tmp_path) -> tuple[Path, Path]:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.pt"
    save_file({"w": torch.ones(2, 2), "only_a": torch.full((2,), 3.0), "also_a": torch.ones(1)}, a)
    torch.save({"w": torch.full((2, 2), 3.0), "only_b": torch.full((3,), 5.0)}, b)
    return a, b


def _linear(*paths: Path) -> dict[str, object]:
    return {
        "merge_method": "linear",
        "parameters": {"weight": 1.0},
        "models": [{"model": str(p)} for p in paths],
    }


def test_missing_tensors_reported_together(uneven, tmp_path, capsys):
    a, b = uneven
    recipe = _write(tmp_path / "r.yaml", _linear(a, b))
    assert main(["merge-raw", str(recipe), str(tmp_path / "o.safetensors"), "-v"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: 3 problems found while planning:",
        # in file order: a safetensors header lists its tensors sorted by name
        f"  - tensor also_a is missing from {b} (present in {a})",
        f"  - tensor only_a is missing from {b} (present in {a})",
        f"  - tensor only_b is missing from {a} (present in {b})",
        "hint: merge only the tensors every input has (--tensor-intersection), or every tensor "
        "from the inputs that have it (--tensor-union)",
    ]
    assert not (tmp_path / "o.safetensors").exists()


def test_intersection_and_union(uneven, tmp_path):
    a, b = uneven
    recipe = _write(tmp_path / "r.yaml", _linear(a, b))
    assert main(["merge-raw", str(recipe), str(tmp_path / "i.safetensors"), "-i", "--quiet"]) == 0
    inter = load_file(tmp_path / "i.safetensors")
    assert sorted(inter) == ["w"] and torch.equal(inter["w"], torch.full((2, 2), 2.0))
    assert (
        main(
            ["merge-raw", str(recipe), str(tmp_path / "u.safetensors"), "--tensor-union", "--quiet"]
        )
        == 0
    )
    union = load_file(tmp_path / "u.safetensors")
    assert sorted(union) == ["also_a", "only_a", "only_b", "w"]
    assert torch.equal(union["w"], torch.full((2, 2), 2.0))
    assert torch.equal(union["only_a"], torch.full((2,), 3.0))
    assert torch.equal(union["only_b"], torch.full((3,), 5.0))


# -- inputs refused, with their exact messages ---------------------------------------------------
class _NotATensor:
    def __init__(self) -> None:
        self.payload = 1


def test_pickle_with_an_object_is_refused(uneven, tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2, 2), "obj": _NotATensor()}, evil)
    with pytest.raises(InputError) as err:
        merge_raw(_linear(evil, uneven[0]), tmp_path / "o.safetensors")
    assert err.value.message.startswith(
        f"{evil}: refused to load pickled weights: not a plain tensor file (WeightsUnpickler "
        "error: Unsupported global: GLOBAL tests.raw.test_merge_raw._NotATensor"
    )
    assert err.value.hint == (
        "meldkit reads .bin files only with torch.load(weights_only=True), which never runs "
        "code from the file; convert the model to safetensors if you trust it"
    )


def test_pickles_that_are_not_state_dicts(uneven, tmp_path):
    listed, counted = tmp_path / "list.pt", tmp_path / "step.pt"
    torch.save([torch.ones(2)], listed)
    torch.save(
        {"w": torch.ones(2, 2), "step": 3, "also_a": torch.ones(1), "only_a": torch.zeros(2)},
        counted,
    )
    with pytest.raises(InputError) as err:
        merge_raw(_linear(listed, uneven[0]), tmp_path / "o.safetensors")
    assert err.value.message == f"{listed}: holds a list, not a dict of tensor names to tensors"
    seen: list[str] = []
    merge_raw(
        _linear(counted, uneven[0]), tmp_path / "o.safetensors", on_warning=seen.append, quiet=True
    )
    assert seen == [f"{counted}: 1 entry that is not a tensor is not merged (step)"]


def test_shape_mismatch_and_unknown_method(uneven, tmp_path):
    a = uneven[0]
    c = tmp_path / "c.safetensors"
    save_file({"w": torch.ones(3, 2), "only_a": torch.ones(2), "also_a": torch.ones(1)}, c)
    with pytest.raises(PlanError) as err:
        merge_raw(_linear(a, c), tmp_path / "o.safetensors")
    assert err.value.message == f"tensor w has different shapes: {a} [2, 2], {c} [3, 2]"
    with pytest.raises(RecipeError) as err2:
        merge_raw({**_linear(a, c), "merge_method": "tie"}, tmp_path / "o.safetensors")
    assert err2.value.message == "unknown merge_method 'tie'. Did you mean 'ties'?"


def test_what_raw_merges_refuse(uneven, tmp_path):
    a, b = uneven
    cases = {
        "tokenizer_source": "`tokenizer:`/`tokenizer_source:` is not supported for raw checkpoints: "
        "a raw file has no tokenizer; remove the key",
        "slices": "`slices:` is not supported for raw checkpoints: list the inputs under `models:` "
        "(a raw file has no config.json to select layers or modules by)",
    }
    recipes = {
        "tokenizer_source": {**_linear(a, a), "tokenizer_source": "base"},
        "slices": {
            "merge_method": "passthrough",
            "slices": [{"sources": [{"model": str(a), "layer_range": [0, 1]}]}],
        },
    }
    for key, message in cases.items():
        with pytest.raises(PlanError) as err:
            merge_raw(recipes[key], tmp_path / "o.safetensors")
        assert err.value.message == message
    with pytest.raises(InputError) as err3:
        merge_raw(_linear(f"{a}+{tmp_path}", a), tmp_path / "o.safetensors")
    assert (
        err3.value.message
        == f"{a}+{tmp_path}: LoRA adapters (`+lora`) are not applied to raw checkpoints"
    )
    with pytest.raises(InputError) as err4:
        merge_raw(_linear(tmp_path, a), tmp_path / "o.safetensors")
    assert (
        err4.value.message
        == f"'{tmp_path}' is a folder; merge-raw takes single .safetensors, .pt, .pth, .bin files"
    )


def fail_on_second_tensor(inputs, base_index, shared, per_input, ctx):  # a MergeFunction
    if ctx.name != "also_a":
        raise RuntimeError("boom")
    return inputs[0]


def test_a_failed_merge_leaves_nothing(uneven, tmp_path, monkeypatch):
    from meldkit.methods import registry

    spec = registry.MethodSpec(
        "fails_midway", "Fails midway", f"{__name__}:fail_on_second_tensor", min_inputs=1
    )
    monkeypatch.setitem(registry._REGISTRY, spec.name, spec)
    a = uneven[0]
    target = tmp_path / "out" / "o.safetensors"
    with pytest.raises(Exception, match="boom"):
        merge_raw(
            {"merge_method": "fails_midway", "models": [{"model": str(a)}]}, target, quiet=True
        )
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_dry_run_plans_and_writes_nothing(raw_family, tmp_path, capsys):
    recipe = _write(tmp_path / "r.yaml", _recipe("ties", raw_family))
    assert main(["merge-raw", str(recipe), str(tmp_path / "m.safetensors"), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "method: ties" and out[-1] == "plan OK: nothing was computed"
    # every tensor of the three inputs is read once, the pickles' as well as the safetensors'
    tensors = read_model(raw_family["base_dir"]).values()
    total = 3 * sum(t.numel() * t.element_size() for t in tensors)
    assert f"bytes to read: {format_size(total)}" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_meldkit_merge_on_a_weight_file_points_to_merge_raw(uneven, tmp_path, capsys):
    a, b = uneven
    recipe = _write(tmp_path / "r.yaml", _linear(a))
    assert main(["merge", str(recipe), str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: model path '{a}' is a file, not a folder",
        "hint: give the folder that holds it; `meldkit merge-raw` merges single weight files",
    ]
    with pytest.raises(PlanError) as err:
        run_merge(_linear(a), tmp_path / "o")
    assert (
        err.value.hint
        == "give the folder that holds it; meldkit.merge_raw() merges single weight files"
    )
