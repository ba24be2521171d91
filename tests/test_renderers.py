"""The renderers: text, HTML, DataFrames for display, charts (Agg, no leaks), widgets (driven
like a user would) and their static fallbacks."""

from __future__ import annotations

import io
import linecache

import matplotlib
import pytest
from matplotlib.figure import Figure

from mprofile_ipy.attribution import Attributor
from mprofile_ipy.model import Snapshot
from mprofile_ipy.renderers import chart, fmt_count, fmt_error, fmt_rate, fmt_size, fmt_time
from mprofile_ipy.renderers.dataframe import readable
from mprofile_ipy.renderers.html import render_report, timeline_html
from mprofile_ipy.renderers.text import render_timeline
from mprofile_ipy.renderers.widget import DiffExplorer, Explorer
from mprofile_ipy.result import ProfileResult, TimelinePoint

CELL = "<ipython-input-5-00000000abcd>"
linecache.cache[CELL] = (1, None, [
    "import json\n",
    "rows = [{'price': '$%d' % i} for i in range(100)]\n",
    "blob = json.dumps(rows)\n",
    "cache = bytearray(3 * 2**20)\n",
], CELL)
JSON = __import__("json").encoder.__file__


def frames(*pairs):
    """Raw frames, most recent first, from (filename, lineno, name) triples."""
    return tuple((fn, line, name, 1) for fn, line, name in pairs)


ROWS = frames((CELL, 2, "<listcomp>"), (CELL, 2, "<module>"))
BLOB = frames((JSON, 258, "JSONEncoder.iterencode"), (CELL, 3, "<module>"))
CACHE = frames((CELL, 4, "<module>"))


def make_result(rate=4096, extra=(), label="In [5]"):
    traces = ([(0, 64, ROWS, 2, 2, 1)] * 40 + [(0, 9000, BLOB, 2, 1, 1)] * 3
              + [(0, 3 * 2**20, CACHE, 1, 0, 1)] + list(extra))
    return ProfileResult(Snapshot(traces, 64, sample_rate=rate), label=label,
                         attributor=Attributor(None), top=10)


@pytest.fixture(autouse=True)
def no_pyplot_figures():
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    backend = matplotlib.get_backend()
    yield
    assert set(plt.get_fignums()) == before, "a renderer left a pyplot figure open"
    assert matplotlib.get_backend() == backend, "a renderer changed the matplotlib backend"


def test_formats():
    assert fmt_size(512) == "512 B" and fmt_size(1536) == "1.5 KiB"
    assert fmt_size(-2048, signed=True) == "-2.0 KiB" and fmt_size(2048, signed=True) == "+2.0 KiB"
    assert fmt_rate(131072) == "128KiB" and fmt_rate(1000) == "1000" and fmt_rate(2**20) == "1MiB"
    assert fmt_count(12345.6) == "12,346" and fmt_count(float("nan")) == "-"
    assert fmt_error(0.1) == "±20%" and fmt_error(0.1, exact=True) == "exact"
    assert fmt_time(0.25) == "250 ms" and fmt_time(3.5) == "3.50 s"


def test_text_report_has_figures_sites_and_errors():
    text = make_result().to_text()
    lines = text.splitlines()
    assert lines[0].startswith("mprofile In [5]: ") and "still alive" in lines[0]
    assert "1 per 4KiB allocated on average" in lines[1]
    site = next(line for line in lines if "In [5], line 4" in line)
    assert site.split()[0:2] == ["3.0", "MiB"] and "±0%" in site
    assert "cache = bytearray(3 * 2**20)" in site
    rows = next(line for line in lines if "In [5], line 2" in line)
    assert "±" in rows and " 40 " in rows  # 40 samples behind that estimate


def test_traceback_view_lists_callers():
    text = make_result().to_text(group_by="traceback")
    assert "called from In [5], line 3: blob = json.dumps(rows)" in text


def test_html_is_static_escaped_and_drills_down():
    html = render_report(make_result().report)
    assert "<script" not in html
    assert html.count("<details>") == 3  # one per site, tracebacks inside
    assert "json/encoder.py:258" in html and "JSONEncoder.iterencode" in html
    assert "±95%" in html and "In [5], line 4" in html


