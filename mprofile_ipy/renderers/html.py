"""Static HTML reports: no scripts, no IFrames, no external files, inline styles only.

They render the same in JupyterLab, Notebook, VS Code, Colab and saved notebooks, and serve
as the fallback wherever widgets cannot run. Each site's tracebacks unfold with a
``<details>`` element, so drill-down works without a kernel. Colors are translucent, so the
reports read on light and dark themes. Every text that comes from the user's code, a path or
a label is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING

from . import GROUP_WORDS, Z95, fmt_count, fmt_error, fmt_percent, fmt_rate, fmt_size, fmt_time
from .text import churn_sites

if TYPE_CHECKING:  # pragma: no cover
    from ..result import DiffResult, FrameInfo, ProfileResult, Site, SiteDiff, TimelinePoint

__all__ = ["diff_summary_html", "render_diff", "render_result", "sites_table_html",
           "summary_html", "timeline_html", "tracebacks_html"]

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


def tracebacks_html(site: Site, limit: int = MAX_TRACEBACKS) -> str:
    """The site's heaviest tracebacks, oldest frame first, with their size and samples."""
    parts = []
    for tb in site.tracebacks[:limit]:
        frames = "".join(_frame_html(f) for f in tb.frames[-MAX_FRAMES:])
        cut = len(tb.frames) - MAX_FRAMES
        more = (f"<div style='{_MUTED} margin-left: 12px'>… {cut} older frames</div>"
                if cut > 0 else "")
        parts.append(f"<div style='margin: 4px 0 6px 0'><span style='{_MUTED}'>"
                     f"{fmt_size(tb.size)} · {tb.samples:,} samples · oldest frame first"
                     f"</span>{more}{frames}</div>")
    if len(site.tracebacks) > limit:
        parts.append(f"<div style='{_MUTED}'>… {len(site.tracebacks) - limit} more "
                     f"tracebacks</div>")
    return "".join(parts)


def _site_cell(site: Site, drill: bool = True) -> str:
    if not drill or not site.tracebacks:
        return _title(site)
    return (f"<details><summary style='cursor: pointer'>{_title(site)}</summary>"
            f"{tracebacks_html(site)}</details>")


def summary_html(result: ProfileResult) -> str:
    """The headline figures of a result, whether the code raised, and the notes."""
    name = f"mprofile {escape(result.label)}" if result.label else "mprofile"
    figures = [
        ("still alive", fmt_size(result.current)),
        ("peak", fmt_size(result.peak)),
        ("allocated", fmt_size(result.allocated)),
    ]
    if result.elapsed is not None:
        figures.append(("time", fmt_time(result.elapsed)))
    if result.is_exact:
        figures.append(("traced", f"every allocation ({result.live_samples:,} alive)"))
    else:
        figures.append(("samples", f"{result.samples:,} ({result.live_samples:,} alive), "
                                   f"1 per {fmt_rate(result.sample_rate)}"))
    chips = " &nbsp;·&nbsp; ".join(
        f"<span style='{_MUTED}'>{escape(k)}</span> <b>{escape(v)}</b>" for k, v in figures
    )
    out = [f"<div><b>{name}</b> &nbsp; {chips}</div>"]
    if result.error is not None:
        out.append(_note(f"The code raised {result.error}; figures are up to the exception."))
    out.extend(_note(note) for note in result.warnings())
    return "".join(out)


def sites_table_html(result: ProfileResult, sites: list[Site], drill: bool = True) -> str:
    """The table of sites with bars, uncertainty and (``drill``) their tracebacks."""
    if not sites:
        return ""
    biggest = max(s.size for s in sites) or 1.0
    allocated = result.has_allocated
    headers = ["size", "±95%", "count", "share", "samples"] + (
        ["allocated"] if allocated else []) + ["site"]
    rows = []
    for site in sites:
        row = [_bar(site.size / biggest) + fmt_size(site.size),
               fmt_error(site.rel_error, result.is_exact), fmt_count(site.count),
               fmt_percent(site.percent), f"{site.samples:,}"]
        if allocated:
            row.append(fmt_size(site.allocated))
        rows.append(row + [_site_cell(site, drill)])
    return _table(headers, rows)


