"""matplotlib charts of a report: top sites, an icicle (flame) graph, a session's timeline.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot, so nothing is
registered with a GUI backend, nothing leaks when the figure is dropped, and it works headless
(Agg). IPython and Jupyter display a returned Figure as an image; ``fig.savefig`` writes it.
Figures have a transparent background, and text, axes and error bars a mid grey, so they
read on light and dark notebook themes alike. Without matplotlib, importing this module
raises :class:`~mprofile_ipy.errors.MissingDependencyError`.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import math
from collections.abc import Sequence
from typing import Any

from ..report import LINE_GROUPS, DiffReport, FrameInfo, Report, TimelinePoint, TreeNode
from . import Z95, fmt_size, require
from . import clip as _clip

require("matplotlib", "a chart")
from matplotlib.figure import Figure  # noqa: E402 - after the check that it is installed
from matplotlib.ticker import FixedLocator, FuncFormatter  # noqa: E402

KINDS = ("bar", "flame", "timeline")
#: Theme-neutral ink: readable on white and on dark backgrounds.
INK = "#888888"
_CELL_BLUE = "#4285f4"
_LIBRARY_GREY = "#9aa0a6"


def _text(label: str) -> str:
    """Escape what matplotlib would read as mathtext."""
    return label.replace("$", r"\$")


def _size_axis(axis: Any, vmax: float | None = None, vmin: float = 0.0) -> None:
    """Byte ticks at round multiples of a binary unit (1, 2, 5 MiB ...), labelled with it."""
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt_size(v)))
    if vmax is None or vmax <= vmin:
        return
    span = vmax - vmin
    unit = 1.0
    while span / unit >= 1024:
        unit *= 1024
    raw = span / unit / 5
    step = next((m for m in (1, 2, 2.5, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000)
                 if m >= raw), 1000) * unit
    first = math.ceil(vmin / step) * step
    ticks = [first + i * step for i in range(int((vmax - first) / step) + 1)]
    axis.set_major_locator(FixedLocator(ticks))


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    figure.patch.set_alpha(0.0)  # transparent: the notebook's own background shows
    return figure


def _neutral(ax: Any) -> None:
    """Grey text, ticks and spines on a transparent axes (light and dark themes)."""
    ax.set_facecolor("none")
    ax.tick_params(colors=INK, labelcolor=INK)
    for spine in ax.spines.values():
        spine.set_color(INK)
    ax.xaxis.label.set_color(INK)
    ax.yaxis.label.set_color(INK)
    ax.title.set_color(INK)


def _empty(fig: Figure, ax: Any, text: str) -> Figure:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color=INK)
    ax.set_axis_off()
    return fig


def to_png(figure: Figure, dpi: float = 100) -> bytes:
    """The figure as PNG bytes, cropped to its content, transparent (what notebooks show)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", transparent=True)
    return buffer.getvalue()


