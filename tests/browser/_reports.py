"""Sample reports for the browser tests: a profile with nested calls, a diff and a timeline,
with hostile strings in file names, function names and source text."""

from __future__ import annotations

from _helpers import frames as _frames
from _helpers import register_cell

from mprofile_ipy.attribution import Attributor
from mprofile_ipy.model import Snapshot
from mprofile_ipy.renderers.interactive import data_from_snapshot

EVIL = "</script><script>alert(1)</script>"
CELL = register_cell("<ipython-input-4-0000000000aa>", [
    "frame = load_table(rows)",
    "index = build_index(frame)",
    f"label = '{EVIL}'",
    "cache = bytearray(3 * 2**20)",
])
LIB = "/srv/site-packages/frames/construction.py"


def profile_snapshot(rate: int = 4096) -> Snapshot:
    """About 6 MiB over eight sites, three to four frames deep."""
    sites = [
        (_frames((LIB, 120, "arrays_to_mgr"), (LIB, 80, "dict_to_mgr"), (LIB, 30, "load_table"),
                 (CELL, 1, "<module>")), 2048, 900),
        (_frames((LIB, 140, "_homogenize"), (LIB, 80, "dict_to_mgr"), (LIB, 30, "load_table"),
                 (CELL, 1, "<module>")), 512, 1200),
        (_frames((LIB, 200, "build_index"), (CELL, 2, "<module>")), 8192, 90),
        (_frames((LIB, 210, EVIL), (LIB, 200, "build_index"), (CELL, 2, "<module>")), 300, 400),
        (_frames((CELL, 3, "<module>")), 64, 50),
        (_frames((CELL, 4, "<module>")), 3 * 2**20, 1),
        (_frames((LIB, 300, "tiny_helper"), (CELL, 2, "<module>")), 100, 30),
        (_frames((LIB, 310, "other_helper"), (CELL, 2, "<module>")), 200, 20),
    ]
    traces = [(0, size, frames, len(frames)) for frames, size, n in sites for _ in range(n)]
    return Snapshot(traces, 16, sample_rate=rate)


def profile_data(title: str = "profile: load_table") -> dict:
    return data_from_snapshot(profile_snapshot(), title=title, attributor=Attributor(None),
                              top=5)


def diff_data() -> dict:
    old = profile_snapshot()
    grown = list(old.raw_traces)[:-300] + [
        (0, 4096, _frames((LIB, 200, "build_index"), (CELL, 2, "<module>")), 2)] * 200
    new = Snapshot(grown, 16, sample_rate=4096)
    return data_from_snapshot(new, old=old, title="diff: after build_index",
                              attributor=Attributor(None))


def timeline_data() -> dict:
    sizes = [0.5, 2.0, 6.1, 6.3, 3.2, 9.7, 4.0]
    points = [{"label": f"In [{i + 1}]", "current": s * 2**20, "peak": (s + 1.5) * 2**20,
               "error": 0.03, "text": f"cell {i + 1}"} for i, s in enumerate(sizes)]
    return {"kind": "timeline", "title": "session timeline", "timeline": {"points": points},
            "summary": [{"label": "cells", "value": len(points), "unit": "count"}]}


CACHE_CHAIN = "cache -> bytearray.<byte buffer> -> bytearray byte buffer"


def retention_report_html() -> str:
    """The interactive report of the profile with what keeps ``In [4], line 4`` alive
    attached (as ``result.retainers()`` attaches it: to that site in every grouping), a
    hostile key among the steps of its second chain."""
    from mprofile_ipy.renderers.html import interactive_report
    from mprofile_ipy.report import Report, RetainedBlocks, Retention, RetentionChain

    report = Report(profile_snapshot(), attributor=Attributor(None))
    why = Retention((RetainedBlocks(
        1, 3 * 2**20, "not a Python object: the byte buffer of a bytearray of length 3145728",
        "reachable", (
            RetentionChain("cache", "user_ns", ("bytearray.<byte buffer>",),
                           "bytearray byte buffer", "%xdel cache", ("_3",)),
            RetentionChain("Out[4]", "output_history",
                           (f"dict['{EVIL}']", "bytearray.<byte buffer>"),
                           "bytearray byte buffer", "%reset -f out"))),), 1, 0.25,
        "blocks recorded when In [4] was made")
    report.set_retention({(name, site.key): why for name in ("cell", "line", "traceback")
                          for site in report.sites(name) if site.label.startswith(
                              "In [4], line 4")})
    return interactive_report(report)
