"""A profiling result: a snapshot, what was measured around it, and the views users ask for.

``ProfileResult`` holds a :class:`~mprofile_ipy.model.Snapshot` plus the run's figures
(elapsed time, estimated memory still alive, peak, total allocated, samples, sample rate) and
turns it into sites grouped by cell line, line, file, function or traceback, with each
estimate's uncertainty. Frames of IPython, ipykernel and the profiler are hidden unless
``show_all``; cell files are shown as ``In [12]`` (see :mod:`mprofile_ipy.attribution`).
Its views (text, HTML, DataFrames, charts, widgets, pprof) live in :mod:`mprofile_ipy.renderers`
and are imported only when used.

Uncertainty: a sampled allocation of ``s`` bytes with weight ``w = 1/p`` contributes
``s*w`` bytes to an estimate and ``s**2 * w * (w - 1)`` to its variance (Horvitz-Thompson),
so a site of a few small samples is known to about ``1/sqrt(samples)``, and an allocation
much larger than the sample rate (``w`` = 1) is known exactly.
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .attribution import PROFILER_RUNNER, Attributor, Location, is_profiler_file
from .estimate import weight

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure

    from .model import Frame, Snapshot

__all__ = [
    "GROUP_BY",
    "FrameInfo",
    "Site",
    "SiteDiff",
    "TimelinePoint",
    "ProfileResult",
    "DiffResult",
    "normalize_group_by",
    "suggest_rate",
]

#: Ways to group allocations into sites; ``cell`` folds library frames into the cell line
#: that called them.
GROUP_BY: tuple[str, ...] = ("cell", "line", "function", "file", "traceback")
_GROUP_ALIASES = {
    "lineno": "line",
    "filename": "file",
    "func": "function",
    "tb": "traceback",
    "cells": "cell",
}
#: Relative standard errors above which a result is called rough (top site, total).
ROUGH_SITE = 0.25
ROUGH_TOTAL = 0.15
#: Groupings whose representative frame is one line, so the line's source text names it.
_LINE_GROUPS = ("cell", "line", "traceback")


def normalize_group_by(group_by: str) -> str:
    """Canonical group-by name; accepts tracemalloc's ``lineno``/``filename`` too."""
    if not isinstance(group_by, str):
        raise TypeError(f"group_by must be a str, not {type(group_by).__name__}")
    key = _GROUP_ALIASES.get(group_by.lower(), group_by.lower())
    if key not in GROUP_BY:
        allowed = ", ".join(GROUP_BY)
        raise ValueError(f"group_by must be one of {allowed} (or lineno/filename), "
                         f"got {group_by!r}")
    return key


