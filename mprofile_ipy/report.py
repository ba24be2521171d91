"""The report: the plain values a result shows, decided once, for every view to format.

A :class:`Report` is built from a snapshot's per-traceback records
(:func:`mprofile_ipy.aggregate.by_traceback`, the only pass over the traces), the figures
measured around the run (:class:`Measures`) and the view options (:class:`ViewOptions`). It
decides what the user sees: which frames are the user's (:func:`visible_frames`), the sites
of each grouping with the uncertainty of their size *and* count, the notes on how far to
trust the numbers (with a suggested sample rate as a number, not as magic syntax), the
changes between two reports that the data supports (:class:`DiffReport`), the call tree of
the flame chart and a session's timeline. Renderers (text, HTML, DataFrames, charts,
widgets) only format these values; they never sum traces and never decide what to say.

Frames: which frames of a traceback are the user's (the callers of a cell cut by
position, the profiler's own frames never shown) is decided in
:mod:`mprofile_ipy.report_frames` (:func:`visible_frames`), once per distinct traceback.

Uncertainty: each sampled allocation of ``s`` bytes with weight ``w`` adds ``s*w`` bytes,
``w`` allocations, ``s*s*w*(w-1)`` to the variance of the bytes and ``w*(w-1)`` to the
variance of the count (Horvitz-Thompson, see :mod:`mprofile_ipy.estimate`).
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from . import aggregate
from .attribution import Attributor
from .report_frames import CallerStack, FrameInfo, visible_frames
from .units import format_size

__all__ = [
    "GROUP_BY",
    "Z95",
    "CallerStack",
    "DiffReport",
    "DiffSummary",
    "FrameInfo",
    "Measures",
    "Note",
    "ProcessShare",
    "Report",
    "RetainedBlocks",
    "Retention",
    "RetentionChain",
    "Site",
    "SiteDiff",
    "SiteList",
    "Summary",
    "TimelinePoint",
    "TracebackStat",
    "TreeNode",
    "ViewOptions",
    "diff_data",
    "normalize_group_by",
    "report_data",
    "retention_data",
    "suggest_rate",
    "timeline_data",
    "visible_frames",
]

#: Ways to group allocations into sites; ``cell`` folds library frames into the cell line
#: that called them.
GROUP_BY: tuple[str, ...] = ("cell", "line", "function", "file", "traceback")
_GROUP_ALIASES = {"lineno": "line", "filename": "file", "func": "function", "tb": "traceback",
                  "cells": "cell"}
#: The z-score of the ~95% intervals every view shows as ``±``.
Z95 = 1.96
#: Relative standard errors above which a result is called rough (top site, total).
ROUGH_SITE = 0.25
ROUGH_TOTAL = 0.15
#: Groupings whose representative frame is one line, so the line's source text names it.
LINE_GROUPS = ("cell", "line", "traceback")
#: Sites listed by all they allocated when much more was allocated than kept alive.
CHURN_FACTOR = 1.5
CHURN_TOP = 5


def normalize_group_by(group_by: str) -> str:
    """Canonical group-by name; accepts tracemalloc's ``lineno``/``filename`` too."""
    if not isinstance(group_by, str):
        raise TypeError(f"group_by must be a str, not {type(group_by).__name__}")
    key = _GROUP_ALIASES.get(group_by.lower(), group_by.lower())
    if key not in GROUP_BY:
        raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)} (or lineno/filename), "
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
# Options and measured figures


@dataclass(frozen=True)
class ViewOptions:
    """How a result is shown: grouping, number of sites, frame hiding, path patterns."""

    group_by: str = "cell"
    top: int = 10
    show_all: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "group_by", normalize_group_by(self.group_by))
        top = self.top
        if not isinstance(top, int) or isinstance(top, bool) or top < 1:
            raise ValueError(f"top must be a positive int, got {top!r}")
        object.__setattr__(self, "show_all", bool(self.show_all))
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))


@dataclass(frozen=True)
class TimelinePoint:
    """Memory of a session after one cell (or at a named snapshot)."""

    label: str
    cell: int | None
    time: float
    current: float
    peak: float
    allocated: float = 0.0


@dataclass(frozen=True)
class ProcessShare:
    """One process's part of a result that merges several (the kernel, its children, Dask
    workers): its memory still alive and all it allocated, with standard errors.

    ``kind`` is ``kernel``, ``child`` or ``worker``; ``address`` a worker's address ('' for
    others); ``share`` a fraction of the merged total alive. ``allocated`` is ``nan`` when
    the process's snapshot has no allocation totals.
    """

    label: str
    kind: str
    pid: int
    size: float
    size_std_error: float
    count: float
    count_std_error: float
    samples: int
    allocated: float = math.nan
    allocated_std_error: float = math.nan
    address: str = ""
    share: float = 0.0

    @property
    def rel_error(self) -> float:
        """Standard error of :attr:`size` relative to it (0.0 when exact or empty)."""
        return self.size_std_error / self.size if self.size > 0 else 0.0


