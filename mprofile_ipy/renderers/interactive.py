"""A self-contained HTML memory report: a server-side table and flame graph, enhanced by script.

``render_report(data)`` turns one plain dict (the *report data*, schema below) into one HTML
string that needs nothing else: no kernel, no widget manager, no CDN, no IFrame, no file.
What it shows is rendered here, on the server side: the table of the default grouping with
its tracebacks in ``<details>``, the flame graph and the timeline as inline SVG. So the
report reads wherever HTML is shown (untrusted notebooks, GitHub, ``nbconvert``). The data
travels along in a ``<script type="application/json">`` block and a small inline script
(``assets/report.js``) enhances the report where scripts run: sort by any column, switch the
grouping, top-N, filter, click a row to unfold its tracebacks, hover and zoom the flame
graph, search it, hover the timeline. Several reports in one page do not clash: every
report finds its own root from its script; the only global is ``window.mprofileReport``.

Safety: every string is escaped in the HTML, and ``<``, ``>``, ``&`` (and U+2028/9) are
written as ``\\u003c``-style escapes inside the JSON, so ``</script><script>alert(1)`` in a
file name, a function name or a cell's text renders as text.

Colours come from JupyterLab's CSS variables (``--jp-ui-font-color0``, ``--jp-layout-color0``,
...) with fallbacks, so the report follows the light and dark themes.

Report data (``dict``; ``validate_report_data`` checks it and says what is wrong where)
----------------------------------------------------------------------------------------
Sizes are bytes (floats allowed: estimates), counts are allocations, ``error`` is a
*relative standard error* (0.1 = 10%; the report shows the ~95% interval, 1.96 x), shares
are fractions of ``total`` (0..1). Unknown keys are ignored.

- ``kind``: ``"profile"`` (live memory by site), ``"diff"`` (change between two snapshots)
  or ``"timeline"`` (memory across cells). Required.
- ``title``: str. Required.
- ``exact``: bool, default False: every allocation was traced (uncertainties read "exact").
- ``summary``: list of ``{"label": str, "value": number | None, "unit": "bytes" | "count" |
  "seconds" | "text", "text": str (for unit "text"), "error": relative error (optional)}``.
- ``notes``: list of str (warnings and hints, shown above the table).
- ``total``: bytes the shares refer to (default: the sum of the first grouping's rows).
- ``frames``: list of ``{"where": str, "name": str, "source": str}``: ``where`` is what the
  user reads (``"In [3], line 2"`` or ``"pandas/core/frame.py:120"``), ``name`` the
  function, ``source`` the stripped text of the line ('' if unknown).
- ``tracebacks``: list of ``{"frames": [index into frames, oldest first], "size": bytes,
  "samples": int, "size_diff": bytes (diff only, optional)}``.
- ``groupings``: ``{name: {"label": str (optional), "rows": [row, ...]}}``; the usual names
  are ``"line"``, ``"file"``, ``"function"``, ``"traceback"``; order is kept. Required for
  ``profile`` and ``diff`` (at least one grouping). A row is ``{"label": str, "detail": str
  (source line or path, optional), "size": bytes, "count": number, "samples": int,
  "error": relative error of size, "share": fraction (optional: size / total),
  "tracebacks": [index into tracebacks, heaviest first]}``; for ``diff`` also
  ``"size_diff"``, ``"count_diff"`` (required) and ``"diff_error"`` (standard error of
  ``size_diff`` in bytes, optional).
- ``default_grouping``: a key of ``groupings`` (default: the first); ``top``: rows shown
  (default 20; ``0`` means all).
- ``flame``: optional root node ``{"name": str, "where": str, "source": str, "size": bytes,
  "samples": int, "error": relative error, "children": [node, ...]}``; sizes are inclusive
  (a node's children sum to at most its size).
- ``timeline``: ``{"points": [{"label": str, "current": bytes, "peak": bytes | None,
  "error": relative error (optional), "text": str (optional)}]}``: required for
  ``timeline``, optional otherwise.
- ``retention``: optional list of what keeps sites alive (present only once asked:
  ``result.retainers()``, ``%%mprofile --why``), each ``{"searched": int (blocks
  searched), "elapsed": seconds, "when": str, "groups": [{"blocks": int, "size": bytes,
  "description": str, "status": str, "note": str, "chains": [{"root": str, "kind": str,
  "steps": [str], "target": str, "command": str | None, "also": [str]}]}]}``; a row
  refers to one with ``"retention": index`` (optional) and shows it when unfolded.

Bounds (so a huge profile cannot make a huge notebook): at most ``MAX_ROWS`` rows per
grouping, ``MAX_TRACEBACKS_PER_ROW`` tracebacks per row, ``MAX_TRACEBACKS`` tracebacks and
``MAX_FRAMES`` frames per traceback (the most recent kept), ``MAX_FLAME_NODES`` flame nodes
(the smallest dropped first), ``MAX_TIMELINE_POINTS`` timeline points, ``MAX_STORIES``
groups of blocks per site, ``MAX_CHAINS`` chains per group, ``MAX_STEPS`` steps per chain
and ``MAX_TEXT`` characters per string. Whatever is cut is said in a note of the report.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import math
from collections.abc import Iterable, Sequence
from html import escape
from importlib import resources
from typing import Any

from ..errors import MprofileError
from ..units import format_size
from . import fmt_time, plural

__all__ = [
    "MAX_FLAME_NODES",
    "MAX_FRAMES",
    "MAX_CHAINS",
    "MAX_ROWS",
    "MAX_STEPS",
    "MAX_STORIES",
    "MAX_TEXT",
    "MAX_TIMELINE_POINTS",
    "MAX_TRACEBACKS",
    "MAX_TRACEBACKS_PER_ROW",
    "ReportDataError",
    "ReportOutput",
    "data_from_snapshot",
    "json_for_script",
    "render_report",
    "validate_report_data",
]

#: Rows kept per grouping (the largest; by absolute change for diffs).
MAX_ROWS = 100
#: Tracebacks listed under one row.
MAX_TRACEBACKS_PER_ROW = 5
#: Tracebacks kept in all (the heaviest).
MAX_TRACEBACKS = 300
#: Frames kept per traceback (the most recent).
MAX_FRAMES = 24
#: Flame-graph nodes kept (the smallest are dropped first).
MAX_FLAME_NODES = 1500
#: Timeline points kept (evenly thinned beyond that).
MAX_TIMELINE_POINTS = 1000
#: Characters kept per string (file names, source lines).
MAX_TEXT = 300
#: Groups of blocks (with the same story) shown per site, chains per group, steps per chain.
MAX_STORIES = 10
MAX_CHAINS = 10
MAX_STEPS = 40
_NO_TARGET_KINDS = ("unreachable_cycle", "held_from_c")
#: The z-score of the ~95% intervals shown as ``±``.
Z95 = 1.96

KINDS = ("profile", "diff", "timeline")
UNITS = ("bytes", "count", "seconds", "text")
_GROUP_LABELS = {"line": "line", "file": "file", "function": "function",
                 "traceback": "traceback", "cell": "cell line"}
# Assumed width of the flame graph (px) and of one label character when laying out labels on
# the server; the script measures the real ones and lays the labels out again.
_FLAME_WIDTH_PX = 960
_CHAR_PX = 6.8
_FLAME_ROW_PX = 18
_MAX_FLAME_DEPTH = 64

_counter = itertools.count(1)


class ReportDataError(MprofileError, ValueError):
    """The report data does not follow the schema; the message says where and why."""


# ---------------------------------------------------------------------------------------------
# Validation


def _fail(path: str, message: str) -> ReportDataError:
    return ReportDataError(f"report data{path}: {message}")


def _text(value: Any, path: str, default: str | None = None) -> str:
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise _fail(path, f"expected a string, got {type(value).__name__} {value!r:.60}")
    return value if len(value) <= MAX_TEXT else value[: MAX_TEXT - 1] + "…"


def _number(value: Any, path: str, *, default: float | None = None, optional: bool = False,
            minimum: float | None = None) -> float | None:
    if value is None:
        if default is not None:
            return default
        if optional:
            return None
        raise _fail(path, "is required (a number)")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path, f"expected a number, got {type(value).__name__} {value!r:.60}")
    if not math.isfinite(value):
        raise _fail(path, f"expected a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise _fail(path, f"must be >= {minimum:g}, got {value!r}")
    return float(value)


def _int(value: Any, path: str, default: int | None = None) -> int:
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(path, f"expected a non-negative int, got {value!r:.60}")
    return value


def _list(value: Any, path: str, default: list | None = None) -> list:
    if value is None and default is not None:
        return default
    if not isinstance(value, (list, tuple)):
        raise _fail(path, f"expected a list, got {type(value).__name__}")
    return list(value)


def _dict(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise _fail(path, f"expected a dict, got {type(value).__name__} {value!r:.60}")
    return value


def _index(value: Any, path: str, length: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < length:
        raise _fail(path, f"expected an index below {length}, got {value!r:.60}")
    return value


def validate_report_data(data: Any) -> dict[str, Any]:
    """Check ``data`` against the schema (module doc) and return a normalised, bounded copy.

    Raises :class:`ReportDataError` (a ``ValueError``) naming the first bad field, e.g.
    ``report data['groupings']['line']['rows'][3]['size']: expected a number, got 'x'``.
    Large inputs are cut to the documented ``MAX_*`` bounds, with a note saying so.
    """
    data = _dict(data, "")
    kind = data.get("kind")
    if kind not in KINDS:
        raise _fail("['kind']", f"must be one of {', '.join(map(repr, KINDS))}, got {kind!r:.60}")
    out: dict[str, Any] = {"kind": kind, "title": _text(data.get("title"), "['title']")}
    out["exact"] = bool(data.get("exact", False))
    notes = [_text(n, f"['notes'][{i}]") for i, n in enumerate(_list(data.get("notes"),
                                                                      "['notes']", []))]
    out["summary"] = [_summary_item(item, f"['summary'][{i}]")
                      for i, item in enumerate(_list(data.get("summary"), "['summary']", []))]

    frames = [_frame(f, f"['frames'][{i}]")
              for i, f in enumerate(_list(data.get("frames"), "['frames']", []))]
    tracebacks = [_traceback(tb, f"['tracebacks'][{i}]", len(frames), kind == "diff")
                  for i, tb in enumerate(_list(data.get("tracebacks"), "['tracebacks']", []))]

    retention = [_retention(r, f"['retention'][{i}]")
                 for i, r in enumerate(_list(data.get("retention"), "['retention']", []))]

    groupings_in = data.get("groupings")
    if kind == "timeline" and groupings_in is None:
        groupings_in = {}
    groupings_in = _dict(groupings_in, "['groupings']")
    if kind != "timeline" and not groupings_in:
        raise _fail("['groupings']", f"a {kind} report needs at least one grouping")
    groupings: dict[str, Any] = {}
    for name, group in groupings_in.items():
        path = f"['groupings'][{name!r}]"
        if not isinstance(name, str) or not name:
            raise _fail(path, "grouping names must be non-empty strings")
        group = _dict(group, path)
        rows = [_row(r, f"{path}['rows'][{i}]", kind, len(tracebacks), len(retention))
                for i, r in enumerate(_list(group.get("rows"), f"{path}['rows']"))]
        label = _text(group.get("label"), f"{path}['label']", _GROUP_LABELS.get(name, name))
        if len(rows) > MAX_ROWS:
            key = (lambda r: abs(r["size_diff"])) if kind == "diff" else (lambda r: r["size"])
            rows = heapq.nlargest(MAX_ROWS, rows, key=key)
            notes.append(f"By {label}: showing the top {MAX_ROWS} of "
                         f"{len(group['rows']):,} rows.")
        groupings[name] = {"label": label, "rows": rows}
    default = data.get("default_grouping", next(iter(groupings), None))
    if groupings and default not in groupings:
        raise _fail("['default_grouping']", f"must be one of {list(groupings)}, got {default!r}")
    out["default_grouping"] = default
    out["top"] = _int(data.get("top"), "['top']", 20)

    first = next(iter(groupings.values()), None)
    total = _number(data.get("total"), "['total']", optional=True)
    if total is None:
        total = sum(r["size"] for r in first["rows"]) if first else 0.0
    out["total"] = total
    for group in groupings.values():
        for row in group["rows"]:
            if row["share"] is None:
                row["share"] = row["size"] / total if total > 0 else 0.0

    _bound_tracebacks(groupings, tracebacks, frames, notes)
    out["retention"] = _bound_retention(groupings, retention)
    out["groupings"], out["tracebacks"], out["frames"] = groupings, tracebacks, frames
    out["grouping_order"] = list(groupings)  # the JSON's keys are sorted

    out["flame"] = None
    if data.get("flame") is not None:
        out["flame"] = _flame(data["flame"], notes)
    timeline = data.get("timeline")
    if kind == "timeline" and timeline is None:
        raise _fail("['timeline']", "a timeline report needs {'points': [...]}")
    out["timeline"] = None if timeline is None else _timeline(timeline, notes)
    out["notes"] = notes
    return out


def _summary_item(item: Any, path: str) -> dict[str, Any]:
    item = _dict(item, path)
    unit = item.get("unit", "bytes")
    if unit not in UNITS:
        raise _fail(f"{path}['unit']", f"must be one of {', '.join(UNITS)}, got {unit!r:.40}")
    out = {"label": _text(item.get("label"), f"{path}['label']"), "unit": unit,
           "error": _number(item.get("error"), f"{path}['error']", optional=True, minimum=0)}
    if unit == "text":
        out["text"] = _text(item.get("text"), f"{path}['text']", "")
        out["value"] = None
    else:
        out["value"] = _number(item.get("value"), f"{path}['value']", optional=True)
    return out


def _frame(frame: Any, path: str) -> dict[str, str]:
    frame = _dict(frame, path)
    return {"where": _text(frame.get("where"), f"{path}['where']"),
            "name": _text(frame.get("name"), f"{path}['name']", ""),
            "source": _text(frame.get("source"), f"{path}['source']", "")}


def _traceback(tb: Any, path: str, nframes: int, diff: bool) -> dict[str, Any]:
    tb = _dict(tb, path)
    indices = [_index(f, f"{path}['frames'][{i}]", nframes)
               for i, f in enumerate(_list(tb.get("frames"), f"{path}['frames']"))]
    out: dict[str, Any] = {"size": _number(tb.get("size"), f"{path}['size']"),
                           "samples": _int(tb.get("samples"), f"{path}['samples']", 0),
                           "frames": indices[-MAX_FRAMES:],
                           "cut": max(0, len(indices) - MAX_FRAMES)}
    if diff:
        out["size_diff"] = _number(tb.get("size_diff"), f"{path}['size_diff']", optional=True)
    return out


def _row(row: Any, path: str, kind: str, ntracebacks: int, nretention: int = 0
         ) -> dict[str, Any]:
    row = _dict(row, path)
    out: dict[str, Any] = {
        "label": _text(row.get("label"), f"{path}['label']"),
        "detail": _text(row.get("detail"), f"{path}['detail']", ""),
        "size": _number(row.get("size"), f"{path}['size']"),
        "count": _number(row.get("count"), f"{path}['count']", default=0.0),
        "samples": _int(row.get("samples"), f"{path}['samples']", 0),
        "error": _number(row.get("error"), f"{path}['error']", default=0.0, minimum=0),
        "share": _number(row.get("share"), f"{path}['share']", optional=True),
        "tracebacks": [_index(t, f"{path}['tracebacks'][{i}]", ntracebacks)
                       for i, t in enumerate(_list(row.get("tracebacks"),
                                                   f"{path}['tracebacks']", []))],
    }
    why = row.get("retention")
    out["retention"] = (None if why is None
                        else _index(why, f"{path}['retention']", nretention))
    if kind == "diff":
        out["size_diff"] = _number(row.get("size_diff"), f"{path}['size_diff']")
        out["count_diff"] = _number(row.get("count_diff"), f"{path}['count_diff']",
                                    default=0.0)
        out["diff_error"] = _number(row.get("diff_error"), f"{path}['diff_error']",
                                    default=0.0, minimum=0)
    return out


def _retention(item: Any, path: str) -> dict[str, Any]:
    """One site's retention (schema in the module doc), cut to the MAX_* bounds."""
    item = _dict(item, path)
    groups_in = _list(item.get("groups"), f"{path}['groups']")
    groups = []
    for i, group in enumerate(groups_in[:MAX_STORIES]):
        gpath = f"{path}['groups'][{i}]"
        group = _dict(group, gpath)
        chains = []
        for j, chain in enumerate(_list(group.get("chains"), f"{gpath}['chains']",
                                        [])[:MAX_CHAINS]):
            cpath = f"{gpath}['chains'][{j}]"
            chain = _dict(chain, cpath)
            steps = [_text(step, f"{cpath}['steps'][{k}]")
                     for k, step in enumerate(_list(chain.get("steps"), f"{cpath}['steps']",
                                                    []))]
            if len(steps) > MAX_STEPS:
                half = MAX_STEPS // 2
                steps = steps[:half] + [f"… {len(steps) - 2 * half} steps …"] + steps[-half:]
            command = chain.get("command")
            chains.append({
                "root": _text(chain.get("root"), f"{cpath}['root']"),
                "kind": _text(chain.get("kind"), f"{cpath}['kind']", ""),
                "steps": steps,
                "target": _text(chain.get("target"), f"{cpath}['target']", ""),
                "command": None if command is None else _text(command,
                                                               f"{cpath}['command']"),
                "also": [_text(a, f"{cpath}['also'][{k}]") for k, a in
                         enumerate(_list(chain.get("also"), f"{cpath}['also']", []))][:8],
            })
        groups.append({
            "blocks": _int(group.get("blocks"), f"{gpath}['blocks']", 1),
            "size": _number(group.get("size"), f"{gpath}['size']", minimum=0),
            "description": _text(group.get("description"), f"{gpath}['description']", ""),
            "status": _text(group.get("status"), f"{gpath}['status']", ""),
            "note": _text(group.get("note"), f"{gpath}['note']", ""),
            "chains": chains,
        })
    return {"groups": groups, "more": max(0, len(groups_in) - MAX_STORIES),
            "searched": _int(item.get("searched"), f"{path}['searched']",
                             sum(g["blocks"] for g in groups)),
            "elapsed": _number(item.get("elapsed"), f"{path}['elapsed']", default=0.0,
                               minimum=0),
            "when": _text(item.get("when"), f"{path}['when']", "")}


