"""Static HTML reports: no scripts, no IFrames, no external files, inline styles only.

They format a :class:`~mprofile_ipy.report.Report` (or a ``DiffReport``) and render the same
in JupyterLab, Notebook, VS Code, Colab and saved notebooks, and serve as the fallback
wherever widgets cannot run. Each site's tracebacks unfold with a ``<details>`` element, so
drill-down works without a kernel. Colors are translucent, so the reports read on light and
dark themes. Every text that comes from the user's code, a path or a label is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from ..report import (
    DiffReport,
    FrameInfo,
    Report,
    Retention,
    Site,
    SiteDiff,
    TimelinePoint,
    diff_data,
    report_data,
    timeline_data,
)
from . import (
    GROUP_WORDS,
    Z95,
    fmt_count,
    fmt_error,
    fmt_percent,
    fmt_rate,
    fmt_size,
    fmt_time,
    note_text,
    plural,
)
from .interactive import render_report as render_interactive

__all__ = ["diff_summary_html", "interactive_diff", "interactive_report",
           "interactive_timeline", "processes_html", "render_diff", "render_report",
           "retention_html", "sites_table_html", "summary_html", "timeline_html",
           "tracebacks_html"]

_BOX = ("font-family: var(--jp-ui-font-family, -apple-system, 'Segoe UI', sans-serif);"
        "font-size: 13px; line-height: 1.4; max-width: 1100px;")
_TABLE = "border-collapse: collapse; margin: 6px 0;"
_TH = ("padding: 3px 8px; border-bottom: 1px solid rgba(128,128,128,.5);"
       "font-weight: 600; white-space: nowrap;")
_TD = "padding: 2px 8px; vertical-align: top;"
_NUM = "text-align: right; white-space: nowrap;"
_CODE = ("font-family: var(--jp-code-font-family, SFMono-Regular, Menlo, Consolas, monospace);"
         "font-size: 12px;")
_NOTE = ("background: rgba(255, 170, 0, .15); border-left: 3px solid rgba(255, 150, 0, .8);"
         "padding: 4px 8px; margin: 4px 0;")
_MUTED = "opacity: .7;"
_BLUE, _RED, _GREEN = "rgba(66,133,244,.55)", "rgba(234,67,53,.6)", "rgba(52,168,83,.6)"
#: Tracebacks shown per site, and frames per traceback (the most recent ones).
MAX_TRACEBACKS = 5
MAX_FRAMES = 12


def _report(parts: Sequence[str]) -> str:
    return f"<div class='mprofile-report' style=\"{_BOX}\">{''.join(parts)}</div>"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], text_column: int = -1) -> str:
    """A table of numbers but for one column of text (the last, by default).

    ``headers`` are plain text; the cells of ``rows`` are HTML, escaped by the caller.
    """
    text_column %= len(headers)
    align = [("text-align: left;" if i == text_column else _NUM) for i in range(len(headers))]
    head = "".join(f"<th style='{_TH}{a}'>{escape(h)}</th>"
                   for h, a in zip(headers, align, strict=True))
    body = "".join(
        "<tr>" + "".join(f"<td style='{_TD}{a}'>{cell}</td>"
                         for cell, a in zip(row, align, strict=True)) + "</tr>"
        for row in rows)
    return f"<table style='{_TABLE}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _bar(fraction: float, color: str = _BLUE) -> str:
    """A small horizontal bar, ``fraction`` of the widest (80 px)."""
    width = max(1, int(80 * fraction))
    return (f"<span style='display: inline-block; height: 9px; width: {width}px; "
            f"background: {color}; margin-right: 6px;'></span>")


def _note(text: str) -> str:
    return f"<div style='{_NOTE}'>{escape(text)}</div>"


def _title(site: Site | SiteDiff) -> str:
    """The site's label, and its source line in code type when it names a line."""
    if site.title == site.label:
        return escape(site.label)
    return f"{escape(site.label)} <span style='{_CODE}'>{escape(site.frame.source)}</span>"