def suggest_rate(allocated_bytes: float, current_rate: int, target_samples: int = 200) -> int:
    """A sample rate that would collect about ``target_samples`` samples for the same work.

    A power of two, at most half the current rate; 1 (exact) when the work is tiny.
    """
    if allocated_bytes <= 0:
        guess = max(1, current_rate // 64)
    else:
        guess = max(1, int(allocated_bytes / target_samples))
    guess = min(guess, max(1, current_rate // 2))
    if guess < 64:
        return 1
    return 1 << (guess.bit_length() - 1)


# ---------------------------------------------------------------------------------------------
# Frames, sites, timeline


@dataclass(frozen=True)
class FrameInfo:
    """One frame as shown: the frame's own file/line/function plus its display form."""

    filename: str
    lineno: int
    name: str
    file: str
    line: int
    source: str
    cell: int | None
    internal: bool
    is_cell: bool
    stdlib: bool = False
    firstlineno: int = 0

    @classmethod
    def from_location(cls, location: Location, name: str, firstlineno: int = 0) -> FrameInfo:
        """Combine a resolved location with the frame's function name and first line."""
        return cls(
            location.filename,
            location.lineno,
            name,
            location.file,
            location.line,
            location.source,
            location.cell,
            location.internal,
            location.is_cell,
            location.stdlib,
            firstlineno,
        )

    @property
    def where(self) -> str:
        """``In [3], line 2`` for cells, ``path:12`` for files."""
        if self.is_cell:
            return f"{self.file}, line {self.line}"
        return f"{self.file}:{self.line}"

    def format(self) -> str:
        """One line: where, in which function, and the source text."""
        text = self.where
        if self.name and self.name != "<module>":
            text += f" in {self.name}"
        if self.source:
            text += f": {self.source}"
        return text


@dataclass
class _Agg:
    """Sums over sampled allocations: estimates alive and allocated, variances, samples."""

    size: float = 0.0
    count: float = 0.0
    var_size: float = 0.0
    samples: int = 0
    alloc_size: float = 0.0
    alloc_count: float = 0.0
    alloc_var: float = 0.0
    alloc_samples: int = 0

    def add_stat(self, stat: Any) -> None:
        """Add a live ``Statistic`` (its variance from its relative error)."""
        self.size += stat.size_estimate
        self.count += stat.count_estimate
        self.var_size += (stat.relative_error * stat.size_estimate) ** 2
        self.samples += stat.samples

    def add_allocated(self, stat: Any) -> None:
        """Add an allocation-total ``Statistic`` (freed allocations included)."""
        self.alloc_size += stat.size_estimate
        self.alloc_count += stat.count_estimate
        error = stat.relative_error if math.isfinite(stat.relative_error) else 1.0
        self.alloc_var += (error * stat.size_estimate) ** 2
        self.alloc_samples += stat.samples

    def merge(self, other: _Agg) -> None:
        self.size += other.size
        self.count += other.count
        self.var_size += other.var_size
        self.samples += other.samples
        self.alloc_size += other.alloc_size
        self.alloc_count += other.alloc_count
        self.alloc_var += other.alloc_var
        self.alloc_samples += other.alloc_samples


@dataclass
class TracebackStat:
    """One distinct (visible) traceback of a site, for drill-down; frames oldest first."""

    frames: tuple[FrameInfo, ...]
    size: float
    count: float
    samples: int
    std_error: float
    allocated: float = math.nan

    def format(self, most_recent_first: bool = False) -> list[str]:
        """The frames, one formatted line each."""
        frames = reversed(self.frames) if most_recent_first else self.frames
        return [frame.format() for frame in frames]


class _Named:
    """How a site (or a change of a site) is named, from its frame and its grouping."""

    frame: FrameInfo
    group_by: str

    @property
    def label(self) -> str:
        """How the site is named in tables: ``In [3], line 2``, a path, a function."""
        frame = self.frame
        if self.group_by == "file":
            return frame.file
        if self.group_by == "function":
            return f"{frame.name or '?'} ({frame.file})"
        if self.group_by == "traceback" and frame.name:
            return f"{frame.where} in {frame.name}"
        return frame.where

    @property
    def title(self) -> str:
        """The label with the line's source text when the site is one line."""
        if self.frame.source and self.group_by in _LINE_GROUPS:
            return f"{self.label}: {self.frame.source}"
        return self.label


@dataclass
class Site(_Named):
    """An allocation site (a group of sampled allocations) with its estimates.

    ``size``/``count`` are unbiased estimates of the bytes and allocations still alive;
    ``std_error`` is the standard error of ``size`` in bytes; ``samples`` how many sampled
    allocations back it; ``percent`` is of the snapshot's whole estimated total.
    ``allocated``/``allocated_count`` estimate everything the site allocated since the start,
    freed allocations included (``nan`` when the snapshot has no allocation totals).
    ``frame`` is the representative frame (the innermost one for line, cell, file and
    traceback groups; the heaviest line for function groups), ``tracebacks`` the distinct
    tracebacks that make it up, heaviest first.
    """

    key: Any
    group_by: str
    frame: FrameInfo
    size: float
    count: float
    samples: int
    std_error: float
    percent: float
    allocated: float = math.nan
    allocated_count: float = math.nan
    allocated_std_error: float = math.nan
    tracebacks: list[TracebackStat] = field(default_factory=list)

    @property
    def rel_error(self) -> float:
        """Standard error relative to the estimate (0.0 when exact)."""
        return self.std_error / self.size if self.size > 0 else 0.0

    @property
    def allocated_rel_error(self) -> float:
        """Relative standard error of :attr:`allocated` (0.0 when exact or unknown)."""
        if math.isnan(self.allocated) or self.allocated <= 0:
            return 0.0
        return self.allocated_std_error / self.allocated

    @property
    def traceback(self) -> tuple[FrameInfo, ...]:
        """The heaviest traceback of the site (oldest frame first)."""
        return self.tracebacks[0].frames if self.tracebacks else (self.frame,)


@dataclass
class SiteDiff(_Named):
    """A site compared between two results: ``size``/``count`` are the new values."""

    key: Any
    group_by: str
    frame: FrameInfo
    size: float
    size_diff: float
    count: float
    count_diff: float
    samples: int
    old_samples: int
    std_error: float


@dataclass(frozen=True)
class TimelinePoint:
    """Memory of a session after one cell (or at a named snapshot)."""

    label: str
    cell: int | None
    time: float
    current: float
    peak: float
    allocated: float = 0.0


# ---------------------------------------------------------------------------------------------
# The view: snapshot traces with hidden frames removed, grouped by traceback


class _View:
    """The snapshot's allocations after hiding frames and applying include/exclude patterns.

    Works on the snapshot's per-traceback statistics (few), resolving frames once per
    traceback; ``tracebacks`` maps each visible traceback (frames oldest first) to its sums.
    """

    def __init__(
        self,
        snapshot: Snapshot,
        attributor: Attributor,
        *,
        show_all: bool,
        include: Sequence[str],
        exclude: Sequence[str],
    ) -> None:
        self.attributor = attributor
        self.show_all = show_all
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.total = _Agg()
        self.hidden = _Agg()  # allocations made only by internal frames
        self.filtered = _Agg()  # allocations removed by include/exclude
        self.tracebacks: dict[tuple[FrameInfo, ...], _Agg] = {}
        # Traceback -> visible frames, () when hidden or filtered out; and where it adds to.
        self.visible_of: dict[Any, tuple[FrameInfo, ...]] = {}
        self._target_of: dict[Any, _Agg] = {}
        for stat in snapshot.statistics("traceback"):
            self._target(stat.traceback).add_stat(stat)
            self.total.add_stat(stat)
        self.has_allocated = snapshot.allocated is not None
        if self.has_allocated:
            for stat in snapshot.allocated_statistics("traceback"):
                self._target(stat.traceback).add_allocated(stat)
                self.total.add_allocated(stat)

    def _target(self, traceback: Any) -> _Agg:
        """The sums a traceback's allocations add to (a visible traceback, hidden, filtered)."""
        target = self._target_of.get(traceback)
        if target is not None:
            return target
        frames = self.resolve(traceback)
        visible = frames if self.show_all else _visible(frames)
        if not visible:
            target = self.hidden
        elif not _passes(frames, self.include, self.exclude):
            visible, target = (), self.filtered
        else:
            target = self.tracebacks.get(visible)
            if target is None:
                target = self.tracebacks[visible] = _Agg()
        self.visible_of[traceback] = visible
        self._target_of[traceback] = target
        return target

    def visible(self, frames: tuple, total_nframe: int) -> tuple[FrameInfo, ...]:
        """The visible frames of raw ``frames`` (most recent first); ``()`` when hidden."""
        from .model import Traceback

        traceback = Traceback(frames, total_nframe)
        if traceback not in self.visible_of:
            self._target(traceback)
        return self.visible_of[traceback]

    def iter_traces(self, snapshot: Snapshot) -> Iterator[tuple[tuple, tuple[FrameInfo, ...]]]:
        """Each raw trace of ``snapshot`` with its visible frames (``()`` when hidden).

        Works on the raw tuples (docs/architecture.md) and resolves each distinct frames
        object once: fast enough for the millions of traces of an exact snapshot.
        """
        seen: dict[int, tuple[FrameInfo, ...]] = {}
        for trace in snapshot.raw_traces:
            frames = trace[2]
            visible = seen.get(id(frames))
            if visible is None:
                visible = seen[id(frames)] = self.visible(frames, trace[3])
            yield trace, visible

    def resolve(self, traceback: Iterable[Frame]) -> tuple[FrameInfo, ...]:
        """Each frame (oldest first) resolved for display."""
        out = []
        for frame in traceback:
            loc = self.attributor.locate(frame.filename, frame.lineno)
            out.append(FrameInfo.from_location(loc, getattr(frame, "name", None) or "",
                                               getattr(frame, "firstlineno", None) or 0))
        return tuple(out)

    def shown(self) -> _Agg:
        """The sums of every visible traceback."""
        agg = _Agg()
        for tb_agg in self.tracebacks.values():
            agg.merge(tb_agg)
        return agg


def _visible(frames: tuple[FrameInfo, ...]) -> tuple[FrameInfo, ...]:
    """The frames shown by default; () when the allocation is not the user's.

    User code is a cell, or a file that is neither internal (IPython, the kernel, the
    profiler, ...) nor of the standard library. Frames before the first user frame are the
    machinery that called it; under a magic, frames up to the magic's runner are the cell line
    that called the magic. After the first user frame, internal frames are dropped. Hidden
    entirely: allocations with no user frame, and those whose innermost frame outside the
    machinery is the profiler's (objects of the profiler's API called from user code). The
    magics' own bookkeeping is never sampled at all (``sampler.paused()``).
    """
    start = 0
    for index, frame in enumerate(frames):
        if frame.name == PROFILER_RUNNER and is_profiler_file(frame.filename):
            start = index + 1
    for frame in reversed(frames[start:]):
        if is_profiler_file(frame.filename):
            return ()  # made by the profiler, called from user code
        if frame.is_cell or not (frame.internal or frame.stdlib):
            break
    for index in range(start, len(frames)):
        frame = frames[index]
        if frame.is_cell or not (frame.internal or frame.stdlib):
            return tuple(f for f in frames[index:] if not f.internal)
    return ()


def _passes(frames: Sequence[FrameInfo], include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Include/exclude patterns match a frame's path or its label (``In [3]``), any frame."""

    def matches(pattern: str) -> bool:
        return any(
            fnmatch.fnmatch(f.filename, pattern) or fnmatch.fnmatch(f.file, pattern)
            for f in frames
        )

    if include and not any(matches(p) for p in include):
        return False
    return not any(matches(p) for p in exclude)


def _site_key(frames: tuple[FrameInfo, ...], group_by: str) -> tuple[Any, FrameInfo]:
    """Group key and representative frame of a visible traceback (oldest first)."""
    leaf = frames[-1]
    if group_by == "cell":
        for frame in reversed(frames):
            if frame.is_cell:
                return (frame.filename, frame.lineno), frame
        return (leaf.filename, leaf.lineno), leaf
    if group_by == "line":
        return (leaf.filename, leaf.lineno), leaf
    if group_by == "file":
        return leaf.filename, leaf
    if group_by == "function":
        return (leaf.filename, leaf.name or f"line {leaf.lineno}"), leaf
    return tuple((f.filename, f.lineno) for f in frames), leaf


def _group(view: _View, group_by: str, total_size: float) -> list[Site]:
    sites: dict[Any, tuple[FrameInfo, _Agg, dict[tuple[FrameInfo, ...], _Agg]]] = {}
    for frames, agg in view.tracebacks.items():
        key, frame = _site_key(frames, group_by)
        entry = sites.get(key)
        if entry is None:
            entry = sites[key] = (frame, _Agg(), {})
        entry[1].merge(agg)
        entry[2][frames] = agg
    out = []
    nan = math.nan
    for key, (frame, agg, tbs) in sites.items():
        tb_stats = [
            TracebackStat(frames, a.size, a.count, a.samples, math.sqrt(a.var_size),
                          a.alloc_size if view.has_allocated else nan)
            for frames, a in tbs.items()
        ]
        tb_stats.sort(key=lambda t: (-t.size, -_num(t.allocated), -t.samples))
        if group_by == "function" and tb_stats:
            frame = tb_stats[0].frames[-1]  # name a function group by its heaviest line
        out.append(
            Site(
                key=key,
                group_by=group_by,
                frame=frame,
                size=agg.size,
                count=agg.count,
                samples=agg.samples,
                std_error=math.sqrt(agg.var_size),
                percent=100.0 * agg.size / total_size if total_size > 0 else 0.0,
                allocated=agg.alloc_size if view.has_allocated else nan,
                allocated_count=agg.alloc_count if view.has_allocated else nan,
                allocated_std_error=math.sqrt(agg.alloc_var) if view.has_allocated else nan,
                tracebacks=tb_stats,
            )
        )
    out.sort(key=lambda s: (-s.size, -_num(s.allocated), -s.samples, str(s.key)))
    return out


def _num(value: float) -> float:
    """NaN-safe sort value."""
    return 0.0 if math.isnan(value) else value


# ---------------------------------------------------------------------------------------------
# The result


class _Displayable:
    """The display protocol shared by results: text for terminals, static HTML for notebooks."""

    def to_text(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_html(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self) if cycle else self.to_text())

    def _repr_html_(self) -> str:
        return self.to_html()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/plain": self.to_text(), "text/html": self.to_html()}


class ProfileResult(_Displayable):
    """What one profiled cell, statement or session snapshot produced.

    Build it from any snapshot (the figures are then read from the snapshot's metadata, as
    the sampler writes them) or give the figures measured around the run. Attributes:
    ``snapshot``, ``label`` (``In [12]``), ``elapsed`` (seconds), ``current`` (estimated
    bytes still alive), ``peak``, ``allocated`` (estimated bytes allocated, freed ones
    included), ``samples`` (all sampled allocations, freed ones included), ``live_samples``,
    ``sample_rate``, ``options``, ``error`` (``"ZeroDivisionError: division by zero"`` when
    the code raised, else None), ``timeline`` (a session's points, else None).
    """

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        label: str | None = None,
        elapsed: float | None = None,
        current: float | None = None,
        peak: float | None = None,
        allocated: float | None = None,
        allocated_count: float | None = None,
        samples: int | None = None,
        sample_rate: int | None = None,
        group_by: str = "cell",
        top: int = 10,
        show_all: bool = False,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        options: dict[str, Any] | None = None,
        timeline: Sequence[TimelinePoint] | None = None,
        error: BaseException | str | None = None,
        attributor: Attributor | None = None,
        created: float | None = None,
    ) -> None:
        self.snapshot = snapshot
        meta = dict(getattr(snapshot, "meta", None) or {})
        self.label = label
        self.elapsed = elapsed
        self.sample_rate = int(
            sample_rate if sample_rate is not None else getattr(snapshot, "sample_rate", 1)
        )
        self.group_by = normalize_group_by(group_by)
        if not isinstance(top, int) or isinstance(top, bool) or top < 1:
            raise ValueError(f"top must be a positive int, got {top!r}")
        self.top = top
        self.show_all = bool(show_all)
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.options = dict(options or {})
        self.timeline = list(timeline) if timeline is not None else None
        # Only a description: the exception itself would keep its frames' locals alive.
        self.error = _describe(error) if isinstance(error, BaseException) else error
        self.created = created if created is not None else time.time()
        self.attributor = attributor if attributor is not None else Attributor()
        self._view = _View(
            snapshot,
            self.attributor,
            show_all=self.show_all,
            include=self.include,
            exclude=self.exclude,
        )
        self.live_samples = self._view.total.samples
        self.current = float(current) if current is not None else self._view.total.size
        self.peak = float(peak) if peak is not None else float(meta.get("peak_bytes", self.current))
        self.allocated = float(
            allocated if allocated is not None else meta.get("allocated_bytes", self.current)
        )
        self.allocated_count = float(
            allocated_count
            if allocated_count is not None
            else meta.get("allocated_count", self._view.total.count)
        )
        self.samples = int(samples if samples is not None else meta.get("samples_total",
                                                                        self.live_samples))
        self._sites: dict[str, list[Site]] = {}

    # -- numbers ----------------------------------------------------------------------------
    @property
    def is_exact(self) -> bool:
        """True when every allocation was traced (sample rate 0 or 1)."""
        return self.sample_rate <= 1

    @property
    def total(self) -> float:
        """Estimated bytes alive in the snapshot (all frames, before any hiding)."""
        return self._view.total.size

    @property
    def total_std_error(self) -> float:
        """Standard error of :attr:`total`, in bytes."""
        return math.sqrt(self._view.total.var_size)

    @property
    def shown(self) -> float:
        """Estimated bytes of the allocations the views show."""
        return self._view.shown().size

    @property
    def hidden(self) -> float:
        """Estimated bytes of allocations with no user frame (IPython, kernel, profiler)."""
        return self._view.hidden.size

    @property
    def filtered_out(self) -> float:
        """Estimated bytes removed by the include/exclude patterns."""
        return self._view.filtered.size

    def sites(self, group_by: str | None = None, top: int | None = None, *,
              by: str = "size") -> list[Site]:
        """Sites, largest first; ``top`` keeps the first ones.

        ``by="size"`` (default): sites with memory still alive, by estimated size.
        ``by="allocated"``: every site by all it allocated, freed included (needs a
        snapshot with allocation totals, as the sampler's are). ``by="all"``: every site,
        by size then allocated (the rows of :meth:`to_dataframe`).
        """
        key = normalize_group_by(group_by or self.group_by)
        sites = self._sites.get(key)
        if sites is None:
            sites = self._sites[key] = _group(self._view, key, self.total)
        if by == "size":
            chosen = [s for s in sites if s.samples > 0]
        elif by == "allocated":
            chosen = sorted((s for s in sites if _num(s.allocated) > 0),
                            key=lambda s: (-s.allocated, -s.size, str(s.key)))
        elif by == "all":
            chosen = list(sites)
        else:
            raise ValueError(f"by must be 'size', 'allocated' or 'all', got {by!r}")
        return chosen[:top] if top is not None else chosen

    @property
    def has_allocated(self) -> bool:
        """True when per-site allocation totals (freed included) are known."""
        return self._view.has_allocated

    def warnings(self) -> list[str]:
        """Plain-language notes on how far to trust the numbers (empty when all is fine)."""
        notes: list[str] = []
        if self.is_exact:
            return notes
        from .renderers import Z95, fmt_rate, fmt_size

        rate = fmt_rate(self.sample_rate)
        better = suggest_rate(self.allocated, self.sample_rate)
        hint = f"--rate {fmt_rate(better)}"
        if self.samples == 0:
            notes.append(
                f"No allocation was sampled: this code allocated too little for the sample "
                f"rate ({rate} between samples on average). Profile it again with a lower "
                f"rate, for example `{hint}` (`--rate 1` traces every allocation)."
            )
            return notes
        if self.live_samples == 0:
            notes.append(
                f"Nothing sampled is still alive: all {self.samples} sampled allocations were "
                f"freed by the end (about {fmt_size(self.allocated)} allocated in total)."
            )
            return notes
        top = self.sites(top=1)
        top_error = top[0].rel_error if top else 0.0
        total_error = self.total_std_error / self.total if self.total > 0 else 0.0
        if top_error > ROUGH_SITE or total_error > ROUGH_TOTAL:
            alive = self.live_samples
            noun = "allocation" if alive == 1 else "allocations"
            notes.append(
                f"Estimates are rough: {alive} sampled {noun} still alive; the top site is "
                f"known to ±{Z95 * top_error:.0%} and the total to ±{Z95 * total_error:.0%} "
                f"(95%). For tighter numbers use a lower rate, for example `{hint}`."
            )
        return notes

    # -- tables ----------------------------------------------------------------------------
    def to_dataframe(self, group_by: str | None = None, top: int | None = None) -> pd.DataFrame:
        """One row per site, sorted by estimated size; numeric columns, see renderers.dataframe."""
        from .renderers.dataframe import sites_dataframe

        return sites_dataframe(self, group_by=group_by, top=top)

    def iter_traces(self) -> Iterator[tuple[tuple, tuple[FrameInfo, ...]]]:
        """Each raw trace of the snapshot (``docs/architecture.md``) with its visible frames,
        oldest first; ``()`` for the allocations the views hide or filter out."""
        return self._view.iter_traces(self.snapshot)

    def to_traces_dataframe(self) -> pd.DataFrame:
        """One row per sampled allocation still alive (the ones the views show)."""
        from .renderers.dataframe import traces_dataframe

        return traces_dataframe(self)

    def compare_to(self, old: ProfileResult | Snapshot, group_by: str | None = None) -> DiffResult:
        """What changed since ``old`` (a result or a snapshot), per site."""
        if not isinstance(old, ProfileResult):
            old = ProfileResult(old, attributor=self.attributor, show_all=self.show_all,
                                include=self.include, exclude=self.exclude)
        return DiffResult(self, old, group_by=group_by or self.group_by, top=self.top)

    # -- charts, widgets, files --------------------------------------------------------------
    def plot(self, kind: str = "bar", *, group_by: str | None = None, top: int | None = None,
             **kwargs: Any) -> Figure:
        """A matplotlib Figure: ``bar`` (top sites), ``flame`` (icicle of tracebacks) or
        ``timeline`` (memory after each cell of a session)."""
        from .renderers import chart

        return chart.plot_result(self, kind, group_by=group_by, top=top, **kwargs)

    def widget(self) -> Any:
        """An interactive explorer (ipywidgets), with a static fallback where widgets
        cannot render."""
        from .renderers.widget import explorer

        return explorer(self)

    def frame_namer(self) -> Callable[[Frame], tuple[str, str, int]]:
        """Map a frame to the (file name, function name, line) that exports show.

        Cells become ``In [12]`` with the line as typed in the cell, and their module-level
        code the function ``In [12]`` (not ``<module>``); other frames keep their names.
        """

        def name(frame: Frame) -> tuple[str, str, int]:
            func = getattr(frame, "name", None) or ""
            info = self.attributor.cell(frame.filename)
            if info is None:
                return frame.filename, func, frame.lineno
            loc = self.attributor.locate(frame.filename, frame.lineno)
            if not func or func == "<module>":
                func = info.label
            return info.label, func, loc.line

        return name

    def view_snapshot(self) -> Snapshot:
        """A snapshot of what the views show: hidden frames and allocations removed,
        include/exclude applied. Same sample rate and weights as :attr:`snapshot`."""
        from .model import Snapshot

        view = self._view
        converted: dict[tuple[FrameInfo, ...], tuple] = {}

        def raw_frames(visible: tuple[FrameInfo, ...]) -> tuple:
            frames = converted.get(visible)
            if frames is None:
                frames = converted[visible] = tuple(
                    (f.filename, f.lineno, f.name, f.firstlineno) for f in reversed(visible))
            return frames

        traces = [(trace[0], trace[1], raw_frames(visible), *trace[3:])
                  for trace, visible in view.iter_traces(self.snapshot) if visible]
        allocated = None
        if self.snapshot.allocated is not None:
            allocated = [(raw_frames(visible), *entry[1:]) for entry in self.snapshot.allocated
                         if (visible := view.visible(entry[0], entry[1]))]
        meta = dict(self.snapshot.meta)
        meta.update(view={"show_all": self.show_all, "include": list(self.include),
                          "exclude": list(self.exclude)})
        return Snapshot(traces, self.snapshot.traceback_limit, sample_rate=self.sample_rate,
                        allocated=allocated, meta=meta)

    def to_pprof(self, path_or_file: Any) -> None:
        """Write what the views show as a gzipped pprof profile, cells named as shown here
        (``In [12]``, lines as typed). ``filtered(show_all=True).to_pprof(...)`` writes
        every frame and allocation."""
        from .export.pprof import write_pprof

        comments = [f"mprofile-ipy result {self.label}"] if self.label else []
        write_pprof(self.view_snapshot(), path_or_file, frame_namer=self.frame_namer(),
                    comments=comments)

    def filtered(self, *, show_all: bool | None = None, include: Sequence[str] | None = None,
                 exclude: Sequence[str] | None = None, group_by: str | None = None,
                 top: int | None = None) -> ProfileResult:
        """The same result with other frame hiding, include/exclude patterns or defaults
        for grouping and top N (``None`` keeps this result's)."""
        return ProfileResult(
            self.snapshot,
            label=self.label,
            elapsed=self.elapsed,
            current=self.current,
            peak=self.peak,
            allocated=self.allocated,
            allocated_count=self.allocated_count,
            samples=self.samples,
            sample_rate=self.sample_rate,
            group_by=self.group_by if group_by is None else group_by,
            top=self.top if top is None else top,
            show_all=self.show_all if show_all is None else show_all,
            include=self.include if include is None else include,
            exclude=self.exclude if exclude is None else exclude,
            options=self.options,
            timeline=self.timeline,
            error=self.error,
            attributor=self.attributor,
            created=self.created,
        )

    # -- display ---------------------------------------------------------------------------
    def __repr__(self) -> str:
        from .renderers import fmt_size

        where = f" {self.label}" if self.label else ""
        return (f"<ProfileResult{where}: {fmt_size(self.current)} alive, "
                f"peak {fmt_size(self.peak)}, {self.live_samples} samples>")

    def to_text(self, top: int | None = None, group_by: str | None = None) -> str:
        """The plain-text report (what a terminal shows)."""
        from .renderers.text import render_result

        return render_result(self, top=top, group_by=group_by)

    def to_html(self, top: int | None = None, group_by: str | None = None) -> str:
        """The static HTML report (no scripts: renders in JupyterLab, VS Code, Colab)."""
        from .renderers.html import render_result

        return render_result(self, top=top, group_by=group_by)


class DiffResult(_Displayable):
    """Two results compared site by site: what ``new`` has that ``old`` had not.

    ``std_error`` of a change counts only the sampled allocations found in one snapshot and
    not the other (allocations alive in both cancel out exactly when both snapshots come
    from the same run).
    """

    def __init__(self, new: ProfileResult, old: ProfileResult, *, group_by: str = "cell",
                 top: int = 10) -> None:
        self.new = new
        self.old = old
        self.group_by = normalize_group_by(group_by)
        self.top = top
        self._diffs: dict[str, list[SiteDiff]] = {}

    @property
    def label(self) -> str:
        """``B vs A``."""
        return f"{self.new.label or 'new'} vs {self.old.label or 'old'}"

    @property
    def size_diff(self) -> float:
        """Change of the estimated total."""
        return self.new.total - self.old.total

    @property
    def is_exact(self) -> bool:
        """True when both results traced every allocation."""
        return self.new.is_exact and self.old.is_exact

    def diffs(self, group_by: str | None = None, top: int | None = None) -> list[SiteDiff]:
        """Sites sorted by the absolute size change, largest first."""
        key = normalize_group_by(group_by or self.group_by)
        diffs = self._diffs.get(key)
        if diffs is None:
            diffs = self._diffs[key] = self._compute(key)
        return diffs[:top] if top is not None else list(diffs)

    def _compute(self, group_by: str) -> list[SiteDiff]:
        new_sites = {s.key: s for s in self.new.sites(group_by)}
        old_sites = {s.key: s for s in self.old.sites(group_by)}
        variances = self._change_variances(group_by)
        out = []
        for key in new_sites.keys() | old_sites.keys():
            new, old = new_sites.get(key), old_sites.get(key)
            ref = new if new is not None else old
            assert ref is not None
            size = new.size if new else 0.0
            count = new.count if new else 0.0
            out.append(
                SiteDiff(
                    key=key,
                    group_by=group_by,
                    frame=ref.frame,
                    size=size,
                    size_diff=size - (old.size if old else 0.0),
                    count=count,
                    count_diff=count - (old.count if old else 0.0),
                    samples=new.samples if new else 0,
                    old_samples=old.samples if old else 0,
                    std_error=math.sqrt(variances.get(key, 0.0)),
                )
            )
        out.sort(key=lambda d: (-abs(d.size_diff), -d.size, str(d.key)))
        return out

    def _change_variances(self, group_by: str) -> dict[Any, float]:
        """Variance of each site's change from the allocations in only one snapshot."""
        def counted(result: ProfileResult) -> dict[tuple, list]:
            """(domain, size, visible frames) -> [number of samples, weight]."""
            bag: dict[tuple, list] = {}
            rate = result.sample_rate
            for trace, visible in result.iter_traces():
                if not visible:
                    continue
                key = (trace[0], trace[1], visible)
                entry = bag.get(key)
                if entry is None:
                    bag[key] = [1, weight(trace[1], rate)]
                else:
                    entry[0] += 1
            return bag

        new_bag, old_bag = counted(self.new), counted(self.old)
        out: dict[Any, float] = {}
        for bag, other in ((new_bag, old_bag), (old_bag, new_bag)):
            for (_domain, size, visible), (n, w) in bag.items():
                extra = n - other.get((_domain, size, visible), (0,))[0]
                if extra <= 0:
                    continue
                key, _ = _site_key(visible, group_by)
                out[key] = out.get(key, 0.0) + extra * size * size * w * (w - 1.0)
        return out

    def to_dataframe(self, group_by: str | None = None, top: int | None = None) -> pd.DataFrame:
        """One row per site with size, size_diff, count, count_diff, samples."""
        from .renderers.dataframe import diff_dataframe

        return diff_dataframe(self, group_by=group_by, top=top)

    def plot(self, *, group_by: str | None = None, top: int | None = None,
             **kwargs: Any) -> Figure:
        """Bar chart of the largest changes."""
        from .renderers import chart

        return chart.diff_bar(self, group_by=group_by, top=top, **kwargs)

    def widget(self) -> Any:
        """The diff explorer (ipywidgets), with a static fallback."""
        from .renderers.widget import diff_explorer

        return diff_explorer(self)

    def to_text(self, top: int | None = None, group_by: str | None = None) -> str:
        """The plain-text comparison."""
        from .renderers.text import render_diff

        return render_diff(self, top=top, group_by=group_by)

    def to_html(self, top: int | None = None, group_by: str | None = None) -> str:
        """The static HTML comparison."""
        from .renderers.html import render_diff

        return render_diff(self, top=top, group_by=group_by)

    def __repr__(self) -> str:
        from .renderers import fmt_size

        return f"<DiffResult {self.label}: {fmt_size(self.size_diff, signed=True)}>"


def _describe(error: BaseException) -> str:
    """``ZeroDivisionError: division by zero`` (the message cut to one short line)."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if len(message) > 120:
        message = message[:119] + "…"
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