def test_readable_dataframe_keeps_numbers_apart():
    res = make_result()
    df = res.to_dataframe()
    shown = readable(df)
    assert df["size"].dtype == "float64"
    assert shown.loc[0, "size"] == "3.0 MiB" and shown.loc[0, "rel_error"] == "±0%"


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def test_charts_are_agg_figures_without_pyplot():
    res = make_result()
    for fig in (res.plot("bar"), res.plot("flame"), res.plot("bar", group_by="function", top=2)):
        assert isinstance(fig, Figure)
        assert _png(fig).startswith(b"\x89PNG")
    bar = res.plot("bar")
    ax = bar.axes[0]
    by_height = dict(zip(ax.get_yticks(), [t.get_text() for t in ax.get_yticklabels()],
                         strict=True))
    labels = [by_height[y] for y in sorted(by_height, reverse=True)]
    assert labels[0].startswith("In [5], line 4: cache")  # the largest site on top
    assert any(r"\$" in label for label in labels)  # '$' escaped, not mathtext


def test_flame_graph_boxes_follow_callers():
    fig = make_result().plot("flame")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts[0].startswith("all: ")
    assert any(t.startswith("In [5]:4 cache = bytearray") for t in texts)


def test_timeline_chart_and_tables():
    points = [TimelinePoint("In [1]", 1, 0.0, 0.0, 10.0),
              TimelinePoint("In [2]", 2, 1.0, 2**20, 3 * 2**20),
              TimelinePoint("before", None, 2.0, 2**20, 2**20)]
    fig = chart.timeline(points)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["In [1]", "In [2]", "before"]
    assert _png(fig).startswith(b"\x89PNG")
    text = render_timeline(points)
    assert "In [2]" in text and "1.0 MiB" in text and "3.0 MiB" in text
    assert "<table" in timeline_html(points)
    with pytest.raises(ValueError, match="no timeline"):
        make_result().plot("timeline")


def test_empty_results_render():
    empty = ProfileResult(Snapshot([], 64, sample_rate=131072), samples=0, allocated=0,
                          attributor=Attributor(None))
    assert "No allocation was sampled" in empty.to_text()
    assert "No allocation was sampled" in empty.to_html()
    assert _png(empty.plot("bar")).startswith(b"\x89PNG")
    assert _png(empty.plot("flame")).startswith(b"\x89PNG")


def test_explorer_controls_drive_the_table():
    res = make_result()
    explorer = res.widget()
    assert isinstance(explorer, Explorer)
    assert [s.label for s in explorer.shown_sites()][0] == "In [5], line 4"
    # the drill-down shows the selected site's tracebacks
    explorer.site.value = 1  # the second largest site: line 2's 40 small samples
    assert "In [5], line 2" in explorer.detail.value
    assert "40 samples" in explorer.detail.value
    explorer.group_by.value = "line"
    assert "json/encoder.py:258" in [s.label for s in explorer.shown_sites()]
    explorer.filter.value = "json"
    assert [s.label for s in explorer.shown_sites()] == ["json/encoder.py:258"]
    assert "json/encoder.py:258" in explorer.table.value
    explorer.filter.value = ""
    explorer.top.value = 1
    assert len(explorer.shown_sites()) == 1
    explorer.sort.value = "samples"
    assert explorer.shown_sites()[0].samples == 40
    explorer.all_frames.value = True
    assert explorer.result.show_all


def test_explorer_bundle_has_static_fallbacks():
    bundle = make_result().widget()._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/html"].startswith("<div class='mprofile-report'")
    assert bundle["text/plain"].startswith("mprofile In [5]")


def test_diff_explorer_filters_growth():
    old = make_result(label="a")
    grown = make_result(label="b", extra=[(0, 5 * 2**20, frames((CELL, 3, "<module>")), 1, 0, 1)])
    diff = grown.compare_to(old)
    explorer = diff.widget()
    assert isinstance(explorer, DiffExplorer)
    assert explorer.shown_rows()[0].label == "In [5], line 3"
    explorer.only.value = "shrank"
    assert explorer.shown_rows() == []
    assert "No change matches." in explorer.table.value and "<table" not in explorer.table.value
    assert "+5.0 MiB" in diff.to_text() and "+5.0 MiB" in diff.to_html()
    assert _png(diff.plot()).startswith(b"\x89PNG")


# -- issue 9: readable everywhere -----------------------------------------------------------------

LONG = "<ipython-input-6-00000000abcd>"
linecache.cache[LONG] = (1, None, [
    "values = bytearray(2**20); label = 'a fairly long line of source that a wide terminal shows "
    "in full'\n"], LONG)