def _bound_retention(groupings: dict, retention: list) -> list:
    """Keep the retention entries that kept rows still refer to; renumber them."""
    used = sorted({row["retention"] for group in groupings.values() for row in group["rows"]
                   if row["retention"] is not None})
    new = {old: index for index, old in enumerate(used)}
    for group in groupings.values():
        for row in group["rows"]:
            if row["retention"] is not None:
                row["retention"] = new[row["retention"]]
    return [retention[i] for i in used]


def _bound_tracebacks(groupings: dict, tracebacks: list, frames: list, notes: list) -> None:
    """Keep the tracebacks rows still list (at most MAX_TRACEBACKS_PER_ROW per row, at most
    MAX_TRACEBACKS in all, the heaviest) and the frames they use; renumber both in place."""
    wanted: set[int] = set()
    for group in groupings.values():
        for row in group["rows"]:
            row["more"] = max(0, len(row["tracebacks"]) - MAX_TRACEBACKS_PER_ROW)
            row["tracebacks"] = row["tracebacks"][:MAX_TRACEBACKS_PER_ROW]
            wanted.update(row["tracebacks"])
    keep = sorted(wanted)
    if len(keep) > MAX_TRACEBACKS:
        keep = sorted(heapq.nlargest(MAX_TRACEBACKS, keep,
                                     key=lambda i: (abs(tracebacks[i]["size"]), -i)))
        notes.append(f"Tracebacks: keeping the {MAX_TRACEBACKS} heaviest of {len(wanted):,}.")
    new_tb = {old: new for new, old in enumerate(keep)}
    for group in groupings.values():
        for row in group["rows"]:
            listed = [new_tb[t] for t in row["tracebacks"] if t in new_tb]
            row["more"] += len(row["tracebacks"]) - len(listed)
            row["tracebacks"] = listed
    kept_tb = [tracebacks[i] for i in keep]
    used = sorted({f for tb in kept_tb for f in tb["frames"]})
    new_frame = {old: new for new, old in enumerate(used)}
    for tb in kept_tb:
        tb["frames"] = [new_frame[f] for f in tb["frames"]]
    kept_frames = [frames[i] for i in used]
    tracebacks[:] = kept_tb
    frames[:] = kept_frames


