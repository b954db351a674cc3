"""The layer-by-layer base runner gives the same router rows as transformers' whole model."""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from meldkit.errors import InputError
from meldkit.moe import layerwise
from meldkit.moe.hidden_states import GateMode, prompt_hidden_states
from meldkit.testing import make_tiny_model

pytest.importorskip("transformers")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny matrices: a second thread only adds synchronisation, which a busy machine makes slow."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


WORDS = [f"<w{i}>" for i in range(8)]
PROMPTS = [["<w1><w2>", "<w3> <w4><w5><w6><w0>"], ["<w0>", "<w7><w7>", "<w5>"], ["<w2><w5><w1>"]]
NEGATIVE = [[], ["<w6>"], ["<w1>", "<w3><w3><w3><w3><w3>"]]


def _model(root: Path, name: str, arch: str, **config: Any) -> Path:
    """A 3-layer tiny model with the added words, its config.json updated with ``config``."""
    folder = make_tiny_model(root / name, arch, num_layers=3, added_tokens=WORDS, seed=5)
    if config:
        path = folder / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    return folder


def _both_paths(folder: Path, mode: GateMode) -> tuple[torch.Tensor, torch.Tensor]:
    whole = prompt_hidden_states(str(folder), PROMPTS, NEGATIVE, mode)
    by_layer = prompt_hidden_states(
        str(folder),
        PROMPTS,
        NEGATIVE,
        mode,
        layer_by_layer=True,
        batch_size=2,
    )
    return whole, by_layer


@pytest.mark.parametrize(
    ("arch", "mode"),
    [
        ("llama", "hidden"),
        ("llama", "hidden_avg"),
        ("mistral", "hidden_avg"),
        ("qwen2", "hidden"),
        ("qwen3", "hidden_avg"),
    ],
)
def test_equals_transformers(tmp_path: Path, arch: str, mode: GateMode) -> None:
    whole, by_layer = _both_paths(_model(tmp_path, arch, arch), mode)
    torch.testing.assert_close(by_layer, whole, rtol=1e-5, atol=1e-5)


def test_bfloat16_weights(tmp_path: Path) -> None:
    folder = make_tiny_model(
        tmp_path / "bf16", "llama", num_layers=3, added_tokens=WORDS, dtype="bfloat16"
    )
    whole, by_layer = _both_paths(folder, "hidden")
    torch.testing.assert_close(by_layer, whole, rtol=1e-5, atol=1e-5)


ROPE_LLAMA3 = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # Small, so the tiny heads' wavelengths fall in all three bands.
    "original_max_position_embeddings": 8,
}


@pytest.mark.parametrize(
    "rope", [ROPE_LLAMA3, {"rope_type": "linear", "rope_theta": 100.0, "factor": 4.0}]
)
def test_rope_scaling(tmp_path: Path, rope: dict[str, Any]) -> None:
    folder = _model(tmp_path, "rope", "llama", rope_parameters=rope)
    whole, by_layer = _both_paths(folder, "hidden")
    torch.testing.assert_close(by_layer, whole, rtol=1e-5, atol=1e-5)


def test_transformers_4_rope_keys(tmp_path: Path) -> None:
    # transformers 4 wrote rope_theta and rope_scaling ("type" in older files) at the top level.
    folder = _model(tmp_path, "v4", "llama", rope_theta=500.0)
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    del cfg["rope_parameters"]
    scaling = {k: v for k, v in ROPE_LLAMA3.items() if k not in ("rope_theta", "rope_type")}
    cfg["rope_scaling"] = {"type": "llama3", **scaling}
    path.write_text(json.dumps(cfg))
    whole, by_layer = _both_paths(folder, "hidden")
    torch.testing.assert_close(by_layer, whole, rtol=1e-5, atol=1e-5)
    # ... and the scaling took effect (float noise is ~1e-7; tiny random weights make it small).
    plain = prompt_hidden_states(
        str(
            _model(
                tmp_path,
                "v5",
                "llama",
                rope_parameters={"rope_type": "default", "rope_theta": 500.0},
            )
        ),
        PROMPTS,
        NEGATIVE,
        "hidden",
        layer_by_layer=True,
    )
    assert (plain - by_layer).abs().max() > 1e-4


