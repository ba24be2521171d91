"""Show, store and export results as the options say; degrade to text without a library.

A view that needs an optional library (matplotlib for charts, ipywidgets for the explorer)
that is not installed prints one line saying what to install and shows the text report
instead; any other failure to show a report is explained in one line too. The user's value
or exception always matters more than the report, so nothing here raises after the code ran.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from IPython.core.error import UsageError

from ..errors import MissingDependencyError
from ..renderers import require
from ..report import TimelinePoint
from ..result import DiffResult, ProfileResult
from .options import Options

__all__ = ["Bundle", "check_path", "explain", "finish", "retainers_text", "show", "show_postmortem",
           "show_retainers",
           "show_timeline", "show_widget", "write_pprof"]


class Bundle:
    """Something to display: HTML or a matplotlib figure (as PNG) with a text form for
    terminals and frontends that show only text."""

    def __init__(self, text: str, *, html: str | None = None, figure: Any = None) -> None:
        self.text, self.html, self.figure = text, html, figure

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle: dict[str, Any] = {"text/plain": self.text}
        if self.html is not None:
            bundle["text/html"] = self.html
        if self.figure is not None:
            from ..renderers.chart import to_png

            bundle["image/png"] = to_png(self.figure)
        return bundle


def _display(obj: Any) -> None:
    from IPython.display import display

    display(obj)


def _say(message: str) -> None:
    print(f"mprofile: {message}", file=sys.stderr)


def _show_chart(result: ProfileResult | DiffResult, view: str) -> None:
    """The summary (figures and notes) as HTML/text, then the chart, whose text form is the
    rest of the text report (so a terminal shows the whole report once)."""
    from ..renderers import chart, html, text

    if isinstance(result, DiffResult):
        figure = chart.diff_bar(result.report)
        summary = Bundle("\n".join(text.diff_summary(result.report)),
                         html=html.diff_summary_html(result.report))
        rest = text.render_diff(result.report, summary=False)
    else:
        figure = chart.plot_report(result.report, "flame" if view == "flame" else "bar")
        summary = Bundle("\n".join(text.report_summary(result.report)),
                         html=html.summary_html(result.report))
        rest = text.render_report(result.report, summary=False)
    _display(summary)
    _display(Bundle(rest, figure=figure))


def show_widget(result: ProfileResult | DiffResult) -> None:
    """The report of the explorer's current view as an output of its own, then the explorer.

    A widget output saved without the widget's state shows "Error displaying widget: model
    not found" once its kernel is gone, and JupyterLab never falls back to the HTML of the
    same bundle. So the cell first shows the self-contained interactive report, marked as
    standing in for the widget (where scripts run it hides the widget's error after a reload
    and says why the controls are gone), then the explorer's live controls. The report is
    updated in place (a display id) whenever the explorer's grouping, top N or frame hiding
    changes, so the saved notebook holds the view as it was last shown: readable, sortable
    and filterable in nbconvert's HTML and on GitHub too.
    """
    from IPython.display import display

    from ..renderers import html, text

    def bundle(report: Any) -> dict[str, str]:
        if isinstance(result, DiffResult):
            return {"text/plain": text.render_diff(report),
                    "text/html": html.interactive_diff(report, replaces_widget=True)}
        return {"text/plain": text.render_report(report),
                "text/html": html.interactive_report(report, replaces_widget=True)}

    widget = result.widget()  # built first: a failure shows the text report only once
    handle = display(bundle(widget.view_report()), raw=True, display_id=True)

    def follow(report: Any) -> None:
        if handle is not None:
            handle.update(bundle(report), raw=True)

    widget.on_view_change(follow)
    _display(widget)


def show(result: ProfileResult | DiffResult, view: str) -> None:
    """Display a result in one of the views; the text report (and one line saying why)
    when the view cannot be shown."""
    if view == "none":
        return
    try:
        if view == "text":
            print(result.to_text())
        elif view == "widget":
            require("ipywidgets", "the widget view")
            show_widget(result)
        elif view in ("chart", "flame"):
            _show_chart(result, view)
        else:
            _display(result)
        return
    except MissingDependencyError as exc:
        _say(f"{exc}; showing the text report instead.")
    except Exception as exc:  # noqa: BLE001 - the user's value or exception comes first
        _say(f"cannot show the {view} view ({type(exc).__name__}: {exc}); showing the text "
             f"report instead.")
    try:
        print(result.to_text())
    except Exception as exc:  # noqa: BLE001
        _say(f"cannot show the report ({type(exc).__name__}: {exc})")


def show_timeline(points: Sequence[TimelinePoint], view: str) -> None:
    """A session's timeline: ``chart`` the self-contained interactive chart (hover a point),
    ``image`` a matplotlib PNG, ``table`` an HTML table, ``text``, or ``none``."""
    from ..renderers.text import render_timeline

    text = render_timeline(points)
    if view == "none":
        return
    if view == "text":
        print(text)
        return
    if view in ("table", "chart"):
        from ..renderers import html

        page = html.timeline_html(points) if view == "table" else html.interactive_timeline(
            points)
        _display(Bundle(text, html=page))
        return
    try:
        from ..renderers import chart

        _display(Bundle(text, figure=chart.timeline(points)))
    except MissingDependencyError as exc:
        _say(f"{exc}; showing the text timeline instead.")
        print(text)


def retainers_text(result: ProfileResult, pairs: Sequence[tuple[Any, list[Any]]],
                   fresh: bool) -> tuple[str, list[tuple[str, str]]]:
    """The answer of ``%mprofile why`` as a header and, per site, (title, chains as text)."""
    from ..renderers import fmt_size
    from ..retainers import format_retainers

    when = ("read now (the profiler is running)" if fresh else
            f"recorded when {result.label or 'the result'} was made; the profiler is not "
            f"running now, so an object freed since then may be replaced at its address")
    head = (f"Why is the memory of {result.label or 'this result'} still alive? Sampled "
            f"blocks {when}.")
    sections = []
    for site, reports in pairs:
        title = f"{site.title}: {fmt_size(site.size)} alive"
        sections.append((title, format_retainers(reports).rstrip("\n")))
    return head, sections


def show_retainers(result: ProfileResult, pairs: Sequence[tuple[Any, list[Any]]],
                   fresh: bool) -> None:
    """Text in a terminal, escaped HTML in a notebook."""
    from html import escape

    head, sections = retainers_text(result, pairs, fresh)
    if not sections:
        text = head + "\nNo site with memory still alive."
        _display(Bundle(text, html=f"<div class='mprofile-why'>{escape(text)}</div>"))
        return
    text = "\n\n".join([head] + [f"{title}\n{body}" for title, body in sections])
    style = ("font-family: var(--jp-code-font-family, monospace); font-size: 12px; "
             "white-space: pre-wrap; margin: 2px 0 10px 0")
    html = "".join([f"<div class='mprofile-why'><div>{escape(head)}</div>"] + [
        f"<div style='margin-top: 6px'><b>{escape(title)}</b></div>"
        f"<pre style=\"{style}\">{escape(body)}</pre>" for title, body in sections]
        + ["</div>"])
    _display(Bundle(text, html=html))


def show_postmortem(summary: str, path: str) -> None:
    """The facts of a dead kernel (which cell and line ran, the peak) before its report."""
    from html import escape

    text = f"{summary}\n  (record: {path})"
    lines = text.split("\n")
    html = (f"<div class='mprofile-postmortem'><b>{escape(lines[0])}</b>"
            + "".join(f"<div style='margin-left: 12px'>{escape(line.strip())}</div>"
                      for line in lines[1:]) + "</div>")
    _display(Bundle(text, html=html))


def explain(shell: Any, result: ProfileResult, opts: Options) -> None:
    """``--why``: what keeps every site of the result alive (one search of the heap, bounded
    by ``--time-limit``), kept with the result so that its report shows each site's chains
    when it is unfolded. Never raises: a failure is one line on stderr."""
    if not result.has_live_blocks:
        _say(f"--why: the result {result.label or ''} has no record of its blocks' addresses; "
             "nothing to explain")
        return
    try:
        result.retainers_by_site(user_ns=shell.user_ns, max_blocks=opts.max_blocks,
                                 max_chains=opts.chains, time_limit=opts.time_limit)
    except Exception as exc:  # noqa: BLE001 - the user's value or exception comes first
        _say(f"--why: cannot find what keeps the memory alive ({type(exc).__name__}: {exc})")


def finish(shell: Any, result: ProfileResult | DiffResult, opts: Options) -> None:
    """Store, show and export a result as the options say (``--why`` first finds what keeps
    its sites alive). Never raises: a report that cannot be shown or exported is explained
    in one line on stderr."""
    if opts.output:
        shell.user_ns[opts.output] = result
    if opts.why and isinstance(result, ProfileResult):
        explain(shell, result, opts)
    show(result, opts.view)
    if opts.pprof and isinstance(result, ProfileResult):
        try:
            write_pprof(result, opts.pprof)
        except UsageError as exc:
            _say(str(exc))


def check_path(path: str | None, what: str) -> None:
    """Reject an unusable output path before anything runs; ``what`` names the option or
    command the path came from (``--pprof``, ``export``)."""
    if not path:
        return
    path = os.path.expanduser(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{what}: the folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{what}: {path!r} is a folder; give a file name such as "
                         f"'profile.pb.gz'")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{what}: cannot write in {folder!r}")


def write_pprof(result: ProfileResult, path: str) -> None:
    """Write the result as pprof; a missing library or an unwritable file is a UsageError."""
    path = os.path.expanduser(path)
    try:
        result.to_pprof(path)
    except MissingDependencyError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot write the pprof profile to {path!r}: {exc}") from None
    print(f"pprof profile written to {path}")
