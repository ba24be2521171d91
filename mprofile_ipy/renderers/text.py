"""Plain-text reports for terminals and ``text/plain`` outputs.

``render_report`` prints a summary (the figures alive, peak, allocated, time, samples, then
the notes on how far to trust them) and a body (the top sites with their uncertainty, the
sites that allocated most, what was hidden); ``render_diff`` does the same for two results
compared. Each part is available alone, for views that show the summary next to a chart.
The site column takes the rest of the terminal's width (``COLUMNS``, else the terminal,
else 110 characters). Pure Python: no heavy import.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence

from ..report import DiffReport, Report, Retention, Site, TimelinePoint
from . import (
    GROUP_WORDS,
    Z95,
    clip,
    fmt_count,
    fmt_error,
    fmt_percent,
    fmt_rate,
    fmt_size,
    fmt_time,
    note_text,
    plural,
)

__all__ = ["MIN_WIDTH", "WIDTH", "diff_summary", "headline", "render_diff", "render_report",
           "render_timeline", "report_summary", "retention_lines", "site_rows", "width"]

#: Width of a report where the terminal's is unknown (notebooks, pipes), and the least used
#: (a wrapped line reads better than a site cut to a few characters).
WIDTH = 110
MIN_WIDTH = WIDTH


def width() -> int:
    """Characters per line: ``COLUMNS`` if set, else the terminal's, else :data:`WIDTH`;
    never below :data:`MIN_WIDTH`."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return max(MIN_WIDTH, int(columns))
    stream = sys.__stdout__
    try:
        if stream is not None and stream.isatty():
            return max(MIN_WIDTH, shutil.get_terminal_size((WIDTH, 24)).columns)
    except (AttributeError, ValueError, OSError):
        pass
    return WIDTH


def headline(report: Report) -> list[str]:
    """The figures of a run, in two lines."""
    s = report.summary
    name = f"mprofile {s.label}" if s.label else "mprofile"
    parts = [f"{fmt_size(s.current)} still alive", f"peak {fmt_size(s.peak)}",
             f"{fmt_size(s.allocated)} allocated"]
    if s.elapsed is not None:
        parts.append(f"in {fmt_time(s.elapsed)}")
    first = f"{name}: " + ", ".join(parts)
    if s.exact:
        second = f"every allocation traced ({s.live_samples:,} alive)"
    else:
        second = (f"{plural(s.samples, 'allocation')} sampled ({s.live_samples:,} alive), "
                  f"1 per {fmt_rate(s.sample_rate)} allocated on average")
    return [first, " " * (len(name) + 2) + second]


def report_summary(report: Report) -> list[str]:
    """The headline, whether the code raised, and the notes on the estimates."""
    lines = headline(report)
    if report.summary.error is not None:
        lines.append(f"The code raised {report.summary.error}; figures are up to the exception.")
    lines.extend("Note: " + note_text(note) for note in report.notes)
    return lines


def site_rows(sites: Sequence[Site], exact: bool, allocated: bool = False,
              columns: int | None = None) -> list[str]:
    """The table of sites, header included (``allocated``: add the allocated column)."""
    columns = columns or width()
    extra = f" {'allocated':>10}" if allocated else ""
    lines = [f"{'size':>10} {'±95%':>6} {'count':>10} {'share':>6} {'samples':>7}{extra}  site"]
    for site in sites:
        extra = f" {fmt_size(site.allocated):>10}" if allocated else ""
        prefix = (f"{fmt_size(site.size):>10} {fmt_error(site.rel_error, exact):>6} "
                  f"{fmt_count(site.count):>10} {fmt_percent(site.percent):>6} "
                  f"{site.samples:>7}{extra}  ")
        lines.append(prefix + clip(site.title, columns - len(prefix)))
        if site.group_by == "traceback":
            for frame in site.traceback[:-1][::-1][:8]:
                lines.append(" " * len(prefix) + clip("  called from " + frame.format(),
                                                       columns - len(prefix)))
    return lines


def process_rows(report: Report, columns: int | None = None) -> list[str]:
    """The per-process table of a result that merges several processes."""
    columns = columns or width()
    exact = report.summary.exact
    lines = [f"Per process ({len(report.processes)}), memory still alive and all allocated:",
             f"{'size':>10} {'±95%':>6} {'count':>10} {'share':>6} {'samples':>7} "
             f"{'allocated':>10}  process"]
    for p in report.processes:
        prefix = (f"{fmt_size(p.size):>10} {fmt_error(p.rel_error, exact):>6} "
                  f"{fmt_count(p.count):>10} {fmt_percent(100 * p.share):>6} "
                  f"{p.samples:>7} {fmt_size(p.allocated):>10}  ")
        lines.append(prefix + clip(f"{p.label} [{p.kind}]", columns - len(prefix)))
    return lines


def retention_lines(why: Retention, indent: str = "  ") -> list[str]:
    """What keeps a site alive, as ``%mprofile why`` prints it: per group of blocks, what
    they are, each chain and the command that frees it."""
    lines = []
    for group in why.groups:
        lines.append(f"{indent}{plural(group.blocks, 'block')}, {fmt_size(group.size)}: "
                     f"{group.description}")
        for i, chain in enumerate(group.chains, 1):
            lines.append(f"{indent}  {i}. {chain.text}")
            if chain.also_named:
                lines.append(f"{indent}     (also named {', '.join(chain.also_named)})")
            if chain.command:
                lines.append(f"{indent}     free it with: {chain.command}")
        if len(group.commands) > 1:
            lines.append(f"{indent}  to free it, run all of: " + "; ".join(group.commands))
        if group.note:
            lines.append(f"{indent}  {group.note}")
    if not why.groups:
        lines.append(f"{indent}no sampled block of this site is alive")
    return lines


