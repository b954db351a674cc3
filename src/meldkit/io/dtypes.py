"""Dtype names: safetensors codes, recipe names and torch dtypes, and MergeKit's promotion rule.

The safetensors code (``"BF16"``, ``"F32"``...) is meldkit's canonical dtype everywhere a plan
is built, so that planning never imports torch; :func:`torch_dtype` and :func:`code_of` cross
over to torch (imported lazily) only when tensors are actually read, computed or written.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from meldkit.errors import InputError, MergeRuntimeError, RecipeError, did_you_mean
from meldkit.io.header import DTYPE_SIZES, FLOAT_DTYPES

if TYPE_CHECKING:
    import torch

__all__ = [
    "RECIPE_DTYPES",
    "parse_dtype_name",
    "dtype_name",
    "torch_dtype",
    "code_of",
    "itemsize",
    "is_float",
    "promote",
]

# The names a recipe's ``dtype`` / ``out_dtype`` may use (MergeKit accepts exactly these five,
# with an optional "torch." prefix), mapped to safetensors codes.
RECIPE_DTYPES: dict[str, str] = {
    "bfloat16": "BF16",
    "float16": "F16",
    "float32": "F32",
    "float64": "F64",
    "int64": "I64",
}
# Short spellings people type by habit; meldkit accepts them although MergeKit does not.
_ALIASES: dict[str, str] = {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}

# safetensors code -> torch attribute name (the same string as ``str(torch_dtype)[6:]``).
_TORCH_NAMES: dict[str, str] = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I16": "int16",
    "U16": "uint16",
    "F16": "float16",
    "BF16": "bfloat16",
    "I32": "int32",
    "U32": "uint32",
    "F32": "float32",
    "I64": "int64",
    "U64": "uint64",
    "F64": "float64",
}
_CODES_BY_TORCH_NAME: dict[str, str] = {v: k for k, v in _TORCH_NAMES.items()}


def parse_dtype_name(name: str) -> str:
    """Return the safetensors code for a recipe dtype name (``"bfloat16"`` -> ``"BF16"``).

    Accepts the MergeKit names (bfloat16, float16, float32, float64, int64), each with an
    optional ``torch.`` prefix, and the aliases bf16, fp16, fp32; case and surrounding spaces
    are ignored. Anything else raises :class:`RecipeError` listing the valid names.
    """
    key = str(name).strip().lower().removeprefix("torch.")
    code = RECIPE_DTYPES.get(key) or _ALIASES.get(key)
    if code is None:
        valid = [*RECIPE_DTYPES, *_ALIASES]
        raise RecipeError(
            f"unknown dtype '{name}'.{did_you_mean(key, valid)}",
            hint="use one of: " + ", ".join(valid),
        )
    return code


def dtype_name(code: str) -> str:
    """Return the torch-style name of a safetensors code (``"BF16"`` -> ``"bfloat16"``)."""
    _check_code(code)
    return _TORCH_NAMES[code]


def _check_code(code: str) -> None:
    if code not in _TORCH_NAMES:
        raise InputError(
            f"unsupported safetensors dtype '{code}'",
            hint="supported: " + ", ".join(_TORCH_NAMES),
        )


def torch_dtype(code: str) -> torch.dtype:
    """Return the torch dtype for a safetensors code (imports torch on first use)."""
    _check_code(code)
    import torch

    return getattr(torch, _TORCH_NAMES[code])  # type: ignore[no-any-return]


def code_of(dtype: torch.dtype) -> str:
    """Return the safetensors code of a torch dtype; dtypes safetensors cannot hold raise.

    Raised as :class:`MergeRuntimeError` because an unsupported dtype here means a method
    produced something that cannot be saved, which is found while merging.
    """
    code = _CODES_BY_TORCH_NAME.get(str(dtype).removeprefix("torch."))
    if code is None:
        raise MergeRuntimeError(
            f"{dtype} tensors cannot be stored in safetensors",
            hint="set out_dtype in the recipe (e.g. bfloat16) to cast the result",
        )
    return code


def itemsize(code: str) -> int:
    """Bytes per element of a safetensors code."""
    _check_code(code)
    return DTYPE_SIZES[code]


def is_float(code: str) -> bool:
    """Whether a safetensors code is a floating-point type (float8 included)."""
    return code in FLOAT_DTYPES


# Integer ranks for promotion among integer codes: (signed, bits).
_INT_KIND: dict[str, tuple[bool, int]] = {
    "U8": (False, 8), "U16": (False, 16), "U32": (False, 32), "U64": (False, 64),
    "I8": (True, 8), "I16": (True, 16), "I32": (True, 32), "I64": (True, 64),
}  # fmt: skip


def _promote_ints(codes: set[str]) -> str:
    signed = any(_INT_KIND[c][0] for c in codes)
    bits = max(_INT_KIND[c][1] for c in codes)
    if signed:
        # An unsigned type needs one more bit as signed (U8 + I8 -> I16), as torch does; a
        # U64 cannot be widened further, so it stays I64 (torch also lands on int64).
        need = max(_INT_KIND[c][1] * (1 if _INT_KIND[c][0] else 2) for c in codes)
        return f"I{min(max(bits, need), 64)}"
    return f"U{bits}"


def promote(codes: Iterable[str]) -> str:
    """Return the common dtype of a group of input tensors (MergeKit's rule, torch-free).

    * all codes equal -> that code (bf16 stays bf16);
    * any F64 -> F64;
    * two or more different float types (e.g. BF16 + F16, F16 + F32) -> F32;
    * one float type plus integers/bools -> that float type (as ``torch.promote_types``);
    * integers only -> the narrowest integer holding them all; BOOL yields to any number.
    """
    group = set(codes)
    if not group:
        raise ValueError("promote() needs at least one dtype")
    for c in group:
        _check_code(c)
    if len(group) == 1:
        return next(iter(group))
    floats = group & FLOAT_DTYPES
    if "F64" in floats:
        return "F64"
    if len(floats) > 1:
        # Every float type except F64 converts exactly into F32, so F32 loses nothing.
        return "F32"
    if floats:
        return next(iter(floats))
    ints = group - {"BOOL"}
    if len(ints) == 1:
        return next(iter(ints))
    return _promote_ints(ints)
