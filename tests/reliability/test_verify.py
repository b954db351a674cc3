"""``meldkit verify``: a sound output passes; each kind of damage is named in one line."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from meldkit.verify import verify_folder, verify_report
from tests.reliability.helpers import Family, linear_recipe, run_cli, write_recipe

INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def outputs(family: Family, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A sharded and a single-file merge of the family."""
    from meldkit.cli.main import main

    root = tmp_path_factory.mktemp("verify")
    recipe = write_recipe(root, linear_recipe(family.ft1, family.ft2))
    made = {}
    for kind, size in (("sharded", "8KB"), ("single", "5GB")):
        assert (
            main(["merge", str(recipe), str(root / kind), "--out-shard-size", size, "--quiet"]) == 0
        )
        made[kind] = root / kind
    return made


def _copy(outputs: dict[str, Path], kind: str, tmp: Path) -> Path:
    dst = tmp / kind
    shutil.copytree(outputs[kind], dst)
    return dst


def _index(folder: Path) -> dict:
    return json.loads((folder / INDEX).read_text())


def _save_index(folder: Path, doc: dict) -> None:
    (folder / INDEX).write_text(json.dumps(doc))


def _shard(folder: Path, i: int) -> Path:
    return sorted(folder.glob("model-*.safetensors"))[i]


def _edit_json(folder: Path, name: str, **changes: object) -> None:
    path = folder / name
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


def _poison(folder: Path) -> None:
    """Overwrite the first value of model.norm.weight with NaN, in place."""
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    begin = json.loads(data[8 : 8 + n])["model.norm.weight"]["data_offsets"][0]
    data[8 + n + begin : 8 + n + begin + 4] = struct.pack("<f", float("nan"))
    path.write_bytes(bytes(data))


def _drop_layer(folder: Path) -> None:
    path = folder / "model.safetensors"
    sd = {k: v for k, v in load_file(path).items() if ".layers.2." not in k}
    save_file(sd, path, metadata={"format": "pt"})


def _duplicate(folder: Path) -> None:
    save_file({"model.norm.weight": torch.ones(16)}, folder / "model-extra.safetensors")
    doc = _index(folder)
    doc["weight_map"]["model.extra.weight"] = "model-extra.safetensors"
    _save_index(folder, doc)


def _missing_from_index(folder: Path) -> None:
    doc = _index(folder)
    del doc["weight_map"]["model.norm.weight"]
    _save_index(folder, doc)


def _wrong_shard(folder: Path) -> None:
    doc = _index(folder)
    doc["weight_map"]["model.norm.weight"] = _shard(folder, 0).name
    _save_index(folder, doc)


DAMAGE: list[tuple[str, str, Callable[[Path], None], str]] = [
    ("missing-shard", "sharded", lambda f: _shard(f, 1).unlink(), f"{INDEX} lists model-00002-of-"),
    (
        "stray-shard",
        "sharded",
        lambda f: shutil.copy(_shard(f, 0), f / "model-00099-of-00099.safetensors"),
        f"model-00099-of-00099.safetensors is not listed in {INDEX}",
    ),
    ("tensor-not-in-index", "sharded", _missing_from_index, "tensor model.norm.weight in model-"),
    ("index-points-elsewhere", "sharded", _wrong_shard, "tensor model.norm.weight is in model-"),
    ("tensor-twice", "sharded", _duplicate, "tensor model.norm.weight is stored twice"),
    (
        "wrong-total-size",
        "sharded",
        lambda f: _save_index(f, {**_index(f), "metadata": {"total_size": 1}}),
        "says total_size 1 but the tensors hold",
    ),
    (
        "truncated-shard",
        "sharded",
        lambda f: _shard(f, 0).write_bytes(_shard(f, 0).read_bytes()[:-8]),
        "safetensors is truncated: header says ",
    ),
    (
        "corrupt-header",
        "sharded",
        lambda f: _shard(f, 0).write_bytes(struct.pack("<Q", 2) + b"[]"),
        "not a valid safetensors file (header is not a JSON object)",
    ),
    ("no-index", "sharded", lambda f: (f / INDEX).unlink(), f"but no {INDEX}"),
    (
        "nan",
        "single",
        _poison,
        "tensor model.norm.weight (model.safetensors) has 1 NaN or Inf value(s)",
    ),
    ("missing-layer", "single", _drop_layer, "layers 2 of model.layers have no tensors"),
    (
        "layer-count",
        "single",
        lambda f: _edit_json(f, "config.json", num_hidden_layers=5),
        "config.json says num_hidden_layers=5 but the weights hold 4 layers",
    ),
    (
        "hidden-size",
        "single",
        lambda f: _edit_json(f, "config.json", hidden_size=32),
        "config.json says hidden_size=32 but model.embed_tokens.weight is [64, 16]",
    ),
    (
        "vocab-size",
        "single",
        lambda f: _edit_json(f, "config.json", vocab_size=65),
        "config.json says vocab_size=65 but model.embed_tokens.weight has 64 rows",
    ),
    ("no-config", "single", lambda f: (f / "config.json").unlink(), "config.json is missing"),
    (
        "bad-config",
        "single",
        lambda f: (f / "config.json").write_text("{"),
        "config.json is not valid JSON",
    ),
    ("no-weights", "single", lambda f: (f / "model.safetensors").unlink(), "no weights"),
    (
        "bad-tokenizer",
        "single",
        lambda f: (f / "tokenizer.json").write_text('{"model": 3}'),
        "the tokenizer does not load",
    ),
]


