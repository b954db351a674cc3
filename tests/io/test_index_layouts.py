"""Checkpoint layouts found in the wild: cache symlinks, stray copies, nested pickles, bad maps."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from meldkit.errors import InputError
from meldkit.io.index import open_index


def test_index_listing_a_tensor_no_shard_holds(tmp_path):
    save_file({"a": torch.zeros(2)}, str(tmp_path / "s1.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors"}})
    )
    with pytest.raises(InputError, match="lists tensors that its shards do not hold: b"):
        open_index(tmp_path)


def test_model_safetensors_wins_over_consolidated_copy(tmp_path):
    save_file({"a": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    save_file({"a": torch.zeros(2)}, str(tmp_path / "consolidated.safetensors"))
    index = open_index(tmp_path)
    assert [f.name for f in index.files] == ["model.safetensors"]


def test_hub_cache_symlinked_shards_are_accepted(tmp_path):
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snap.mkdir(parents=True)
    save_file({"a": torch.ones(3)}, str(blobs / "deadbeef"))
    (snap / "model-00001-of-00001.safetensors").symlink_to(blobs / "deadbeef")
    (snap / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00001.safetensors"}})
    )
    assert list(open_index(snap).tensors) == ["a"]


def test_nested_state_dict_pickle_is_unwrapped_and_empty_pickle_refused(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2, 2)}}, tmp_path / "pytorch_model.bin")
    assert list(open_index(tmp_path).tensors) == ["w"]
    other = tmp_path / "empty"
    other.mkdir()
    torch.save({"step": 3}, other / "pytorch_model.bin")
    with pytest.raises(InputError, match="holds no tensors"):
        open_index(other)


def test_shard_name_escaping_the_folder_is_refused(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "../x.safetensors"}})
    )
    with pytest.raises(InputError, match="points outside the model folder"):
        open_index(tmp_path)
