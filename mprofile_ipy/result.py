"""Profiling results: a snapshot, its report, and the views users ask for.

:class:`ProfileResult` is a thin facade over a :class:`~mprofile_ipy.model.Snapshot` and its
:class:`~mprofile_ipy.report.Report` (built once: figures, sites of every grouping with their
uncertainty, notes). :class:`DiffResult` does the same for two results compared
(:class:`~mprofile_ipy.report.DiffReport`). Their methods hand the report to a renderer
(:mod:`mprofile_ipy.renderers`: text, HTML, DataFrames, charts, widgets, each imported only
when used) or to the pprof exporter; they decide nothing themselves.

Frames of IPython, ipykernel and the profiler are hidden unless ``show_all``; cell files are
shown as ``In [12]`` (see :mod:`mprofile_ipy.attribution` and :func:`report.visible_frames`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .attribution import Attributor
from .report import (
    GROUP_BY,
    CallerStack,
    DiffReport,
    FrameInfo,
    Measures,
    Report,
    RetainedBlocks,
    Retention,
    RetentionChain,
    Site,
    SiteDiff,
    TimelinePoint,
    ViewOptions,
    normalize_group_by,
    suggest_rate,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure

    from .model import Frame, Snapshot

__all__ = [
    "GROUP_BY",
    "DiffResult",
    "FrameInfo",
    "ProfileResult",
    "Site",
    "SiteDiff",
    "TimelinePoint",
    "normalize_group_by",
    "suggest_rate",
]


def describe_error(error: BaseException) -> str:
    """``ZeroDivisionError: division by zero`` (the message cut to one short line)."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if len(message) > 120:
        message = message[:119] + "…"
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _read(part: str, name: str, doc: str, copy: Callable[[Any], Any] | None = None
          ) -> property:
    """A read-only attribute of the facade: ``report.<part>.<name>`` (``report.<name>``),
    passed through ``copy`` (so a caller cannot change the report's own values)."""

    def get(self: Any) -> Any:
        source = getattr(self.report, part) if part else self.report
        value = getattr(source, name)
        return copy(value) if copy is not None and value is not None else value

    return property(get, doc=doc)


#: Sites per grouping whose chains the views show (the interactive report lists at most
#: 100 rows per grouping).
RETENTION_SITES = 100


def _chain(chain: Any) -> RetentionChain:
    return RetentionChain(chain.root_name, chain.root_kind,
                          tuple(str(step) for step in chain.steps), chain.target_type,
                          chain.command, tuple(chain.also_named))


class _Explained:
    """The answers of :meth:`ProfileResult.retainers` so far (one per sampled block, plain
    data), shared by the results of the same run (``filtered``, ``with_measures``), and
    their attachment to a report: for each site of each grouping, the blocks of that site
    grouped by story (:class:`~mprofile_ipy.report.Retention`)."""

    def __init__(self) -> None:
        self.reports: dict[int, Any] = {}
        self.when = ""

    def add(self, reports: Sequence[Any], when: str) -> None:
        for report in reports:
            self.reports[report.address] = report
        if reports:
            self.when = when

    def attach(self, report: Report) -> None:
        if not self.reports:
            return
        from .retainers import select_site_blocks

        found: dict[tuple[str, Any], Retention] = {}
        explained = list(self.reports.values())
        for group_by in GROUP_BY:
            for site in report.sites(group_by)[:RETENTION_SITES]:
                picked = select_site_blocks(site, explained)
                if picked:
                    found[(group_by, site.key)] = self.retention(picked)
        report.set_retention(found)

    def retention(self, reports: Sequence[Any]) -> Retention:
        """Blocks with the same description, status and chains as one group, largest
        group first (as ``format_retainers`` groups them)."""
        groups: dict[tuple, list[Any]] = {}
        for report in reports:
            key = (report.description, report.status, tuple(c.text for c in report.chains))
            groups.setdefault(key, []).append(report)
        out = []
        for members in sorted(groups.values(), key=lambda g: -sum(r.size for r in g)):
            first = members[0]
            out.append(RetainedBlocks(
                len(members), sum(r.size for r in members), first.description, first.status,
                tuple(_chain(c) for c in first.chains),
                first.note if first.status != "reachable" or not first.chains else ""))
        return Retention(tuple(out), len(reports), max(r.elapsed for r in reports), self.when)


