"""Static HTML reports: no scripts, no external files, inline styles only.

They render the same in JupyterLab, Notebook, VS Code, Colab and saved notebooks, and serve
as the fallback wherever widgets cannot run. Each site's tracebacks unfold with a
``<details>`` element, so drill-down works without a kernel. All text is escaped.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

from . import fmt_count, fmt_error, fmt_percent, fmt_rate, fmt_size, fmt_time
from .text import _GROUP_WORDS, churn_sites

if TYPE_CHECKING:  # pragma: no cover
    from ..result import DiffResult, FrameInfo, ProfileResult, Site, SiteDiff

_BOX = ("font-family: var(--jp-ui-font-family, -apple-system, 'Segoe UI', sans-serif);"
        "font-size: 13px; line-height: 1.4; max-width: 1100px;")
_TABLE = "border-collapse: collapse; margin: 6px 0; width: 100%;"
_TH = ("text-align: right; padding: 3px 8px; border-bottom: 1px solid rgba(128,128,128,.5);"
       "font-weight: 600; white-space: nowrap;")
_TD = "text-align: right; padding: 2px 8px; white-space: nowrap; vertical-align: top;"
_TD_SITE = "text-align: left; padding: 2px 8px; vertical-align: top;"
_CODE = ("font-family: var(--jp-code-font-family, SFMono-Regular, Menlo, Consolas, monospace);"
         "font-size: 12px;")
_NOTE = ("background: rgba(255, 170, 0, .15); border-left: 3px solid rgba(255, 150, 0, .8);"
         "padding: 4px 8px; margin: 4px 0;")
_MUTED = "opacity: .7;"
_BAR = "display: inline-block; height: 9px; background: rgba(66,133,244,.55); margin-right: 6px;"
_BAR_NEG = "display: inline-block; height: 9px; background: rgba(52,168,83,.6); margin-right: 6px;"
_BAR_POS = "display: inline-block; height: 9px; background: rgba(234,67,53,.6); margin-right: 6px;"


def _frame_html(frame: FrameInfo) -> str:
    where = escape(frame.where)
    name = f" in <i>{escape(frame.name)}</i>" if frame.name and frame.name != "<module>" else ""
    source = f"<br><span style='{_CODE}'>&nbsp;&nbsp;{escape(frame.source)}</span>" \
        if frame.source else ""
    return f"<div style='margin: 1px 0 3px 12px'>{where}{name}{source}</div>"


def _site_cell(site: Site, drill: bool = True) -> str:
    title = escape(site.label)
    if site.frame.source and site.group_by in ("cell", "line", "traceback"):
        title += f" <span style='{_CODE}'>{escape(site.frame.source)}</span>"
    if not drill or not site.tracebacks:
        return title
    parts = []
    for tb in site.tracebacks[:5]:
        frames = "".join(_frame_html(f) for f in tb.frames[-12:])
        cut = len(tb.frames) - 12
        more = f"<div style='{_MUTED} margin-left: 12px'>… {cut} older frames</div>" \
            if cut > 0 else ""
        parts.append(
            f"<div style='margin: 4px 0 6px 0'><span style='{_MUTED}'>{fmt_size(tb.size)} · "
            f"{tb.samples} samples · oldest frame first</span>{more}{frames}</div>"
        )
    if len(site.tracebacks) > 5:
        parts.append(f"<div style='{_MUTED}'>… {len(site.tracebacks) - 5} more tracebacks</div>")
    return (f"<details><summary style='cursor: pointer'>{title}</summary>"
            f"{''.join(parts)}</details>")


def summary_html(result: ProfileResult) -> str:
    """The headline figures and notes of a result."""
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
        out.append(f"<div style='{_NOTE}'>The code raised {escape(result.error)}"
                   f"; figures are up to the exception.</div>")
    for note in result.warnings():
        out.append(f"<div style='{_NOTE}'>{escape(note)}</div>")
    return "".join(out)


def sites_table_html(result: ProfileResult, sites: list[Site], drill: bool = True) -> str:
    """The table of sites with bars, uncertainty and drill-down."""
    if not sites:
        return ""
    biggest = max(s.size for s in sites) or 1.0
    allocated = result.has_allocated
    names = ("size", "±95%", "count", "share", "samples") + (
        ("allocated",) if allocated else ()) + ("site",)
    head = "".join(
        f"<th style='{_TH}{' text-align: left;' if h == 'site' else ''}'>{h}</th>"
        for h in names
    )
    rows = []
    for site in sites:
        width = max(1, int(80 * site.size / biggest))
        rows.append(
            "<tr>"
            f"<td style='{_TD}'><span style='{_BAR} width: {width}px'></span>"
            f"{fmt_size(site.size)}</td>"
            f"<td style='{_TD}'>{fmt_error(site.rel_error, result.is_exact)}</td>"
            f"<td style='{_TD}'>{fmt_count(site.count)}</td>"
            f"<td style='{_TD}'>{fmt_percent(site.percent)}</td>"
            f"<td style='{_TD}'>{site.samples:,}</td>"
            + (f"<td style='{_TD}'>{fmt_size(site.allocated)}</td>" if allocated else "")
            + f"<td style='{_TD_SITE}'>{_site_cell(site, drill)}</td>"
            "</tr>"
        )
    return f"<table style='{_TABLE}'><thead><tr>{head}</tr></thead>" \
           f"<tbody>{''.join(rows)}</tbody></table>"


def render_result(result: ProfileResult, top: int | None = None,
                  group_by: str | None = None) -> str:
    """The whole report as one HTML fragment."""
    top = top or result.top
    sites = result.sites(group_by)
    body = [summary_html(result)]
    if sites:
        body.append(f"<div style='margin-top: 6px'>Top {min(top, len(sites))} of {len(sites)} "
                    f"sites by memory still alive, grouped by "
                    f"{escape(_GROUP_WORDS[sites[0].group_by])}. Click a site for its "
                    f"tracebacks.</div>")
        body.append(sites_table_html(result, sites[:top]))
        rest = sites[top:]
        if rest:
            body.append(f"<div style='{_MUTED}'>… {len(rest)} more sites: "
                        f"{fmt_size(sum(s.size for s in rest))}</div>")
    churn = churn_sites(result, group_by, top)
    if churn:
        body.append(f"<div style='margin-top: 6px'>Most allocated, freed included (all "
                    f"allocated: {fmt_size(result.allocated)}):</div>")
        head = "".join(f"<th style='{_TH}{' text-align: left;' if h == 'site' else ''}'>{h}"
                       f"</th>" for h in ("allocated", "±95%", "alive", "site"))
        trs = "".join(
            f"<tr><td style='{_TD}'>{fmt_size(s.allocated)}</td>"
            f"<td style='{_TD}'>"
            f"{fmt_error(s.allocated_rel_error, result.is_exact)}"
            f"</td><td style='{_TD}'>{fmt_size(s.size)}</td>"
            f"<td style='{_TD_SITE}'>{_site_cell(s)}</td></tr>"
            for s in churn
        )
        body.append(f"<table style='{_TABLE}'><thead><tr>{head}</tr></thead>"
                    f"<tbody>{trs}</tbody></table>")
    foot = []
    if result.hidden > 0:
        foot.append(f"{fmt_size(result.hidden)} allocated only by IPython, kernel or profiler "
                    f"frames is hidden (<code>--all-frames</code> shows it).")
    if result.filtered_out > 0:
        foot.append(f"{fmt_size(result.filtered_out)} filtered out by include/exclude.")
    if not result.is_exact and sites:
        foot.append("Sizes and counts are unbiased estimates from samples; ± is a 95% "
                    "interval.")
    if foot:
        body.append(f"<div style='{_MUTED} margin-top: 4px'>{' '.join(foot)}</div>")
    return f"<div class='mprofile-report' style=\"{_BOX}\">{''.join(body)}</div>"


def render_diff(diff: DiffResult, top: int | None = None, group_by: str | None = None,
                rows: list[SiteDiff] | None = None) -> str:
    """A comparison of two results as one HTML fragment (``rows``: a chosen subset)."""
    top = top or diff.top
    if rows is None:
        rows = diff.diffs(group_by)
    else:
        top = max(1, len(rows))
    new, old = diff.new, diff.old
    head_line = (f"<div><b>mprofile {escape(diff.label)}</b> &nbsp; "
                 f"<b>{fmt_size(diff.size_diff, signed=True)}</b> "
                 f"<span style='{_MUTED}'>({fmt_size(old.total)} → {fmt_size(new.total)})"
                 f"</span></div>")
    body = [head_line]
    for note in new.warnings():
        body.append(f"<div style='{_NOTE}'>{escape(note)}</div>")
    if rows:
        shown = rows[:top]
        biggest = max(abs(r.size_diff) for r in shown) or 1.0
        exact = new.is_exact and old.is_exact
        head = "".join(
            f"<th style='{_TH}{' text-align: left;' if h == 'site' else ''}'>{h}</th>"
            for h in ("change", "±95%", "size now", "count change", "site")
        )
        trs = []
        for row in shown:
            width = max(1, int(80 * abs(row.size_diff) / biggest))
            bar = _BAR_POS if row.size_diff > 0 else _BAR_NEG
            err = "exact" if exact else "±" + fmt_size(1.96 * row.std_error)
            site = escape(row.label)
            if row.frame.source:
                site += f" <span style='{_CODE}'>{escape(row.frame.source)}</span>"
            trs.append(
                "<tr>"
                f"<td style='{_TD}'><span style='{bar} width: {width}px'></span>"
                f"{fmt_size(row.size_diff, signed=True)}</td>"
                f"<td style='{_TD}'>{err}</td>"
                f"<td style='{_TD}'>{fmt_size(row.size)}</td>"
                f"<td style='{_TD}'>{fmt_count(row.count_diff, signed=True)}</td>"
                f"<td style='{_TD_SITE}'>{site}</td>"
                "</tr>"
            )
        body.append(f"<div style='margin-top: 6px'>Top {len(shown)} of {len(rows)} changes, "
                    f"grouped by {escape(_GROUP_WORDS[rows[0].group_by])}.</div>")
        body.append(f"<table style='{_TABLE}'><thead><tr>{head}</tr></thead>"
                    f"<tbody>{''.join(trs)}</tbody></table>")
    else:
        body.append("<div>No allocation site in either snapshot.</div>")
    return f"<div class='mprofile-report' style=\"{_BOX}\">{''.join(body)}</div>"


def timeline_html(points: list) -> str:
    """A small table of a session's memory after each cell."""
    if not points:
        return "<div>No cell has run in this session yet.</div>"
    head = "".join(f"<th style='{_TH}'>{h}</th>" for h in ("after", "alive", "peak in cell"))
    rows = "".join(
        f"<tr><td style='{_TD}'>{escape(p.label)}</td><td style='{_TD}'>{fmt_size(p.current)}"
        f"</td><td style='{_TD}'>{fmt_size(p.peak)}</td></tr>"
        for p in points
    )
    return (f"<div style=\"{_BOX}\"><table style='{_TABLE} width: auto;'><thead><tr>{head}</tr>"
            f"</thead><tbody>{rows}</tbody></table></div>")