def test_a_sound_output_passes(
    outputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    for folder in outputs.values():
        report = verify_report(folder)
        assert report.problems == [] and report.notes == []
        assert report.tensors == 39
    r = run_cli(capsys, "verify", outputs["sharded"])
    assert r.code == 0 and r.err == ""
    assert r.out.startswith(
        f"verify: {outputs['sharded']} is a complete, readable model (39 tensors in "
    )


@pytest.mark.parametrize(
    ("kind", "damage", "expected"), [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE]
)
def test_damage_is_reported(
    kind: str,
    damage: Callable[[Path], None],
    expected: str,
    outputs: dict[str, Path],
    tmp_path: Path,
) -> None:
    folder = _copy(outputs, kind, tmp_path)
    damage(folder)
    problems = verify_folder(folder)
    assert any(expected in p for p in problems), problems
    assert all("\n" not in p for p in problems)


def test_cli_lists_problems_and_exits_1(
    outputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _copy(outputs, "single", tmp_path)
    _poison(folder)
    _edit_json(folder, "config.json", num_hidden_layers=7)
    r = run_cli(capsys, "verify", folder)
    assert r.code == 1
    assert r.err_lines == [
        "problem: tensor model.norm.weight (model.safetensors) has 1 NaN or Inf value(s)",
        "problem: config.json says num_hidden_layers=7 but the weights hold 4 layers",
        f"verify: 2 problem(s) in {folder}",
    ]
    r = run_cli(capsys, "verify", tmp_path / "absent")
    assert r.code == 1 and r.err_lines[0] == f"problem: {tmp_path / 'absent'} does not exist"


def test_tokenizer_check_is_skipped_with_a_note_without_transformers(
    outputs: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "transformers" else real(name, *a),
    )
    r = run_cli(capsys, "verify", outputs["single"])
    assert r.code == 0
    assert r.err_lines == [
        "note: transformers is not installed; the tokenizer was not loaded (pip install transformers)"
    ]


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch's note about the pickle protocol
def test_pickled_checkpoints_are_checked_safely(tmp_path: Path) -> None:
    from meldkit.testing import make_tiny_model

    folder = make_tiny_model(tmp_path / "bin", "llama", num_layers=2, fmt="bin")
    assert verify_folder(folder) == []
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not a pickle")
    problems = verify_folder(folder)
    assert len(problems) == 1 and "refused to load pickled weights" in problems[0]


def _data_size(path: Path) -> int:
    """Bytes of the data section that the header of ``path`` describes."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    return max(e["data_offsets"][1] for k, e in header.items() if k != "__metadata__")


def _cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize("kind", ["sharded", "single"])
def test_truncated_weights_are_one_root_cause_line(
    kind: str, outputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _copy(outputs, kind, tmp_path)
    # The shard holding the most tensors: every one of them would otherwise be a line.
    victim = _shard(folder, 1) if kind == "sharded" else folder / "model.safetensors"
    size = victim.stat().st_size
    need = _data_size(victim)
    have = need - 100
    _cut(victim, size - 100)
    r = run_cli(capsys, "verify", folder)
    assert r.code == 1
    assert r.err_lines == [
        f"problem: {victim.name} is truncated: header says {need:,} bytes of data, file has "
        f"{have:,}",
        f"verify: 1 problem(s) in {folder}",
    ]


def test_a_shard_cut_inside_its_header_or_emptied_is_truncated(
    outputs: dict[str, Path], tmp_path: Path
) -> None:
    folder = _copy(outputs, "sharded", tmp_path)
    victim = _shard(folder, 1)
    (n,) = struct.unpack("<Q", victim.read_bytes()[:8])
    _cut(victim, 50)
    assert verify_folder(folder) == [
        f"{victim.name} is truncated: header says {n:,} bytes of header, file has 42"
    ]
    _cut(victim, 0)
    assert verify_folder(folder) == [
        f"{victim.name} is truncated: file has 0 bytes, fewer than a header"
    ]


def test_a_missing_shard_is_one_root_cause_line(
    outputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _copy(outputs, "sharded", tmp_path)
    victim = _shard(folder, 1)
    victim.unlink()
    r = run_cli(capsys, "verify", folder)
    assert r.code == 1
    assert r.err_lines == [
        f"problem: {INDEX} lists {victim.name}, which does not exist",
        f"verify: 1 problem(s) in {folder}",
    ]


def test_other_damage_is_still_found_beside_a_truncated_shard(
    outputs: dict[str, Path], tmp_path: Path
) -> None:
    folder = _copy(outputs, "sharded", tmp_path)
    victim = _shard(folder, 1)
    _cut(victim, victim.stat().st_size - 8)
    _edit_json(folder, "config.json", hidden_size=32)
    problems = verify_folder(folder)
    assert len(problems) == 2 and problems[0].startswith(f"{victim.name} is truncated: ")
    assert (
        problems[1] == "config.json says hidden_size=32 but model.embed_tokens.weight is [64, 16]"
    )
