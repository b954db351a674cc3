"""Sharded writer: golden shard plans, exact round trips through safetensors' own loaders,
any write order and thread layout, completeness checks, disk-full handling, resume."""

from __future__ import annotations

import errno
import json
import os
import random
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from meldkit.errors import MergeRuntimeError, OutputError, PlanError
from meldkit.io import writer as writer_mod
from meldkit.io.dtypes import code_of
from meldkit.io.header import parse_header_bytes
from meldkit.io.writer import INDEX_FILENAME, OutputTensorSpec, ShardedWriter, plan_shards


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def _specs(tensors: dict[str, torch.Tensor]) -> list[OutputTensorSpec]:
    return [OutputTensorSpec(n, code_of(t.dtype), tuple(t.shape)) for n, t in tensors.items()]


def _f32(name: str, n: int) -> OutputTensorSpec:
    return OutputTensorSpec(name, "F32", (n,))


def _membership(layouts: list) -> list[tuple[str, list[str]]]:
    return [(lay.filename, [e.spec.name for e in lay.entries]) for lay in layouts]


def _all_dtypes() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    f = torch.randn(4, 3, generator=g)
    f[1, 1] = float("nan")
    i = torch.randint(-100, 100, (5,), generator=g)
    return {
        "f32": f,
        "f16": f.to(torch.float16),
        "bf16": f.to(torch.bfloat16),
        "f64": f.to(torch.float64),
        "i64": i,
        "i32": i.to(torch.int32),
        "i8": i.to(torch.int8),
        "u8": (i + 100).to(torch.uint8),
        "bool": i > 0,
        "scalar_f32": torch.tensor(2.5),
        "scalar_bf16": torch.tensor(-1.25, dtype=torch.bfloat16),
        "scalar_i64": torch.tensor(42),
        "empty": torch.zeros(0, 7),
        "empty_bf16": torch.zeros(3, 0, dtype=torch.bfloat16),
    }


# -- plan_shards ----------------------------------------------------------------------------


def test_plan_shards_golden_split() -> None:
    specs = [_f32("a", 10), _f32("b", 10), _f32("c", 5), _f32("d", 30), _f32("e", 1), _f32("f", 20)]
    layouts = plan_shards(specs, max_shard_bytes=100)
    # a+b+c = 100 bytes fits exactly; d (120) is over the limit and sits alone; e+f = 84.
    assert _membership(layouts) == [
        ("model-00001-of-00003.safetensors", ["a", "b", "c"]),
        ("model-00002-of-00003.safetensors", ["d"]),
        ("model-00003-of-00003.safetensors", ["e", "f"]),
    ]
    assert [(e.begin, e.end) for e in layouts[0].entries] == [(0, 40), (40, 80), (80, 100)]
    assert [(e.begin, e.end) for e in layouts[2].entries] == [(0, 4), (4, 84)]
    assert [lay.data_bytes for lay in layouts] == [100, 120, 84]


def test_plan_shards_single_shard_name() -> None:
    layouts = plan_shards([_f32("a", 10), _f32("b", 10)], max_shard_bytes=5_000_000_000)
    assert _membership(layouts) == [("model.safetensors", ["a", "b"])]


def test_oversized_tensor_first_and_middle_gets_its_own_shard() -> None:
    layouts = plan_shards(
        [_f32("big", 100), _f32("a", 1), _f32("huge", 50), _f32("b", 1)], max_shard_bytes=10
    )
    assert [names for _, names in _membership(layouts)] == [["big"], ["a"], ["huge"], ["b"]]
    assert layouts[3].filename == "model-00004-of-00004.safetensors"


def test_empty_tensors_never_start_a_shard() -> None:
    layouts = plan_shards([_f32("a", 2), _f32("z", 0), _f32("b", 1)], max_shard_bytes=8)
    assert [names for _, names in _membership(layouts)] == [["a", "z"], ["b"]]


def test_no_specs_no_shards() -> None:
    assert plan_shards([], 100) == []