def _retention_section(report: Report, sites: Sequence[Site]) -> list[str]:
    """The chains of the listed sites that were asked for (``--why``, ``retainers()``)."""
    lines = []
    for site in sites:
        why = report.retention(site)
        if why is not None:
            if not lines:
                lines.append(f"Why still alive ({why.when or 'sampled blocks'}):")
            lines.append(f"  {site.title}")
            lines.extend(retention_lines(why, "    "))
    return lines


def _report_body(report: Report, top: int | None, group_by: str | None) -> list[str]:
    columns = width()
    s = report.summary
    listed = report.site_list(group_by, top)
    lines = []
    if listed.shown:
        lines.append(f"Top {len(listed.shown)} of {listed.total} sites by memory still alive, "
                     f"grouped by {GROUP_WORDS[listed.group_by]}:")
        lines.extend(site_rows(listed.shown, s.exact, s.has_allocated, columns))
        if listed.rest:
            lines.append(f"  … {listed.rest} more sites: {fmt_size(listed.rest_size)}")
        if report.has_retention:
            lines.extend(_retention_section(report, listed.shown))
    elif s.live_samples:
        lines.append("No site to show: every sampled allocation still alive was hidden or "
                     "filtered out.")
    if report.processes:
        lines.extend(process_rows(report, columns))
    churn = report.churn(group_by, top)
    if churn:
        lines.append(f"Most allocated, freed included (all allocated: "
                     f"{fmt_size(s.allocated)}):")
        lines.append(f"{'allocated':>10} {'±95%':>6} {'alive':>10}  site")
        for site in churn:
            err = fmt_error(site.allocated_rel_error, s.exact)
            prefix = f"{fmt_size(site.allocated):>10} {err:>6} {fmt_size(site.size):>10}  "
            lines.append(prefix + clip(site.title, columns - len(prefix)))
    if s.hidden > 0:
        lines.append(f"Hidden: {fmt_size(s.hidden)} alive that only IPython, kernel or "
                     f"profiler frames allocated (--all-frames shows it).")
    if s.filtered_out > 0:
        lines.append(f"Filtered out by --include/--exclude: {fmt_size(s.filtered_out)}.")
    return lines


def render_report(report: Report, top: int | None = None, group_by: str | None = None,
                  *, summary: bool = True) -> str:
    """The whole report as text; without its summary when ``summary`` is false."""
    body = _report_body(report, top, group_by)
    return "\n".join((report_summary(report) if summary else []) + body)


def diff_summary(diff: DiffReport) -> list[str]:
    """The change of the total, and the notes on the newer result's estimates."""
    s = diff.summary
    lines = [f"mprofile {s.label}: {fmt_size(s.size_diff, signed=True)} "
             f"({fmt_size(s.old_total)} -> {fmt_size(s.new_total)})"]
    lines.extend("Note: " + note_text(note) for note in s.notes)
    return lines


def render_diff(diff: DiffReport, top: int | None = None, group_by: str | None = None,
                *, summary: bool = True) -> str:
    """A comparison of two results as text; without its summary when ``summary`` is false."""
    top = top or diff.top
    columns = width()
    rows, left_out = diff.changes(group_by)
    lines = diff_summary(diff) if summary else []
    if not rows and not left_out:
        lines.append("No allocation site in either snapshot.")
        return "\n".join(lines)
    if not rows:
        lines.append(f"No change the samples can tell apart from zero "
                     f"({plural(left_out, 'site')} within their 95% interval).")
        return "\n".join(lines)
    lines.append(f"Top {min(top, len(rows))} of {len(rows)} changes, grouped by "
                 f"{GROUP_WORDS[rows[0].group_by]}:")
    lines.append(f"{'change':>11} {'±95%':>10} {'size':>10} {'count':>9}  site")
    for row in rows[:top]:
        err = "exact" if diff.exact else "±" + fmt_size(Z95 * row.std_error)
        prefix = (f"{fmt_size(row.size_diff, signed=True):>11} {err:>10} "
                  f"{fmt_size(row.size):>10} {fmt_count(row.count_diff, signed=True):>9}  ")
        lines.append(prefix + clip(row.title, columns - len(prefix)))
    if left_out:
        lines.append(f"  {plural(left_out, 'site')} left out: no change, or a change within "
                     f"its 95% interval.")
    return "\n".join(lines)


def render_timeline(points: Sequence[TimelinePoint]) -> str:
    """A session's memory after each cell, one line per point, with a small bar."""
    if not points:
        return "No cell has run in this session yet."
    biggest = max(max(p.current, p.peak) for p in points) or 1.0
    lines = [f"{'after':>10} {'alive':>10} {'peak':>10}"]
    for p in points:
        bar = "#" * int(round(40 * p.current / biggest))
        lines.append(f"{p.label:>10} {fmt_size(p.current):>10} {fmt_size(p.peak):>10}  {bar}")
    return "\n".join(lines)