@dataclass(frozen=True)
class Measures:
    """What was measured around a run (``None``: read from the snapshot instead).

    ``error`` is a one-line description of the exception the code raised, if any;
    ``caller_stack`` the stack that ran the code (see :class:`CallerStack`).
    """

    label: str | None = None
    elapsed: float | None = None
    current: float | None = None
    peak: float | None = None
    allocated: float | None = None
    allocated_count: float | None = None
    samples: int | None = None
    sample_rate: int | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    timeline: tuple[TimelinePoint, ...] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    caller_stack: CallerStack | None = None
    processes: tuple[ProcessShare, ...] = ()
    process_notes: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# Frames, sites, notes


@dataclass(frozen=True)
class TracebackStat:
    """One distinct (visible) traceback of a site, for drill-down; frames oldest first.

    ``size``/``count``/``samples`` are of the allocations still alive, ``allocated`` (and
    ``allocated_samples``) of everything allocated since the start (``nan``: unknown).
    """

    frames: tuple[FrameInfo, ...]
    size: float
    count: float
    samples: int
    std_error: float
    allocated: float = math.nan
    allocated_samples: int = 0

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
        if self.frame.source and self.group_by in LINE_GROUPS:
            return f"{self.label}: {self.frame.source}"
        return self.label


@dataclass(frozen=True)
class Site(_Named):
    """An allocation site (a group of sampled allocations) with its estimates.

    ``size``/``count`` are unbiased estimates of the bytes and allocations still alive,
    ``std_error``/``count_std_error`` their standard errors; ``samples`` how many sampled
    allocations back them; ``percent`` is of the snapshot's whole estimated total.
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
    tracebacks: tuple[TracebackStat, ...] = ()
    count_std_error: float = 0.0
    allocated_samples: int = 0

    @property
    def rel_error(self) -> float:
        """Standard error relative to the estimate (0.0 when exact)."""
        return self.std_error / self.size if self.size > 0 else 0.0

    @property
    def count_rel_error(self) -> float:
        """Relative standard error of :attr:`count` (0.0 when exact)."""
        return self.count_std_error / self.count if self.count > 0 else 0.0

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

    @property
    def live_tracebacks(self) -> tuple[TracebackStat, ...]:
        """The tracebacks with sampled allocations still alive (for drill-down)."""
        return tuple(tb for tb in self.tracebacks if tb.samples > 0)


@dataclass(frozen=True)
class SiteDiff(_Named):
    """A site compared between two results: ``size``/``count`` are the new values.

    ``std_error``/``count_std_error`` are the standard errors of the changes; ``significant``
    is True when the change lies outside its 95% interval (always, when exact and non-zero).
    """

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
    count_std_error: float = 0.0
    significant: bool = True


@dataclass(frozen=True)
class SiteList:
    """The sites a report lists first: ``shown`` of ``total`` sites, and the rest's bytes."""

    group_by: str
    shown: tuple[Site, ...]
    total: int
    rest_size: float

    @property
    def rest(self) -> int:
        """How many sites are not listed."""
        return self.total - len(self.shown)


@dataclass(frozen=True)
class RetentionChain:
    """One reference chain that keeps sampled blocks alive, as plain text.

    ``root`` is how the user names the root (``df``, ``Out[12]``, ``mymod.CACHE``, or
    ``unreachable: a reference cycle ...``), ``root_kind`` its kind (``user_ns``,
    ``output_history``, ...), ``steps`` the references from the root to the object
    (``[3]``, ``.cache``, ``['key']``), ``target`` what the chain ends at (``DataFrame``),
    ``command`` what frees this reference (``%xdel df``), or None when nothing safe can be
    suggested; ``also_named`` other names of the same root.
    """

    root: str
    root_kind: str
    steps: tuple[str, ...]
    target: str
    command: str | None = None
    also_named: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """``Out[12] -> [3] -> DataFrame`` (a chain with no step from a cycle or from C
        is its root alone)."""
        parts = [self.root, *self.steps]
        if self.steps or self.root_kind not in ("unreachable_cycle", "held_from_c"):
            parts.append(self.target)
        return " -> ".join(parts)


@dataclass(frozen=True)
class RetainedBlocks:
    """Sampled blocks of a site that tell the same story: what they are, the chains that
    keep them alive (chain k+1 is what still holds them once chain k's command has run) and
    the commands that free them.

    ``blocks`` counts them and ``size`` sums their real sizes (sampled bytes, not an
    estimate); ``status`` is ``reachable``, ``cycle``, ``held_from_c``, ``not_found`` or
    ``timeout``; ``note`` explains a status other than ``reachable``.
    """

    blocks: int
    size: int
    description: str
    status: str
    chains: tuple[RetentionChain, ...] = ()
    note: str = ""

    @property
    def commands(self) -> list[str]:
        """The distinct commands of the chains, in order: running all of them frees it."""
        out: list[str] = []
        for chain in self.chains:
            if chain.command and chain.command not in out:
                out.append(chain.command)
        return out