def _flame(root: Any, notes: list) -> dict[str, Any]:
    """Validate the flame tree (iteratively: deep trees must not hit the recursion limit)
    and keep its ``MAX_FLAME_NODES`` largest nodes (a child is never larger than its parent,
    so keeping the largest keeps a connected tree)."""
    stack = [(root, "['flame']", None, 0)]
    built: list[tuple[float, int, dict, dict | None]] = []
    while stack:
        node, path, parent, depth = stack.pop()
        node = _dict(node, path)
        out = {"name": _text(node.get("name"), f"{path}['name']"),
               "where": _text(node.get("where"), f"{path}['where']", ""),
               "source": _text(node.get("source"), f"{path}['source']", ""),
               "size": _number(node.get("size"), f"{path}['size']", minimum=0),
               "samples": _int(node.get("samples"), f"{path}['samples']", 0),
               "error": _number(node.get("error"), f"{path}['error']", default=0.0, minimum=0),
               "children": []}
        built.append((out["size"], len(built), out, parent))
        children = _list(node.get("children"), f"{path}['children']", [])
        if depth >= _MAX_FLAME_DEPTH:
            children = []
        for i in range(len(children) - 1, -1, -1):
            stack.append((children[i], f"{path}['children'][{i}]", out, depth + 1))
    keep = built
    if len(built) > MAX_FLAME_NODES:
        keep = [built[0]] + heapq.nlargest(MAX_FLAME_NODES - 1, built[1:],
                                           key=lambda b: (b[0], -b[1]))
        keep.sort(key=lambda b: b[1])
        notes.append(f"Flame graph: showing the {MAX_FLAME_NODES} largest of "
                     f"{len(built):,} nodes.")
    kept_ids = {id(b[2]) for b in keep}
    for _size, _order, out, parent in keep:
        if parent is not None and id(parent) in kept_ids:
            parent["children"].append(out)
    return keep[0][2]