def _frame_html(frame: FrameInfo) -> str:
    where = escape(frame.where)
    name = f" in <i>{escape(frame.name)}</i>" if frame.name and frame.name != "<module>" else ""
    source = (f"<br><span style='{_CODE}'>&nbsp;&nbsp;{escape(frame.source)}</span>"
              if frame.source else "")
    return f"<div style='margin: 1px 0 3px 12px'>{where}{name}{source}</div>"


def tracebacks_html(site: Site, limit: int = MAX_TRACEBACKS, allocated: bool = False) -> str:
    """The site's heaviest tracebacks, oldest frame first, with their size and samples.

    Only tracebacks with allocations still alive (``allocated``: with allocations at all,
    sized by all they allocated)."""
    if allocated:
        tracebacks = [tb for tb in site.tracebacks if tb.allocated_samples > 0]
    else:
        tracebacks = list(site.live_tracebacks)
    parts = []
    for tb in tracebacks[:limit]:
        frames = "".join(_frame_html(f) for f in tb.frames[-MAX_FRAMES:])
        cut = len(tb.frames) - MAX_FRAMES
        more = (f"<div style='{_MUTED} margin-left: 12px'>… {cut} older frames</div>"
                if cut > 0 else "")
        figure = (f"{fmt_size(tb.allocated)} allocated · {plural(tb.allocated_samples, 'sample')}"
                  if allocated else f"{fmt_size(tb.size)} · {plural(tb.samples, 'sample')}")
        parts.append(f"<div style='margin: 4px 0 6px 0'><span style='{_MUTED}'>"
                     f"{figure} · oldest frame first</span>{more}{frames}</div>")
    if len(tracebacks) > limit:
        parts.append(f"<div style='{_MUTED}'>… {len(tracebacks) - limit} more "
                     f"tracebacks</div>")
    return "".join(parts)


def retention_html(why: Retention) -> str:
    """What keeps a site alive: per group of blocks with the same story, what they are,
    the chains from a root the user can name (chain k+1 holds them once chain k's command
    has run) and the command that frees each."""
    head = (f"{plural(why.searched, 'sampled block')} searched in {fmt_time(why.elapsed)}"
            + (f"; {why.when}" if why.when else ""))
    parts = [f"<div class='mprofile-why' style='margin: 6px 0 6px 12px; padding-left: 6px; "
             f"border-left: 2px solid {_RED}'><b>Why still alive</b> "
             f"<span style='{_MUTED}'>{escape(head)}</span>"]
    for group in why.groups:
        parts.append(f"<div style='margin: 3px 0'>{escape(plural(group.blocks, 'block'))}, "
                     f"{fmt_size(group.size)}: {escape(group.description)}</div>")
        items = []
        for chain in group.chains:
            also = (f" <span style='{_MUTED}'>(also named {escape(', '.join(chain.also_named))})"
                    "</span>" if chain.also_named else "")
            free = (f"<div>free it with <code style='{_CODE} font-weight: 600'>"
                    f"{escape(chain.command)}</code></div>" if chain.command else "")
            items.append(f"<li><code style='{_CODE}'>{escape(chain.text)}</code>{also}{free}"
                         f"</li>")
        if items:
            parts.append(f"<ol style='margin: 2px 0; padding-left: 22px'>{''.join(items)}</ol>")
        if len(group.commands) > 1:
            parts.append(f"<div>to free it, run all of: <code style='{_CODE} font-weight: "
                         f"600'>{escape('; '.join(group.commands))}</code></div>")
        if group.note:
            parts.append(f"<div style='{_MUTED}'>{escape(group.note)}</div>")
    if not why.groups:
        parts.append(f"<div style='{_MUTED}'>no sampled block of this site is alive</div>")
    return "".join(parts) + "</div>"


def _site_cell(site: Site, drill: bool = True, allocated: bool = False,
               why: Retention | None = None) -> str:
    details = tracebacks_html(site, allocated=allocated) if drill else ""
    if drill and why is not None:
        details += retention_html(why)
    if not details:
        return _title(site)
    return (f"<details><summary style='cursor: pointer'>{_title(site)}</summary>"
            f"{details}</details>")