def test_header_bytes_are_padded_safetensors_json() -> None:
    layouts = plan_shards(
        [_f32("a", 3), OutputTensorSpec("b", "BF16", (2, 2))],
        1000,
        metadata={"merged_by": "meldkit"},
    )
    lay = layouts[0]
    (n,) = struct.unpack("<Q", lay.header[:8])
    assert n == len(lay.header) - 8 and n % 8 == 0 and lay.data_start % 8 == 0
    body = lay.header[8:]
    assert body == body.rstrip(b" ") + b" " * (len(body) - len(body.rstrip(b" ")))
    parsed = json.loads(body)
    assert parsed == {
        "__metadata__": {"format": "pt", "merged_by": "meldkit"},
        "a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
        "b": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [12, 20]},
    }
    assert lay.file_size == len(lay.header) + 20
    infos = parse_header_bytes(Path("x"), body, lay.file_size)  # meldkit's own parser agrees
    assert (infos["b"].start, infos["b"].end) == (lay.data_start + 12, lay.data_start + 20)


@pytest.mark.parametrize(
    ("specs", "limit", "word"),
    [
        ([_f32("a", 1), _f32("a", 2)], 100, "twice"),
        ([_f32("a", 1)], 0, "positive"),
        ([OutputTensorSpec("a", "F12", (1,))], 100, "unknown dtype"),
        ([OutputTensorSpec("a", "F32", (-1,))], 100, "invalid shape"),
        ([_f32("__metadata__", 1)], 100, "__metadata__"),
    ],
)
def test_plan_shards_rejects_bad_plans(
    specs: list[OutputTensorSpec], limit: int, word: str
) -> None:
    with pytest.raises(PlanError, match=word):
        plan_shards(specs, limit)


# -- writing --------------------------------------------------------------------------------


def _write_all(
    folder: Path, tensors: dict[str, torch.Tensor], limit: int, order: list[str] | None = None
) -> list[Path]:
    layouts = plan_shards(_specs(tensors), limit)
    with ShardedWriter(folder, layouts) as w:
        for name in order or list(tensors):
            w.write(name, tensors[name])
        return w.finish()


def _load_folder(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("limit", [10**9, 64])
def test_every_dtype_round_trips_through_safetensors(tmp_path: Path, limit: int) -> None:
    tensors = _all_dtypes()
    _write_all(tmp_path, tensors, limit)
    loaded = _load_folder(tmp_path)
    assert set(loaded) == set(tensors)
    for name, t in tensors.items():
        assert _same(loaded[name], t), name
    for f in tmp_path.glob("*.safetensors"):
        with safe_open(f, framework="pt") as fh:
            assert fh.metadata() == {"format": "pt"}
            for name in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                assert _same(fh.get_tensor(name), tensors[name]), name


def test_out_of_order_and_threaded_writes_give_identical_files(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    tensors = {
        f"layer.{i}.w": torch.randn(17, 9, generator=g).to(torch.bfloat16) for i in range(40)
    }
    tensors["scalar"] = torch.tensor(1.0)
    tensors["empty"] = torch.zeros(0)
    sequential, threaded = tmp_path / "seq", tmp_path / "thr"
    sequential.mkdir()
    threaded.mkdir()
    _write_all(sequential, tensors, 2000)

    order = list(tensors)
    random.Random(0).shuffle(order)
    layouts = plan_shards(_specs(tensors), 2000)
    with ShardedWriter(threaded, layouts) as w, ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: w.write(n, tensors[n]), order))
    files = sorted(p.name for p in sequential.iterdir())
    assert files == sorted(p.name for p in threaded.iterdir())
    assert len(files) == len(layouts) + 1  # shards + index
    for name in files:
        assert (sequential / name).read_bytes() == (threaded / name).read_bytes(), name
    loaded = _load_folder(threaded)
    assert all(_same(loaded[n], t) for n, t in tensors.items())


