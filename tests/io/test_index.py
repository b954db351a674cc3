"""Checkpoint folder indexing: layouts, sharding, broken folders, and safe pickle loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from meldkit.errors import InputError
from meldkit.io.index import PickleTensorInfo, open_index


def _two_shards(folder: Path, index: dict[str, str] | None = None) -> None:
    save_file(
        {"a": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)},
        folder / "model-00001-of-00002.safetensors",
    )
    save_file({"c": torch.zeros(5, dtype=torch.int64)}, folder / "model-00002-of-00002.safetensors")
    weight_map = index or {
        "a": "model-00001-of-00002.safetensors",
        "b": "model-00001-of-00002.safetensors",
        "c": "model-00002-of-00002.safetensors",
    }
    body = {"metadata": {"total_size": 24 + 8 + 40}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(body))


def test_single_file_with_config(tmp_path: Path) -> None:
    save_file(
        {"x": torch.zeros(3, 4, dtype=torch.float16), "y": torch.zeros(2)},
        tmp_path / "model.safetensors",
    )
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 4})
    )
    idx = open_index(tmp_path)
    assert idx.format == "safetensors"
    assert idx.files == [tmp_path / "model.safetensors"]
    assert sorted(idx.tensors) == ["x", "y"] and "x" in idx and "z" not in idx
    assert (idx.tensors["x"].dtype, idx.tensors["x"].shape) == ("F16", (3, 4))
    assert idx.total_bytes == 24 + 8
    assert idx.config == {"architectures": ["LlamaForCausalLM"], "hidden_size": 4}


def test_no_config_gives_none(tmp_path: Path) -> None:
    save_file({"x": torch.zeros(1)}, tmp_path / "model.safetensors")
    assert open_index(tmp_path).config is None


def test_sharded_with_index(tmp_path: Path) -> None:
    _two_shards(tmp_path)
    idx = open_index(tmp_path)
    assert [f.name for f in idx.files] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    assert {n: t.file.name for n, t in idx.tensors.items()} == {
        "a": "model-00001-of-00002.safetensors",
        "b": "model-00001-of-00002.safetensors",
        "c": "model-00002-of-00002.safetensors",
    }
    assert idx.tensors["c"].dtype == "I64" and idx.tensors["c"].shape == (5,)


def test_index_is_preferred_over_stray_files(tmp_path: Path) -> None:
    _two_shards(tmp_path)
    save_file({"stray": torch.zeros(1)}, tmp_path / "consolidated.safetensors")
    assert "stray" not in open_index(tmp_path)


def test_standard_index_name_wins_over_other_index_files(tmp_path: Path) -> None:
    _two_shards(tmp_path)
    save_file({"layers.0.wq": torch.zeros(1)}, tmp_path / "consolidated.safetensors")
    other = {"weight_map": {"layers.0.wq": "consolidated.safetensors"}}
    (tmp_path / "consolidated.safetensors.index.json").write_text(json.dumps(other))
    assert sorted(open_index(tmp_path).tensors) == ["a", "b", "c"]


def test_index_listing_missing_shard(tmp_path: Path) -> None:
    _two_shards(tmp_path)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(InputError, match="model-00002-of-00002.safetensors.*does not exist"):
        open_index(tmp_path)


def test_index_pointing_outside_the_folder(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    save_file({"a": torch.zeros(1)}, tmp_path / "outside.safetensors")
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "../outside.safetensors"}})
    )
    with pytest.raises(InputError, match="outside the model folder"):
        open_index(model)


@pytest.mark.parametrize(
    "body", ['{"metadata": {}}', '{"weight_map": [1]}', '{"weight_map": {"a": 1}}', "[]"]
)
def test_index_without_valid_weight_map(tmp_path: Path, body: str) -> None:
    (tmp_path / "model.safetensors.index.json").write_text(body)
    with pytest.raises(InputError, match="weight_map"):
        open_index(tmp_path)


def test_corrupt_index_json(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors.index.json").write_text("{oops")
    with pytest.raises(InputError, match="model.safetensors.index.json"):
        open_index(tmp_path)


def test_duplicate_tensor_across_shards(tmp_path: Path) -> None:
    save_file(
        {"a": torch.zeros(1), "b": torch.zeros(1)}, tmp_path / "model-00001-of-00002.safetensors"
    )
    save_file({"b": torch.zeros(1)}, tmp_path / "model-00002-of-00002.safetensors")
    with pytest.raises(InputError) as info:
        open_index(tmp_path)
    assert "'b'" in str(info.value)
    assert "model-00001-of-00002.safetensors" in str(info.value)
    assert "model-00002-of-00002.safetensors" in str(info.value)


def test_adapter_file_is_not_part_of_the_model(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(1)}, tmp_path / "model.safetensors")
    save_file({"lora_A": torch.zeros(1)}, tmp_path / "adapter_model.safetensors")
    assert sorted(open_index(tmp_path).tensors) == ["w"]


def test_folder_missing(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        open_index(tmp_path / "nope")


def test_path_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is not a folder"):
        open_index(tmp_path / "f")


def test_folder_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "README.md").write_text("hi")
    with pytest.raises(InputError, match="no weights found"):
        open_index(tmp_path)


def test_corrupt_config_json(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(1)}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(InputError, match="config.json"):
        open_index(tmp_path)


def test_corrupt_shard_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"\x05\0\0\0\0\0\0\0{}")
    with pytest.raises(InputError, match="model.safetensors"):
        open_index(tmp_path)


# -- pickled checkpoints -------------------------------------------------------------------


def test_pytorch_bin_read_with_weights_only(tmp_path: Path) -> None:
    state = {
        "w": torch.zeros(3, 2),
        "h": torch.zeros(4, dtype=torch.float16),
        "i": torch.zeros(2, dtype=torch.int64),
        "u": torch.zeros(2, dtype=torch.int32).to(torch.uint16),
        "f8": torch.zeros(2).to(torch.float8_e4m3fn),
        "step": 7,  # non-tensor entries are skipped
    }
    torch.save(state, tmp_path / "pytorch_model.bin")
    idx = open_index(tmp_path)
    assert idx.format == "pickle"
    assert sorted(idx.tensors) == ["f8", "h", "i", "u", "w"]
    assert all(isinstance(t, PickleTensorInfo) for t in idx.tensors.values())
    got = {n: (t.dtype, t.shape, t.nbytes) for n, t in idx.tensors.items()}
    assert got == {
        "w": ("F32", (3, 2), 24),
        "h": ("F16", (4,), 8),
        "i": ("I64", (2,), 16),
        "u": ("U16", (2,), 4),
        "f8": ("F8_E4M3", (2,), 2),
    }


def test_unsupported_pickled_dtype_is_input_error(tmp_path: Path) -> None:
    torch.save({"c": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(InputError, match="complex64"):
        open_index(tmp_path)


def test_garbage_bin_is_input_error(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02garbage" * 10)
    with pytest.raises(InputError, match="pytorch_model.bin"):
        open_index(tmp_path)


class _Payload:
    """Pickles into a call of ``open(marker, "w")``: proof of code execution if it runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    model = tmp_path / "model"
    model.mkdir()
    torch.save({"w": torch.zeros(1), "evil": _Payload(marker)}, model / "pytorch_model.bin")
    assert not marker.exists()
    with pytest.raises(InputError, match="refused to load pickled weights"):
        open_index(model)
    assert not marker.exists()