def summary_html(report: Report) -> str:
    """The headline figures of a result, whether the code raised, and the notes."""
    s = report.summary
    name = f"mprofile {escape(s.label)}" if s.label else "mprofile"
    figures = [
        ("still alive", fmt_size(s.current)),
        ("peak", fmt_size(s.peak)),
        ("allocated", fmt_size(s.allocated)),
    ]
    if s.elapsed is not None:
        figures.append(("time", fmt_time(s.elapsed)))
    if s.exact:
        figures.append(("traced", f"every allocation ({s.live_samples:,} alive)"))
    else:
        figures.append(("samples", f"{s.samples:,} ({s.live_samples:,} alive), "
                                   f"1 per {fmt_rate(s.sample_rate)}"))
    chips = " &nbsp;·&nbsp; ".join(
        f"<span style='{_MUTED}'>{escape(k)}</span> <b>{escape(v)}</b>" for k, v in figures
    )
    out = [f"<div><b>{name}</b> &nbsp; {chips}</div>"]
    if s.error is not None:
        out.append(_note(f"The code raised {s.error}; figures are up to the exception."))
    out.extend(_note(note_text(note)) for note in report.notes)
    return "".join(out)


def sites_table_html(report: Report, sites: Sequence[Site], drill: bool = True) -> str:
    """The table of sites with bars, uncertainty and (``drill``) their tracebacks."""
    if not sites:
        return ""
    exact = report.exact
    biggest = max(s.size for s in sites) or 1.0
    allocated = report.has_allocated
    headers = ["size", "±95%", "count", "share", "samples"] + (
        ["allocated"] if allocated else []) + ["site"]
    rows = []
    for site in sites:
        row = [_bar(site.size / biggest) + fmt_size(site.size),
               fmt_error(site.rel_error, exact), fmt_count(site.count),
               fmt_percent(site.percent), f"{site.samples:,}"]
        if allocated:
            row.append(fmt_size(site.allocated))
        rows.append(row + [_site_cell(site, drill, why=report.retention(site))])
    return _table(headers, rows)


def processes_html(report: Report) -> str:
    """The per-process table of a result that merges several processes."""
    exact = report.summary.exact
    biggest = max((p.size for p in report.processes), default=0.0) or 1.0
    rows = [[_bar(p.size / biggest) + fmt_size(p.size), fmt_error(p.rel_error, exact),
             fmt_count(p.count), fmt_percent(100 * p.share), f"{p.samples:,}",
             fmt_size(p.allocated),
             f"{escape(p.label)} <span style='{_MUTED}'>{escape(p.kind)}, pid {p.pid}"
             f"{', ' + escape(p.address) if p.address else ''}</span>"]
            for p in report.processes]
    return (f"<div style='margin-top: 6px'>Per process ({len(report.processes)}): memory "
            f"still alive and all allocated.</div>"
            + _table(["size", "±95%", "count", "share", "samples", "allocated", "process"],
                     rows))


def render_report(report: Report, top: int | None = None,
                  group_by: str | None = None) -> str:
    """The whole report as one HTML fragment."""
    s = report.summary
    listed = report.site_list(group_by, top)
    body = [summary_html(report)]
    if listed.shown:
        body.append(f"<div style='margin-top: 6px'>Top {len(listed.shown)} of {listed.total} "
                    f"sites by memory still alive, grouped by "
                    f"{escape(GROUP_WORDS[listed.group_by])}. Click a site for its "
                    f"tracebacks.</div>")
        body.append(sites_table_html(report, listed.shown))
        if listed.rest:
            body.append(f"<div style='{_MUTED}'>… {listed.rest} more sites: "
                        f"{fmt_size(listed.rest_size)}</div>")
    elif s.live_samples:
        body.append("<div>No site to show: every sampled allocation still alive was hidden or "
                    "filtered out.</div>")
    if report.processes:
        body.append(processes_html(report))
    churn = report.churn(group_by, top)
    if churn:
        body.append(f"<div style='margin-top: 6px'>Most allocated, freed included (all "
                    f"allocated: {fmt_size(s.allocated)}):</div>")
        body.append(_table(
            ["allocated", "±95%", "alive", "site"],
            [[fmt_size(c.allocated), fmt_error(c.allocated_rel_error, s.exact),
              fmt_size(c.size), _site_cell(c, allocated=True)] for c in churn]))
    foot = []
    if s.hidden > 0:
        foot.append(f"Hidden: {fmt_size(s.hidden)} alive that only IPython, kernel or "
                    f"profiler frames allocated (<code>--all-frames</code> shows it).")
    if s.filtered_out > 0:
        foot.append(f"Filtered out by include/exclude: {fmt_size(s.filtered_out)}.")
    if not s.exact and listed.shown:
        foot.append("Sizes and counts are unbiased estimates from samples; ± is a 95% "
                    "interval.")
    if foot:
        body.append(f"<div style='{_MUTED} margin-top: 4px'>{' '.join(foot)}</div>")
    return _report(body)