def render_result(result: ProfileResult, top: int | None = None,
                  group_by: str | None = None) -> str:
    """The whole report as one HTML fragment."""
    top = top or result.top
    sites = result.sites(group_by)
    body = [summary_html(result)]
    if sites:
        body.append(f"<div style='margin-top: 6px'>Top {min(top, len(sites))} of {len(sites)} "
                    f"sites by memory still alive, grouped by "
                    f"{escape(GROUP_WORDS[sites[0].group_by])}. Click a site for its "
                    f"tracebacks.</div>")
        body.append(sites_table_html(result, sites[:top]))
        rest = sites[top:]
        if rest:
            body.append(f"<div style='{_MUTED}'>… {len(rest)} more sites: "
                        f"{fmt_size(sum(s.size for s in rest))}</div>")
    elif result.live_samples:
        body.append("<div>No site to show: every sampled allocation still alive was hidden or "
                    "filtered out.</div>")
    churn = churn_sites(result, group_by, top)
    if churn:
        body.append(f"<div style='margin-top: 6px'>Most allocated, freed included (all "
                    f"allocated: {fmt_size(result.allocated)}):</div>")
        body.append(_table(
            ["allocated", "±95%", "alive", "site"],
            [[fmt_size(s.allocated), fmt_error(s.allocated_rel_error, result.is_exact),
              fmt_size(s.size), _site_cell(s)] for s in churn]))
    foot = []
    if result.hidden > 0:
        foot.append(f"Hidden: {fmt_size(result.hidden)} alive that only IPython, kernel or "
                    f"profiler frames allocated (<code>--all-frames</code> shows it).")
    if result.filtered_out > 0:
        foot.append(f"Filtered out by include/exclude: {fmt_size(result.filtered_out)}.")
    if not result.is_exact and sites:
        foot.append("Sizes and counts are unbiased estimates from samples; ± is a 95% "
                    "interval.")
    if foot:
        body.append(f"<div style='{_MUTED} margin-top: 4px'>{' '.join(foot)}</div>")
    return _report(body)


def diff_summary_html(diff: DiffResult) -> str:
    """The change of the total, and the notes on the newer result's estimates."""
    out = [f"<div><b>mprofile {escape(diff.label)}</b> &nbsp; "
           f"<b>{fmt_size(diff.size_diff, signed=True)}</b> "
           f"<span style='{_MUTED}'>({fmt_size(diff.old.total)} → {fmt_size(diff.new.total)})"
           f"</span></div>"]
    out.extend(_note(note) for note in diff.new.warnings())
    return "".join(out)


def render_diff(diff: DiffResult, top: int | None = None, group_by: str | None = None,
                rows: list[SiteDiff] | None = None) -> str:
    """A comparison of two results as one HTML fragment (``rows``: a chosen subset)."""
    if rows is None:
        rows = diff.diffs(group_by)
        shown = rows[:top or diff.top]
    else:
        shown = rows
    body = [diff_summary_html(diff)]
    if not shown:
        body.append("<div>No allocation site in either snapshot.</div>" if not rows else
                    "<div>No change matches.</div>")
        return _report(body)
    biggest = max(abs(r.size_diff) for r in shown) or 1.0
    table = []
    for row in shown:
        color = _RED if row.size_diff > 0 else _GREEN
        table.append([
            _bar(abs(row.size_diff) / biggest, color) + fmt_size(row.size_diff, signed=True),
            "exact" if diff.is_exact else "±" + fmt_size(Z95 * row.std_error),
            fmt_size(row.size), fmt_count(row.count_diff, signed=True), _title(row)])
    body.append(f"<div style='margin-top: 6px'>Top {len(shown)} of {len(rows)} changes, "
                f"grouped by {escape(GROUP_WORDS[shown[0].group_by])}.</div>")
    body.append(_table(["change", "±95%", "size now", "count change", "site"], table))
    return _report(body)


def timeline_html(points: Sequence[TimelinePoint]) -> str:
    """A small table of a session's memory after each cell."""
    if not points:
        return _report(["<div>No cell has run in this session yet.</div>"])
    biggest = max(max(p.current, p.peak) for p in points) or 1.0
    rows = [[escape(p.label), _bar(p.current / biggest) + fmt_size(p.current), fmt_size(p.peak)]
            for p in points]
    return _report([_table(["after", "alive", "peak"], rows, text_column=0)])