def test_non_contiguous_and_grad_tensors(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {"t": base.t(), "g": torch.ones(2, requires_grad=True) * 3}
    _write_all(tmp_path, tensors, 10**6)
    loaded = load_file(tmp_path / "model.safetensors")
    assert _same(loaded["t"], base.t().contiguous())
    assert _same(loaded["g"], torch.full((2,), 3.0))


def test_index_json_content(tmp_path: Path) -> None:
    tensors = {
        "b": torch.zeros(10),
        "a": torch.zeros(10, dtype=torch.float16),
        "c": torch.zeros(3, dtype=torch.int64),
    }
    files = _write_all(tmp_path, tensors, 44)  # [b (40)], [a (20) + c (24)]
    assert [f.name for f in files] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        INDEX_FILENAME,
    ]
    index = json.loads((tmp_path / INDEX_FILENAME).read_text())
    assert index == {
        "metadata": {"total_size": 40 + 20 + 24},
        "weight_map": {
            "a": "model-00002-of-00002.safetensors",
            "b": "model-00001-of-00002.safetensors",
            "c": "model-00002-of-00002.safetensors",
        },
    }
    assert list(index["weight_map"]) == ["a", "b", "c"]  # sorted keys, as Hugging Face writes


def test_single_shard_writes_no_index(tmp_path: Path) -> None:
    files = _write_all(tmp_path, {"a": torch.zeros(2)}, 100)
    assert [f.name for f in files] == ["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_finish_with_missing_tensor_raises(tmp_path: Path) -> None:
    tensors = {"a": torch.zeros(2), "b": torch.zeros(2), "c": torch.zeros(2)}
    w = ShardedWriter(tmp_path, plan_shards(_specs(tensors), 8))
    w.write("a", tensors["a"])
    with pytest.raises(MergeRuntimeError) as info:
        w.finish()
    assert "2 output tensor(s) were never written" in str(info.value)
    assert "'b'" in str(info.value) and "'c'" in str(info.value)
    w.abort()
    assert not (tmp_path / INDEX_FILENAME).exists()


def test_context_manager_aborts_on_exception(tmp_path: Path) -> None:
    tensors = {"a": torch.zeros(2), "b": torch.zeros(2)}
    with pytest.raises(KeyError), ShardedWriter(tmp_path, plan_shards(_specs(tensors), 8)) as w:
        w.write("a", tensors["a"])
        raise KeyError("boom")
    assert not (tmp_path / INDEX_FILENAME).exists()
    with pytest.raises(MergeRuntimeError, match="already closed"):
        w.write("b", tensors["b"])


def test_write_guards(tmp_path: Path) -> None:
    w = ShardedWriter(
        tmp_path, plan_shards([_f32("a", 2), OutputTensorSpec("b", "BF16", (2,))], 100)
    )
    with pytest.raises(MergeRuntimeError, match="not an output tensor"):
        w.write("zzz", torch.zeros(2))
    with pytest.raises(MergeRuntimeError, match="F16 \\[2\\] but the plan says F32 \\[2\\]"):
        w.write("a", torch.zeros(2, dtype=torch.float16))
    with pytest.raises(MergeRuntimeError, match="F32 \\[3\\]"):
        w.write("a", torch.zeros(3))
    w.write("a", torch.zeros(2))
    with pytest.raises(MergeRuntimeError, match="written twice"):
        w.write("a", torch.zeros(2))
    w.write("b", torch.zeros(2, dtype=torch.bfloat16))
    w.finish()
    with pytest.raises(MergeRuntimeError, match="already finished"):
        w.write("a", torch.zeros(2))


def test_disk_full_becomes_merge_runtime_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layouts = plan_shards([_f32("a", 4)], 100)
    w = ShardedWriter(tmp_path, layouts)

    def full(fd: int, data: object, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer_mod.os, "pwrite", full)
    with pytest.raises(MergeRuntimeError) as info:
        w.write("a", torch.zeros(4))
    assert "disk full while writing" in info.value.message
    assert "model.safetensors" in info.value.message
    assert info.value.hint is not None and "another output folder" in info.value.hint
    assert info.value.exit_code == 1
    w.abort()


def test_other_os_errors_carry_strerror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layouts = plan_shards([_f32("a", 4), _f32("b", 4)], 100)
    w = ShardedWriter(tmp_path, layouts)
    w.write("a", torch.zeros(4))  # opens the shard with the real pwrite

    def broken(fd: int, data: object, offset: int) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(writer_mod.os, "pwrite", broken)
    with pytest.raises(MergeRuntimeError, match="Input/output error"):
        w.write("b", torch.zeros(4))
    monkeypatch.undo()
    w.write("b", torch.ones(4))  # a failed write may be retried
    w.finish()
    assert _same(load_file(tmp_path / "model.safetensors")["b"], torch.ones(4))


def test_unwritable_folder(tmp_path: Path) -> None:
    w = ShardedWriter(tmp_path / "missing", plan_shards([_f32("a", 1)], 100))
    with pytest.raises(MergeRuntimeError, match="cannot write"):
        w.write("a", torch.zeros(1))


def test_on_shard_complete_once_per_shard_after_the_file_is_whole(tmp_path: Path) -> None:
    tensors = {f"t{i}": torch.full((4,), float(i)) for i in range(7)}
    layouts = plan_shards(_specs(tensors), 32)  # two tensors per shard, the last alone
    seen: list[str] = []

    def on_complete(filename: str) -> None:
        # The callback may rely on the file being complete and loadable.
        loaded = load_file(tmp_path / filename)
        assert all(_same(loaded[n], tensors[n]) for n in loaded)
        assert filename in w.completed_shards()
        seen.append(filename)

    w = ShardedWriter(tmp_path, layouts, on_shard_complete=on_complete)
    for name in ["t6", "t1", "t0", "t3", "t5", "t2", "t4"]:
        w.write(name, tensors[name])
    w.finish()
    assert seen == [
        "model-00004-of-00004.safetensors",
        "model-00001-of-00004.safetensors",
        "model-00002-of-00004.safetensors",
        "model-00003-of-00004.safetensors",
    ]
    assert w.completed_shards() == [lay.filename for lay in layouts]


def test_completed_shards_tracks_progress(tmp_path: Path) -> None:
    tensors = {"a": torch.zeros(2), "b": torch.zeros(2), "c": torch.zeros(2)}
    layouts = plan_shards(_specs(tensors), 16)
    w = ShardedWriter(tmp_path, layouts)
    assert w.completed_shards() == []
    w.write("c", tensors["c"])
    assert w.completed_shards() == ["model-00002-of-00002.safetensors"]
    w.write("a", tensors["a"])
    assert w.completed_shards() == ["model-00002-of-00002.safetensors"]
    w.write("b", tensors["b"])
    assert w.completed_shards() == [lay.filename for lay in layouts]
    w.finish()


def test_resume_adopts_completed_shards(tmp_path: Path) -> None:
    tensors = {"a": torch.arange(4.0), "b": torch.arange(4.0) + 10, "c": torch.arange(4.0) + 20}
    layouts = plan_shards(_specs(tensors), 32)  # [a, b], [c]
    first = ShardedWriter(tmp_path, layouts)
    first.write("a", tensors["a"])
    first.write("b", tensors["b"])  # shard 1 done; then the run is "interrupted"
    done = first.completed_shards()
    first.abort()
    assert done == ["model-00001-of-00002.safetensors"]

    second = ShardedWriter(tmp_path, plan_shards(_specs(tensors), 32), completed=done)
    with pytest.raises(MergeRuntimeError, match="written twice"):
        second.write("a", tensors["a"])
    second.write("c", tensors["c"])
    second.finish()
    assert all(_same(_load_folder(tmp_path)[n], t) for n, t in tensors.items())


def test_resume_rejects_a_shard_that_does_not_match(tmp_path: Path) -> None:
    tensors = {"a": torch.zeros(4), "b": torch.zeros(4)}
    _write_all(tmp_path, tensors, 16)
    other = {"a": torch.zeros(5), "b": torch.zeros(4)}  # the plan changed since
    with pytest.raises(OutputError, match="does not match the plan"):
        ShardedWriter(
            tmp_path, plan_shards(_specs(other), 16), completed=["model-00001-of-00002.safetensors"]
        )
    with pytest.raises(OutputError, match="not part of this plan"):
        ShardedWriter(tmp_path, plan_shards(_specs(tensors), 16), completed=["model.safetensors"])


def test_start_writeback_accepts_written_ranges(tmp_path: Path) -> None:
    import sys

    from meldkit.io.writeback import start_writeback

    path = tmp_path / "f.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"x" * 10_000, 0)
        assert start_writeback(fd, 0, 10_000) is sys.platform.startswith("linux")
        assert start_writeback(fd, 0, 0) is False  # nothing to write
        assert start_writeback(-1, 0, 10) is False  # a bad descriptor is ignored, not raised
    finally:
        os.close(fd)
    assert path.read_bytes() == b"x" * 10_000
