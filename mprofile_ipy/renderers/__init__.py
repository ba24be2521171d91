"""Renderers: each formats a :class:`~mprofile_ipy.report.Report` as one kind of output.

``text``, ``html``, ``dataframe``, ``chart`` and ``widget`` read the report's plain values
(summary, sites, notes, changes, call tree); none sums traces or decides what to say. Each
imports its heavy library (pandas, matplotlib, ipywidgets) itself, only when used, through
:func:`require`, which turns a missing library into one clear line
(``errors.MissingDependencyError``). This package holds the number formats and words they share, so
that a size or an interval reads the same in every view.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

from ..errors import MissingDependencyError
from ..report import Z95, Note
from ..units import format_size

__all__ = ["GROUP_WORDS", "Z95", "MissingDependencyError", "clip", "fmt_count", "fmt_error",
           "fmt_percent", "fmt_rate", "fmt_size", "fmt_time", "note_text", "plural", "require"]

#: How each grouping is named in sentences ("grouped by cell line").
GROUP_WORDS = {
    "cell": "cell line",
    "line": "line",
    "function": "function",
    "file": "file",
    "traceback": "traceback",
}


def require(module: str, purpose: str, package: str | None = None) -> Any:
    """Import ``module`` for ``purpose``, or raise ``MissingDependencyError`` (an
    ``ImportError``) saying what to install (``package``, default: the module's top name)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        name = package or module.split(".")[0]
        raise MissingDependencyError(f"{purpose} needs {name}, which is not installed "
                                f"(pip install {name})") from None


def clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, with an ellipsis when cut."""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def plural(count: int, noun: str) -> str:
    """``1 sample``, ``2 samples``, ``1,024 samples``."""
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def fmt_size(n: float | None, signed: bool = False) -> str:
    """Bytes for people: ``512 B``, ``1.5 KiB``, ``12.3 MiB`` (``+`` too when ``signed``)."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    return format_size(n, sign=signed)


def fmt_rate(rate: int) -> str:
    """A sample rate as the magics accept it back: ``128KiB``, ``4MiB``, ``1000``."""
    rate = int(rate)
    for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        step = 1024**power
        if rate >= step and rate % step == 0:
            return f"{rate // step}{unit}"
    return str(rate)


def fmt_count(n: float | None, signed: bool = False) -> str:
    """A count with thousands separators (estimates are rounded)."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    value = int(round(n))
    return f"{value:+,}" if signed and value else f"{value:,}"


def fmt_error(rel_error: float, exact: bool = False) -> str:
    """The ~95% interval of an estimate, relative: ``±12%``; ``exact`` or ``±0%``."""
    if exact:
        return "exact"
    if isinstance(rel_error, float) and math.isnan(rel_error):
        return "-"
    half = Z95 * rel_error
    if half < 0.005:
        return "±0%"
    if half >= 10:
        return "±>999%"
    return f"±{half:.0%}"


def fmt_percent(p: float) -> str:
    """A share of a total: ``12.3%``."""
    return f"{p:.1f}%"


def fmt_time(seconds: float | None) -> str:
    """A duration: ``850 ms``, ``2.31 s``, ``3 min 4 s``."""
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(seconds, 60)
    return f"{minutes:.0f} min {secs:.0f} s"


def note_text(note: Note) -> str:
    """A note as one sentence, with its suggested rate as the magic's option."""
    if note.suggested_rate is None:
        return note.text
    hint = f"`--rate {fmt_rate(note.suggested_rate)}`"
    if note.kind == "no-samples":
        return f"{note.text}, for example {hint} (`--rate 1` traces every allocation)."
    return f"{note.text}, for example {hint}."
