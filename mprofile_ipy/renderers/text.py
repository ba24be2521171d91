"""Plain-text reports for terminals and ``text/plain`` outputs.

``render_result`` prints a summary (the figures alive, peak, allocated, time, samples, then
the notes on how far to trust them) and a body (the top sites with their uncertainty, the
sites that allocated most, what was hidden); ``render_diff`` does the same for two results
compared. Each part is available alone, for views that show the summary next to a chart.
Pure Python: no heavy import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
)

if TYPE_CHECKING:  # pragma: no cover
    from ..result import DiffResult, ProfileResult, Site, TimelinePoint

__all__ = ["WIDTH", "churn_sites", "diff_summary", "headline", "render_diff", "render_result",
           "render_timeline", "result_summary", "site_rows"]

WIDTH = 110


def headline(result: ProfileResult) -> list[str]:
    """The figures of a run, in two lines."""
    name = f"mprofile {result.label}" if result.label else "mprofile"
    parts = [f"{fmt_size(result.current)} still alive", f"peak {fmt_size(result.peak)}",
             f"{fmt_size(result.allocated)} allocated"]
    if result.elapsed is not None:
        parts.append(f"in {fmt_time(result.elapsed)}")
    first = f"{name}: " + ", ".join(parts)
    if result.is_exact:
        second = f"every allocation traced ({result.live_samples:,} alive)"
    else:
        noun = "allocation" if result.samples == 1 else "allocations"
        second = (f"{result.samples:,} {noun} sampled ({result.live_samples:,} alive), "
                  f"1 per {fmt_rate(result.sample_rate)} allocated on average")
    return [first, " " * (len(name) + 2) + second]


def result_summary(result: ProfileResult) -> list[str]:
    """The headline, whether the code raised, and the notes on the estimates."""
    lines = headline(result)
    if result.error is not None:
        lines.append(f"The code raised {result.error}; figures are up to the exception.")
    lines.extend("Note: " + note for note in result.warnings())
    return lines


def site_rows(sites: list[Site], exact: bool, allocated: bool = False) -> list[str]:
    """The table of sites, header included (``allocated``: add the allocated column)."""
    extra = f" {'allocated':>10}" if allocated else ""
    lines = [f"{'size':>10} {'±95%':>6} {'count':>10} {'share':>6} {'samples':>7}{extra}  site"]
    for site in sites:
        extra = f" {fmt_size(site.allocated):>10}" if allocated else ""
        prefix = (f"{fmt_size(site.size):>10} {fmt_error(site.rel_error, exact):>6} "
                  f"{fmt_count(site.count):>10} {fmt_percent(site.percent):>6} "
                  f"{site.samples:>7}{extra}  ")
        lines.append(prefix + clip(site.title, WIDTH - len(prefix)))
        if site.group_by == "traceback":
            for frame in site.traceback[:-1][::-1][:8]:
                lines.append(" " * len(prefix) + clip("  called from " + frame.format(),
                                                       WIDTH - len(prefix)))
    return lines


def churn_sites(result: ProfileResult, group_by: str | None, top: int) -> list[Site]:
    """Sites to list by all they allocated: when much more was allocated than kept alive."""
    if not result.has_allocated or result.allocated <= 1.5 * max(result.current, 1.0):
        return []
    return result.sites(group_by, min(5, top), by="allocated")


def _result_body(result: ProfileResult, top: int, group_by: str | None) -> list[str]:
    sites = result.sites(group_by)
    lines = []
    if sites:
        shown = sites[:top]
        lines.append(f"Top {len(shown)} of {len(sites)} sites by memory still alive, "
                     f"grouped by {GROUP_WORDS[sites[0].group_by]}:")
        lines.extend(site_rows(shown, result.is_exact, result.has_allocated))
        rest = sites[top:]
        if rest:
            lines.append(f"  … {len(rest)} more sites: {fmt_size(sum(s.size for s in rest))}")
    elif result.live_samples:
        lines.append("No site to show: every sampled allocation still alive was hidden or "
                     "filtered out.")
    churn = churn_sites(result, group_by, top)
    if churn:
        lines.append(f"Most allocated, freed included (all allocated: "
                     f"{fmt_size(result.allocated)}):")
        lines.append(f"{'allocated':>10} {'±95%':>6} {'alive':>10}  site")
        for site in churn:
            err = fmt_error(site.allocated_rel_error, result.is_exact)
            prefix = f"{fmt_size(site.allocated):>10} {err:>6} {fmt_size(site.size):>10}  "
            lines.append(prefix + clip(site.title, WIDTH - len(prefix)))
    if result.hidden > 0:
        lines.append(f"Hidden: {fmt_size(result.hidden)} alive that only IPython, kernel or "
                     f"profiler frames allocated (--all-frames shows it).")
    if result.filtered_out > 0:
        lines.append(f"Filtered out by --include/--exclude: {fmt_size(result.filtered_out)}.")
    return lines


def render_result(result: ProfileResult, top: int | None = None, group_by: str | None = None,
                  *, summary: bool = True) -> str:
    """The whole report as text; without its summary when ``summary`` is false."""
    body = _result_body(result, top or result.top, group_by)
    return "\n".join((result_summary(result) if summary else []) + body)


def diff_summary(diff: DiffResult) -> list[str]:
    """The change of the total, and the notes on the newer result's estimates."""
    lines = [f"mprofile {diff.label}: {fmt_size(diff.size_diff, signed=True)} "
             f"({fmt_size(diff.old.total)} -> {fmt_size(diff.new.total)})"]
    lines.extend("Note: " + note for note in diff.new.warnings())
    return lines


def render_diff(diff: DiffResult, top: int | None = None, group_by: str | None = None,
                *, summary: bool = True) -> str:
    """A comparison of two results as text; without its summary when ``summary`` is false."""
    top = top or diff.top
    rows = diff.diffs(group_by)
    lines = diff_summary(diff) if summary else []
    if not rows:
        lines.append("No allocation site in either snapshot.")
        return "\n".join(lines)
    lines.append(f"Top {min(top, len(rows))} of {len(rows)} changes, grouped by "
                 f"{GROUP_WORDS[rows[0].group_by]}:")
    lines.append(f"{'change':>11} {'±95%':>10} {'size':>10} {'count':>9}  site")
    exact = diff.is_exact
    for row in rows[:top]:
        err = "exact" if exact else "±" + fmt_size(Z95 * row.std_error)
        prefix = (f"{fmt_size(row.size_diff, signed=True):>11} {err:>10} "
                  f"{fmt_size(row.size):>10} {fmt_count(row.count_diff, signed=True):>9}  ")
        lines.append(prefix + clip(row.title, WIDTH - len(prefix)))
    return "\n".join(lines)


def render_timeline(points: list[TimelinePoint]) -> str:
    """A session's memory after each cell, one line per point, with a small bar."""
    if not points:
        return "No cell has run in this session yet."
    biggest = max(max(p.current, p.peak) for p in points) or 1.0
    lines = [f"{'after':>10} {'alive':>10} {'peak':>10}"]
    for p in points:
        bar = "#" * int(round(40 * p.current / biggest))
        lines.append(f"{p.label:>10} {fmt_size(p.current):>10} {fmt_size(p.peak):>10}  {bar}")
    return "\n".join(lines)
