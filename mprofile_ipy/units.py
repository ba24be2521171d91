"""Parse and format byte sizes.

``parse_size`` turns a user's size (``131072``, ``"128 KiB"``, ``"1MB"``, ``"128k"``) into
a whole number of bytes, or raises a ``TypeError``/``ValueError`` that lists what is
accepted. ``format_size`` writes a size for people (``"1.5 MiB"``); ``format_size_tracemalloc``
writes it exactly as :mod:`tracemalloc` does in ``Statistic.__str__`` (``"5120 B"``).
"""

from __future__ import annotations

__all__ = ["format_size", "format_size_tracemalloc", "parse_size"]

# Units are matched case-insensitively. IEC names (KiB) and bare letters (k, K) are powers
# of 1024, as in tcmalloc and gperftools settings; SI names with a B (kB, MB) are powers
# of 1000.
_UNITS: dict[str, int] = {"": 1, "b": 1}
for _power, _letter in enumerate("kmgtpe", start=1):
    _UNITS[_letter] = 1024**_power
    _UNITS[_letter + "ib"] = 1024**_power
    _UNITS[_letter + "b"] = 1000**_power

# Compiled on the first size given as a string: `start()` with an int rate (the usual
# case) then loads neither `re` nor `fractions` (see "Import cost" in docs/architecture.md).
_SIZE_PATTERN = r"\s*(\d+(?:_\d+)*(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*\Z"
_size_re = None

_ACCEPTED = (
    "a non-negative int or a string such as '131072', '64KiB', '64 KiB', '128k' (KiB), "
    "'1MiB' or '1MB' (10**6 bytes)"
)


def parse_size(value: int | str) -> int:
    """Return ``value`` as a whole number of bytes.

    Accepts a non-negative ``int``, or a string: a number (``"512"``, ``"1.5"`` with a unit
    larger than a byte, ``"131_072"``) followed by an optional unit. ``B``; ``k``/``K``,
    ``KiB``, ``M``, ``MiB``, ``G``, ``GiB``, ``T``, ``TiB`` (powers of 1024); ``kB``/``KB``,
    ``MB``, ``GB``, ``TB`` (powers of 1000). Units are case-insensitive; a fractional
    result is rounded to the nearest byte.

    Raises ``TypeError`` for other types (``bool`` and ``float`` included: a float byte
    count is almost always a mistake) and ``ValueError`` for negative or malformed sizes.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"size must be {_ACCEPTED}; got {type(value).__name__} {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return int(value)
    global _size_re
    if _size_re is None:
        import re

        _size_re = re.compile(_SIZE_PATTERN)
    match = _size_re.match(value)
    if match is None:
        if value.strip().startswith("-"):
            raise ValueError(f"size must not be negative, got {value!r}")
        raise ValueError(f"cannot read {value!r} as a size; expected {_ACCEPTED}")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(
            f"unknown size unit {unit!r} in {value!r}; use B, k/KiB, M/MiB, G/GiB, T/TiB "
            "(powers of 1024) or kB, MB, GB, TB (powers of 1000)"
        )
    from fractions import Fraction  # exact decimals: "1.1MB" is 1,100,000 bytes

    amount = Fraction(number.replace("_", "")) * factor
    if factor == 1 and amount.denominator != 1:
        raise ValueError(f"a size in bytes must be a whole number, got {value!r}")
    return round(amount)


_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_size(size: float, sign: bool = False) -> str:
    """Write ``size`` bytes for people: ``"512 B"``, ``"1.5 MiB"``, ``"-3.0 KiB"``.

    Sizes below 1 KiB are whole bytes; larger ones use the largest binary unit that keeps
    the number at least 1, with one decimal. ``sign=True`` adds ``+`` to positive values
    (for differences).
    """
    plus = "+" if sign else ""
    value = float(size)
    if value != value:  # NaN: nothing better to say
        return "nan B"
    for unit in _BINARY_UNITS:
        if unit == "B":
            if abs(round(value)) < 1024:
                return f"{round(value):{plus}d} B"
        elif abs(value) < 1023.95 or unit == _BINARY_UNITS[-1]:
            return f"{value:{plus}.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def format_size_tracemalloc(size: float, sign: bool = False) -> str:
    """Write ``size`` as :mod:`tracemalloc` does in its ``__str__`` methods.

    Up to 10 KiB in whole bytes, then the unit that keeps 3 to 5 significant digits:
    ``"5120 B"``, ``"10 KiB"``, ``"97.7 KiB"``. Kept byte-for-byte identical so that
    ``str(Statistic)`` reads exactly like tracemalloc's.
    """
    value = size
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 100 and unit != "B":
            return ("%+.1f %s" if sign else "%.1f %s") % (value, unit)
        if abs(value) < 10 * 1024 or unit == "TiB":
            return ("%+.0f %s" if sign else "%.0f %s") % (value, unit)
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
