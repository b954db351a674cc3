"""parse_size / format_size golden values, MergeKit's spellings included."""

from __future__ import annotations

import pytest

from meldkit.errors import MeldError, RecipeError
from meldkit.io.sizes import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5B", 5_000_000_000),  # MergeKit's default --out-shard-size: B = billion
        ("5b", 5_000_000_000),
        ("500MB", 500_000_000),
        ("500M", 500_000_000),
        ("2GiB", 2 * 1024**3),
        ("2gib", 2 * 1024**3),
        ("1.5GB", 1_500_000_000),
        ("1.1GB", 1_100_000_000),  # exact: no float rounding error
        ("1234", 1234),
        (1234, 1234),
        ("10K", 10_000),
        ("10kb", 10_000),
        ("3KiB", 3072),
        ("7MiB", 7 * 2**20),
        ("1T", 10**12),
        ("2TB", 2 * 10**12),
        ("1TiB", 2**40),
        ("4G", 4 * 10**9),
        (" 5 GB ", 5_000_000_000),
        (".5KB", 500),
        ("2.", 2),
        ("512 bytes", 512),
        ("1byte", 1),
        ("1.0009KB", 1000),  # fractions of a byte round down
    ],
)
def test_parse_size_golden(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "GB",
        "5XB",
        "5 G B",
        "-5GB",
        "5GB5",
        "1e9",
        "five",
        "5,000",
        0,
        -1,
        "0",
        "0.0001",
        True,
        1.5,
        None,
    ],
)
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(RecipeError) as info:
        parse_size(bad)  # type: ignore[arg-type]
    assert isinstance(info.value, MeldError)
    assert info.value.hint is not None
    assert (
        '"5GB"' in info.value.hint and '"500MB"' in info.value.hint and '"2GiB"' in info.value.hint
    )


def test_error_message_quotes_the_input() -> None:
    with pytest.raises(RecipeError, match="'5XB'"):
        parse_size("5XB")


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 bytes"),
        (999, "999 bytes"),
        (1000, "1.00 KB"),
        (1_234_567_890, "1.23 GB"),
        (5_000_000_000, "5.00 GB"),
        (999_999, "1.00 MB"),
        (1_500_000, "1.50 MB"),
        (2 * 10**12, "2.00 TB"),
        (3 * 10**15, "3.00 PB"),
        (-2048, "-2.05 KB"),
    ],
)
def test_format_size_golden(n: int, text: str) -> None:
    assert format_size(n) == text


def test_format_then_parse_is_close() -> None:
    # Small sizes must not print as "512 B", which parse_size (like MergeKit) reads as 512e9.
    for n in (1, 999, 12_345, 6_789_012, 5_000_000_000, 7 * 10**12):
        assert abs(parse_size(format_size(n)) - n) <= n * 0.005