def test_text_uses_the_terminal_width(monkeypatch):
    res = ProfileResult(Snapshot([(0, 2**20, frames((LONG, 1, "<module>")), 1, 0, 1)], 64),
                        attributor=Attributor(None))
    monkeypatch.setenv("COLUMNS", "200")
    wide = next(line for line in res.to_text().splitlines() if "In [6], line 1" in line)
    assert wide.endswith("that a wide terminal shows in full'") and len(wide) <= 200
    monkeypatch.setenv("COLUMNS", "80")  # narrower than the report's least width: 110
    narrow = next(line for line in res.to_text().splitlines() if "In [6], line 1" in line)
    assert narrow.endswith("…") and len(narrow) == 110


def test_dataframes_stay_numeric_and_display_readably():
    df = make_result().to_dataframe()
    # numbers stay numbers
    assert df["size"].dtype == "float64" and df["count_stderr"].dtype == "float64"
    rows = df.set_index("line")
    w = 1 / -__import__("math").expm1(-64 / 4096)
    assert rows.loc[2, "count"] == pytest.approx(40 * w)
    assert rows.loc[2, "count_stderr"] == pytest.approx((40 * w * (w - 1)) ** 0.5)
    # and read as sizes, whole counts and intervals
    shown = df[["file", "line", "size", "count", "count_stderr", "rel_error"]]
    text = repr(shown)  # a selection displays the same way (as in the quickstart notebook)
    assert "3.0 MiB" in text and "e+06" not in text and "±" in text
    html = df._repr_html_()
    assert "3.0 MiB" in html and "e+06" not in html
    assert readable(df).loc[1, "count"] == f"{round(40 * w):,}"
    # a plain copy shows the raw numbers
    assert "3.145728e+06" in repr(__import__("pandas").DataFrame(shown))


def test_html_drill_down_lists_only_tracebacks_with_memory_alive():
    # GIVEN a site with one live sample and a traceback that only allocated (all freed)
    freed = frames((CELL, 3, "<module>"), (CELL, 2, "<module>"))
    snap = Snapshot([(0, 3 * 2**20, CACHE, 1, 0, 1)], 64, sample_rate=1,
                    allocated=[(CACHE, 1, 1.0, float(3 * 2**20)), (freed, 2, 50.0, 5000.0)])
    html = ProfileResult(snap, attributor=Attributor(None)).to_html()
    assert "0 B · 0 samples" not in html and "1 samples" not in html
    assert "3.0 MiB · 1 sample · oldest frame first" in html


def test_charts_are_transparent_and_theme_neutral():
    from mprofile_ipy.renderers.chart import INK, to_png

    fig = make_result().plot("bar")
    assert fig.patch.get_alpha() == 0.0
    ax = fig.axes[0]
    assert ax.xaxis.label.get_color() == INK and ax.title.get_color() == INK
    import numpy as np
    from matplotlib.image import imread

    pixels = imread(io.BytesIO(to_png(fig)))
    assert pixels.shape[2] == 4 and float(np.min(pixels[..., 3])) == 0.0  # see-through


def test_interactive_report_data_follows_its_schema():
    from mprofile_ipy.renderers.html import interactive_diff, interactive_report
    from mprofile_ipy.renderers.interactive import validate_report_data

    res = make_result()
    data = validate_report_data(res.report.to_dict())
    assert data["groupings"]["cell"]["rows"][0]["label"] == "In [5], line 4"
    assert data["flame"]["size"] == pytest.approx(res.total)
    html = interactive_report(res.report)
    assert "In [5], line 4" in html and "<details" in html
    grown = make_result(label="b", extra=[(0, 5 * 2**20, frames((CELL, 3, "<module>")), 1, 0, 1)])
    diff = grown.compare_to(make_result(label="a"))
    assert "+5.0 MiB" in interactive_diff(diff.report)


def test_without_pandas_or_protobuf_the_api_says_what_to_install(without_modules):
    result = without_modules(["pandas", "google.protobuf"], """
        from mprofile_ipy.attribution import Attributor
        from mprofile_ipy.errors import MissingDependencyError
        from mprofile_ipy.model import Snapshot
        from mprofile_ipy.result import ProfileResult
        res = ProfileResult(Snapshot([(0, 100, (("x.py", 1),), 1, 1, 0)], 8),
                            attributor=Attributor(None))
        print(res.to_text().splitlines()[0])
        for call in (res.to_dataframe, lambda: res.to_pprof("out.pb.gz")):
            try:
                call()
            except MissingDependencyError as exc:
                print("missing:", exc, isinstance(exc, ImportError))
    """)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("mprofile: 100 B still alive")
    assert lines[1] == ("missing: a DataFrame needs pandas, which is not installed "
                        "(pip install pandas) True")
    assert lines[2] == ("missing: pprof export needs protobuf, which is not installed "
                        "(pip install protobuf) True")