def plot_report(report: Report, kind: str = "bar", *, group_by: str | None = None,
                top: int | None = None, **kwargs: Any) -> Figure:
    """Dispatch ``ProfileResult.plot``."""
    if kind == "bar":
        return bar(report, group_by=group_by, top=top, **kwargs)
    if kind in ("flame", "icicle"):
        return flame(report, **kwargs)
    if kind == "timeline":
        if not report.measures.timeline:
            raise ValueError("this result has no timeline: timelines come from a session "
                             "(%mprofile start ... %mprofile show)")
        return timeline(report.measures.timeline, **kwargs)
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def bar(report: Report, *, group_by: str | None = None, top: int | None = None,
        width: float = 9.0, title: str | None = None) -> Figure:
    """Horizontal bars of the top sites, largest on top, with 95% error bars."""
    sites = report.site_list(group_by, top).shown
    exact = report.exact
    fig = _new_figure(width, 1.2 + 0.38 * max(1, len(sites)))
    ax = fig.add_subplot()
    if not sites:
        return _empty(fig, ax, "no allocation sampled" if not report.summary.samples
                      else "no site shown")
    labels = []
    for site in sites:
        label = site.label
        if site.frame.source and site.group_by in LINE_GROUPS:
            label += ": " + site.frame.source
        labels.append(_text(_clip(label, 60)))
    sizes = [s.size for s in sites]
    errors = [Z95 * s.std_error for s in sites]
    ys = list(range(len(sites)))[::-1]
    colors = [_CELL_BLUE if s.frame.is_cell else _LIBRARY_GREY for s in sites]
    ax.barh(ys, sizes, xerr=errors if not exact else None, color=colors,
            error_kw={"ecolor": INK, "capsize": 3, "lw": 1})
    ax.set_yticks(ys, labels, fontsize=8)
    for y, size, err in zip(ys, sizes, errors, strict=True):
        ax.text(size + (0 if exact else err), y, "  " + fmt_size(size), va="center",
                fontsize=8, color=INK)
    right = max(a + b for a, b in zip(sizes, errors, strict=True)) * 1.2
    ax.set_xlim(0, right)
    _size_axis(ax.xaxis, right)
    ax.set_xlabel("estimated bytes still alive" + ("" if exact else " (±95%)"))
    label = report.summary.label
    ax.set_title(_text(title or f"Top sites{' of ' + label if label else ''}"),
                 fontsize=10, loc="left")
    ax.spines[["top", "right"]].set_visible(False)
    _neutral(ax)
    return fig


def _color(frame: FrameInfo) -> str:
    if frame.is_cell:
        return "#8ab4f8"
    digest = hashlib.md5(frame.file.encode("utf-8", "replace"), usedforsecurity=False).digest()
    hue = digest[0] / 255
    r, g, b = colorsys.hls_to_rgb(0.02 + 0.12 * hue, 0.72, 0.75)  # warm tones for libraries
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def _frame_label(frame: FrameInfo) -> str:
    if frame.is_cell:
        text = f"{frame.file}:{frame.line}"
        return text + (f" {frame.source}" if frame.source else "")
    base = frame.file.replace("\\", "/").rsplit("/", 1)[-1]
    return f"{frame.name or '?'} ({base}:{frame.line})"


def flame(report: Report, *, max_depth: int = 24, min_fraction: float = 0.002,
          width: float = 11.0, title: str | None = None) -> Figure:
    """An icicle graph: the whole at the top, callers above callees, width = bytes alive.

    Frames narrower than ``min_fraction`` of the total are not drawn (their bytes still count
    in their parents); stacks deeper than ``max_depth`` are cut.
    """
    root = report.call_tree(max_depth)
    total = root.size
    rects: list[tuple[int, float, float, FrameInfo]] = []  # depth, x, width, frame
    stack: list[tuple[TreeNode, int, float]] = [(root, 0, 0.0)]
    while stack:
        node, depth, x = stack.pop()
        for child in node.children:  # largest first
            if total > 0 and child.size / total >= min_fraction and child.frame is not None:
                rects.append((depth + 1, x, child.size, child.frame))
                stack.append((child, depth + 1, x))
            x += child.size
    depth = max((r[0] for r in rects), default=0) + 1
    fig = _new_figure(width, 1.0 + 0.32 * depth)
    ax = fig.add_subplot()
    if total <= 0:
        return _empty(fig, ax, "no allocation sampled")
    ax.barh([0], [total], left=[0], height=0.92, color="#dadce0", edgecolor="white", lw=0.5)
    ax.text(total / 2, 0, f"all: {fmt_size(total)}", ha="center", va="center", fontsize=8,
            color="black")
    for level, x, w, frame in sorted(rects, key=lambda r: (r[0], r[1])):
        ax.barh([level], [w], left=[x], height=0.92, color=_color(frame), edgecolor="white",
                lw=0.5)
        chars = int(w / total * width * 11)  # roughly the characters that fit
        if chars >= 6:
            label = _clip(f"{_frame_label(frame)} {fmt_size(w)}", chars)
            ax.text(x + w / 2, level, _text(label), ha="center", va="center", fontsize=7,
                    clip_on=True, color="black")
    ax.set_ylim(depth - 0.5, -0.5)  # root on top, callees below
    ax.set_xlim(0, total)
    ax.set_yticks([])
    _size_axis(ax.xaxis, total)
    ax.set_xlabel("estimated bytes still alive (callers above callees)")
    label = report.summary.label
    ax.set_title(_text(title or "Where the memory alive was allocated"
                       + (f" ({label})" if label else "")), fontsize=10, loc="left")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    _neutral(ax)
    return fig