class _Displayable:
    """The display protocol shared by results: text for terminals; in notebooks the
    self-contained interactive HTML report (server-side table, flame graph and timeline,
    enhanced by an inline script where scripts run; it needs no kernel and no widget
    manager, so it survives saving, reloading, nbconvert and GitHub)."""

    def to_text(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_html(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_interactive_html(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self) if cycle else self.to_text())

    def _repr_html_(self) -> str:
        return self.to_interactive_html()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/plain": self.to_text(), "text/html": self.to_interactive_html()}


class ProfileResult(_Displayable):
    """What one profiled cell, statement or session snapshot produced.

    Build it from any snapshot (the figures are then read from the snapshot's metadata, as
    the sampler writes them) or give the figures measured around the run. Attributes:
    ``snapshot``, ``report``, ``label`` (``In [12]``), ``elapsed`` (seconds), ``current``
    (estimated bytes still alive), ``peak``, ``allocated`` (estimated bytes allocated, freed
    ones included), ``samples`` (all sampled allocations, freed ones included),
    ``live_samples``, ``sample_rate``, ``options``, ``error`` (``"ZeroDivisionError: division
    by zero"`` when the code raised, else None), ``timeline`` (a session's points, else None).
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
        caller_stack: CallerStack | None = None,
        live_blocks: Sequence[Any] | None = None,
    ) -> None:
        measures = Measures(
            label=label, elapsed=elapsed, current=current, peak=peak, allocated=allocated,
            allocated_count=allocated_count, samples=samples, sample_rate=sample_rate,
            # Only a description: the exception itself would keep its frames' locals alive.
            error=describe_error(error) if isinstance(error, BaseException) else error,
            timeline=tuple(timeline) if timeline is not None else None,
            options=dict(options or {}), caller_stack=caller_stack,
            **({"created": created} if created is not None else {}))
        view = ViewOptions(group_by, top, show_all, tuple(include), tuple(exclude))
        self._set(Report(snapshot, measures, view, attributor),
                  tuple(live_blocks) if live_blocks is not None else None)

    def _set(self, report: Report, live_blocks: tuple[Any, ...] | None = None,
             explained: _Explained | None = None) -> None:
        self.report = report
        self.snapshot = report.snapshot
        # The sampled blocks alive when the result was made, with their addresses (the
        # IPython layer records them while the sampler still runs): what retainers() needs.
        self._live_blocks = live_blocks
        # What retainers() found so far (plain data: strings and numbers), shown by every
        # view with its site.
        self._explained = explained if explained is not None else _Explained()
        self._explained.attach(report)

    @classmethod
    def from_report(cls, report: Report, live_blocks: Sequence[Any] | None = None,
                    explained: _Explained | None = None) -> ProfileResult:
        """The result of an existing report (no recomputation)."""
        result = cls.__new__(cls)
        result._set(report, tuple(live_blocks) if live_blocks is not None else None,
                    explained)
        return result

    def _derived(self, report: Report) -> ProfileResult:
        """A result of another report of the same run: same live blocks, same chains."""
        return ProfileResult.from_report(report, self._live_blocks, self._explained)

    @property
    def has_live_blocks(self) -> bool:
        """True when the addresses of the blocks alive at the end were recorded (results of
        the magics and of a session), so :meth:`retainers` can look for their objects."""
        return self._live_blocks is not None

    # -- figures (read from the report) -----------------------------------------------------
    label = _read("summary", "label", "``In [12]`` or a name.")
    elapsed = _read("summary", "elapsed", "Seconds the code ran.")
    current = _read("summary", "current", "Estimated bytes still alive at the end.")
    peak = _read("summary", "peak", "Estimated peak bytes.")
    allocated = _read("summary", "allocated", "Estimated bytes allocated, freed ones included.")
    allocated_count = _read("summary", "allocated_count",
                            "Estimated allocations, freed ones included.")
    samples = _read("summary", "samples", "Sampled allocations, freed ones included.")
    live_samples = _read("summary", "live_samples", "Sampled allocations still alive.")
    total = _read("summary", "total",
                  "Estimated bytes alive in the snapshot (all frames, before hiding).")
    total_std_error = _read("summary", "total_std_error", "Standard error of ``total``.")
    shown = _read("summary", "shown", "Estimated bytes of the allocations the views show.")
    hidden = _read("summary", "hidden", "Estimated bytes of allocations with no user frame.")
    filtered_out = _read("summary", "filtered_out",
                         "Estimated bytes removed by the include/exclude patterns.")
    error = _read("summary", "error", "What the code raised (one line), or None.")
    sample_rate = _read("", "sample_rate", "Mean bytes between samples (<= 1: exact).")
    is_exact = _read("", "exact", "True when every allocation was traced.")
    has_allocated = _read("", "has_allocated", "True when per-site allocation totals are known.")
    attributor = _read("", "attributor", "How frames are named (cells as ``In [12]``).")
    group_by = _read("options", "group_by", "Default grouping.")
    top = _read("options", "top", "Default number of sites.")
    show_all = _read("options", "show_all", "True when no frame is hidden.")
    include = _read("options", "include", "Include patterns.")
    exclude = _read("options", "exclude", "Exclude patterns.")
    created = _read("measures", "created", "When the result was made (``time.time()``).")

    options = _read("measures", "options", "The options the result was made with (a copy).",
                    dict)
    timeline = _read("measures", "timeline",
                     "A session's points (memory after each cell, ``TimelinePoint``), or None.",
                     list)

    def sites(self, group_by: str | None = None, top: int | None = None, *,
              by: str = "size") -> list[Site]:
        """Sites, largest first; ``top`` keeps the first ones.

        ``by="size"`` (default): sites with memory still alive, by estimated size.
        ``by="allocated"``: every site by all it allocated, freed included (needs a
        snapshot with allocation totals, as the sampler's are). ``by="all"``: every site,
        by size then allocated (the rows of :meth:`to_dataframe`).
        """
        sites = self.report.sites(group_by, by=by)
        return sites[:top] if top is not None else sites

    def warnings(self) -> list[str]:
        """Plain-language notes on how far to trust the numbers (empty when all is fine)."""
        from .renderers import note_text

        return [note_text(note) for note in self.report.notes]

    # -- tables ----------------------------------------------------------------------------
    def to_dataframe(self, group_by: str | None = None, top: int | None = None) -> pd.DataFrame:
        """One row per site, sorted by estimated size; numeric columns, see renderers.dataframe."""
        from .renderers.dataframe import sites_dataframe

        return sites_dataframe(self.report, group_by=group_by, top=top)

    def iter_traces(self) -> Iterator[tuple[tuple, tuple[FrameInfo, ...]]]:
        """Each raw trace of the snapshot (``docs/architecture.md``) with its visible frames,
        oldest first; ``()`` for the allocations the views hide or filter out."""
        return self.report.iter_traces()

    def to_traces_dataframe(self) -> pd.DataFrame:
        """One row per sampled allocation still alive (the ones the views show)."""
        from .renderers.dataframe import traces_dataframe

        return traces_dataframe(self.report)

    def compare_to(self, old: ProfileResult | Snapshot, group_by: str | None = None) -> DiffResult:
        """What changed since ``old`` (a result or a snapshot), per site."""
        if not isinstance(old, ProfileResult):
            old = ProfileResult.from_report(Report(old, Measures(), self.report.options,
                                                   self.attributor))
        return DiffResult(self, old, group_by=group_by or self.group_by, top=self.top)

    # -- why is it still alive ---------------------------------------------------------------
    def site(self, site: int | str | Site, group_by: str | None = None) -> Site:
        """One site of the table: by position in :meth:`sites` (0 is the top row), by its
        label (``"In [5], line 3"``) or title (label and source text), or a Site itself."""
        if isinstance(site, Site):
            return site
        sites = self.sites(group_by)
        if isinstance(site, bool) or not isinstance(site, (int, str)):
            raise TypeError(f"site must be a row number, a site label or a Site, not "
                            f"{type(site).__name__}")
        if isinstance(site, int):
            if not 0 <= site < len(sites):
                raise IndexError(f"site {site} is not a row of the table: it has "
                                 f"{len(sites)} site{'s' if len(sites) != 1 else ''} with "
                                 f"memory still alive (0 is the top one)")
            return sites[site]
        wanted = " ".join(site.split())
        for found in sites:
            if wanted in (found.label, " ".join(found.title.split())):
                return found
        labels = ", ".join(repr(s.label) for s in sites[:5]) or "none"
        raise KeyError(f"no site labelled {site!r} with memory still alive; sites: {labels}"
                       + (" ..." if len(sites) > 5 else ""))

    def retainers(self, site: int | str | Site | None = None, *,
                  blocks: Sequence[Any] | None = None, user_ns: dict | None = None,
                  max_blocks: int = 20, max_chains: int = 3,
                  time_limit: float | None = 60.0, progress: Any = None) -> list[Any]:
        """Why the memory of one site is still alive: a
        :class:`mprofile_ipy.retainers.RetainerReport` for each of its largest live sampled
        blocks (``max_blocks``): what object the block is, and the shortest reference chains
        that keep it alive from a root the user can name (``df``, ``Out[12]``,
        ``mymod.CACHE``), each with the command that frees it.

        ``site``: see :meth:`site`; None: every site with memory still alive (one search,
        the reports of all their blocks, largest first). ``blocks`` are live blocks to
        search (default: the ones recorded when this result was made); ``user_ns`` the
        namespace whose names are the user's (default: the running IPython shell's). An
        empty list: no sampled block of the site is alive. See :mod:`mprofile_ipy.retainers`
        for the guarantees (no user code runs, nothing is kept, bounded by ``time_limit``).

        The answers are kept with the result (as plain text): from then on the HTML report
        and the explorer show each site's chains when the site is unfolded.
        """
        pairs = self.retainers_by_site([site] if site is not None else None, blocks=blocks,
                                       user_ns=user_ns, max_blocks=max_blocks,
                                       max_chains=max_chains, time_limit=time_limit,
                                       progress=progress)
        if site is not None:
            return pairs[0][1]
        seen: dict[int, Any] = {}
        for _site, reports in pairs:
            for report in reports:
                seen.setdefault(report.address, report)
        return sorted(seen.values(), key=lambda r: -r.size)

    def retention(self, site: int | str | Site) -> Retention | None:
        """What :meth:`retainers` found for a site, as the views show it (plain data:
        chains and commands as text, blocks with the same story grouped), or None when it
        was not asked for that site. Costs nothing: no search runs."""
        return self.report.retention(self.site(site))

    def retainers_by_site(self, sites: Sequence[int | str | Site] | None = None, *,
                          blocks: Sequence[Any] | None = None, user_ns: dict | None = None,
                          max_blocks: int = 20, max_chains: int = 3,
                          time_limit: float | None = 60.0, progress: Any = None
                          ) -> list[tuple[Site, list[Any]]]:
        """:meth:`retainers` for several sites (default: every site with memory still
        alive) in one search of the heap: ``[(site, reports), ...]`` in table order."""
        from .retainers import find_retainers, select_site_blocks

        chosen = [self.site(s) for s in sites] if sites is not None else self.sites()
        fresh = blocks is not None
        if blocks is None:
            if self._live_blocks is None:
                raise ValueError(
                    "this result has no record of the live blocks' addresses (only results "
                    "of %%mprofile, %mprofile and a session do); pass blocks= "
                    "(mprofile_ipy.sampler.live_blocks() while the profiler runs)")
            blocks = self._live_blocks
        per_site: list[tuple[Site, list[Any]]] = []
        wanted: dict[int, Any] = {}
        for site in chosen:
            picked = select_site_blocks(site, blocks)[:max_blocks]
            per_site.append((site, picked))
            for block in picked:
                wanted.setdefault(block.address, block)
        reports = find_retainers(list(wanted.values()), user_ns=user_ns,
                                 max_chains=max_chains, time_limit=time_limit,
                                 progress=progress)
        when = ("blocks read when asked" if fresh else
                f"blocks recorded when {self.label or 'the result'} was made")
        self._explained.add(reports, when)
        self._explained.attach(self.report)
        by_address = {report.address: report for report in reports}
        return [(site, [by_address[b.address] for b in picked if b.address in by_address])
                for site, picked in per_site]

    # -- charts, widgets, files --------------------------------------------------------------
    def plot(self, kind: str = "bar", *, group_by: str | None = None, top: int | None = None,
             **kwargs: Any) -> Figure:
        """A matplotlib Figure: ``bar`` (top sites), ``flame`` (icicle of tracebacks) or
        ``timeline`` (memory after each cell of a session)."""
        from .renderers import chart

        return chart.plot_report(self.report, kind, group_by=group_by, top=top, **kwargs)

    def widget(self) -> Any:
        """An interactive explorer (ipywidgets), with a static fallback where widgets
        cannot render; the result itself when ipywidgets is not installed."""
        from .renderers.widget import explorer

        return explorer(self)

    def frame_namer(self) -> Callable[[Frame], tuple[str, str, int]]:
        """Map a frame to the (file name, function name, line) that exports show.

        Cells become ``In [12]`` with the line as typed in the cell, and their module-level
        code the function ``In [12]`` (not ``<module>``); other frames keep their names.
        """
        attributor = self.attributor

        def name(frame: Frame) -> tuple[str, str, int]:
            func = getattr(frame, "name", None) or ""
            info = attributor.cell(frame.filename)
            if info is None:
                return frame.filename, func, frame.lineno
            loc = attributor.locate(frame.filename, frame.lineno)
            if not func or func == "<module>":
                func = info.label
            return info.label, func, loc.line

        return name

    def view_snapshot(self) -> Snapshot:
        """A snapshot of what the views show: hidden frames and allocations removed,
        include/exclude applied. Same sample rate and weights as :attr:`snapshot`."""
        from . import aggregate
        from .model import Snapshot

        report = self.report
        converted: dict[tuple[FrameInfo, ...], tuple] = {}

        def raw_frames(visible: tuple[FrameInfo, ...]) -> tuple:
            frames = converted.get(visible)
            if frames is None:
                frames = converted[visible] = tuple(
                    (f.filename, f.lineno, f.name, f.firstlineno) for f in reversed(visible))
            return frames

        traces, counts = [], []
        for trace, count, visible in report.iter_trace_records():
            if visible:
                traces.append((trace[0], trace[1], raw_frames(visible), *trace[3:]))
                counts.append(count)
        allocated = None
        if self.snapshot.allocated is not None:
            allocated = [
                (raw_frames(visible), *entry[1:]) for entry in self.snapshot.allocated
                if (visible := report.visible(aggregate.Traceback(entry[0], entry[1])))]
        meta = dict(self.snapshot.meta)
        meta.update(view={"show_all": self.show_all, "include": list(self.include),
                          "exclude": list(self.exclude)})
        return Snapshot(traces, self.snapshot.traceback_limit, sample_rate=self.sample_rate,
                        allocated=allocated, meta=meta,
                        counts=counts if any(c != 1 for c in counts) else None)

    def to_pprof(self, path_or_file: Any) -> None:
        """Write what the views show as a gzipped pprof profile, cells named as shown here
        (``In [12]``, lines as typed). ``filtered(show_all=True).to_pprof(...)`` writes
        every frame and allocation. Needs protobuf."""
        from .renderers import require

        require("google.protobuf", "pprof export", "protobuf")
        from .export.pprof import write_pprof

        comments = [f"mprofile-ipy result {self.label}"] if self.label else []
        write_pprof(self.view_snapshot(), path_or_file, frame_namer=self.frame_namer(),
                    comments=comments)

    def filtered(self, *, show_all: bool | None = None, include: Sequence[str] | None = None,
                 exclude: Sequence[str] | None = None, group_by: str | None = None,
                 top: int | None = None) -> ProfileResult:
        """The same result with other frame hiding, include/exclude patterns or defaults
        for grouping and top N (``None`` keeps this result's)."""
        given = {"show_all": show_all, "include": include, "exclude": exclude,
                 "group_by": group_by, "top": top}
        changes = {k: (tuple(v) if k in ("include", "exclude") else v)
                   for k, v in given.items() if v is not None}
        if not changes:
            return self
        return self._derived(self.report.replace(**changes))

    def with_measures(self, **changes: Any) -> ProfileResult:
        """The same snapshot with some measured figures replaced (see ``report.Measures``)."""
        report = self.report
        return self._derived(Report(
            report.snapshot, dataclasses.replace(report.measures, **changes), report.options,
            report.attributor))

    def with_snapshot(self, snapshot: Snapshot, **changes: Any) -> ProfileResult:
        """Another snapshot (several processes merged, say) with this result's view
        options, attribution and recorded live blocks, and some measures replaced."""
        report = self.report
        return self._derived(Report(
            snapshot, dataclasses.replace(report.measures, **changes), report.options,
            report.attributor))

    @property
    def processes(self) -> list[Any]:
        """Each process's part (``report.ProcessShare``: label, kind, pid, size and count
        with their standard errors, share) when the result merges several processes
        (``%%mprofile --children`` or ``--dask``), largest first; else an empty list."""
        return list(self.report.processes)

    # -- display ---------------------------------------------------------------------------
    def __repr__(self) -> str:
        from .units import format_size

        where = f" {self.label}" if self.label else ""
        return (f"<ProfileResult{where}: {format_size(self.current)} alive, "
                f"peak {format_size(self.peak)}, {self.live_samples} samples>")

    def to_text(self, top: int | None = None, group_by: str | None = None) -> str:
        """The plain-text report (what a terminal shows)."""
        from .renderers.text import render_report

        return render_report(self.report, top=top, group_by=group_by)

    def to_html(self, top: int | None = None, group_by: str | None = None) -> str:
        """The static HTML report (no scripts: renders in JupyterLab, VS Code, Colab)."""
        from .renderers.html import render_report

        return render_report(self.report, top=top, group_by=group_by)

    def to_interactive_html(self, top: int | None = None) -> str:
        """The self-contained interactive HTML report (what a notebook shows): sort, group,
        filter, unfold tracebacks, flame graph; no kernel, widget or network needed."""
        from .renderers.html import interactive_report

        return interactive_report(self.report, top=top)


class DiffResult(_Displayable):
    """Two results compared site by site: what ``new`` has that ``old`` had not.

    A thin facade over :class:`~mprofile_ipy.report.DiffReport`. ``std_error`` of a change
    counts only the sampled allocations found in one snapshot and not the other (allocations
    alive in both cancel out exactly when both snapshots come from the same run). The views
    list only the changes outside their 95% interval and say how many they left out.
    """

    def __init__(self, new: ProfileResult, old: ProfileResult, *, group_by: str = "cell",
                 top: int = 10) -> None:
        self.new = new
        self.old = old
        self.report = DiffReport(new.report, old.report, group_by, top)

    group_by = _read("", "group_by", "Default grouping.")
    top = _read("", "top", "Default number of changes shown.")
    label = _read("summary", "label", "``B vs A``.")
    size_diff = _read("summary", "size_diff", "Change of the estimated total.")
    is_exact = _read("", "exact", "True when both results traced every allocation.")

    def diffs(self, group_by: str | None = None, top: int | None = None) -> list[SiteDiff]:
        """Every site of either result, sorted by the absolute size change, largest first."""
        rows = self.report.rows(group_by)
        return rows[:top] if top is not None else rows

    def changes(self, group_by: str | None = None) -> list[SiteDiff]:
        """The changes the data supports (outside their 95% interval), largest first."""
        return self.report.changes(group_by)[0]

    def to_dataframe(self, group_by: str | None = None, top: int | None = None) -> pd.DataFrame:
        """One row per site with size, size_diff, count, count_diff, samples, errors."""
        from .renderers.dataframe import diff_dataframe

        return diff_dataframe(self.report, group_by=group_by, top=top)

    def plot(self, *, group_by: str | None = None, top: int | None = None,
             **kwargs: Any) -> Figure:
        """Bar chart of the largest changes."""
        from .renderers import chart

        return chart.diff_bar(self.report, group_by=group_by, top=top, **kwargs)

    def widget(self) -> Any:
        """The diff explorer (ipywidgets), with a static fallback."""
        from .renderers.widget import diff_explorer

        return diff_explorer(self)

    def to_text(self, top: int | None = None, group_by: str | None = None) -> str:
        """The plain-text comparison."""
        from .renderers.text import render_diff

        return render_diff(self.report, top=top, group_by=group_by)

    def to_html(self, top: int | None = None, group_by: str | None = None) -> str:
        """The static HTML comparison."""
        from .renderers.html import render_diff

        return render_diff(self.report, top=top, group_by=group_by)

    def to_interactive_html(self, top: int | None = None) -> str:
        """The self-contained interactive HTML comparison (what a notebook shows)."""
        from .renderers.html import interactive_diff

        return interactive_diff(self.report, top=top)

    def __repr__(self) -> str:
        from .units import format_size

        return f"<DiffResult {self.label}: {format_size(self.size_diff, sign=True)}>"
