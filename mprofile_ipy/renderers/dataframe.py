"""pandas DataFrames of a report: one row per site, per sampled allocation, or per change.

Columns are tidy and numeric (bytes, counts, percents as floats; samples and real block sizes
as ints; lines as nullable ints), so the user can sort, filter and plot them. The frames
display readably (sizes with units, whole counts, errors as ``±12%``) through
:class:`ReportFrame`, a DataFrame whose data stays numeric; ``readable`` returns that
formatted copy. Site columns: ``file`` (``In [3]`` or a path), ``line``, ``function``,
``source``, ``size`` (estimated bytes still alive), ``count`` (estimated allocations),
``percent`` (of the snapshot's total), ``samples`` (sampled allocations behind the
estimate), ``size_stderr`` and ``count_stderr`` (standard errors of ``size`` in bytes and of
``count``), ``rel_error``, ``allocated``, ``allocated_count``, ``cell``, ``filename``/``lineno``
(the frame's own values) and ``traceback`` (frames oldest first, one per line).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

from ..estimate import weight
from ..model import Allocator
from ..report import DiffReport, FrameInfo, Report
from . import fmt_count, fmt_error, fmt_percent, fmt_size, require

pd = require("pandas", "a DataFrame")

SITE_COLUMNS = [
    "file", "line", "function", "source", "size", "count", "percent", "samples",
    "size_stderr", "count_stderr", "rel_error", "allocated", "allocated_count", "cell",
    "filename", "lineno", "traceback",
]
TRACE_COLUMNS = [
    "file", "line", "function", "source", "size", "count", "weight", "estimated_size",
    "estimated_count", "domain", "allocator", "thread_id", "cell", "filename", "lineno",
    "traceback",
]
DIFF_COLUMNS = [
    "file", "line", "function", "source", "size", "size_diff", "count", "count_diff",
    "samples", "old_samples", "size_diff_stderr", "count_diff_stderr", "significant", "cell",
    "filename", "lineno",
]


def format_traceback(frames: tuple[FrameInfo, ...]) -> str:
    """Frames oldest first, one per line."""
    return "\n".join(frame.format() for frame in frames)


def _text(value: str) -> str:
    """A string pandas can store: file names that are not UTF-8 (kept by the model with
    lone surrogates) become ``\\xNN`` escapes, as in pprof files."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value


def _frame_columns(frame: FrameInfo, group_by: str) -> dict[str, object]:
    if group_by == "file":
        return {"file": _text(frame.file), "line": pd.NA, "function": "", "source": "",
                "cell": frame.cell if frame.cell is not None else pd.NA,
                "filename": _text(frame.filename), "lineno": pd.NA}
    return {
        "file": _text(frame.file),
        "line": frame.line,
        "function": _text(frame.name),
        "source": _text(frame.source) if group_by != "function" else "",
        "cell": frame.cell if frame.cell is not None else pd.NA,
        "filename": _text(frame.filename),
        "lineno": frame.lineno if group_by != "function" else pd.NA,
    }


#: dtypes of the numeric columns; the others are strings (object). ``size`` is an int in the
#: traces table (a real block size) and a float estimate elsewhere.
_DTYPES = {
    **dict.fromkeys(("line", "cell", "lineno"), "Int64"),
    **dict.fromkeys(("samples", "old_samples", "thread_id", "domain"), "int64"),
    "significant": "bool",
    **dict.fromkeys(("size", "count", "percent", "size_stderr", "count_stderr", "rel_error",
                     "size_diff", "count_diff", "size_diff_stderr", "count_diff_stderr",
                     "weight", "estimated_size", "estimated_count", "allocated",
                     "allocated_count"), "float64"),
}


def _typed(df: Any, exact: bool, **overrides: str) -> ReportFrame:
    """``df`` with the dtypes of :data:`_DTYPES` (and ``overrides``), displayed readably."""
    dtypes = {**_DTYPES, **overrides}
    typed = df.astype({name: dtypes[name] for name in df.columns if name in dtypes})
    frame = ReportFrame(typed)
    frame.attrs.update(df.attrs)
    frame.attrs["exact"] = exact
    return frame


#: Site column -> its value, read from a :class:`~mprofile_ipy.report.Site`.
_SITE_VALUES: dict[str, Callable[[Any], Any]] = {
    "size": attrgetter("size"), "count": attrgetter("count"), "percent": attrgetter("percent"),
    "samples": attrgetter("samples"), "size_stderr": attrgetter("std_error"),
    "count_stderr": attrgetter("count_std_error"), "rel_error": attrgetter("rel_error"),
    "allocated": attrgetter("allocated"), "allocated_count": attrgetter("allocated_count"),
    "traceback": lambda site: format_traceback(site.traceback),
}
#: Diff column -> its value, read from a :class:`~mprofile_ipy.report.SiteDiff`.
_DIFF_VALUES: dict[str, Callable[[Any], Any]] = {
    "size": attrgetter("size"), "size_diff": attrgetter("size_diff"),
    "count": attrgetter("count"), "count_diff": attrgetter("count_diff"),
    "samples": attrgetter("samples"), "old_samples": attrgetter("old_samples"),
    "size_diff_stderr": attrgetter("std_error"),
    "count_diff_stderr": attrgetter("count_std_error"),
    "significant": attrgetter("significant"),
}