def _timeline(timeline: Any, notes: list) -> dict[str, Any]:
    timeline = _dict(timeline, "['timeline']")
    raw = _list(timeline.get("points"), "['timeline']['points']")
    points = []
    for i, p in enumerate(raw):
        path = f"['timeline']['points'][{i}]"
        p = _dict(p, path)
        points.append({"label": _text(p.get("label"), f"{path}['label']"),
                       "current": _number(p.get("current"), f"{path}['current']"),
                       "peak": _number(p.get("peak"), f"{path}['peak']", optional=True),
                       "error": _number(p.get("error"), f"{path}['error']", default=0.0,
                                        minimum=0),
                       "text": _text(p.get("text"), f"{path}['text']", "")})
    if len(points) > MAX_TIMELINE_POINTS:
        step = len(points) / MAX_TIMELINE_POINTS
        kept = [points[int(i * step)] for i in range(MAX_TIMELINE_POINTS - 1)] + [points[-1]]
        notes.append(f"Timeline: showing {MAX_TIMELINE_POINTS} of {len(points):,} points.")
        points = kept
    return {"points": points}


# ---------------------------------------------------------------------------------------------
# Formatting (the script has the same functions, so a re-rendered table reads the same)


def _size(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return format_size(round(value), sign=signed)


def _count(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    n = int(round(value))
    return f"{n:+,}" if signed and n else f"{n:,}"


def _pm(error: float, exact: bool) -> str:
    """The ~95% interval of a relative standard error: ``±12%``."""
    if exact:
        return "exact"
    half = Z95 * error
    if half < 0.005:
        return "±0%"
    if half >= 10:
        return "±>999%"
    return f"±{half * 100:.0f}%"


def _share(value: float) -> str:
    return f"{value * 100:.1f}%"


def _summary_value(item: dict[str, Any], exact: bool) -> str:
    unit, value = item["unit"], item["value"]
    if unit == "text":
        text = item["text"]
    elif unit == "bytes":
        text = _size(value)
    elif unit == "count":
        text = _count(value)
    else:
        text = fmt_time(value)
    if item["error"] is not None and unit != "text" and not exact and value:
        text += f" {_pm(item['error'], False)}"
    return text


def json_for_script(value: Any) -> str:
    """``value`` as JSON that is safe inside a ``<script>`` element of an HTML page.

    ``<``, ``>`` and ``&`` become ``\\u003c``, ``\\u003e``, ``\\u0026`` (so no string can end
    the element or open a comment), non-ASCII is escaped too, keys are sorted (deterministic).
    """
    text = json.dumps(value, ensure_ascii=True, sort_keys=True, separators=(",", ":"),
                      allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _asset(name: str) -> str:
    """The text of ``assets/<name>``, checked so that it cannot end its element early."""
    text = resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")
    lowered = text.lower()
    for bad in ("</script", "<script", "<!--", "</style"):
        if bad in lowered:  # pragma: no cover - a broken asset, caught by the tests
            raise RuntimeError(f"assets/{name} contains {bad!r}, which would break the page")
    return text


# ---------------------------------------------------------------------------------------------
# HTML


def _columns(kind: str) -> list[tuple[str, str]]:
    """(key, header) of the table's columns; the script uses the same keys to sort."""
    if kind == "diff":
        return [("label", "site"), ("size_diff", "change"), ("diff_error", "±"),
                ("size", "now"), ("count_diff", "count change"), ("samples", "samples")]
    return [("label", "site"), ("size", "size"), ("error", "±"), ("share", "share"),
            ("count", "count"), ("samples", "samples")]


def _bar(fraction: float, css: str) -> str:
    width = max(1, min(100, int(round(100 * fraction))))
    return f"<span class='mpr-bar {css}' style='width:{width}px'></span>"


def _cells(row: dict[str, Any], kind: str, exact: bool, scale: float) -> list[str]:
    if kind == "diff":
        grew = row["size_diff"] >= 0
        err = row["diff_error"]
        return [
            _bar(abs(row["size_diff"]) / scale if scale else 0,
                 "mpr-grow" if grew else "mpr-shrink") + escape(_size(row["size_diff"], True)),
            "exact" if exact else ("±" + escape(_size(Z95 * err)) if err else "±0 B"),
            escape(_size(row["size"])),
            escape(_count(row["count_diff"], True)),
            escape(_count(row["samples"])),
        ]
    return [
        _bar(row["size"] / scale if scale else 0, "mpr-size") + escape(_size(row["size"])),
        escape(_pm(row["error"], exact)),
        escape(_share(row["share"])),
        escape(_count(row["count"])),
        escape(_count(row["samples"])),
    ]


def _frame_html(frame: dict[str, str]) -> str:
    name = (f" <span class='mpr-fn'>{escape(frame['name'])}</span>"
            if frame["name"] and frame["name"] != "<module>" else "")
    source = (f"<div class='mpr-src'>{escape(frame['source'])}</div>"
              if frame["source"] else "")
    return f"<div class='mpr-frame'><span class='mpr-where'>{escape(frame['where'])}</span>" \
           f"{name}{source}</div>"


def _tracebacks_html(row: dict[str, Any], data: dict[str, Any]) -> str:
    parts = []
    for index in row["tracebacks"]:
        tb = data["tracebacks"][index]
        head = f"{_size(tb['size'])} · {plural(tb['samples'], 'sample')} · oldest frame first"
        if tb.get("size_diff") is not None:
            head = f"{_size(tb['size_diff'], True)} · " + head
        cut = (f"<div class='mpr-muted'>… {tb['cut']} older frames</div>"
               if tb["cut"] else "")
        frames = "".join(_frame_html(data["frames"][f]) for f in tb["frames"])
        parts.append(f"<div class='mpr-tb'><div class='mpr-muted'>{escape(head)}</div>"
                     f"{cut}{frames}</div>")
    if row["more"]:
        parts.append(f"<div class='mpr-muted'>… {row['more']} more tracebacks</div>")
    return "".join(parts)


def chain_text(chain: dict[str, Any]) -> str:
    """``Out[12] -> [3] -> DataFrame``: a chain of the report data as one line (a chain
    with no step from a cycle or from C is its root alone). The script does the same."""
    parts = [chain["root"], *chain["steps"]]
    if chain["steps"] or chain["kind"] not in _NO_TARGET_KINDS:
        parts.append(chain["target"])
    return " -> ".join(p for p in parts if p)


def _retention_html(why: dict[str, Any]) -> str:
    """What keeps a site alive: per group of blocks, what they are, the chains (chain k+1
    holds them once chain k's command has run) and the commands that free them."""
    head = (f"{plural(why['searched'], 'sampled block')} searched in "
            f"{fmt_time(why['elapsed'])}" + (f"; {why['when']}" if why["when"] else ""))
    parts = [f"<div class='mpr-why'><div class='mpr-why-head'><b>Why still alive</b> "
             f"<span class='mpr-muted'>{escape(head)}</span></div>"]
    for group in why["groups"]:
        parts.append(f"<div class='mpr-story'><div>{escape(plural(group['blocks'], 'block'))}"
                     f", {escape(_size(group['size']))}: {escape(group['description'])}</div>")
        items = []
        for chain in group["chains"]:
            also = (f" <span class='mpr-muted'>(also named {escape(', '.join(chain['also']))})"
                    "</span>" if chain["also"] else "")
            free = (f"<div class='mpr-free'>free it with <code class='mpr-cmd'>"
                    f"{escape(chain['command'])}</code></div>" if chain["command"] else "")
            items.append(f"<li><code class='mpr-chain'>{escape(chain_text(chain))}</code>"
                         f"{also}{free}</li>")
        if items:
            parts.append(f"<ol class='mpr-chains'>{''.join(items)}</ol>")
        commands = list(dict.fromkeys(c["command"] for c in group["chains"] if c["command"]))
        if len(commands) > 1:
            parts.append(f"<div class='mpr-free'>to free it, run all of: <code "
                         f"class='mpr-cmd'>{escape('; '.join(commands))}</code></div>")
        if group["note"]:
            parts.append(f"<div class='mpr-muted'>{escape(group['note'])}</div>")
        parts.append("</div>")
    if why["more"]:
        parts.append(f"<div class='mpr-muted'>… {why['more']} more kinds of blocks</div>")
    if not why["groups"]:
        parts.append("<div class='mpr-muted'>no sampled block of this site is alive</div>")
    parts.append("</div>")
    return "".join(parts)


def _label_html(row: dict[str, Any], data: dict[str, Any]) -> str:
    label = escape(row["label"])
    if row["detail"]:
        label += f" <code class='mpr-detail'>{escape(row['detail'])}</code>"
    why = row["retention"]
    if not row["tracebacks"] and why is None:
        return f"<span class='mpr-label'>{label}</span>"
    retention = _retention_html(data["retention"][why]) if why is not None else ""
    return (f"<details class='mpr-tbs'><summary class='mpr-label'>{label}</summary>"
            f"{_tracebacks_html(row, data)}{retention}</details>")


def _table_html(data: dict[str, Any]) -> str:
    kind, exact = data["kind"], data["exact"]
    group = data["groupings"][data["default_grouping"]]
    key = (lambda r: abs(r["size_diff"])) if kind == "diff" else (lambda r: r["size"])
    rows = sorted(group["rows"], key=key, reverse=True)
    shown = rows[: data["top"]] if data["top"] else rows
    scale = max((key(r) for r in rows), default=0.0)
    columns = _columns(kind)
    sort_key = "size_diff" if kind == "diff" else "size"
    head = "".join(
        f"<th data-key='{k}' class='{'mpr-text' if k == 'label' else 'mpr-num'}'"
        f"{' aria-sort=descending' if k == sort_key else ''}>{escape(h)}</th>"
        for k, h in columns)
    body = []
    for row in shown:
        index = group["rows"].index(row)
        cells = "".join(f"<td class='mpr-num'>{c}</td>" for c in _cells(row, kind, exact, scale))
        body.append(f"<tr class='mpr-row' data-row='{index}'>"
                    f"<td class='mpr-text'>{_label_html(row, data)}</td>{cells}</tr>")
    caption = (f"by {escape(group['label'])}, top {len(shown)} of {len(rows)}"
               if len(shown) < len(rows) else f"by {escape(group['label'])}, {len(rows)} rows")
    if not rows:
        body.append(f"<tr><td colspan='{len(columns)}' class='mpr-muted'>no allocations "
                    "in this profile</td></tr>")
    return (f"<div class='mpr-caption mpr-muted'>{caption}</div>"
            f"<div class='mpr-scroll'><table class='mpr-table'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _deferred(markup: str, fallback: str) -> str:
    """``fallback`` HTML now, and ``markup`` (SVG) for the script to put in its place.

    The SVG travels as the text of a ``<script type='text/x-mprofile-svg'>``: sanitizers
    (untrusted notebooks) drop a script's text entirely, where they would strip the SVG
    elements and leave their text run together. Every string in ``markup`` is escaped, so
    it cannot end the element (checked).
    """
    lowered = markup.lower()
    if "</script" in lowered or "<script" in lowered or "<!--" in lowered:
        raise AssertionError("escaped SVG markup cannot contain script tags")  # pragma: no cover
    return (f"<div class='mpr-slot'>{fallback}</div>"
            f"<script type='text/x-mprofile-svg' class='mpr-deferred'>{markup}</script>")


def _fit(label: str, width_px: float) -> str:
    """The label if it fits ``width_px``, else as much as fits with an ellipsis, or ''."""
    room = int((width_px - 6) / _CHAR_PX)
    if room >= len(label):
        return label
    return label[: room - 1] + "…" if room >= 4 else ""


def _flame_label(node: dict[str, Any]) -> str:
    return f"{node['name']} ({node['where']})" if node["where"] else node["name"]


def _flame_html(data: dict[str, Any]) -> str:
    """The flame graph (root on top) as inline SVG in percent units; ``data-*`` hold each
    box's extent for zooming and its node (pre-order index) for the script's tooltip."""
    root = data["flame"]
    order: dict[int, int] = {}  # id(node) -> pre-order index over the whole tree
    walk = [root]
    while walk:
        node = walk.pop()
        order[id(node)] = len(order)
        walk.extend(reversed(node["children"]))
    boxes: list[str] = []
    depth_max = 0
    stack = [(root, 0.0, 1.0, 0)]
    while stack:
        node, x0, x1, depth = stack.pop()
        depth_max = max(depth_max, depth)
        label = _fit(_flame_label(node), (x1 - x0) * _FLAME_WIDTH_PX)
        hue = (sum(map(ord, node["name"])) * 37) % 60 if depth else 210
        y = depth * _FLAME_ROW_PX
        boxes.append(
            f"<g class='mpr-node' data-i='{order[id(node)]}' data-x0='{x0:.6f}' "
            f"data-x1='{x1:.6f}' data-depth='{depth}'>"
            f"<rect x='{x0 * 100:.4f}%' y='{y}' width='{(x1 - x0) * 100:.4f}%' "
            f"height='{_FLAME_ROW_PX - 1}' style='fill:hsl({hue},85%,{70 if depth else 80}%)'/>"
            f"<text x='{x0 * 100:.4f}%' dx='4' y='{y + 13}'>{escape(label)}</text></g>")
        # Children left to right, in the given order (largest first from the adapter);
        # pushed in reverse so they pop in order. Children larger than their parent in sum
        # are scaled down to fit.
        whole = max(node["size"], sum(c["size"] for c in node["children"]))
        span = (x1 - x0) / whole if whole else 0.0
        spans, left = [], x0
        for child in node["children"]:
            right = left + child["size"] * span
            spans.append((child, left, right))
            left = right
        for child, left, right in reversed(spans):
            if right - left > 1e-9:
                stack.append((child, left, right, depth + 1))
    height = (depth_max + 1) * _FLAME_ROW_PX
    svg = (f"<svg class='mpr-flame-svg' width='100%' height='{height}' "
           f"style='height:{height}px' role='img' aria-label='flame graph'>"
           f"{''.join(boxes)}</svg>")
    return ("<div class='mpr-flame'>"
            "<div class='mpr-flame-bar'><b>Flame graph</b> <span class='mpr-muted'>"
            "width = memory still alive; root on top; hover for details, click to zoom"
            "</span></div>"
            + _deferred(svg, "<span class='mpr-muted'>(shown where scripts run: a trusted "
                             "notebook, nbconvert's HTML)</span>")
            + "</div>")


def _timeline_html(data: dict[str, Any]) -> str:
    """Memory across cells as an inline SVG line chart; a <title> per point (tooltip)."""
    points = data["timeline"]["points"]
    if not points:
        return "<div class='mpr-timeline mpr-muted'>no timeline points yet</div>"
    width, height, pad_l, pad_b, pad_t = 760, 180, 70, 34, 10
    pad_r = 28
    top = max([p["current"] for p in points] + [p["peak"] or 0 for p in points]) or 1.0
    n = len(points)

    def xy(i: int, value: float) -> tuple[float, float]:
        x = pad_l + (width - pad_l - pad_r) * (i / (n - 1) if n > 1 else 0.5)
        y = pad_t + (height - pad_t - pad_b) * (1 - value / top)
        return x, y

    line = " ".join("{:.1f},{:.1f}".format(*xy(i, p["current"])) for i, p in enumerate(points))
    peaks = [(i, p) for i, p in enumerate(points) if p["peak"] is not None]
    peak_line = " ".join("{:.1f},{:.1f}".format(*xy(i, p["peak"])) for i, p in peaks)
    marks = []
    step = max(1, n // 12)
    for i, p in enumerate(points):
        x, y = xy(i, p["current"])
        marks.append(f"<circle class='mpr-point' data-i='{i}' cx='{x:.1f}' cy='{y:.1f}' r='4'/>")
        if i % step == 0 or i == n - 1:
            marks.append(f"<text class='mpr-axis' x='{x:.1f}' y='{height - pad_b + 16}' "
                         f"text-anchor='middle'>{escape(p['label'])}</text>")
    axis = "".join(
        f"<text class='mpr-axis' x='{pad_l - 6}' y='{xy(0, top * f)[1] + 4:.1f}' "
        f"text-anchor='end'>{escape(_size(top * f))}</text>"
        f"<line class='mpr-grid' x1='{pad_l}' x2='{width - pad_r}' "
        f"y1='{xy(0, top * f)[1]:.1f}' y2='{xy(0, top * f)[1]:.1f}'/>" for f in (0, 0.5, 1))
    peak_svg = (f"<polyline class='mpr-peak' points='{peak_line}'/>" if len(peaks) > 1 else "")
    legend = ("still alive after each cell (line), peak during it (dashed); hover a point"
              if len(peaks) > 1 else "still alive after each cell; hover a point")
    svg = (f"<svg class='mpr-timeline-svg' viewBox='0 0 {width} {height}' width='100%' "
           f"style='max-width:{width}px' role='img' aria-label='memory timeline'>{axis}"
           f"{peak_svg}<polyline class='mpr-line' points='{line}'/>{''.join(marks)}</svg>")
    rows = "".join(
        f"<tr><td class='mpr-text'>{escape(p['label'])}</td>"
        f"<td class='mpr-num'>{escape(_size(p['current']))}</td>"
        f"<td class='mpr-num'>{escape(_pm(p['error'], data['exact']))}</td>"
        f"<td class='mpr-num'>{escape(_size(p['peak']))}</td>"
        f"<td class='mpr-text'>{escape(p['text'])}</td></tr>" for p in points)
    table = ("<table class='mpr-table'><thead><tr><th class='mpr-text'>cell</th>"
             "<th class='mpr-num'>still alive</th><th class='mpr-num'>±</th>"
             "<th class='mpr-num'>peak</th><th class='mpr-text'></th></tr></thead>"
             f"<tbody>{rows}</tbody></table>")
    return ("<div class='mpr-timeline'><b>Memory across cells</b> <span class='mpr-muted'>"
            f"{legend}</span>{_deferred(svg, table)}</div>")


def render_report(data: dict[str, Any], *, uid: str | None = None,
                  replaces_widget: bool = False) -> str:
    """The self-contained HTML report of ``data`` (schema in the module doc).

    The output is a pure function of its arguments; ``uid`` (default: a hash of the data and
    a per-process counter) names the report's root element so that several reports in one
    page have distinct ids. ``replaces_widget=True`` marks a report that shows the current
    view of a widget displayed in the same cell (see :class:`ReportOutput`): where scripts
    run, it hides that widget's "Error displaying widget" once the widget's kernel is gone.
    Raises :class:`ReportDataError` on bad data.
    """
    data = validate_report_data(data)
    payload = json_for_script(data)
    if uid is None:
        digest = hashlib.sha256(payload.encode()).hexdigest()[:10]
        uid = f"mpr-{digest}-{next(_counter)}"
    elif not uid.replace("-", "").replace("_", "").isalnum():
        raise ReportDataError(f"uid must be letters, digits, '-' or '_', got {uid!r:.60}")
    replaces = " data-mpr-replaces='widget'" if replaces_widget else ""
    parts = [f"<div class='mprofile-ir' id='{uid}' data-kind='{data['kind']}'{replaces}>",
             f"<style>{_asset('report.css')}</style>",
             "<div class='mpr-head'>",
             f"<span class='mpr-title'>{escape(data['title'])}</span>"]
    for item in data["summary"]:  # the separators show only where the style sheet does not
        parts.append(f"<span class='mpr-sep'>; </span>"
                     f"<span class='mpr-fig'><span class='mpr-muted'>{escape(item['label'])}"
                     f"</span> {escape(_summary_value(item, data['exact']))}</span>")
    parts.append("</div>")
    parts.extend(f"<div class='mpr-note'>{escape(note)}</div>" for note in data["notes"])
    if data["timeline"] is not None:
        parts.append(_timeline_html(data))
    if data["groupings"]:
        parts.append(f"<div class='mpr-tablebox'>{_table_html(data)}</div>")
    if data["flame"] is not None and data["flame"]["size"] > 0:
        parts.append(_flame_html(data))
    parts.append(f"<div class='mpr-tip' hidden></div>"
                 f"<script type='application/json' class='mpr-data'>{payload}</script>"
                 f"<script>{_asset('report.js')}\n"
                 "window.mprofileReport.init(document.currentScript);</script></div>")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# A report as a live view of a widget


class ReportOutput:
    """One ``text/html`` output holding a report, updated in place: the view of an explorer.

    Why: a widget output saved without widget state shows "Error displaying widget: model not
    found" once its kernel is gone (ipywidgets, ``python/jupyterlab_widgets/src/renderer.ts``,
    ``renderModel``: ``get_model`` fails and ``manager.restoredStatus`` is true), and
    JupyterLab never falls back to the ``text/html`` of the same bundle: the widget renderer
    is registered for trusted outputs with rank -10, ahead of HTML (``src/plugin.ts``,
    ``rendermime.addFactory({safe: false, ...}, -10)``). So an explorer shows its
    *controls* as a widget and its *view* through this output: ``display()`` once, after the
    controls, then ``update(data)`` on every change. The notebook then always holds the
    current view as a self-contained report (sortable and filterable without a kernel; it
    shows in nbconvert's HTML and on GitHub), and, where scripts run, that report hides the
    controls' error after a reload and says how to get them back.
    """

    def __init__(self, data: dict[str, Any]) -> None:
        validate_report_data(data)  # bad data fails here, not at display time
        self._data = data
        self._handle: Any = None

    def _bundle(self) -> dict[str, str]:
        return {"text/html": render_report(self._data, replaces_widget=True),
                "text/plain": f"<mprofile report: {self._data['title']}>"}

    def display(self) -> None:
        """Show the report as a new output of the running cell (once)."""
        from IPython.display import display

        if self._handle is not None:
            raise RuntimeError("this report is already displayed; use update()")
        self._handle = display(self._bundle(), raw=True, display_id=True)

    def update(self, data: dict[str, Any]) -> None:
        """Replace the shown report (wherever it is in the notebook) by the report of
        ``data``; raises :class:`ReportDataError` and keeps the old one on bad data."""
        validate_report_data(data)
        self._data = data
        if self._handle is not None:
            self._handle.update(self._bundle(), raw=True)

    @property
    def data(self) -> dict[str, Any]:
        """The data of the report shown now."""
        return self._data


# ---------------------------------------------------------------------------------------------
# A small adapter from a Snapshot (to be replaced by the report layer, issue 8)


def _where(location: Any) -> str:
    if location.is_cell:
        return f"{location.file}, line {location.line}"
    return f"{location.file}:{location.line}"


def data_from_snapshot(
    snapshot: Any,
    *,
    title: str,
    old: Any | None = None,
    attributor: Any | None = None,
    top: int = 20,
    notes: Sequence[str] = (),
    timeline: Iterable[dict[str, Any]] | None = None,
    hide_internal: bool = True,
) -> dict[str, Any]:
    """Report data for ``snapshot`` (or its change from ``old``) from public model APIs only.

    Uses ``Snapshot.statistics``/``compare_to`` (``size_estimate``, ``samples``,
    ``relative_error``) and ``attribution.Attributor`` for cell labels and source text.
    Frames of the machinery around the user's code (IPython, the profiler) are left out of
    tracebacks and the flame graph; with ``hide_internal`` the allocations made *only* by
    that machinery are left out too (a note says how much). ``timeline`` adds timeline
    points (schema in the module doc). A stop-gap: the report layer of issue 8 will build
    this dict.
    """
    from ..attribution import Attributor
    from ..model import Snapshot

    if not isinstance(snapshot, Snapshot):
        raise TypeError(f"snapshot must be an mprofile_ipy Snapshot, not "
                        f"{type(snapshot).__name__}")
    attributor = attributor or Attributor()
    frames: list[dict[str, str]] = []
    frame_ids: dict[tuple, int] = {}

    def frame_index(frame: Any) -> int:
        key = (frame.filename, frame.lineno, frame.name)
        if key not in frame_ids:
            loc = attributor.locate(frame.filename, frame.lineno)
            frame_ids[key] = len(frames)
            frames.append({"where": _where(loc), "name": frame.name or "", "source": loc.source})
        return frame_ids[key]

    def shown(tb: Any) -> list[Any]:
        """The frames worth showing: internal ones dropped, the innermost always kept."""
        kept = [f for f in tb if not attributor.locate(f.filename, f.lineno).internal]
        return kept or list(tb)[-1:]

    exact = snapshot.is_exact
    diff = old is not None
    if diff:
        stats = snapshot.compare_to(old, "traceback")
        old_err = {s.traceback: (s.size_estimate, s.relative_error)
                   for s in old.statistics("traceback")}
    else:
        stats = snapshot.statistics("traceback")
    notes = list(notes)
    if hide_internal:
        def internal(stat: Any) -> bool:
            return len(stat.traceback) > 0 and all(
                attributor.locate(f.filename, f.lineno).internal for f in stat.traceback)

        hidden = [s for s in stats if internal(s)]
        if hidden and len(hidden) < len(stats):
            stats = [s for s in stats if not internal(s)]
            notes.append(f"Not shown: {format_size(sum(s.size_estimate for s in hidden))} "
                         f"allocated by IPython and the profiler themselves "
                         f"({len(hidden)} tracebacks).")
    tracebacks: list[dict[str, Any]] = []
    records = []  # (stat, innermost frame, traceback index, variance)
    for i, stat in enumerate(stats):
        tb = {"frames": [frame_index(f) for f in shown(stat.traceback)],
              "size": stat.size_estimate, "samples": stat.samples}
        variance = (stat.relative_error * stat.size_estimate) ** 2
        if diff:
            tb["size_diff"] = stat.size_diff_estimate
            old_size, old_rel = old_err.get(stat.traceback, (0.0, 0.0))
            variance += (old_rel * old_size) ** 2
        tracebacks.append(tb)
        records.append((stat, stat.traceback[-1] if len(stat.traceback) else None, i, variance))

    def row(label: str, detail: str, members: list) -> dict[str, Any]:
        size = sum(m[0].size_estimate for m in members)
        var = sum(m[3] for m in members)
        out = {"label": label, "detail": detail, "size": size,
               "count": sum(m[0].count_estimate for m in members),
               "samples": sum(m[0].samples for m in members),
               "tracebacks": [m[2] for m in members]}
        if diff:
            out["size_diff"] = sum(m[0].size_diff_estimate for m in members)
            out["count_diff"] = sum(m[0].count_diff_estimate for m in members)
            out["diff_error"] = math.sqrt(var)
            new_var = sum((m[0].relative_error * m[0].size_estimate) ** 2 for m in members)
            out["error"] = math.sqrt(new_var) / size if size > 0 else 0.0
        else:
            out["error"] = math.sqrt(var) / size if size > 0 else 0.0
        return out

    def grouped(key) -> list[dict[str, Any]]:
        groups: dict[Any, list] = {}
        for record in records:
            groups.setdefault(key(record), []).append(record)
        return [row(*label, members) for label, members in groups.items()]

    def line_key(r: tuple) -> tuple[str, str]:
        if r[1] is None:
            return ("<no frames>", "")
        loc = attributor.locate(r[1].filename, r[1].lineno)
        return (_where(loc), loc.source)

    def file_key(r: tuple) -> tuple[str, str]:
        if r[1] is None:
            return ("<no frames>", "")
        loc = attributor.locate(r[1].filename, r[1].lineno)
        return (loc.file, "" if loc.is_cell else r[1].filename)

    def function_key(r: tuple) -> tuple[str, str]:
        if r[1] is None:
            return ("<no frames>", "")
        loc = attributor.locate(r[1].filename, r[1].lineno)
        return (r[1].name or "<unknown>", loc.file)

    def traceback_key(r: tuple) -> tuple[str, str]:
        where, source = line_key(r)
        depth = len(tracebacks[r[2]]["frames"])
        return (f"{where} (traceback #{r[2] + 1}, {depth} frames)", source)

    groupings = {name: {"rows": grouped(key)} for name, key in
                 (("line", line_key), ("file", file_key), ("function", function_key),
                  ("traceback", traceback_key))}
    total = sum(s.size_estimate for s in stats)
    summary: list[dict[str, Any]] = [
        {"label": "still alive", "value": float(snapshot.total_size), "unit": "bytes"},
        {"label": "allocations", "value": float(snapshot.total_count), "unit": "count"},
        {"label": "samples", "value": float(snapshot.samples), "unit": "count"},
        {"label": "sampling", "unit": "text",
         "text": "exact" if exact else f"every ~{format_size(snapshot.sample_rate)}"},
    ]
    data: dict[str, Any] = {
        "kind": "diff" if diff else "profile", "title": title, "exact": exact,
        "summary": summary, "notes": notes, "total": total, "top": top,
        "frames": frames, "tracebacks": tracebacks, "groupings": groupings,
        "default_grouping": "line",
    }
    if diff:
        change = snapshot.total_size - old.total_size
        summary.insert(1, {"label": "change", "value": float(change), "unit": "text",
                           "text": format_size(change, sign=True)})
    else:
        data["flame"] = _flame_tree(records, frames, tracebacks)
    if timeline is not None:
        data["timeline"] = {"points": list(timeline)}
    return data


def _flame_tree(records: list, frames: list, tracebacks: list) -> dict[str, Any]:
    """The call tree of the tracebacks, root on top: a node per (caller path, frame)."""
    root: dict[str, Any] = {"name": "all", "where": "", "source": "", "size": 0.0,
                            "samples": 0, "var": 0.0, "kids": {}}
    for stat, _frame, index, variance in records:
        node = root
        chain = [root]
        for f in tracebacks[index]["frames"]:
            kids = node["kids"]
            if f not in kids:
                info = frames[f]
                kids[f] = {"name": info["name"] or info["where"], "where": info["where"],
                           "source": info["source"], "size": 0.0, "samples": 0, "var": 0.0,
                           "kids": {}}
            node = kids[f]
            chain.append(node)
        for n in chain:
            n["size"] += stat.size_estimate
            n["samples"] += stat.samples
            n["var"] += variance

    def finish(node: dict[str, Any]) -> dict[str, Any]:
        kids = sorted(node["kids"].values(), key=lambda k: (-k["size"], k["name"], k["where"]))
        return {"name": node["name"], "where": node["where"], "source": node["source"],
                "size": node["size"], "samples": node["samples"],
                "error": math.sqrt(node["var"]) / node["size"] if node["size"] > 0 else 0.0,
                "children": [finish(k) for k in kids]}

    return finish(root)
