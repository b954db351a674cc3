"""TensorReader: exact round trips for every dtype and shape, sharded models, truncation,
threads, pickles; plus the dtype helpers (meldkit.io.dtypes) the reader relies on."""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from meldkit.errors import InputError, MergeRuntimeError, RecipeError
from meldkit.execute.policy import DEFAULT_POLICY
from meldkit.io.dtypes import (
    code_of,
    dtype_name,
    is_float,
    itemsize,
    parse_dtype_name,
    promote,
    torch_dtype,
)
from meldkit.io.header import DTYPE_SIZES
from meldkit.io.index import open_index
from meldkit.io.reader import TensorReader

NewReader = Callable[[], TensorReader]


@pytest.fixture(params=["read", "map"])
def new_reader(request: pytest.FixtureRequest) -> NewReader:
    """Run a test through both ways of reading a tensor: into a buffer (the default reader, for
    these small tensors), and mapped (every non-empty tensor, however small, when the map
    threshold is lowered to one byte)."""
    if request.param == "map":
        return functools.partial(TensorReader, map_min_bytes=1)
    return TensorReader


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of ``t``: compares NaNs, -0.0 and float8 values exactly."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def _all_dtypes() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    f = torch.randn(3, 5, generator=g)
    f[0, 0] = float("nan")
    f[0, 1] = -0.0
    ints = torch.randint(0, 200, (7,), generator=g)
    return {
        "f32": f,
        "f16": f.to(torch.float16),
        "bf16": f.to(torch.bfloat16),
        "f64": f.to(torch.float64),
        "f8e4": f.to(torch.float8_e4m3fn),
        "f8e5": f.to(torch.float8_e5m2),
        "i64": ints - 100,
        "i32": (ints - 100).to(torch.int32),
        "i16": (ints - 100).to(torch.int16),
        "i8": (ints - 100).to(torch.int8),
        "u8": ints.to(torch.uint8),
        "u16": ints.to(torch.int32).to(torch.uint16),
        "u32": ints.to(torch.uint32),
        "u64": ints.to(torch.uint64),
        "bool": ints > 100,
    }


def test_round_trip_every_dtype(tmp_path: Path, new_reader: NewReader) -> None:
    tensors = _all_dtypes()
    save_file(tensors, tmp_path / "model.safetensors")
    idx = open_index(tmp_path)
    assert {idx.tensors[n].dtype for n in tensors} == set(DTYPE_SIZES)  # every code covered
    with new_reader() as reader:
        for name, t in tensors.items():
            got = reader.read(idx.tensors[name])
            assert _same(got, t), name