def _rows(items: Sequence[Any], values: dict[str, Callable[[Any], Any]],
          top: int | None) -> list[dict[str, Any]]:
    """One row per site (or change): its frame's columns and its values."""
    chosen = items[:top] if top is not None else items
    return [{**_frame_columns(item.frame, item.group_by),
             **{name: _text(v) if isinstance(v := get(item), str) else v
                for name, get in values.items()}} for item in chosen]


def sites_dataframe(report: Report, group_by: str | None = None,
                    top: int | None = None) -> ReportFrame:
    """One row per site (alive or only allocated), largest estimated size first."""
    rows = _rows(report.sites(group_by, by="all"), _SITE_VALUES, top)
    df = pd.DataFrame(rows, columns=SITE_COLUMNS)
    df.attrs.update(group_by=report.options.group_by if group_by is None else group_by,
                    sample_rate=report.sample_rate, label=report.summary.label)
    return _typed(df, report.exact)


def traces_dataframe(report: Report) -> ReportFrame:
    """One row per distinct sampled allocation still alive (those the views show), with
    ``count``: how many identical sampled allocations it stands for (1 for the sampler's
    snapshots; a pprof profile's counted traces stay one row each, not millions).
    ``estimated_size``/``estimated_count`` are the row's whole estimate (size x weight x
    count, weight x count)."""
    import numpy as np

    rate = report.sample_rate
    index_of: dict[tuple, int] = {}
    fixed_rows: list[dict[str, object]] = []
    which, sizes, counts, domains, codes, threads = [], [], [], [], [], []
    for trace, count, frames in report.iter_trace_records():
        if not frames:
            continue
        index = index_of.get(frames)
        if index is None:
            index = index_of[frames] = len(fixed_rows)
            row = _frame_columns(frames[-1], "line")
            row["traceback"] = _text(format_traceback(frames))
            fixed_rows.append(row)
        which.append(index)
        sizes.append(trace[1])
        counts.append(count)
        domains.append(trace[0])
        codes.append(trace[4] if len(trace) > 4 else int(Allocator.MEM))
        threads.append(trace[5] if len(trace) > 5 else 0)
    fixed = pd.DataFrame(fixed_rows, columns=["file", "line", "function", "source", "cell",
                                              "filename", "lineno", "traceback"])
    df = fixed.iloc[np.asarray(which, dtype=np.int64)].reset_index(drop=True)
    size = np.asarray(sizes, dtype=np.int64)
    count = np.asarray(counts, dtype=np.int64)
    weights = {s: weight(s, rate) for s in set(sizes)}
    w = np.asarray([weights[s] for s in sizes], dtype=np.float64)
    names = {int(a): a.name for a in Allocator}
    df["size"] = size
    df["count"] = count
    df["weight"] = w
    df["estimated_size"] = size * w * count
    df["estimated_count"] = w * count
    df["domain"] = np.asarray(domains, dtype=np.int64)
    df["allocator"] = [names.get(c, str(c)) for c in codes]
    df["thread_id"] = np.asarray(threads, dtype=np.uint64).astype(np.int64)
    return _typed(df[TRACE_COLUMNS], report.exact, size="int64", count="int64")


def diff_dataframe(diff: DiffReport, group_by: str | None = None,
                   top: int | None = None) -> ReportFrame:
    """One row per site of either result, largest absolute change first; ``significant``
    says whether the change lies outside its 95% interval (what the other views list)."""
    rows = _rows(diff.rows(group_by), _DIFF_VALUES, top)
    return _typed(pd.DataFrame(rows, columns=DIFF_COLUMNS), diff.exact)


def readable(df: Any, exact: bool | None = None) -> Any:
    """A plain DataFrame copy for display: sizes with units, counts rounded, errors as
    ``±12%`` (``exact``: say so; default: read from ``df.attrs``)."""
    if exact is None:
        exact = bool(df.attrs.get("exact", False))
    out = pd.DataFrame(df).copy()
    for name in ("size", "size_diff", "estimated_size", "allocated"):
        if name in out and out[name].dtype.kind in "fiu":
            out[name] = out[name].map(lambda v, n=name: fmt_size(v, signed=n == "size_diff"))
    for name in ("size_stderr", "size_diff_stderr"):
        if name in out:
            out[name] = out[name].map(fmt_size)
    for name in ("count", "count_diff", "estimated_count", "allocated_count", "count_stderr",
                 "count_diff_stderr"):
        if name in out:
            out[name] = out[name].map(lambda v, n=name: fmt_count(v, signed=n == "count_diff"))
    if "rel_error" in out:
        out["rel_error"] = out["rel_error"].map(lambda v: fmt_error(v, exact))
    if "percent" in out:
        out["percent"] = out["percent"].map(fmt_percent)
    if "weight" in out:
        out["weight"] = out["weight"].map(lambda v: f"{v:,.1f}")
    return out


class ReportFrame(pd.DataFrame):
    """A DataFrame of a report: numeric data, shown with units (see :func:`readable`).

    Everything pandas does works as on any DataFrame (results of its operations stay
    ReportFrames where pandas keeps the type); only ``repr`` and the notebook's HTML
    display the formatted copy. ``pd.DataFrame(frame)`` gives a plain DataFrame.
    """

    @property
    def _constructor(self) -> type:
        return ReportFrame

    def _display(self) -> Any:
        try:
            return readable(self)
        except (TypeError, ValueError):  # a column changed type: show the data as it is
            return pd.DataFrame(self)

    def __repr__(self) -> str:
        return repr(self._display())

    def _repr_html_(self) -> str | None:
        return self._display()._repr_html_()
