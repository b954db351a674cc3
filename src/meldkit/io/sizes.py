"""Byte sizes as people write them (``"5GB"``, ``"500MB"``, ``"2GiB"``, MergeKit's ``"5B"``).

MergeKit's ``--out-shard-size`` takes K=1e3, M=1e6 and B=1e9 ("5B" is its default, five
billion bytes) and only integers; meldkit accepts those spellings unchanged and adds the usual
decimal (KB, MB, GB, TB) and binary (KiB, MiB, GiB, TiB) units and fractions ("1.5GB").
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from meldkit.errors import RecipeError

__all__ = ["parse_size", "format_size"]

_UNITS: dict[str, int] = {
    "": 1,
    "k": 10**3, "kb": 10**3,
    "m": 10**6, "mb": 10**6,
    "g": 10**9, "gb": 10**9,
    "t": 10**12, "tb": 10**12,
    # MergeKit's spelling: "B" is billion, not byte ("5B" = 5e9 bytes).
    "b": 10**9,
    "byte": 1, "bytes": 1,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
_HINT = 'write a size such as "5GB", "500MB" or "2GiB" (MergeKit\'s "5B" also works)'


def parse_size(text: str | int) -> int:
    """Return the number of bytes in ``text``; an int is taken as bytes.

    Units are case-insensitive: K/KB, M/MB, G/GB, T/TB are powers of 1000, KiB/MiB/GiB/TiB
    powers of 1024, and a lone B means billion as in MergeKit. A bare number, or one
    followed by "bytes", is bytes.
    Fractions are allowed and rounded down to whole bytes. The result must be positive;
    anything else raises :class:`RecipeError`.
    """
    if isinstance(text, bool):  # bool is an int subclass; True is no size
        raise RecipeError(f"invalid size {text!r}", hint=_HINT)
    if isinstance(text, int):
        value = text
    elif isinstance(text, str):
        match = _SIZE_RE.match(text)
        if match is None or match.group(2).lower() not in _UNITS:
            raise RecipeError(f"invalid size {text!r}", hint=_HINT)
        try:
            # Decimal, not float, so "1.1GB" is exactly 1_100_000_000 bytes.
            number = Decimal(match.group(1))
        except InvalidOperation:  # pragma: no cover - the regex admits only valid numbers
            raise RecipeError(f"invalid size {text!r}", hint=_HINT) from None
        value = int(number * _UNITS[match.group(2).lower()])
    else:
        raise RecipeError(f"invalid size {text!r} (expected text or an integer)", hint=_HINT)
    if value <= 0:
        raise RecipeError(f"size {text!r} must be at least one byte", hint=_HINT)
    return value


_FORMAT_UNITS = ("KB", "MB", "GB", "TB", "PB", "EB")


def format_size(n: int | float) -> str:
    """Format a byte count with decimal units, e.g. ``1_234_567_890`` -> ``"1.23 GB"``."""
    sign = "-" if n < 0 else ""
    value = float(abs(n))
    if value < 1000:
        # "bytes", not "B": in a size MergeKit reads "B" as billion, so "512 B" would be
        # parsed back as 512e9.
        return f"{sign}{int(value)} bytes"
    i = 0
    value /= 1000
    # Compare after rounding so 999_999 shows as "1.00 MB", not "1000.00 KB".
    while round(value, 2) >= 1000 and i + 1 < len(_FORMAT_UNITS):
        value /= 1000
        i += 1
    return f"{sign}{value:.2f} {_FORMAT_UNITS[i]}"
