"""Interactive explorers (ipywidgets) for a result and for a comparison of two results.

The explorer has a group-by selector, a top-N slider, a filter box, a sort choice, a
"show all frames" switch, the sorted table, and a site picker that shows the site's
tracebacks, with a "Why alive?" button that asks the result what keeps the site's memory
alive (``result.retainers(site)``: it needs the kernel, which the explorer has) and shows
the chains as text. Its display bundle carries the widget *and* the static HTML and text reports, so
a frontend without a widget manager (nbviewer, GitHub, Colab without custom widgets, a
terminal) shows the static report instead of an error. The explorers read the result's
report (``result.report``) and ask the result for another view of itself
(``result.filtered(show_all=...)``); they compute nothing themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from typing import Any

from ..report import FrameInfo, Site, SiteDiff
from . import fmt_size
from .html import render_diff, sites_table_html, summary_html, tracebacks_html
from .text import retention_lines

_SORTS = {"size": lambda s: -s.size, "count": lambda s: -s.count,
          "samples": lambda s: -s.samples, "error": lambda s: -s.rel_error}
_DIRECTIONS = {"all": lambda d: True, "grew": lambda d: d > 0, "shrank": lambda d: d < 0}
_GROUP_OPTIONS = [("cell line", "cell"), ("line", "line"), ("function", "function"),
                  ("file", "file"), ("traceback", "traceback")]


def _matches(frames: Iterable[FrameInfo], needle: str) -> bool:
    """True when ``needle`` (lower case) is in a file, function or source text of a frame."""
    return not needle or any(
        needle in text.lower()
        for f in frames
        for text in (f.file, f.filename, f.name, f.source, f.where)
    )


def _site_frames(site: Site) -> list[FrameInfo]:
    return [site.frame] + [f for tb in site.tracebacks for f in tb.frames]


class _Fallback:
    """Mixin: the display bundle of a widget plus static fallbacks, and listeners told the
    explorer's current view (so a report shown beside it can follow it)."""

    box: Any
    _listeners: list[Any]

    def view_report(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def on_view_change(self, callback: Any) -> None:
        """Call ``callback(report)`` (a ``Report`` or ``DiffReport`` of the current grouping
        and top N) after each change of the view."""
        self._listeners.append(callback)

    def _tell(self) -> None:
        for callback in list(getattr(self, "_listeners", [])):
            try:
                callback(self.view_report())
            except Exception:  # noqa: BLE001 - a listener never breaks the explorer
                pass

    def static_html(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def static_text(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle: dict[str, Any] = {}
        widget_bundle = self.box._repr_mimebundle_(include=include, exclude=exclude)
        if isinstance(widget_bundle, tuple):  # (data, metadata)
            widget_bundle = widget_bundle[0]
        if widget_bundle:
            bundle.update(widget_bundle)
        bundle["text/html"] = self.static_html()
        bundle["text/plain"] = self.static_text()
        return bundle


class Explorer(_Fallback):
    """The explorer of one :class:`~mprofile_ipy.result.ProfileResult`.

    Attributes are the widgets (``group_by``, ``top``, ``filter``, ``sort``, ``all_frames``,
    ``table``, ``site``, ``detail``), so a program or a test can drive it; ``box`` is the
    whole layout.
    """

    def __init__(self, result: Any) -> None:
        import ipywidgets as w

        self._listeners = []
        self.base = result
        self.result = result
        self.group_by = w.Dropdown(options=_GROUP_OPTIONS, value=result.group_by,
                                   description="Group by")
        self.top = w.IntSlider(value=result.top, min=1, max=max(50, result.top),
                               description="Top")
        self.filter = w.Text(value="", placeholder="file, function or source text",
                             description="Filter", continuous_update=False)
        self.sort = w.Dropdown(options=list(_SORTS), value="size", description="Sort by")
        self.all_frames = w.Checkbox(value=result.show_all, description="Show all frames",
                                     indent=False)
        self.summary = w.HTML(summary_html(result.report))
        self.table = w.HTML()
        self.site = w.Dropdown(options=[], description="Site",
                               layout=w.Layout(width="95%"))
        self.detail = w.HTML()
        self.why_button = w.Button(description="Why alive?", icon="search",
                                   tooltip="What keeps this site's memory alive: reference "
                                           "chains and the command that frees each")
        self.why = w.HTML()
        if not result.has_live_blocks:
            self.why_button.disabled = True
            self.why_button.tooltip = ("this result has no record of its blocks' addresses "
                                       "(only results of %%mprofile, %mprofile and a session)")
        controls = w.HBox([self.group_by, self.sort, self.all_frames])
        filters = w.HBox([self.top, self.filter])
        drill = w.VBox([w.HTML("<b>Tracebacks of a site</b>"), self.site, self.detail,
                        self.why_button, self.why])
        self.box = w.VBox([self.summary, controls, filters, self.table, drill])
        for control in (self.group_by, self.top, self.filter, self.sort):
            control.observe(self._refresh, names="value")
        self.all_frames.observe(self._toggle_frames, names="value")
        self.site.observe(self._show_site, names="value")
        self.why_button.on_click(self._ask_why)
        self._refresh()

    def shown_sites(self) -> list[Site]:
        """The sites the table shows: grouped, filtered, sorted and cut to top N."""
        needle = self.filter.value.strip().lower()
        sites = [s for s in self.result.report.sites(self.group_by.value)
                 if _matches(_site_frames(s), needle)]
        sites.sort(key=_SORTS[self.sort.value])
        return sites[: self.top.value]

    def _toggle_frames(self, _change: Any = None) -> None:
        self.result = self.base.filtered(show_all=self.all_frames.value)
        self.summary.value = summary_html(self.result.report)
        self._refresh()

    def _refresh(self, _change: Any = None) -> None:
        sites = self.shown_sites()
        if sites:
            self.table.value = sites_table_html(self.result.report, sites, drill=False)
        else:
            self.table.value = "<i>No site matches.</i>"
        self._sites = sites
        options = [(f"{i + 1}. {fmt_size(s.size)}  {s.label}", i) for i, s in enumerate(sites)]
        self.site.options = options
        self.site.value = 0 if options else None
        self._show_site()
        self._tell()

    def view_report(self) -> Any:
        """The report of the current view: grouping, top N and frame hiding."""
        return self.result.filtered(group_by=self.group_by.value, top=self.top.value).report

    def _show_site(self, _change: Any = None) -> None:
        index = self.site.value
        if index is None or index >= len(self._sites):
            self.detail.value = ""
            return
        site = self._sites[index]
        self.detail.value = tracebacks_html(site, limit=10) or escape(site.title)
        self._show_why(site)

    def selected_site(self) -> Site | None:
        """The site the picker shows, or None."""
        index = self.site.value
        return self._sites[index] if index is not None and index < len(self._sites) else None

    def _show_why(self, site: Site) -> None:
        """The site's chains when they were asked for (here, by --why or in code)."""
        why = self.result.report.retention(site)
        self.why.value = "" if why is None else _pre(
            [f"Why still alive ({why.when}):" if why.when else "Why still alive:"]
            + retention_lines(why))

    def _ask_why(self, _button: Any = None) -> None:
        """Search what keeps the selected site alive (the result keeps the answer, so the
        report beside the explorer shows it too), then show it as text."""
        site = self.selected_site()
        if site is None:
            self.why.value = "<i>Pick a site first.</i>"
            return
        self.why.value = "<i>Searching the heap for what keeps this site alive…</i>"
        try:
            self.result.retainers(site, progress=lambda _progress: None)
        except Exception as exc:  # noqa: BLE001 - said in the explorer, never raised
            self.why.value = f"<i>{escape(f'{type(exc).__name__}: {exc}')}</i>"
            return
        self._show_why(site)
        self._tell()

    def static_html(self) -> str:
        """The report shown where widgets cannot render."""
        return self.result.to_html(top=self.top.value, group_by=self.group_by.value)

    def static_text(self) -> str:
        """The report for plain-text frontends."""
        return self.result.to_text(top=self.top.value, group_by=self.group_by.value)


class DiffExplorer(_Fallback):
    """The explorer of a comparison: group-by, top-N, filter, and the table of changes."""

    def __init__(self, diff: Any) -> None:
        import ipywidgets as w

        self._listeners = []
        self.diff = diff
        self.group_by = w.Dropdown(options=_GROUP_OPTIONS, value=diff.group_by,
                                   description="Group by")
        self.top = w.IntSlider(value=diff.top, min=1, max=max(50, diff.top), description="Top")
        self.filter = w.Text(value="", placeholder="file, function or source text",
                             description="Filter", continuous_update=False)
        self.only = w.Dropdown(options=[("all changes", "all"), ("growth", "grew"),
                                        ("shrinkage", "shrank")], value="all",
                               description="Show")
        self.table = w.HTML()
        self.box = w.VBox([w.HBox([self.group_by, self.only]), w.HBox([self.top, self.filter]),
                           self.table])
        for control in (self.group_by, self.top, self.filter, self.only):
            control.observe(self._refresh, names="value")
        self._refresh()

    def shown_rows(self) -> list[SiteDiff]:
        """The changes the table shows: grouped, filtered and cut to top N."""
        needle = self.filter.value.strip().lower()
        keep = _DIRECTIONS[self.only.value]
        rows = [row for row in self.diff.report.changes(self.group_by.value)[0]
                if keep(row.size_diff) and _matches([row.frame], needle)]
        return rows[: self.top.value]

    def _refresh(self, _change: Any = None) -> None:
        self.table.value = render_diff(self.diff.report, group_by=self.group_by.value,
                                       rows=self.shown_rows())
        self._tell()

    def view_report(self) -> Any:
        """The comparison of the current view: grouping and top N."""
        from ..report import DiffReport

        report = self.diff.report
        return DiffReport(report.new, report.old, self.group_by.value, self.top.value)

    def static_html(self) -> str:
        """The comparison shown where widgets cannot render."""
        return self.diff.to_html(top=self.top.value, group_by=self.group_by.value)

    def static_text(self) -> str:
        """The comparison for plain-text frontends."""
        return self.diff.to_text(top=self.top.value, group_by=self.group_by.value)


def _pre(lines: list[str]) -> str:
    style = ("font-family: var(--jp-code-font-family, monospace); font-size: 12px; "
             "white-space: pre-wrap; margin: 2px 0")
    return f"<pre class='mprofile-why' style=\"{style}\">{escape(chr(10).join(lines))}</pre>"


def explorer(result: Any) -> Any:
    """The explorer of a result; the static report itself if ipywidgets is missing."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return result
    return Explorer(result)


def diff_explorer(diff: Any) -> Any:
    """The explorer of a comparison; the static comparison if ipywidgets is missing."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return diff
    return DiffExplorer(diff)


__all__ = ["Explorer", "DiffExplorer", "explorer", "diff_explorer"]