@dataclass(frozen=True)
class Retention:
    """Why a site's memory is still alive: its largest live sampled blocks searched (at most
    ``searched``), grouped by story, largest first. Computed only when asked
    (``ProfileResult.retainers``, ``%%mprofile --why``) and attached to the report as plain
    data (strings and numbers: it keeps nothing alive). ``when`` says when the blocks were
    read; ``elapsed`` is the time the search took (seconds).
    """

    groups: tuple[RetainedBlocks, ...]
    searched: int
    elapsed: float = 0.0
    when: str = ""

    @property
    def commands(self) -> list[str]:
        """Every distinct command of every group, in order."""
        out: list[str] = []
        for group in self.groups:
            out.extend(c for c in group.commands if c not in out)
        return out


@dataclass(frozen=True)
class Note:
    """A plain-language note on how far to trust the numbers.

    ``kind`` is ``'no-samples'``, ``'none-alive'`` or ``'rough'``; ``suggested_rate`` a
    sample rate (bytes) that would give tighter numbers, when a lower rate would help.
    Views add how to ask for that rate (an option of the magic, an argument of ``start``).
    """

    kind: str
    text: str
    suggested_rate: int | None = None


@dataclass(frozen=True)
class Summary:
    """The headline figures of a result (bytes are estimates unless ``exact``)."""

    label: str | None
    elapsed: float | None
    current: float
    peak: float
    allocated: float
    allocated_count: float
    samples: int
    live_samples: int
    sample_rate: int
    exact: bool
    total: float
    total_std_error: float
    shown: float
    hidden: float
    filtered_out: float
    has_allocated: bool
    error: str | None


@dataclass(frozen=True)
class TreeNode:
    """One box of the flame chart: a frame, the bytes alive under it (with their samples and
    relative standard error), its callees largest first."""

    frame: FrameInfo | None
    size: float
    children: tuple[TreeNode, ...] = ()
    samples: int = 0
    error: float = 0.0


# ---------------------------------------------------------------------------------------------
# Filters and grouping


