"""Sample reports for the browser tests: a profile with nested calls, a diff and a timeline,
with hostile strings in file names, function names and source text."""

from __future__ import annotations

import linecache

from mprofile_ipy.attribution import Attributor
from mprofile_ipy.model import Snapshot
from mprofile_ipy.renderers.interactive import data_from_snapshot

EVIL = "</script><script>alert(1)</script>"
CELL = "<ipython-input-4-0000000000aa>"
LIB = "/srv/site-packages/frames/construction.py"
linecache.cache[CELL] = (1, None, [
    "frame = load_table(rows)\n",
    "index = build_index(frame)\n",
    f"label = '{EVIL}'\n",
    "cache = bytearray(3 * 2**20)\n",
], CELL)


def _frames(*triples: tuple[str, int, str]) -> tuple:
    return tuple((fn, line, name, 1) for fn, line, name in triples)


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
