"""Input diagnostics at plan time: missing local paths vs hub ids, and LoRA adapters checked
against their base from headers (exit 2 before anything is computed or written).

Nothing here reaches the network: connections are refused, and huggingface_hub's own offline
switch (read once, at import) is pinned per test.
"""

from __future__ import annotations

import builtins
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from meldkit import plan_merge
from meldkit.cli.main import main
from meldkit.config.modelref import ModelPath, ModelRef, parse_model_ref
from meldkit.errors import PlanError
from meldkit.plan.models import open_models, recipe_folder
from meldkit.testing import make_tiny_model

pytest.importorskip("huggingface_hub")

PATH_FIX = "check the path in the recipe (paths are relative to the current directory)"
OFFLINE_FIX = (
    "for a hub model, unset HF_HUB_OFFLINE to download it, "
    "or pass --transformers-cache if it is cached elsewhere"
)
DIFFERENT_BASE = "the adapter was trained for a different base model; pair it with that model"
Q0 = "model.layers.0.self_attn.q_proj"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import huggingface_hub.constants

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    yield


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama (hidden 16, q_proj [16, 16], v_proj [8, 16]) at <root>/models/ft2."""
    root = tmp_path_factory.mktemp("inputs")
    return make_tiny_model(root / "models" / "ft2", "llama", seed=1)


@pytest.fixture
def work(base_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder holding models/ft2, as the current directory."""
    root = base_model.parent.parent
    monkeypatch.chdir(root)
    return root