def timeline(points: Sequence[TimelinePoint], *, width: float = 9.0,
             title: str | None = None) -> Figure:
    """Memory still alive after each cell of a session, and each cell's peak."""
    fig = _new_figure(width, 3.6)
    ax = fig.add_subplot()
    if not points:
        return _empty(fig, ax, "no cell recorded yet")
    xs = list(range(len(points)))
    ax.fill_between(xs, [p.current for p in points], step="mid", alpha=0.25, color=_CELL_BLUE)
    ax.plot(xs, [p.current for p in points], drawstyle="steps-mid", color=_CELL_BLUE,
            label="alive after the cell")
    ax.plot(xs, [p.peak for p in points], "v", color="#ea4335", label="peak during the cell")
    ax.set_xticks(xs, [_text(p.label) for p in points], rotation=45 if len(xs) > 8 else 0,
                  fontsize=8)
    top = max(max(p.current, p.peak) for p in points) * 1.1 or 1.0
    ax.set_ylim(0, top)
    _size_axis(ax.yaxis, top)
    ax.set_ylabel("estimated bytes")
    legend = ax.legend(loc="upper left", fontsize=8, frameon=False)
    for text in legend.get_texts():
        text.set_color(INK)
    ax.set_title(_text(title or "Memory over the session"), fontsize=10, loc="left")
    ax.spines[["top", "right"]].set_visible(False)
    _neutral(ax)
    return fig


def diff_bar(diff: DiffReport, *, group_by: str | None = None, top: int | None = None,
             width: float = 9.0) -> Figure:
    """Horizontal bars of the largest changes the data supports (growth in red)."""
    rows = diff.changes(group_by)[0][:top or diff.top]
    fig = _new_figure(width, 1.2 + 0.38 * max(1, len(rows)))
    ax = fig.add_subplot()
    if not rows:
        return _empty(fig, ax, "no change")
    ys = list(range(len(rows)))[::-1]
    values = [r.size_diff for r in rows]
    colors = ["#ea4335" if v > 0 else "#34a853" for v in values]
    exact = diff.exact
    ax.barh(ys, values, color=colors,
            xerr=None if exact else [Z95 * r.std_error for r in rows],
            error_kw={"ecolor": INK, "capsize": 3, "lw": 1})
    labels = [_text(_clip(r.label + (": " + r.frame.source if r.frame.source else ""), 60))
              for r in rows]
    ax.set_yticks(ys, labels, fontsize=8)
    ax.axvline(0, color=INK, lw=0.8)
    errs = [0.0 if exact else Z95 * r.std_error for r in rows]
    low = min(0.0, min(v - e for v, e in zip(values, errs, strict=True)))
    high = max(0.0, max(v + e for v, e in zip(values, errs, strict=True)))
    pad = 0.08 * (high - low or 1.0)
    ax.set_xlim(low - pad, high + pad)
    _size_axis(ax.xaxis, high + pad, low - pad)
    ax.set_xlabel("change in estimated bytes still alive")
    s = diff.summary
    ax.set_title(_text(f"{s.label}: {fmt_size(s.size_diff, signed=True)}"), fontsize=10,
                 loc="left")
    ax.spines[["top", "right"]].set_visible(False)
    _neutral(ax)
    return fig