def _passes(frames: Sequence[FrameInfo], include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Include/exclude patterns match a frame's path or its label (``In [3]``), any frame."""

    def matches(pattern: str) -> bool:
        return any(fnmatch.fnmatch(f.filename, pattern) or fnmatch.fnmatch(f.file, pattern)
                   for f in frames)

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


# ---------------------------------------------------------------------------------------------
# The report


class _Sums:
    """Mutable sums of :class:`aggregate.Totals` (live and allocated) while grouping."""

    __slots__ = ("live", "allocated")

    def __init__(self) -> None:
        self.live = aggregate.Totals()
        self.allocated = aggregate.Totals()

    def add(self, live: aggregate.Totals, allocated: aggregate.Totals) -> None:
        self.live = self.live + live
        self.allocated = self.allocated + allocated


def _num(value: float) -> float:
    """NaN-safe sort value."""
    return 0.0 if math.isnan(value) else value


def _meta(meta: dict, key: str, default: float) -> float:
    """A figure from a snapshot's meta, or ``default`` when absent or null (a loaded
    file may say ``null`` for what it does not know)."""
    value = meta.get(key)
    return default if value is None else value


class Report:
    """Everything one result shows, computed once from the snapshot's records.

    ``summary`` (figures), ``notes``, :meth:`sites` per grouping (cached), :meth:`site_list`
    (the top sites and the rest), :meth:`churn` (sites that allocated much more than they
    kept), :meth:`call_tree` (flame chart), :meth:`iter_traces` and
    :meth:`iter_trace_records` (raw traces with their visible frames, for per-allocation
    tables and exports), :meth:`to_dict` (the plain data
    of the interactive HTML report). ``replace(**options)`` gives the report of the same run
    under other :class:`ViewOptions`.
    """

    def __init__(self, snapshot: Any, measures: Measures | None = None,
                 options: ViewOptions | None = None, attributor: Attributor | None = None
                 ) -> None:
        self.snapshot = snapshot
        self.measures = measures if measures is not None else Measures()
        self.options = options if options is not None else ViewOptions()
        self.attributor = attributor if attributor is not None else Attributor()
        meta = dict(getattr(snapshot, "meta", None) or {})
        rate = self.measures.sample_rate
        self.sample_rate = int(rate if rate is not None else getattr(snapshot, "sample_rate", 1))
        self.exact = self.sample_rate <= 1
        self.has_allocated = getattr(snapshot, "allocated", None) is not None
        self._resolved: dict[tuple, FrameInfo] = {}
        self._visible: dict[Any, tuple[FrameInfo, ...]] = {}
        self._filtered: set[Any] = set()  # tracebacks removed by include/exclude
        total, hidden, filtered = _Sums(), _Sums(), _Sums()
        self.tracebacks: dict[tuple[FrameInfo, ...], _Sums] = {}
        for record in aggregate.by_traceback(snapshot):
            total.add(record.live, record.allocated)
            visible = self.visible(record.traceback)
            if not visible:
                target = hidden if record.traceback not in self._filtered else filtered
            else:
                target = self.tracebacks.get(visible)
                if target is None:
                    target = self.tracebacks[visible] = _Sums()
            target.add(record.live, record.allocated)
        self.total = total.live
        shown = sum((s.live for s in self.tracebacks.values()), aggregate.Totals())
        m = self.measures
        live = total.live
        current = float(m.current) if m.current is not None else float(live.size)
        self.summary = Summary(
            label=m.label,
            elapsed=m.elapsed,
            current=current,
            peak=float(m.peak if m.peak is not None else _meta(meta, "peak_bytes", current)),
            allocated=float(m.allocated if m.allocated is not None
                            else _meta(meta, "allocated_bytes", current)),
            allocated_count=float(m.allocated_count if m.allocated_count is not None
                                  else _meta(meta, "allocated_count", live.count)),
            samples=int(m.samples if m.samples is not None
                        else _meta(meta, "samples_total", live.samples)),
            live_samples=live.samples,
            sample_rate=self.sample_rate,
            exact=self.exact,
            total=float(live.size),
            total_std_error=math.sqrt(live.size_var),
            shown=float(shown.size),
            hidden=float(hidden.live.size),
            filtered_out=float(filtered.live.size),
            has_allocated=self.has_allocated,
            error=m.error,
        )
        self._sites: dict[str, tuple[Site, ...]] = {}
        total_size = self.summary.total
        #: Each process's part when the result merges several (largest first), else ().
        self.processes: tuple[ProcessShare, ...] = tuple(
            replace(p, share=p.size / total_size if total_size > 0 else 0.0)
            for p in sorted(self.measures.processes, key=lambda p: -p.size))
        self.notes: tuple[Note, ...] = self._notes() + tuple(
            Note("process", text) for text in self.measures.process_notes)
        self._retention: dict[tuple[str, Any], Retention] = {}

    # -- frames -------------------------------------------------------------------------------
    def _frame(self, raw: tuple) -> FrameInfo:
        found = self._resolved.get(raw)
        if found is None:
            loc = self.attributor.locate(raw[0], raw[1])
            found = self._resolved[raw] = FrameInfo.from_location(
                loc, (raw[2] if len(raw) > 2 else None) or "",
                (raw[3] if len(raw) > 3 else None) or 0)
        return found

    def visible(self, traceback: Any) -> tuple[FrameInfo, ...]:
        """The visible frames of a traceback (an ``aggregate.Traceback``); ``()`` when the
        views hide it or the include/exclude patterns remove it."""
        found = self._visible.get(traceback)
        if found is not None:
            return found
        frames = tuple(self._frame(raw) for raw in reversed(traceback.raw_frames))
        opts = self.options
        visible = visible_frames(frames, traceback.total_nframe, show_all=opts.show_all,
                                 base=self.measures.caller_stack)
        if visible and not _passes(frames, opts.include, opts.exclude):
            visible = ()
            self._filtered.add(traceback)
        self._visible[traceback] = visible
        return visible

    def iter_traces(self) -> Iterator[tuple[tuple, tuple[FrameInfo, ...]]]:
        """Each raw trace of the snapshot with its visible frames (``()`` when hidden)."""
        seen: dict[int, tuple[FrameInfo, ...]] = {}
        for trace in self.snapshot.raw_traces:
            frames = trace[2]
            visible = seen.get(id(frames))
            if visible is None:
                visible = seen[id(frames)] = self.visible(
                    aggregate.Traceback(frames, trace[3]))
            yield trace, visible

    # -- why is it still alive (attached on request) -------------------------------------------
    def retention(self, site: Site) -> Retention | None:
        """What keeps the site's memory alive, when it was asked (else None)."""
        return self._retention.get((site.group_by, site.key))

    @property
    def has_retention(self) -> bool:
        """True when reference chains are attached to some site."""
        return bool(self._retention)

    def set_retention(self, retention: Mapping[tuple[str, Any], Retention]) -> None:
        """Attach what keeps each site alive: ``{(group_by, site key): Retention}``. The
        facade computes it (``ProfileResult.retainers``); the report only carries it, so
        every view shows it with its site."""
        self._retention = dict(retention)

    def iter_trace_records(self) -> Iterator[tuple[tuple, int, tuple[FrameInfo, ...]]]:
        """Each distinct raw trace of the snapshot once, with how many identical sampled
        allocations it stands for (a pprof profile's counted traces: one record, not
        millions) and its visible frames (``()`` when hidden)."""
        records = getattr(self.snapshot, "trace_records", None)
        if records is None:  # a snapshot-like object without records: one per allocation
            for trace, visible in self.iter_traces():
                yield trace, 1, visible
            return
        counts = getattr(self.snapshot, "trace_counts", None)
        seen: dict[int, tuple[FrameInfo, ...]] = {}
        for index, trace in enumerate(records):
            frames = trace[2]
            visible = seen.get(id(frames))
            if visible is None:
                visible = seen[id(frames)] = self.visible(
                    aggregate.Traceback(frames, trace[3]))
            yield trace, (counts[index] if counts is not None else 1), visible

    def to_dict(self, **kwargs: Any) -> dict[str, Any]:
        """The plain data of the interactive HTML report (see :func:`report_data`)."""
        return report_data(self, **kwargs)

    def replace(self, **changes: Any) -> Report:
        """The report of the same run with some :class:`ViewOptions` changed."""
        return Report(self.snapshot, self.measures, replace(self.options, **changes),
                      self.attributor)

    # -- sites --------------------------------------------------------------------------------
    def sites(self, group_by: str | None = None, *, by: str = "size") -> list[Site]:
        """Sites, largest first. ``by="size"``: sites with memory still alive;
        ``"allocated"``: every site by all it allocated, freed included; ``"all"``: every
        site, by size then allocated."""
        key = normalize_group_by(group_by or self.options.group_by)
        sites = self._sites.get(key)
        if sites is None:
            sites = self._sites[key] = self._group(key)
        if by == "size":
            return [s for s in sites if s.samples > 0]
        if by == "allocated":
            return sorted((s for s in sites if _num(s.allocated) > 0),
                          key=lambda s: (-s.allocated, -s.size, str(s.key)))
        if by == "all":
            return list(sites)
        raise ValueError(f"by must be 'size', 'allocated' or 'all', got {by!r}")

    def _group(self, group_by: str) -> tuple[Site, ...]:
        groups: dict[Any, tuple[FrameInfo, _Sums, list]] = {}
        for frames, sums in self.tracebacks.items():
            key, frame = _site_key(frames, group_by)
            entry = groups.get(key)
            if entry is None:
                entry = groups[key] = (frame, _Sums(), [])
            entry[1].add(sums.live, sums.allocated)
            entry[2].append((frames, sums))
        total = self.summary.total
        known = self.has_allocated
        nan = math.nan
        out = []
        for key, (frame, sums, members) in groups.items():
            tbs = sorted(
                (TracebackStat(frames, s.live.size, s.live.count, s.live.samples,
                               math.sqrt(s.live.size_var),
                               s.allocated.size if known else nan, s.allocated.samples)
                 for frames, s in members),
                key=lambda t: (-t.size, -_num(t.allocated), -t.samples))
            if group_by == "function" and tbs:
                frame = tbs[0].frames[-1]  # name a function group by its heaviest line
            live, alloc = sums.live, sums.allocated
            out.append(Site(
                key=key, group_by=group_by, frame=frame, size=float(live.size),
                count=float(live.count), samples=live.samples,
                std_error=math.sqrt(live.size_var),
                percent=100.0 * live.size / total if total > 0 else 0.0,
                allocated=float(alloc.size) if known else nan,
                allocated_count=float(alloc.count) if known else nan,
                allocated_std_error=math.sqrt(alloc.size_var) if known else nan,
                tracebacks=tuple(tbs), count_std_error=math.sqrt(live.count_var),
                allocated_samples=alloc.samples))
        out.sort(key=lambda s: (-s.size, -_num(s.allocated), -s.samples, str(s.key)))
        return tuple(out)

    def site_list(self, group_by: str | None = None, top: int | None = None) -> SiteList:
        """The top sites by memory still alive, how many there are, what the rest holds."""
        sites = self.sites(group_by)
        top = top or self.options.top
        return SiteList(normalize_group_by(group_by or self.options.group_by),
                        tuple(sites[:top]), len(sites), float(sum(s.size for s in sites[top:])))

    def churn(self, group_by: str | None = None, top: int | None = None) -> list[Site]:
        """Sites to list by all they allocated: when much more was allocated than kept."""
        summary = self.summary
        if not self.has_allocated or summary.allocated <= CHURN_FACTOR * max(summary.current,
                                                                              1.0):
            return []
        return self.sites(group_by, by="allocated")[:min(CHURN_TOP, top or self.options.top)]

    def call_tree(self, max_depth: int = 24) -> TreeNode:
        """The visible tracebacks' call tree (root first), sizes alive, cut at ``max_depth``."""
        records = [
            aggregate.Record(frames, aggregate.Traceback(
                tuple((f.filename, f.lineno, f.name, f.firstlineno)
                      for f in reversed(frames[:max_depth]))), sums.live, sums.allocated)
            for frames, sums in self.tracebacks.items()]
        infos = {(f.filename, f.lineno): f for frames in self.tracebacks for f in frames}

        def convert(node: aggregate.Node) -> TreeNode:
            frame = None if node.frame is None else infos.get(
                (node.frame.filename, node.frame.lineno))
            error = node.total.relative_error
            return TreeNode(frame, float(node.total.size),
                            tuple(convert(c) for c in node.children if c.total.size > 0),
                            node.total.samples, error if math.isfinite(error) else 0.0)

        return convert(aggregate.call_tree(records))

    # -- notes ------------------------------------------------------------------------------
    def _notes(self) -> tuple[Note, ...]:
        s = self.summary
        if s.exact:
            return ()
        rate = _rate_text(s.sample_rate)
        better = suggest_rate(s.allocated, s.sample_rate)
        if s.samples == 0:
            return (Note("no-samples",
                         f"No allocation was sampled: this code allocated too little for the "
                         f"sample rate ({rate} between samples on average). Profile it again "
                         f"with a lower rate", better),)
        if s.live_samples == 0:
            return (Note("none-alive",
                         f"Nothing sampled is still alive: all {s.samples} sampled "
                         f"allocations were freed by the end (about "
                         f"{format_size(s.allocated)} allocated in total)."),)
        top = self.sites()[:1]
        top_error = top[0].rel_error if top else 0.0
        total_error = s.total_std_error / s.total if s.total > 0 else 0.0
        if top_error > ROUGH_SITE or total_error > ROUGH_TOTAL:
            noun = "allocation" if s.live_samples == 1 else "allocations"
            return (Note("rough",
                         f"Estimates are rough: {s.live_samples} sampled {noun} still alive; "
                         f"the top site is known to ±{Z95 * top_error:.0%} and the total to "
                         f"±{Z95 * total_error:.0%} (95%). For tighter numbers use a lower "
                         f"rate", better),)
        return ()


def _rate_text(rate: int) -> str:
    """A sample rate as a size with a binary unit when it is a round one: ``128KiB``."""
    for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        step = 1024**power
        if rate >= step and rate % step == 0:
            return f"{rate // step}{unit}"
    return str(int(rate))


# ---------------------------------------------------------------------------------------------
# Comparing two reports


@dataclass(frozen=True)
class DiffSummary:
    """The change of the total between two results, and the newer result's notes."""

    label: str
    size_diff: float
    old_total: float
    new_total: float
    exact: bool
    notes: tuple[Note, ...]


class DiffReport:
    """What changed per site from ``old`` to ``new`` (two reports of snapshots).

    The variance of a change counts only the samples found in one snapshot and not in the
    other (:func:`aggregate.diff`): allocations alive in both cancel out. :meth:`rows` are
    every site of either side; :meth:`changes` only those whose change lies outside its 95%
    interval (exact results: every non-zero change), with how many were left out.
    """

    def __init__(self, new: Report, old: Report, group_by: str = "cell", top: int = 10) -> None:
        self.new = new
        self.old = old
        self.group_by = normalize_group_by(group_by)
        self.top = top
        self.exact = new.exact and old.exact
        label = f"{new.summary.label or 'new'} vs {old.summary.label or 'old'}"
        self.summary = DiffSummary(label, new.summary.total - old.summary.total,
                                   old.summary.total, new.summary.total, self.exact, new.notes)
        self._rows: dict[str, tuple[SiteDiff, ...]] = {}
        self._variances: dict[tuple[FrameInfo, ...], tuple[float, float]] | None = None

    def _change_variances(self) -> dict[tuple[FrameInfo, ...], tuple[float, float]]:
        """Visible traceback -> variances (bytes, count) of its change."""
        if self._variances is None:
            out: dict[tuple[FrameInfo, ...], tuple[float, float]] = {}
            for record in aggregate.diff(self.new.snapshot, self.old.snapshot, "traceback"):
                visible = self.new.visible(record.traceback) or self.old.visible(
                    record.traceback)
                if visible:
                    size_var, count_var = out.get(visible, (0.0, 0.0))
                    out[visible] = (size_var + record.size_diff_var,
                                    count_var + record.count_diff_var)
            self._variances = out
        return self._variances

    def rows(self, group_by: str | None = None) -> list[SiteDiff]:
        """Every site of either side, largest absolute change first."""
        key = normalize_group_by(group_by or self.group_by)
        rows = self._rows.get(key)
        if rows is None:
            rows = self._rows[key] = self._compute(key)
        return list(rows)

    def changes(self, group_by: str | None = None) -> tuple[list[SiteDiff], int]:
        """The changes the data supports, and how many rows were left out."""
        rows = self.rows(group_by)
        shown = [r for r in rows if r.significant]
        return shown, len(rows) - len(shown)

    def _compute(self, group_by: str) -> tuple[SiteDiff, ...]:
        variances: dict[Any, list[float]] = {}
        for frames, (size_var, count_var) in self._change_variances().items():
            key, _frame = _site_key(frames, group_by)
            acc = variances.setdefault(key, [0.0, 0.0])
            acc[0] += size_var
            acc[1] += count_var
        new_sites = {s.key: s for s in self.new.sites(group_by)}
        old_sites = {s.key: s for s in self.old.sites(group_by)}
        out = []
        for key in new_sites.keys() | old_sites.keys():
            new, old = new_sites.get(key), old_sites.get(key)
            ref = new if new is not None else old
            assert ref is not None
            size = new.size if new else 0.0
            count = new.count if new else 0.0
            size_diff = size - (old.size if old else 0.0)
            size_var, count_var = variances.get(key, (0.0, 0.0))
            std_error = math.sqrt(size_var)
            out.append(SiteDiff(
                key=key, group_by=group_by, frame=ref.frame, size=size, size_diff=size_diff,
                count=count, count_diff=count - (old.count if old else 0.0),
                samples=new.samples if new else 0, old_samples=old.samples if old else 0,
                std_error=std_error, count_std_error=math.sqrt(count_var),
                significant=size_diff != 0 and abs(size_diff) > Z95 * std_error))
        out.sort(key=lambda d: (-abs(d.size_diff), -d.size, str(d.key)))
        return tuple(out)


# ---------------------------------------------------------------------------------------------
# Plain data for the interactive HTML report (schema: ``renderers/interactive.py``)


def _plain_note(note: Note) -> str:
    if note.suggested_rate is None:
        return note.text
    return f"{note.text} (suggested sample rate: {_rate_text(note.suggested_rate)})."


class _DataBuilder:
    """Frames and tracebacks of the report data, each listed once."""

    def __init__(self) -> None:
        self.frames: list[dict[str, str]] = []
        self.tracebacks: list[dict[str, Any]] = []
        self._frame_ids: dict[FrameInfo, int] = {}
        self._tb_ids: dict[tuple[FrameInfo, ...], int] = {}

    def traceback(self, tb: TracebackStat, size_diff: float | None = None) -> int:
        found = self._tb_ids.get(tb.frames)
        if found is not None:
            return found
        ids = []
        for frame in tb.frames:
            index = self._frame_ids.get(frame)
            if index is None:
                index = self._frame_ids[frame] = len(self.frames)
                self.frames.append({"where": frame.where, "name": frame.name,
                                    "source": frame.source})
            ids.append(index)
        entry: dict[str, Any] = {"frames": ids, "size": tb.size, "samples": tb.samples}
        if size_diff is not None:
            entry["size_diff"] = size_diff
        self._tb_ids[tb.frames] = len(self.tracebacks)
        self.tracebacks.append(entry)
        return self._tb_ids[tb.frames]


def _detail(item: Site | SiteDiff) -> str:
    frame = item.frame
    if item.group_by in LINE_GROUPS:
        return frame.source
    return frame.filename if item.group_by == "file" else frame.where


def _flame_data(node: TreeNode) -> dict[str, Any]:
    """The call tree as nested dicts (iteratively: trees may be deep)."""
    def convert(n: TreeNode) -> dict[str, Any]:
        frame = n.frame
        return {"name": (frame.name or "?") if frame else "all",
                "where": frame.where if frame else "", "source": frame.source if frame else "",
                "size": n.size, "samples": n.samples, "error": n.error, "children": []}

    root = convert(node)
    stack = [(node, root)]
    while stack:
        tree, out = stack.pop()
        for child in tree.children:
            converted = convert(child)
            out["children"].append(converted)
            stack.append((child, converted))
    return root


def report_data(report: Report, *, top: int | None = None, note_text: Any = None,
                title: str | None = None) -> dict[str, Any]:
    """The report as the plain dict of the interactive HTML report (every grouping, its
    sites' tracebacks, the summary, the notes, the flame tree and a session's timeline).
    ``note_text`` formats a :class:`Note` (default: the suggested rate as a size)."""
    s = report.summary
    fmt = note_text or _plain_note
    builder = _DataBuilder()
    retention: list[dict[str, Any]] = []
    retention_ids: dict[Retention, int] = {}  # equal entries (one site, several groupings) once
    groupings: dict[str, Any] = {}
    for name in GROUP_BY:
        rows = []
        for site in report.sites(name):
            row = {"label": site.label, "detail": _detail(site), "size": site.size,
                   "count": site.count, "samples": site.samples,
                   "error": site.rel_error, "share": site.percent / 100.0,
                   "tracebacks": [builder.traceback(tb) for tb in site.live_tracebacks]}
            why = report.retention(site)
            if why is not None:
                index = retention_ids.get(why)
                if index is None:
                    index = retention_ids[why] = len(retention)
                    retention.append(retention_data(why))
                row["retention"] = index
            rows.append(row)
        groupings[name] = {"rows": rows}
    if report.processes:
        groupings["process"] = {"label": "process", "rows": [
            {"label": p.label, "detail": f"{p.kind}, pid {p.pid}" + (
                f", {p.address}" if p.address else ""),
             "size": p.size, "count": p.count, "samples": p.samples, "error": p.rel_error,
             "share": p.share, "tracebacks": []} for p in report.processes]}
    summary: list[dict[str, Any]] = [
        {"label": "still alive", "value": s.current, "unit": "bytes"},
        {"label": "peak", "value": s.peak, "unit": "bytes"},
        {"label": "allocated", "value": s.allocated, "unit": "bytes"},
    ]
    if s.elapsed is not None:
        summary.append({"label": "time", "value": s.elapsed, "unit": "seconds"})
    summary.append({"label": "samples", "value": s.samples, "unit": "count"})
    notes = [f"The code raised {s.error}; figures are up to the exception."] if s.error else []
    notes += [fmt(note) for note in report.notes]
    data: dict[str, Any] = {
        "kind": "profile", "title": title or f"mprofile {s.label or ''}".strip(),
        "exact": s.exact, "summary": summary, "notes": notes, "total": s.total,
        "frames": builder.frames, "tracebacks": builder.tracebacks, "groupings": groupings,
        "default_grouping": report.options.group_by, "top": top or report.options.top,
        "flame": _flame_data(report.call_tree()),
    }
    if retention:
        data["retention"] = retention
    if report.measures.timeline:
        data["timeline"] = timeline_data(report.measures.timeline)["timeline"]
    return data


def retention_data(retention: Retention) -> dict[str, Any]:
    """What keeps a site alive as the plain dict of the interactive HTML report."""
    return {
        "searched": retention.searched, "elapsed": retention.elapsed, "when": retention.when,
        "groups": [{"blocks": g.blocks, "size": g.size, "description": g.description,
                    "status": g.status, "note": g.note,
                    "chains": [{"root": c.root, "kind": c.root_kind, "steps": list(c.steps),
                                "target": c.target, "command": c.command,
                                "also": list(c.also_named)} for c in g.chains]}
                   for g in retention.groups]}


def diff_data(diff: DiffReport, *, top: int | None = None, note_text: Any = None
              ) -> dict[str, Any]:
    """The comparison as the plain dict of the interactive HTML report: the changes the data
    supports in every grouping (a note says how many were left out)."""
    s = diff.summary
    fmt = note_text or _plain_note
    builder = _DataBuilder()
    groupings: dict[str, Any] = {}
    notes = [fmt(note) for note in s.notes]
    for name in GROUP_BY:
        changes, left_out = diff.changes(name)
        new_sites = {site.key: site for site in diff.new.sites(name)}
        rows = []
        for row in changes:
            site = new_sites.get(row.key)
            tbs = [builder.traceback(tb) for tb in site.live_tracebacks] if site else []
            rows.append({"label": row.label, "detail": _detail(row), "size": row.size,
                         "count": row.count, "samples": row.samples,
                         "error": row.std_error / row.size if row.size > 0 else 0.0,
                         "size_diff": row.size_diff, "count_diff": row.count_diff,
                         "diff_error": row.std_error, "tracebacks": tbs})
        groupings[name] = {"rows": rows}
        if name == diff.group_by and left_out:
            notes.append(f"{left_out} site{'s' if left_out != 1 else ''} left out: no change, "
                         f"or a change within its 95% interval.")
    return {
        "kind": "diff", "title": f"mprofile {s.label}", "exact": s.exact,
        "summary": [{"label": "change", "value": s.size_diff, "unit": "bytes"},
                    {"label": "before", "value": s.old_total, "unit": "bytes"},
                    {"label": "after", "value": s.new_total, "unit": "bytes"}],
        "notes": notes, "total": max(s.new_total, s.old_total),
        "frames": builder.frames, "tracebacks": builder.tracebacks, "groupings": groupings,
        "default_grouping": diff.group_by, "top": top or diff.top,
    }


def timeline_data(points: Sequence[TimelinePoint], title: str = "Memory over the session"
                  ) -> dict[str, Any]:
    """A session's timeline as the plain dict of the interactive HTML report."""
    return {"kind": "timeline", "title": title, "summary": [], "notes": [],
            "timeline": {"points": [{"label": p.label, "current": p.current, "peak": p.peak}
                                    for p in points]}}