def _recipe(folder: Path, text: str, name: str = "recipe.yml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err.strip().splitlines()


def _nothing_written(parent: Path, out: str) -> None:
    assert not (parent / out).exists()
    assert list(parent.glob(".*meldkit-partial")) == []


def _adapter(folder: Path, tensors: dict[str, tuple[int, ...]], **config: Any) -> Path:
    """A hand-written PEFT adapter: zeros of the given shapes, keys under PEFT's prefix."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, **config}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    save_file(
        {f"base_model.model.{k}": torch.zeros(s) for k, s in tensors.items()},
        str(folder / "adapter_model.safetensors"),
    )
    return folder


def _pair(module: str, a: tuple[int, int], b: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    return {f"{module}.lora_A.weight": a, f"{module}.lora_B.weight": b}


# -- local paths vs hub ids -----------------------------------------------------------------


def test_missing_local_folder_is_named_first(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _recipe(
        work, "merge_method: linear\nmodels:\n  - model: models/ft22\n  - model: models/ft2\n"
    )
    error = (
        f"error: model folder 'models/ft22' does not exist (resolved to {work}/models/ft22; "
        "did you mean 'models/ft2'?), and as a hub id: offline (HF_HUB_OFFLINE=1) and not in "
        "the local cache"
    )
    for command in (["plan", str(recipe)], ["merge", str(recipe), "out"]):
        rc, err = _cli(capsys, *command)
        assert (rc, err) == (2, [error, f"hint: {PATH_FIX}; {OFFLINE_FIX}"])
    _nothing_written(work, "out")


def test_unreachable_hub_does_not_mention_offline_mode(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(PlanError) as info:
        plan_merge("merge_method: linear\nmodels:\n  - model: models/ft22\n  - model: models/ft2\n")
    assert info.value.message == (
        f"model folder 'models/ft22' does not exist (resolved to {work}/models/ft22; "
        "did you mean 'models/ft2'?), and as a hub id: not in the local cache and the hub "
        "could not be reached"
    )
    assert "HF_HUB_OFFLINE" not in str(info.value)


def test_path_that_cannot_be_a_hub_id(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = _recipe(
        work, "merge_method: linear\nmodels:\n  - model: ./models/ft22\n  - model: models/ft2\n"
    )
    rc, err = _cli(capsys, "merge", str(recipe), "out")
    assert (rc, err) == (
        2,
        [
            f"error: model folder './models/ft22' does not exist (resolved to {work}/models/ft22; "
            "did you mean './models/ft2'?)",
            f"hint: {PATH_FIX}",
        ],
    )
    _nothing_written(work, "out")


def test_recipe_run_from_another_directory(
    work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _recipe(
        work, "merge_method: passthrough\nmodels:\n  - model: ./models/ft2\n", "r2.yml"
    )
    (work / "elsewhere").mkdir(exist_ok=True)
    monkeypatch.chdir(work / "elsewhere")
    rc, err = _cli(capsys, "merge", str(recipe), "out")
    assert rc == 2
    assert err[0].startswith(
        f"error: model folder './models/ft2' does not exist (resolved to "
        f"{work}/elsewhere/models/ft2"
    )
    _nothing_written(work / "elsewhere", "out")
    # Given the recipe's folder, the message says where the path does exist.
    _, problems = open_models([parse_model_ref("./models/ft2")], recipe_dir=work)
    assert problems == [
        f"model folder './models/ft2' does not exist (resolved to {work}/elsewhere/models/ft2; "
        f"{work}/models/ft2 exists beside the recipe) (run meldkit from {work} (paths are "
        f"relative to the current directory), or write the path as {work}/models/ft2)"
    ]


def test_recipe_folder(work: Path) -> None:
    recipe = _recipe(work / "sub", "merge_method: linear\n")
    assert recipe_folder(recipe) == recipe_folder(str(recipe)) == (work / "sub").resolve()
    for not_a_file in ("merge_method: linear\nmodels: []\n", {"merge_method": "linear"}, ""):
        assert recipe_folder(not_a_file) is None
    assert recipe_folder(work / "sub") is None  # a folder, not a recipe file


def test_a_model_named_twice_is_reported_once(work: Path) -> None:
    with pytest.raises(PlanError) as info:
        plan_merge(
            "merge_method: task_arithmetic\nbase_model: ./models/ft22\nmodels:\n"
            "  - model: ./models/ft22\n  - model: models/ft2\n"
        )
    assert info.value.problems == [
        f"model folder './models/ft22' does not exist (resolved to {work}/models/ft22; "
        "did you mean './models/ft2'?)"
    ]


def test_missing_lora_after_plus(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = _recipe(
        work, "merge_method: passthrough\nmodels:\n  - model: models/ft2+loras/a1\n", "r3.yml"
    )
    (work / "loras" / "a").mkdir(parents=True, exist_ok=True)
    rc, err = _cli(capsys, "merge", str(recipe), "out")
    assert (rc, err) == (
        2,
        [
            f"error: LoRA folder 'loras/a1' does not exist (resolved to {work}/loras/a1; did you "
            "mean 'loras/a'?), and as a hub id: offline (HF_HUB_OFFLINE=1) and not in the local "
            "cache",
            f"hint: {PATH_FIX}; {OFFLINE_FIX}",
        ],
    )
    _nothing_written(work, "out")


def test_lora_folder_without_adapter_config(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "notlora").mkdir(exist_ok=True)
    recipe = _recipe(
        work, "merge_method: passthrough\nmodels:\n  - model: models/ft2+./notlora\n", "r4.yml"
    )
    rc, err = _cli(capsys, "plan", str(recipe))
    assert (rc, err) == (
        2,
        [
            "error: notlora is not a PEFT adapter (no adapter_config.json)",
            "hint: a '+lora' reference must name a folder saved by PEFT's save_pretrained",
        ],
    )


def test_spaces_around_plus() -> None:
    assert parse_model_ref("models/ft2 + loras/a") == ModelRef(
        ModelPath("models/ft2"), ModelPath("loras/a")
    )


# -- LoRA adapters checked at plan time -------------------------------------------------------


def _lora_recipe(work: Path, adapter: Path, name: str) -> Path:
    return _recipe(
        work, f"merge_method: passthrough\nmodels:\n  - model: models/ft2+{adapter}\n", name
    )


def test_lora_shape_mismatch_exits_2_before_computing(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Trained for a hidden size of 32: q_proj would be [32, 32], the base has [16, 16].
    adapter = _adapter(work / "wide", _pair(Q0, (4, 32), (32, 4)))
    with pytest.raises(PlanError) as info:
        plan_merge(f"merge_method: passthrough\nmodels:\n  - model: models/ft2+{adapter}\n")
    file = adapter / "adapter_model.safetensors"
    message = (
        f"{file}: LoRA for '{Q0}.weight' has shape [32, 32] ('base_model.model.{Q0}.lora_A."
        f"weight' [4, 32] and 'base_model.model.{Q0}.lora_B.weight' [32, 4]), the base tensor "
        "[16, 16]"
    )
    assert (info.value.message, info.value.hint) == (message, DIFFERENT_BASE)
    rc, err = _cli(capsys, "merge", str(_lora_recipe(work, adapter, "r5.yml")), "out")
    assert (rc, err) == (2, [f"error: {message}", f"hint: {DIFFERENT_BASE}"])
    _nothing_written(work, "out")


def test_lora_rank_differs_from_rank_pattern(work: Path) -> None:
    v0 = "model.layers.0.self_attn.v_proj"
    adapter = _adapter(
        work / "rank", {**_pair(Q0, (4, 16), (16, 4)), **_pair(v0, (4, 16), (8, 4))},
        rank_pattern={"v_proj": 2},
    )  # fmt: skip
    with pytest.raises(PlanError) as info:
        plan_merge(f"merge_method: passthrough\nmodels:\n  - model: models/ft2+{adapter}\n")
    assert info.value.message == (
        f"{adapter / 'adapter_model.safetensors'}: 'base_model.model.{v0}.lora_A.weight' [4, 16] "
        f"and 'base_model.model.{v0}.lora_B.weight' [8, 4] have rank 4, but adapter_config.json "
        f"gives rank 2 for '{v0}' (r or rank_pattern)"
    )
    assert info.value.hint == (
        "fix r / rank_pattern in adapter_config.json to the rank the adapter was trained with"
    )


def test_lora_bad_alpha_pattern(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    adapter = _adapter(work / "regex", _pair(Q0, (4, 16), (16, 4)), alpha_pattern={"q_proj(": 16})
    rc, err = _cli(capsys, "plan", str(_lora_recipe(work, adapter, "r6.yml")))
    assert rc == 2
    assert err[0].startswith(
        f"error: {adapter / 'adapter_config.json'}: alpha_pattern key 'q_proj(' is not a valid "
        "regular expression ("
    )
    assert (
        err[1] == "hint: fix adapter_config.json (PEFT writes r and lora_alpha as positive numbers)"
    )
    adapter = _adapter(work / "neg", _pair(Q0, (4, 16), (16, 4)), rank_pattern={"q_proj": 0})
    with pytest.raises(PlanError) as info:
        plan_merge(f"merge_method: passthrough\nmodels:\n  - model: models/ft2+{adapter}\n")
    assert info.value.message == (
        f"{adapter / 'adapter_config.json'}: rank_pattern['q_proj'] must be a positive integer, got 0"
    )


def test_saved_tensor_shape_mismatch(work: Path) -> None:
    # modules_to_save of a resized vocabulary: lm_head [80, 16], the base has [64, 16].
    adapter = _adapter(work / "head", {**_pair(Q0, (4, 16), (16, 4)), "lm_head.weight": (80, 16)})
    with pytest.raises(PlanError) as info:
        plan_merge(f"merge_method: passthrough\nmodels:\n  - model: models/ft2+{adapter}\n")
    assert info.value.message == (
        f"{adapter / 'adapter_model.safetensors'}: 'base_model.model.lm_head.weight' has shape "
        "[80, 16], the base tensor 'lm_head.weight' [64, 16]"
    )


def test_unmatched_targets_are_plan_warnings(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adapter = _adapter(
        work / "extra",
        {
            **_pair(Q0, (4, 16), (16, 4)),
            **_pair("model.layers.7.self_attn.q_proj", (4, 16), (16, 4)),
            **_pair("model.vision.proj", (4, 16), (16, 4)),
        },
        rank_pattern={"k_proj": 2},
    )
    plan = plan_merge(f"merge_method: passthrough\nmodels:\n  - model: models/ft2+{adapter}\n")
    expected = [
        f"LoRA {adapter}: 2 targets match no tensor of models/ft2 and are not applied: "
        "model.layers.7.self_attn.q_proj.weight, model.vision.proj.weight",
        f"LoRA {adapter / 'adapter_config.json'}: rank_pattern 'k_proj' matches no module of "
        "the adapter and changes nothing",
    ]
    assert [w for w in plan.warnings if w.startswith("LoRA") or "LoRA targets" in w] == expected
    rc, err = _cli(capsys, "plan", str(_lora_recipe(work, adapter, "r7.yml")))
    assert rc == 0
    assert [line for line in err if "LoRA" in line] == [f"warning: {w}" for w in expected]


def test_matching_adapter_plans_cleanly_from_headers(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = _adapter(work / "good", {**_pair(Q0, (4, 16), (16, 4)), **_pair(
        "model.layers.1.mlp.down_proj", (2, 32), (16, 2))}, rank_pattern={"down_proj": 2})  # fmt: skip
    counted = {"bytes": 0}
    real_open = builtins.open

    def counting_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = real_open(file, mode, *args, **kwargs)
        if "b" in mode and str(file).endswith(".safetensors"):
            read = fh.read

            def tally(n: int = -1) -> bytes:
                data = read(n)
                counted["bytes"] += len(data)
                return data

            fh.read = tally
        return fh

    monkeypatch.setattr(builtins, "open", counting_open)
    plan = plan_merge(f"merge_method: passthrough\nmodels:\n  - model: models/ft2+{adapter}\n")
    assert not [w for w in plan.warnings if "LoRA" in w]
    (info,) = plan.models.values()
    lora_file = adapter / "adapter_model.safetensors"
    tensor_bytes = sum(t.nbytes for t in info.index.tensors.values()) + 4 * (
        4 * 16 + 16 * 4 + 2 * 32 + 16 * 2
    )
    files = [*info.index.files, lora_file]
    assert 0 < counted["bytes"] <= sum(f.stat().st_size for f in files) - tensor_bytes