@pytest.mark.parametrize("shape", [(), (0,), (2, 0, 3), (1,), (4, 1, 3), (2, 3, 4, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
def test_shapes_including_scalar_and_empty(
    tmp_path: Path, shape: tuple[int, ...], dtype: torch.dtype, new_reader: NewReader
) -> None:
    t = torch.arange(max(1, torch.Size(shape).numel()), dtype=torch.float32)[
        : torch.Size(shape).numel()
    ]
    t = t.reshape(shape).to(dtype)
    save_file({"t": t, "pad": torch.ones(3)}, tmp_path / "model.safetensors")
    with new_reader() as reader:
        got = reader.read(open_index(tmp_path).tensors["t"])
    assert _same(got, t)


def test_reading_from_a_sharded_model(tmp_path: Path, new_reader: NewReader) -> None:
    shards = {
        "model-00001-of-00002.safetensors": {
            "a": torch.randn(4, 4),
            "b": torch.randn(3).to(torch.bfloat16),
        },
        "model-00002-of-00002.safetensors": {"c": torch.arange(10), "d": torch.tensor(1.5)},
    }
    for fname, ts in shards.items():
        save_file(ts, tmp_path / fname)
    weight_map = {n: fname for fname, ts in shards.items() for n in ts}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    idx = open_index(tmp_path)
    with new_reader() as reader:
        for ts in shards.values():
            for name, t in ts.items():
                assert _same(reader.read(idx.tensors[name]), t)


def test_result_is_private_memory(tmp_path: Path, new_reader: NewReader) -> None:
    t = torch.arange(6, dtype=torch.float32)
    save_file({"t": t}, tmp_path / "model.safetensors")
    info = open_index(tmp_path).tensors["t"]
    with new_reader() as reader:
        first = reader.read(info)
        first.mul_(0)  # in-place math on an input must not leak into a later read
        assert _same(reader.read(info), t)
    assert _same(load_file(tmp_path / "model.safetensors")["t"], t)  # nor into the file


def _maps_of(path: Path) -> int:
    return sum(1 for line in Path("/proc/self/maps").read_text().splitlines() if str(path) in line)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/self/maps (Linux)")
def test_big_tensors_are_mapped_for_as_long_as_they_live(tmp_path: Path) -> None:
    big = torch.arange(DEFAULT_POLICY.map_min_bytes // 4, dtype=torch.float32)
    path = tmp_path / "model.safetensors"
    save_file({"big": big, "small": torch.ones(8)}, path)
    idx = open_index(tmp_path)
    with TensorReader() as reader:
        small = reader.read(idx.tensors["small"])
        assert _maps_of(path) == 0  # below the threshold: read into a buffer
        got = reader.read(idx.tensors["big"])
        assert _maps_of(path) == 1 and _same(got, big)
        view = got[1:].view(torch.int32)
        del got
        assert _maps_of(path) == 1  # a view keeps the mapping
        del view
        assert _maps_of(path) == 0
    assert _same(small, torch.ones(8))


def test_misaligned_tensor_is_read_not_mapped(tmp_path: Path, new_reader: NewReader) -> None:
    # safetensors does not require alignment: a float32 tensor at offset 3 of the data section
    # must still come back exact (from an aligned buffer, which the kernels need).
    value = torch.arange(5, dtype=torch.float32)
    header = {
        "pad": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
        "t": {"dtype": "F32", "shape": [5], "data_offsets": [3, 23]},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "model.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"abc" + value.numpy().tobytes())
    with new_reader() as reader:
        got = reader.read(open_index(tmp_path).tensors["t"])
    assert _same(got, value) and got.data_ptr() % 4 == 0


def test_truncated_after_indexing(tmp_path: Path, new_reader: NewReader) -> None:
    save_file({"a": torch.ones(10), "b": torch.ones(1000)}, tmp_path / "model.safetensors")
    idx = open_index(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with new_reader() as reader:
        last = max(idx.tensors.values(), key=lambda i: i.end)
        with pytest.raises(InputError) as info:
            reader.read(last)
        assert str(path) in str(info.value) and f"'{last.name}'" in str(info.value)
        assert "truncated" in str(info.value)


def test_deleted_after_indexing(tmp_path: Path) -> None:
    save_file({"a": torch.ones(10)}, tmp_path / "model.safetensors")
    info = open_index(tmp_path).tensors["a"]
    (tmp_path / "model.safetensors").unlink()
    with TensorReader() as reader, pytest.raises(InputError, match="cannot open"):
        reader.read(info)


def test_read_after_close_is_refused(tmp_path: Path) -> None:
    save_file({"a": torch.ones(2)}, tmp_path / "model.safetensors")
    info = open_index(tmp_path).tensors["a"]
    reader = TensorReader()
    assert _same(reader.read(info), torch.ones(2))
    reader.close()
    reader.close()  # idempotent
    with pytest.raises(InputError, match="closed"):
        reader.read(info)


def test_pin_memory_is_ignored_on_cpu(tmp_path: Path) -> None:
    save_file({"a": torch.arange(5.0)}, tmp_path / "model.safetensors")
    with TensorReader() as reader:
        got = reader.read(open_index(tmp_path).tensors["a"], device="cpu", pin_memory=True)
    assert _same(got, torch.arange(5.0)) and got.device.type == "cpu"


def test_many_threads_read_concurrently(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    shards = {
        f"s{k}.safetensors": {f"t{k}_{i}": torch.randn(64, 33, generator=g) for i in range(12)}
        for k in range(3)
    }
    for fname, ts in shards.items():
        save_file(ts, tmp_path / fname)
    expected = {n: t for ts in shards.values() for n, t in ts.items()}
    idx = open_index(tmp_path)
    names = list(expected) * 8
    start = threading.Barrier(8)

    with TensorReader() as reader:

        def job(worker: int) -> int:
            start.wait()  # all threads begin together, opening the fds concurrently
            bad = 0
            for name in names[worker::8]:
                bad += not _same(reader.read(idx.tensors[name]), expected[name])
            return bad

        with ThreadPoolExecutor(8) as pool:
            assert sum(pool.map(job, range(8))) == 0
        assert len(reader._fds) == 3  # one descriptor per file, however many threads


def test_pickled_bin_reads_back_exactly(tmp_path: Path) -> None:
    state = {"w": torch.randn(3, 4), "b": torch.randn(2).to(torch.bfloat16), "i": torch.arange(3)}
    torch.save(state, tmp_path / "pytorch_model.bin")
    idx = open_index(tmp_path)
    with TensorReader() as reader:
        for name, t in state.items():
            got = reader.read(idx.tensors[name])
            assert _same(got, t)
            got.zero_()  # the cached (mmap'd) state must not change
            assert _same(reader.read(idx.tensors[name]), t)


def test_pickle_file_replaced_by_garbage_after_indexing(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    info = open_index(tmp_path).tensors["w"]
    (tmp_path / "pytorch_model.bin").write_bytes(b"garbage")
    with TensorReader() as reader, pytest.raises(InputError, match="pytorch_model.bin"):
        reader.read(info)


# -- meldkit.io.dtypes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("bfloat16", "BF16"), ("float16", "F16"), ("float32", "F32"), ("float64", "F64"),
        ("int64", "I64"), ("torch.bfloat16", "BF16"), ("torch.float32", "F32"),
        ("bf16", "BF16"), ("fp16", "F16"), ("fp32", "F32"), (" BFloat16 ", "BF16"),
    ],
)  # fmt: skip
def test_parse_dtype_name(name: str, code: str) -> None:
    assert parse_dtype_name(name) == code


@pytest.mark.parametrize("name", ["float8", "int32", "bfloat", "half", "", "torch."])
def test_parse_dtype_name_rejects_with_valid_names(name: str) -> None:
    with pytest.raises(RecipeError) as info:
        parse_dtype_name(name)
    assert "bfloat16, float16, float32, float64, int64" in str(info.value.hint)


def test_parse_dtype_name_suggests_close_match() -> None:
    with pytest.raises(RecipeError, match="Did you mean 'bfloat16'"):
        parse_dtype_name("bfloat61")


def test_torch_dtype_and_code_of_cover_every_code() -> None:
    for code in DTYPE_SIZES:
        dt = torch_dtype(code)
        assert code_of(dt) == code
        assert itemsize(code) == dt.itemsize
        assert dtype_name(code) == str(dt).removeprefix("torch.")
        assert is_float(code) == dt.is_floating_point
    assert torch_dtype("F8_E4M3") is torch.float8_e4m3fn
    assert torch_dtype("F8_E5M2") is torch.float8_e5m2
    assert torch_dtype("U32") is torch.uint32


def test_unknown_codes_and_dtypes() -> None:
    with pytest.raises(InputError, match="F12"):
        torch_dtype("F12")
    with pytest.raises(MergeRuntimeError, match="complex64"):
        code_of(torch.complex64)


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        (["BF16"], "BF16"), (["BF16", "BF16"], "BF16"), (["F16", "F16", "F16"], "F16"),
        (["BF16", "F16"], "F32"), (["F16", "F32"], "F32"), (["BF16", "F32", "F16"], "F32"),
        (["BF16", "F64"], "F64"), (["F32", "F64"], "F64"), (["F8_E4M3", "BF16"], "F32"),
        (["I64", "BF16"], "BF16"), (["BOOL", "I32"], "I32"), (["U8", "I8"], "I16"),
        (["I16", "I64"], "I64"), (["U16", "U32"], "U32"), (["U64", "I8"], "I64"),
    ],
)  # fmt: skip
def test_promote(codes: list[str], expected: str) -> None:
    assert promote(codes) == expected


@pytest.mark.parametrize(
    "pair",
    [
        ("F16", "F32"),
        ("BF16", "F64"),
        ("I64", "BF16"),
        ("BOOL", "I32"),
        ("U8", "I8"),
        ("I16", "I64"),
    ],
)
def test_promote_agrees_with_torch(pair: tuple[str, str]) -> None:
    a, b = (torch_dtype(c) for c in pair)
    assert promote(pair) == code_of(torch.promote_types(a, b))


def test_promote_needs_input() -> None:
    with pytest.raises(ValueError):
        promote([])