def diff_summary_html(diff: DiffReport) -> str:
    """The change of the total, and the notes on the newer result's estimates."""
    s = diff.summary
    out = [f"<div><b>mprofile {escape(s.label)}</b> &nbsp; "
           f"<b>{fmt_size(s.size_diff, signed=True)}</b> "
           f"<span style='{_MUTED}'>({fmt_size(s.old_total)} → {fmt_size(s.new_total)})"
           f"</span></div>"]
    out.extend(_note(note_text(note)) for note in s.notes)
    return "".join(out)


def render_diff(diff: DiffReport, top: int | None = None, group_by: str | None = None,
                rows: Sequence[SiteDiff] | None = None) -> str:
    """A comparison of two results as one HTML fragment (``rows``: a chosen subset)."""
    changes, left_out = diff.changes(group_by)
    shown = list(rows) if rows is not None else changes[:top or diff.top]
    body = [diff_summary_html(diff)]
    if not shown:
        if rows is not None and changes:
            body.append("<div>No change matches.</div>")
        elif left_out:
            body.append(f"<div>No change the samples can tell apart from zero "
                        f"({plural(left_out, 'site')} within their 95% interval).</div>")
        else:
            body.append("<div>No allocation site in either snapshot.</div>")
        return _report(body)
    biggest = max(abs(r.size_diff) for r in shown) or 1.0
    table = []
    for row in shown:
        color = _RED if row.size_diff > 0 else _GREEN
        table.append([
            _bar(abs(row.size_diff) / biggest, color) + fmt_size(row.size_diff, signed=True),
            "exact" if diff.exact else "±" + fmt_size(Z95 * row.std_error),
            fmt_size(row.size), fmt_count(row.count_diff, signed=True), _title(row)])
    body.append(f"<div style='margin-top: 6px'>Top {len(shown)} of {len(changes)} changes, "
                f"grouped by {escape(GROUP_WORDS[shown[0].group_by])}.</div>")
    body.append(_table(["change", "±95%", "size now", "count change", "site"], table))
    if left_out and rows is None:
        body.append(f"<div style='{_MUTED}'>{plural(left_out, 'site')} left out: no change, "
                    f"or a change within its 95% interval.</div>")
    return _report(body)


def timeline_html(points: Sequence[TimelinePoint]) -> str:
    """A small table of a session's memory after each cell."""
    if not points:
        return _report(["<div>No cell has run in this session yet.</div>"])
    biggest = max(max(p.current, p.peak) for p in points) or 1.0
    rows = [[escape(p.label), _bar(p.current / biggest) + fmt_size(p.current), fmt_size(p.peak)]
            for p in points]
    return _report([_table(["after", "alive", "peak"], rows, text_column=0)])


def interactive_report(report: Report, top: int | None = None, *,
                       replaces_widget: bool = False) -> str:
    """The self-contained interactive HTML report (``renderers.interactive``) of a report:
    server-side table and flame graph, enhanced by an inline script where scripts run."""
    return render_interactive(report_data(report, top=top, note_text=note_text),
                              replaces_widget=replaces_widget)


def interactive_diff(diff: DiffReport, top: int | None = None, *,
                     replaces_widget: bool = False) -> str:
    """The self-contained interactive HTML report of a comparison."""
    return render_interactive(diff_data(diff, top=top, note_text=note_text),
                              replaces_widget=replaces_widget)


def interactive_timeline(points: Sequence[TimelinePoint]) -> str:
    """A session's memory after each cell as a self-contained interactive chart (hover a
    point for its figures); a sentence when no cell has run yet."""
    if not points:
        return timeline_html(points)
    return render_interactive(timeline_data(points))
