"""Header parsing: valid files give exact offsets; every kind of corruption is an InputError."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from meldkit.errors import InputError
from meldkit.io.header import DTYPE_SIZES, MAX_HEADER_BYTES, parse_header_bytes, read_header


def _raw_file(path: Path, header: object, data: bytes = b"", raw_json: bytes | None = None) -> Path:
    """Write ``u64 length + JSON + data`` by hand, so any header can be forged."""
    body = raw_json if raw_json is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


def _entry(
    dtype: str = "F32", shape: list[int] | None = None, offsets: list[int] | None = None
) -> dict:
    return {
        "dtype": dtype,
        "shape": shape if shape is not None else [2],
        "data_offsets": offsets or [0, 8],
    }


def _expect_bad(path: Path, *words: str) -> InputError:
    with pytest.raises(InputError) as info:
        read_header(path)
    message = str(info.value)
    assert str(path) in message
    for w in words:
        assert w in message
    return info.value


# -- valid files -------------------------------------------------------------------------


def test_reads_file_written_by_safetensors(tmp_path: Path) -> None:
    tensors = {
        "w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "b": torch.arange(4).to(torch.bfloat16),
        "s": torch.tensor(7, dtype=torch.int64),
        "e": torch.zeros(0, 5, dtype=torch.float16),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, path, metadata={"format": "pt"})
    infos = read_header(path)
    assert set(infos) == set(tensors)
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    raw = path.read_bytes()
    for name, t in tensors.items():
        info = infos[name]
        assert info.file == path and info.name == name
        assert info.shape == tuple(t.shape)
        assert info.dtype == {"w": "F32", "b": "BF16", "s": "I64", "e": "F16"}[name]
        assert 8 + n <= info.start <= info.end <= len(raw)
        assert info.nbytes == t.numel() * t.element_size() == info.numel * DTYPE_SIZES[info.dtype]
        assert raw[info.start : info.end] == t.reshape(-1).view(torch.uint8).numpy().tobytes()
    assert infos["w"].is_float and not infos["s"].is_float


def test_hand_built_header_gives_absolute_offsets(tmp_path: Path) -> None:
    header = {
        "__metadata__": {"format": "pt"},
        "a": _entry("F32", [2], [0, 8]),
        "b": _entry("I8", [3], [8, 11]),
    }
    path = _raw_file(tmp_path / "x.safetensors", header, b"\0" * 11)
    body_len = len(json.dumps(header).encode())
    infos = read_header(path)
    assert (infos["a"].start, infos["a"].end) == (8 + body_len, 8 + body_len + 8)
    assert (infos["b"].start, infos["b"].end) == (8 + body_len + 8, 8 + body_len + 11)


def test_empty_header_object_is_a_valid_file_with_no_tensors(tmp_path: Path) -> None:
    assert read_header(_raw_file(tmp_path / "x.safetensors", {})) == {}


# -- corruption --------------------------------------------------------------------------


def test_truncated_data_section(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[:-10])
    _expect_bad(path, "truncated")


def test_header_length_beyond_file(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    _expect_bad(path, "header length 1000")


def test_header_length_over_limit(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}")
    _expect_bad(path, "limit")


@pytest.mark.parametrize("content", [b"", b"\x01\x02\x03"])
def test_file_shorter_than_eight_bytes(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    _expect_bad(path, "shorter than the 8-byte")


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe{}", b"[" * 5000 + b"]" * 5000])
def test_malformed_json(tmp_path: Path, raw: bytes) -> None:
    _expect_bad(_raw_file(tmp_path / "x.safetensors", None, raw_json=raw), "JSON")


def test_integer_over_python_digit_limit_is_input_error(tmp_path: Path) -> None:
    # json.loads raises a bare ValueError (not JSONDecodeError) for >4300-digit integers.
    raw = b'{"a": {"dtype": "F32", "shape": [' + b"1" * 5000 + b'], "data_offsets": [0, 4]}}'
    _expect_bad(_raw_file(tmp_path / "x.safetensors", None, raw_json=raw), "JSON")


@pytest.mark.parametrize("header", [[1, 2], "text", 3, None])
def test_header_not_an_object(tmp_path: Path, header: object) -> None:
    _expect_bad(_raw_file(tmp_path / "x.safetensors", header), "not a JSON object")


def test_entry_not_an_object(tmp_path: Path) -> None:
    _expect_bad(_raw_file(tmp_path / "x.safetensors", {"a": [1]}, b"\0" * 8), "'a'")


@pytest.mark.parametrize("dtype", ["F31", "float32", 5, None])
def test_unknown_dtype(tmp_path: Path, dtype: object) -> None:
    header = {"a": {"dtype": dtype, "shape": [2], "data_offsets": [0, 8]}}
    _expect_bad(_raw_file(tmp_path / "x.safetensors", header, b"\0" * 8), "unknown dtype")


@pytest.mark.parametrize("shape", [[-2], [2.0], [True, 2], "2", None, [[2]]])
def test_invalid_shape(tmp_path: Path, shape: object) -> None:
    header = {"a": {"dtype": "F32", "shape": shape, "data_offsets": [0, 8]}}
    _expect_bad(_raw_file(tmp_path / "x.safetensors", header, b"\0" * 8), "invalid shape")


@pytest.mark.parametrize("offsets", [[0], [0, 8, 9], "0,8", [0.0, 8], None])
def test_malformed_offsets(tmp_path: Path, offsets: object) -> None:
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": offsets}}
    _expect_bad(_raw_file(tmp_path / "x.safetensors", header, b"\0" * 8), "data_offsets")


@pytest.mark.parametrize("offsets", [[0, 16], [-8, 0], [8, 0], [100, 108]])
def test_offsets_outside_data_section(tmp_path: Path, offsets: list[int]) -> None:
    header = {"a": _entry("F32", [2], offsets)}
    _expect_bad(_raw_file(tmp_path / "x.safetensors", header, b"\0" * 8), "data section")


def test_dtype_times_shape_disagrees_with_byte_length(tmp_path: Path) -> None:
    header = {"a": _entry("F32", [3], [0, 8])}
    _expect_bad(_raw_file(tmp_path / "x.safetensors", header, b"\0" * 12), "12 bytes", "occupies 8")


def test_overlapping_tensors(tmp_path: Path) -> None:
    header = {"a": _entry("F32", [2], [0, 8]), "b": _entry("F32", [1], [4, 8])}
    _expect_bad(_raw_file(tmp_path / "x.safetensors", header, b"\0" * 8), "overlap")


def test_empty_tensors_may_share_an_offset(tmp_path: Path) -> None:
    header = {"a": _entry("F32", [2], [0, 8]), "b": _entry("F32", [0], [4, 4])}
    assert read_header(_raw_file(tmp_path / "x.safetensors", header, b"\0" * 8))["b"].nbytes == 0


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        read_header(tmp_path / "absent.safetensors")
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(InputError, match="cannot read"):
        read_header(tmp_path / "dir.safetensors")


# -- property tests: nothing but InputError, whatever the bytes ------------------------------


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Module scope: hypothesis re-runs a test body many times within one function-scoped call.
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def valid_bytes(scratch: Path) -> bytes:
    path = scratch / "valid.safetensors"
    tensors = {
        "a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "b": torch.ones(3, dtype=torch.bfloat16),
    }
    save_file(tensors, path, metadata={"format": "pt"})
    return path.read_bytes()


def _check_result(path: Path, size: int, infos: dict) -> None:
    # When parsing succeeds, every entry must be internally consistent and inside the file.
    for info in infos.values():
        assert info.file == path
        assert 8 <= info.start <= info.end <= size
        assert info.nbytes == info.numel * DTYPE_SIZES[info.dtype]


def _parse_file(scratch: Path, data: bytes) -> None:
    path = scratch / "fuzz.safetensors"
    path.write_bytes(data)
    try:
        infos = read_header(path)
    except InputError as exc:
        assert str(path) in str(exc)
        return
    _check_result(path, len(data), infos)


_FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FAST
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_input_error(scratch: Path, data: bytes) -> None:
    _parse_file(scratch, data)


@_FAST
@given(st.binary(min_size=1, max_size=120))
def test_random_bytes_after_plausible_length_only_raise_input_error(
    scratch: Path, body: bytes
) -> None:
    _parse_file(scratch, struct.pack("<Q", len(body)) + body)


@_FAST
@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
    st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_mutated_valid_file_only_raises_input_error(
    scratch: Path, valid_bytes: bytes, edits: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(valid_bytes)
    for pos, byte in edits:
        data[pos % len(data)] = byte
    if cut is not None:
        del data[cut % len(data) :]
    _parse_file(scratch, bytes(data))


_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=5),
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
_dims = st.one_of(st.integers(-3, 6), _json_scalars)
_entries = st.fixed_dictionaries(
    {
        "dtype": st.one_of(st.sampled_from(sorted(DTYPE_SIZES)), _json_scalars),
        "shape": st.one_of(st.lists(_dims, max_size=3), _json_values),
        "data_offsets": st.one_of(
            st.lists(st.integers(-4, 80), min_size=0, max_size=3), _json_values
        ),
    }
)
_headers = st.one_of(
    st.dictionaries(st.text(max_size=6), st.one_of(_entries, _json_values), max_size=5),
    _json_values,
)


@settings(max_examples=120, deadline=None)
@given(_headers, st.integers(0, 200))
def test_random_json_headers_only_raise_input_error(header: object, data_len: int) -> None:
    raw = json.dumps(header).encode()
    path = Path("fuzz.safetensors")
    size = 8 + len(raw) + data_len
    try:
        infos = parse_header_bytes(path, raw, size)
    except InputError as exc:
        assert "fuzz.safetensors" in str(exc)
        return
    _check_result(path, size, infos)


# -- planning must not need torch ----------------------------------------------------------


def test_header_index_and_planning_helpers_do_not_import_torch(tmp_path: Path) -> None:
    save_file({"a": torch.zeros(2, 2)}, tmp_path / "model-00001-of-00002.safetensors")
    save_file(
        {"b": torch.zeros(3, dtype=torch.bfloat16)}, tmp_path / "model-00002-of-00002.safetensors"
    )
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    code = f"""
import sys
from meldkit.io.header import read_header
from meldkit.io.index import open_index
from meldkit.io.dtypes import parse_dtype_name, promote, itemsize
from meldkit.io.sizes import parse_size
from meldkit.io.writer import OutputTensorSpec, plan_shards
idx = open_index({str(tmp_path)!r})
assert sorted(idx.tensors) == ["a", "b"] and idx.tensors["b"].dtype == "BF16"
read_header(idx.files[0])
assert promote(["BF16", "F16"]) == "F32" and itemsize(parse_dtype_name("bf16")) == 2
plan_shards([OutputTensorSpec("a", "F32", (2, 2))], parse_size("5B"))
assert "torch" not in sys.modules, "torch was imported"
"""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
