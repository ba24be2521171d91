"""parse_size / format_size / format_size_tracemalloc."""

from __future__ import annotations

import tracemalloc

import pytest

from mprofile_ipy.units import format_size, format_size_tracemalloc, parse_size


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (131072, 131072),
        ("0", 0),
        ("512", 512),
        (" 512 ", 512),
        ("512B", 512),
        ("512 b", 512),
        ("64KiB", 64 * 1024),
        ("64 KiB", 64 * 1024),
        ("64kib", 64 * 1024),
        ("128k", 128 * 1024),
        ("128K", 128 * 1024),
        ("1MiB", 2**20),
        ("1M", 2**20),
        ("1MB", 10**6),
        ("1mb", 10**6),
        ("1kB", 1000),
        ("1KB", 1000),
        ("2GiB", 2 * 2**30),
        ("3G", 3 * 2**30),
        ("1GB", 10**9),
        ("1TiB", 2**40),
        ("1.5KiB", 1536),
        ("0.5 MiB", 2**19),
        ("131_072", 131072),
        ("1.0", 1),
        ("0.3KiB", 307),  # 307.2 rounds to the nearest byte
    ],
)
def test_parse_size_accepts(value, expected):
    result = parse_size(value)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize("value", [True, False, 1.5, 1024.0, None, b"64KiB", [1], object()])
def test_parse_size_rejects_other_types(value):
    with pytest.raises(TypeError, match="size must be"):
        parse_size(value)


@pytest.mark.parametrize("value", [-1, "-1", "-64KiB", " -5 "])
def test_parse_size_rejects_negative(value):
    with pytest.raises(ValueError, match="negative"):
        parse_size(value)


@pytest.mark.parametrize("value", ["", "   ", "abc", "KiB", "12 34", "1e6", "0x10", "1..5K",
                                   "1,024"])
def test_parse_size_rejects_malformed(value):
    with pytest.raises(ValueError, match="cannot read .* as a size; expected"):
        parse_size(value)


@pytest.mark.parametrize("value", ["12 parsecs", "5 kibibytes", "1 XB", "4 bits"])
def test_parse_size_names_unknown_units(value):
    with pytest.raises(ValueError, match="unknown size unit .* use B, k/KiB"):
        parse_size(value)


def test_parse_size_rejects_fractional_bytes():
    with pytest.raises(ValueError, match="whole number"):
        parse_size("1.5")
    with pytest.raises(ValueError, match="whole number"):
        parse_size("2.5 B")


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (512, "512 B"),
        (512.4, "512 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (-3072, "-3.0 KiB"),
        (-512, "-512 B"),
        (1.5 * 2**20, "1.5 MiB"),
        (1023.99 * 1024, "1.0 MiB"),
        (5 * 2**30, "5.0 GiB"),
        (2**40, "1.0 TiB"),
        (3 * 2**60, "3.0 EiB"),
        (2**80, "1048576.0 EiB"),
    ],
)
def test_format_size(size, expected):
    assert format_size(size) == expected


def test_format_size_sign():
    assert format_size(1536, sign=True) == "+1.5 KiB"
    assert format_size(-1536, sign=True) == "-1.5 KiB"
    assert format_size(12, sign=True) == "+12 B"
    assert format_size(0, sign=True) == "+0 B"


def test_format_size_nan():
    assert format_size(float("nan")) == "nan B"


@pytest.mark.parametrize("sign", [False, True])
def test_format_size_tracemalloc_matches_stdlib(sign):
    values = [0, 1, 99, 100, 5120, 10239, 10240, 10 * 1024 * 99, 10 * 1024 * 100,
              102400, 5 * 2**20, 2**30, 123 * 2**30, 5 * 2**40, 2**55, 2501.0, 0.4, 7.6]
    for value in values + [-v for v in values]:
        assert format_size_tracemalloc(value, sign) == tracemalloc._format_size(value, sign)