def test_llama3_frequencies_by_band() -> None:
    # head_dim 8, theta 10000: inv_freq = 10000 ** -(0, 2, 4, 6) / 8 -> wavelengths 2*pi/f.
    # Context 8: high band (wavelen < 8 / 4 = 2: none), low band (> 8 / 1 = 8: the last two);
    # 2*pi ~ 6.28 is medium: (1 - s) f / 8 + s f with s = (8 / 6.28 - 1) / 3.
    cos, sin = layerwise.rope_tables(ROPE_LLAMA3, 8, 2)
    inv = 10000.0 ** -(torch.arange(0, 8, 2).double() / 8)
    s = (8 / (2 * torch.pi) - 1) / 3
    want = torch.tensor([(1 - s) / 8 + s, 1 / 8, 1 / 8, 1 / 8], dtype=torch.float64) * inv
    # Position 1's angle is the frequency itself, in both halves.
    angles = torch.atan2(sin[1], cos[1]).double()
    torch.testing.assert_close(angles, torch.cat([want, want]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("arch", "config"),
    [
        ("mistral", {"sliding_window": 2}),
        (
            "qwen2",
            {
                "use_sliding_window": True,
                "sliding_window": 2,
                "max_window_layers": 1,
                "layer_types": ["full_attention", "sliding_attention", "sliding_attention"],
            },
        ),
    ],
)
def test_sliding_window(tmp_path: Path, arch: str, config: dict[str, Any]) -> None:
    folder = _model(tmp_path, arch, arch, **config)
    whole, by_layer = _both_paths(folder, "hidden_avg")
    torch.testing.assert_close(by_layer, whole, rtol=1e-5, atol=1e-5)
    # The window changes the result (the prompts are longer than two tokens).
    plain = prompt_hidden_states(
        str(_model(tmp_path, "full", arch)), PROMPTS, NEGATIVE, "hidden_avg", layer_by_layer=True
    )
    assert (plain - by_layer).abs().max() > 1e-3


def test_reads_one_layer_at_a_time_and_never_the_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _model(tmp_path, "llama", "llama")
    read: list[int] = []
    previous: list[weakref.ref[torch.Tensor]] = []
    real = layerwise._read_layer

    def spy(reader: Any, index: Any, layer: int, device: str) -> dict[str, torch.Tensor]:
        read.append(layer)
        # The previous layer's tensors are gone before the next layer is read.
        assert all(ref() is None for ref in previous)
        weights = real(reader, index, layer, device)
        previous[:] = [weakref.ref(t) for t in weights.values()]
        assert sorted(weights) == sorted(
            n[len(f"model.layers.{layer}.") :]
            for n in index.tensors
            if n.startswith(f"model.layers.{layer}.")
        )
        return weights

    monkeypatch.setattr(layerwise, "_read_layer", spy)
    prompt_hidden_states(str(folder), PROMPTS, NEGATIVE, "hidden", layer_by_layer=True)
    assert read == [0, 1]


def test_unsupported_architecture(tmp_path: Path) -> None:
    folder = make_tiny_model(tmp_path / "gemma2", "gemma2", num_layers=2)
    with pytest.raises(InputError) as err:
        prompt_hidden_states(str(folder), PROMPTS, NEGATIVE, "hidden", layer_by_layer=True)
    assert err.value.message == (
        f"{folder}/config.json: running the base layer by layer supports model types llama, "
        "mistral, qwen2, qwen3; this model is 'gemma2'"
    )
    assert (
        err.value.hint == "run without --layer-by-layer (transformers loads the whole base model)"
    )


def test_unsupported_rope_scaling(tmp_path: Path) -> None:
    folder = _model(
        tmp_path,
        "yarn",
        "llama",
        rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0},
    )
    with pytest.raises(InputError) as err:
        prompt_hidden_states(str(folder), PROMPTS, NEGATIVE, "hidden", layer_by_layer=True)
    assert err.value.message == (
        f"{folder}/config.json: rotary scaling 'yarn' is not supported layer by layer "
        "(supported: default, linear, llama3)"
    )


def test_config_that_does_not_fit_the_weights(tmp_path: Path) -> None:
    # Five layers in the config, three in the files; a wrong width, too.
    folder = _model(tmp_path, "short", "llama", num_hidden_layers=5, intermediate_size=24)
    with pytest.raises(InputError) as err:
        prompt_hidden_states(str(folder), PROMPTS, NEGATIVE, "hidden", layer_by_layer=True)
    assert err.value.message == (
        f"{folder} does not fit its config.json: 'model.layers.0.mlp.gate_proj.weight' is "
        "[32, 16], the config says [24, 16]; 'model.layers.0.mlp.up_proj.weight' is [32, 16], "
        "the config says [24, 16]; 'model.layers.0.mlp.down_proj.weight' is [16, 32], the "
        "config says [16, 24]; 'model.layers.1.mlp.gate_proj.weight' is [32, 16], the config "
        "says [24, 16]; 'model.layers.1.mlp.up_proj.weight' is [32, 16], the config says "
        "[24, 16] and 13 more"
    )
    assert err.value.hint == (
        "the checkpoint is incomplete or its config.json belongs to another model"
    )


def test_pickled_weights_are_refused(tmp_path: Path) -> None:
    folder = make_tiny_model(tmp_path / "bin", "llama", fmt="bin", added_tokens=WORDS)
    with pytest.raises(InputError) as err:
        prompt_hidden_states(str(folder), PROMPTS, NEGATIVE, "hidden", layer_by_layer=True)
    assert (
        err.value.message == f"{folder}: running the base layer by layer needs safetensors weights"
    )
    assert err.value.hint == (
        "convert the base model to safetensors, or run without --layer-by-layer"
    )
