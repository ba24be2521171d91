"""matplotlib charts of a result: top sites, an icicle (flame) graph, a session's timeline.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot, so nothing is
registered with a GUI backend, nothing leaks when the figure is dropped, and it works headless
(Agg). IPython and Jupyter display a returned Figure as an image; ``fig.savefig`` writes it.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter

from . import Z95, fmt_size
from . import clip as _clip

if TYPE_CHECKING:  # pragma: no cover
    from ..result import DiffResult, FrameInfo, ProfileResult, TimelinePoint

KINDS = ("bar", "flame", "timeline")


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
    return Figure(figsize=(width, height), layout="constrained")


def to_png(figure: Figure, dpi: float = 100) -> bytes:
    """The figure as PNG bytes, cropped to its content (what notebooks display)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def plot_result(result: ProfileResult, kind: str = "bar", *, group_by: str | None = None,
                top: int | None = None, **kwargs: Any) -> Figure:
    """Dispatch ``ProfileResult.plot``."""
    if kind == "bar":
        return bar(result, group_by=group_by, top=top, **kwargs)
    if kind in ("flame", "icicle"):
        return flame(result, **kwargs)
    if kind == "timeline":
        if not result.timeline:
            raise ValueError("this result has no timeline: timelines come from a session "
                             "(%mprofile start ... %mprofile show)")
        return timeline(result.timeline, **kwargs)
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def bar(result: ProfileResult, *, group_by: str | None = None, top: int | None = None,
        width: float = 9.0, title: str | None = None) -> Figure:
    """Horizontal bars of the top sites, largest on top, with 95% error bars."""
    sites = result.sites(group_by, top or result.top)
    fig = _new_figure(width, 1.2 + 0.38 * max(1, len(sites)))
    ax = fig.add_subplot()
    if not sites:
        ax.text(0.5, 0.5, "no allocation sampled" if not result.samples else "no site shown",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    labels = []
    for site in sites:
        label = site.label
        if site.frame.source and site.group_by in ("cell", "line", "traceback"):
            label += ": " + site.frame.source
        labels.append(_text(_clip(label, 60)))
    sizes = [s.size for s in sites]
    errors = [Z95 * s.std_error for s in sites]
    ys = list(range(len(sites)))[::-1]
    colors = ["#4285f4" if s.frame.is_cell else "#9aa0a6" for s in sites]
    ax.barh(ys, sizes, xerr=errors if not result.is_exact else None, color=colors,
            error_kw={"ecolor": "#333333", "capsize": 3, "lw": 1})
    ax.set_yticks(ys, labels, fontsize=8)
    for y, size, err in zip(ys, sizes, errors, strict=True):
        ax.text(size + (0 if result.is_exact else err), y, "  " + fmt_size(size), va="center",
                fontsize=8)
    right = max(a + b for a, b in zip(sizes, errors, strict=True)) * 1.2
    ax.set_xlim(0, right)
    _size_axis(ax.xaxis, right)
    ax.set_xlabel("estimated bytes still alive" + ("" if result.is_exact else " (±95%)"))
    ax.set_title(_text(title or f"Top sites{' of ' + result.label if result.label else ''}"),
                 fontsize=10, loc="left")
    ax.spines[["top", "right"]].set_visible(False)
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


def flame(result: ProfileResult, *, max_depth: int = 24, min_fraction: float = 0.002,
          width: float = 11.0, title: str | None = None) -> Figure:
    """An icicle graph: the whole at the top, callers above callees, width = bytes alive.

    Frames narrower than ``min_fraction`` of the total are not drawn (their bytes still count
    in their parents); stacks deeper than ``max_depth`` are cut.
    """
    # A tree of nodes keyed by (filename, lineno) along each visible traceback.
    root: dict[str, Any] = {"size": 0.0, "children": {}, "frame": None}
    tracebacks = [tb for site in result.sites("traceback") for tb in site.tracebacks]
    for tb in tracebacks:
        node = root
        node["size"] += tb.size
        for frame in tb.frames[:max_depth]:
            key = (frame.filename, frame.lineno)
            child = node["children"].get(key)
            if child is None:
                child = node["children"][key] = {"size": 0.0, "children": {}, "frame": frame}
            child["size"] += tb.size
            node = child
    total = root["size"]

    rects: list[tuple[int, float, float, Any]] = []  # depth, x, width, frame

    def walk(node: dict[str, Any], depth: int, x: float) -> None:
        for child in sorted(node["children"].values(), key=lambda c: -c["size"]):
            if total <= 0 or child["size"] / total < min_fraction:
                x += child["size"]
                continue
            rects.append((depth, x, child["size"], child["frame"]))
            walk(child, depth + 1, x)
            x += child["size"]

    walk(root, 1, 0.0)
    depth = max((r[0] for r in rects), default=0) + 1
    fig = _new_figure(width, 1.0 + 0.32 * depth)
    ax = fig.add_subplot()
    if total <= 0:
        ax.text(0.5, 0.5, "no allocation sampled", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    ax.barh([0], [total], left=[0], height=0.92, color="#dadce0", edgecolor="white", lw=0.5)
    ax.text(total / 2, 0, f"all: {fmt_size(total)}", ha="center", va="center", fontsize=8)
    for level, x, w, frame in rects:
        ax.barh([level], [w], left=[x], height=0.92, color=_color(frame), edgecolor="white",
                lw=0.5)
        chars = int(w / total * width * 11)  # roughly the characters that fit
        if chars >= 6:
            label = _clip(f"{_frame_label(frame)} {fmt_size(w)}", chars)
            ax.text(x + w / 2, level, _text(label), ha="center", va="center", fontsize=7,
                    clip_on=True)
    ax.set_ylim(depth - 0.5, -0.5)  # root on top, callees below
    ax.set_xlim(0, total)
    ax.set_yticks([])
    _size_axis(ax.xaxis, total)
    ax.set_xlabel("estimated bytes still alive (callers above callees)")
    ax.set_title(_text(title or "Where the memory alive was allocated"
                       + (f" ({result.label})" if result.label else "")),
                 fontsize=10, loc="left")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    return fig


def timeline(points: Sequence[TimelinePoint], *, width: float = 9.0,
             title: str | None = None) -> Figure:
    """Memory still alive after each cell of a session, and each cell's peak."""
    fig = _new_figure(width, 3.6)
    ax = fig.add_subplot()
    if not points:
        ax.text(0.5, 0.5, "no cell recorded yet", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    xs = list(range(len(points)))
    ax.fill_between(xs, [p.current for p in points], step="mid", alpha=0.25, color="#4285f4")
    ax.plot(xs, [p.current for p in points], drawstyle="steps-mid", color="#4285f4",
            label="alive after the cell")
    ax.plot(xs, [p.peak for p in points], "v", color="#ea4335", label="peak during the cell")
    ax.set_xticks(xs, [_text(p.label) for p in points], rotation=45 if len(xs) > 8 else 0,
                  fontsize=8)
    top = max(max(p.current, p.peak) for p in points) * 1.1 or 1.0
    ax.set_ylim(0, top)
    _size_axis(ax.yaxis, top)
    ax.set_ylabel("estimated bytes")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.set_title(_text(title or "Memory over the session"), fontsize=10, loc="left")
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def diff_bar(diff: DiffResult, *, group_by: str | None = None, top: int | None = None,
             width: float = 9.0) -> Figure:
    """Horizontal bars of the largest changes between two results (growth in red)."""
    rows = diff.diffs(group_by, top or diff.top)
    fig = _new_figure(width, 1.2 + 0.38 * max(1, len(rows)))
    ax = fig.add_subplot()
    if not rows:
        ax.text(0.5, 0.5, "no change", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    ys = list(range(len(rows)))[::-1]
    values = [r.size_diff for r in rows]
    colors = ["#ea4335" if v > 0 else "#34a853" for v in values]
    exact = diff.new.is_exact and diff.old.is_exact
    ax.barh(ys, values, color=colors,
            xerr=None if exact else [Z95 * r.std_error for r in rows],
            error_kw={"ecolor": "#333333", "capsize": 3, "lw": 1})
    labels = [_text(_clip(r.label + (": " + r.frame.source if r.frame.source else ""), 60))
              for r in rows]
    ax.set_yticks(ys, labels, fontsize=8)
    ax.axvline(0, color="#5f6368", lw=0.8)
    errs = [0.0 if exact else Z95 * r.std_error for r in rows]
    low = min(0.0, min(v - e for v, e in zip(values, errs, strict=True)))
    high = max(0.0, max(v + e for v, e in zip(values, errs, strict=True)))
    pad = 0.08 * (high - low or 1.0)
    ax.set_xlim(low - pad, high + pad)
    _size_axis(ax.xaxis, high + pad, low - pad)
    ax.set_xlabel("change in estimated bytes still alive")
    ax.set_title(_text(f"{diff.label}: {fmt_size(diff.size_diff, signed=True)}"), fontsize=10,
                 loc="left")
    ax.spines[["top", "right"]].set_visible(False)
    return fig
