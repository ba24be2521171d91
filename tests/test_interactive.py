"""The self-contained HTML report (renderers/interactive.py): the data a snapshot gives, the
schema's errors, escaping, determinism and the bounds on its size. The script's behaviour in
a real browser is tested in tests/browser/."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser

import pytest
from _helpers import frames, register_cell

from mprofile_ipy.attribution import Attributor
from mprofile_ipy.errors import MprofileError
from mprofile_ipy.model import Snapshot
from mprofile_ipy.renderers import interactive
from mprofile_ipy.renderers.interactive import (
    MAX_FLAME_NODES,
    MAX_ROWS,
    ReportDataError,
    data_from_snapshot,
    json_for_script,
    render_report,
    validate_report_data,
)

EVIL = "</script><script>alert(1)</script><!--"
CELL = register_cell("<ipython-input-7-00000000beef>", [
    "def build():",
    "    return [bytearray(4096) for _ in range(50)]",
    f"x = build(); s = '{EVIL}'",
    "y = bytearray(10**6)",
])
LIB = "/usr/lib/python3/site-packages/lib/<evil&name>.py"


BUILD = frames((CELL, 2, "build"), (CELL, 3, "<module>"))
EVIL_LINE = frames((CELL, 3, "<module>"))
BIG = frames((CELL, 4, "<module>"))
LIBRARY = frames((LIB, 10, EVIL), (CELL, 3, "<module>"))


def make_snapshot(rate: int = 1, scale: int = 1) -> Snapshot:
    traces = [(0, 4096, BUILD, 2)] * (50 * scale) + [(0, 100, EVIL_LINE, 1)] * 3
    traces += [(0, 10**6, BIG, 1), (0, 2000, LIBRARY, 2), (0, 3000, LIBRARY, 2)]
    return Snapshot(traces, 10, sample_rate=rate)


def report_json(html: str) -> dict:
    match = re.search(r"<script type='application/json' class='mpr-data'>(.*?)</script>",
                      html, re.S)
    assert match, "no data block"
    return json.loads(match.group(1))


class _Checker(HTMLParser):
    """Checks that every non-void element is closed in order and collects script bodies."""

    VOID = {"input", "br", "rect", "circle", "line", "polyline", "meta", "img"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.scripts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        pass

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-3:]}"
        self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "script":
            self.scripts.append(data)


def check_well_formed(html: str) -> _Checker:
    checker = _Checker()
    checker.feed(html)
    checker.close()
    assert checker.stack == []
    return checker


# ---------------------------------------------------------------------------------------------
# Data from a snapshot


def test_profile_data_matches_the_snapshot_statistics():
    snap = make_snapshot()
    data = data_from_snapshot(snap, title="t", attributor=Attributor(None))
    lines = {r["label"]: r for r in data["groupings"]["line"]["rows"]}
    for stat in snap.statistics("lineno"):
        frame = stat.traceback[0]
        label = (f"In [7], line {frame.lineno}" if frame.filename == CELL
                 else f"{interactive._where(Attributor(None).locate(frame.filename, 10))}")
        assert lines[label]["size"] == pytest.approx(stat.size_estimate)
        assert lines[label]["count"] == pytest.approx(stat.count_estimate)
    assert lines["In [7], line 2"]["detail"] == "return [bytearray(4096) for _ in range(50)]"
    assert lines["In [7], line 2"]["size"] == 50 * 4096
    # Functions merge the two library tracebacks (same innermost function).
    functions = {r["label"]: r for r in data["groupings"]["function"]["rows"]}
    assert functions[EVIL]["size"] == 5000 and functions[EVIL]["count"] == 2
    assert len(functions[EVIL]["tracebacks"]) == 1  # one traceback (same frames)
    assert len(data["groupings"]["traceback"]["rows"]) == len(snap.statistics("traceback"))
    assert data["total"] == snap.total_size
    files = {r["label"]: r["size"] for r in data["groupings"]["file"]["rows"]}
    assert files["In [7]"] == 50 * 4096 + 300 + 10**6
    # The flame tree: root = total; a node per frame line (largest first); children sum up.
    root = data["flame"]
    assert root["size"] == snap.total_size
    big, module = root["children"]
    assert big["where"] == "In [7], line 4" and big["size"] == 10**6 and not big["children"]
    assert module["where"] == "In [7], line 3" and module["size"] == 50 * 4096 + 300 + 5000
    assert sum(c["size"] for c in module["children"]) == 50 * 4096 + 5000
    assert [c["name"] for c in module["children"]] == ["build", EVIL]


def test_uncertainty_follows_the_model():
    snap = make_snapshot(rate=64 * 1024, scale=20)
    data = data_from_snapshot(snap, title="sampled", attributor=Attributor(None))
    assert not data["exact"]
    by_line = {r["label"]: r for r in data["groupings"]["line"]["rows"]}
    (stat,) = [s for s in snap.statistics("lineno") if s.traceback[0].lineno == 2]
    row = by_line["In [7], line 2"]
    assert row["error"] == pytest.approx(stat.relative_error)
    assert row["samples"] == stat.samples
    validated = validate_report_data(data)
    assert sum(r["share"] for r in validated["groupings"]["line"]["rows"]) == pytest.approx(1)
    html = render_report(data)
    assert f"±{1.96 * stat.relative_error * 100:.0f}%" in html


def test_exact_snapshot_says_exact():
    html = render_report(data_from_snapshot(make_snapshot(), title="x",
                                            attributor=Attributor(None)))
    assert ">exact<" in html and "±" not in html.split("<script")[0].split("mpr-table")[1]


def test_diff_rows_and_uncertainty_of_the_change():
    old = make_snapshot(rate=8192)
    new = Snapshot(list(old.raw_traces) + [(0, 4096, BUILD, 2)] * 200, 10, sample_rate=8192)
    data = data_from_snapshot(new, old=old, title="diff", attributor=Attributor(None))
    assert data["kind"] == "diff" and "flame" not in data
    rows = {r["label"]: r for r in data["groupings"]["line"]["rows"]}
    (change,) = [d for d in new.compare_to(old, "lineno") if d.traceback[0].lineno == 2]
    row = rows["In [7], line 2"]
    assert row["size_diff"] == pytest.approx(change.size_diff_estimate) and row["size_diff"] > 0
    (old_stat,) = [s for s in old.statistics("lineno") if s.traceback[0].lineno == 2]
    expected = math.hypot(change.relative_error * change.size_estimate,
                          old_stat.relative_error * old_stat.size_estimate)
    assert row["diff_error"] == pytest.approx(expected)
    html = render_report(data)
    check_well_formed(html)
    assert "mpr-grow" in html and "change" in html


# ---------------------------------------------------------------------------------------------
# Escaping


def test_hostile_strings_render_as_text():
    data = data_from_snapshot(make_snapshot(), title=EVIL, notes=[EVIL],
                              attributor=Attributor(None))
    data["summary"].append({"label": EVIL, "unit": "text", "text": EVIL})
    data["timeline"] = {"points": [{"label": EVIL, "current": 5.0, "text": EVIL}]}
    html = render_report(data)
    checker = check_well_formed(html)
    # The data, the flame graph's SVG, the timeline's SVG and the code: four scripts.
    assert re.findall(r"<script[^>]*>", html) == [
        "<script type='text/x-mprofile-svg' class='mpr-deferred'>",
        "<script type='text/x-mprofile-svg' class='mpr-deferred'>",
        "<script type='application/json' class='mpr-data'>", "<script>"]
    assert html.count("</script>") == 4
    assert "alert(1)</script>" not in html and "<!--" not in html
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in html
    payload = re.search(r"class='mpr-data'>(.*?)</script>", html, re.S).group(1)
    assert "<" not in payload and ">" not in payload and "&" not in payload
    assert "\\u003c/script\\u003e" in payload
    decoded = report_json(html)
    assert decoded["title"] == EVIL
    assert any(f["source"].endswith(f"s = '{EVIL}'") for f in decoded["frames"])
    assert any(f["name"] == EVIL for f in decoded["frames"])
    assert len(checker.scripts) == 4
    assert all("alert(1)</script>" not in script for script in checker.scripts)


def test_json_for_script_round_trips():
    value = {"a": "</script>&<!--\u2028é", "b": [1, 2.5]}
    text = json_for_script(value)
    assert json.loads(text) == value
    assert not set("<>&") & set(text) and text.isascii()


# ---------------------------------------------------------------------------------------------
# Schema errors


def minimal(**changes):
    data = {"kind": "profile", "title": "t",
            "groupings": {"line": {"rows": [{"label": "a", "size": 10, "count": 1}]}}}
    data.update(changes)
    return data


@pytest.mark.parametrize("data, where", [
    (None, "expected a dict"),
    (minimal(kind="pie"), "['kind']: must be one of"),
    ({"kind": "profile"}, "['title']: expected a string"),
    (minimal(groupings={}), "needs at least one grouping"),
    (minimal(groupings={"line": {"rows": [{"label": "a", "size": "x"}]}}),
     "['groupings']['line']['rows'][0]['size']: expected a number, got str 'x'"),
    (minimal(groupings={"line": {"rows": [{"label": "a", "size": float("nan")}]}}),
     "expected a finite number"),
    (minimal(groupings={"line": {"rows": [{"label": "a", "size": 1, "tracebacks": [3]}]}}),
     "['tracebacks'][0]: expected an index below 0"),
    (minimal(default_grouping="file"), "['default_grouping']: must be one of ['line']"),
    (minimal(kind="timeline", groupings=None), "a timeline report needs"),
    (minimal(timeline={"points": [{"label": "In [1]"}]}),
     "['timeline']['points'][0]['current']: is required"),
    (minimal(summary=[{"label": "x", "unit": "parsecs"}]), "['summary'][0]['unit']"),
    (minimal(flame={"name": "all", "size": -1}), "['flame']['size']: must be >= 0"),
    (minimal(kind="diff"), "['size_diff']: is required"),
    (minimal(top=-1), "['top']: expected a non-negative int"),
])
def test_schema_errors_say_where(data, where):
    with pytest.raises(ReportDataError) as info:
        render_report(data)
    assert where in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, MprofileError)


def test_bad_uid_and_bad_snapshot():
    with pytest.raises(ReportDataError, match="uid"):
        render_report(minimal(), uid="a' onload='x")
    with pytest.raises(TypeError, match="Snapshot"):
        data_from_snapshot(object(), title="t")


# ---------------------------------------------------------------------------------------------
# Determinism and several reports per page


def test_rendering_is_deterministic_and_ids_are_unique():
    data = data_from_snapshot(make_snapshot(), title="t", attributor=Attributor(None))
    assert render_report(data, uid="r1") == render_report(data, uid="r1")
    first, second = render_report(data), render_report(data)
    ids = [re.search(r"id='([^']+)'", h).group(1) for h in (first, second)]
    assert ids[0] != ids[1]
    assert first.replace(ids[0], "ID") == second.replace(ids[1], "ID")
    # One namespaced global, no other top-level declarations leak out of the script.
    script = interactive._asset("report.js")
    assert script.lstrip().startswith("/*") and "(function () {" in script
    assert re.findall(r"window\.(\w+)\s*=", script) == ["mprofileReport"]


def test_static_table_shows_the_default_grouping_sorted_and_cut_to_top():
    rows = [{"label": f"row{i}", "size": float(i), "count": 1} for i in range(30)]
    html = render_report({"kind": "profile", "title": "t", "top": 5,
                          "groupings": {"line": {"rows": rows}, "file": {"rows": rows[:2]}}})
    body = html.split("<tbody>")[1].split("</tbody>")[0]
    assert re.findall(r"row\d+", body) == ["row29", "row28", "row27", "row26", "row25"]
    assert "top 5 of 30" in html
    assert report_json(html)["grouping_order"] == ["line", "file"]


def test_timeline_report():
    points = [{"label": f"In [{i}]", "current": 1000.0 * i, "peak": 1500.0 * i}
              for i in range(1, 6)]
    html = render_report({"kind": "timeline", "title": "session",
                          "timeline": {"points": points}})
    check_well_formed(html)
    assert html.count("class='mpr-point'") == 5
    # Where scripts do not run, a table of the points stands in for the chart.
    fallback = html.split("class='mpr-slot'>")[1].split("</div>")[0]
    assert fallback.count("<tr>") == 6 and "<td class='mpr-num'>7.3 KiB</td>" in fallback
    assert "<div class='mpr-tablebox'>" not in html


# ---------------------------------------------------------------------------------------------
# Bounds


def test_huge_profile_is_cut_with_notes():
    n = 5000
    frames_ = [{"where": f"mod{i}.py:{i}", "name": f"f{i}", "source": "x = y" * 20}
               for i in range(n)]
    tracebacks = [{"frames": list(range(i, min(n, i + 60))), "size": float(i + 1),
                   "samples": 1} for i in range(n)]
    rows = [{"label": f"site{i}", "size": float(i + 1), "count": 1.0,
             "tracebacks": list(range(max(0, i - 20), i + 1))} for i in range(n)]
    # A wide flame tree: root -> n children, each with one child.
    flame = {"name": "all", "size": float(n * (n + 1)), "children": [
        {"name": f"f{i}", "size": float(2 * (i + 1)),
         "children": [{"name": f"g{i}", "size": float(i + 1)}]} for i in range(n)]}
    data = {"kind": "profile", "title": "big", "frames": frames_, "tracebacks": tracebacks,
            "groupings": {k: {"rows": rows} for k in ("line", "file", "function")},
            "flame": flame, "timeline": {"points": [{"label": str(i), "current": float(i)}
                                                    for i in range(5000)]}}
    html = render_report(data)
    assert len(html) < 1_500_000, len(html)
    decoded = report_json(html)
    assert all(len(g["rows"]) == MAX_ROWS for g in decoded["groupings"].values())
    assert min(r["size"] for r in decoded["groupings"]["line"]["rows"]) == n - MAX_ROWS + 1
    assert len(decoded["tracebacks"]) <= interactive.MAX_TRACEBACKS
    assert all(len(tb["frames"]) <= interactive.MAX_FRAMES for tb in decoded["tracebacks"])
    assert all(len(r["tracebacks"]) <= interactive.MAX_TRACEBACKS_PER_ROW
               for r in decoded["groupings"]["line"]["rows"])

    def count(node):
        return 1 + sum(count(c) for c in node["children"])

    assert count(decoded["flame"]) == MAX_FLAME_NODES
    assert len(decoded["timeline"]["points"]) == interactive.MAX_TIMELINE_POINTS
    notes = " ".join(decoded["notes"])
    assert f"showing the top {MAX_ROWS} of 5,000 rows" in notes
    assert "Flame graph: showing the 1500 largest" in notes and "Timeline:" in notes
    # Every traceback a kept row lists exists, and every frame a traceback lists exists.
    for row in decoded["groupings"]["line"]["rows"]:
        assert all(t < len(decoded["tracebacks"]) for t in row["tracebacks"])
    assert all(f < len(decoded["frames"]) for tb in decoded["tracebacks"] for f in tb["frames"])


def test_long_strings_are_clipped():
    data = minimal(title="t" * 10_000)
    assert len(validate_report_data(data)["title"]) == interactive.MAX_TEXT


def test_allocations_of_ipython_itself_are_left_out_with_a_note():
    shell = "/venv/lib/python3.11/site-packages/IPython/core/interactiveshell.py"
    traces = list(make_snapshot().raw_traces) + [(0, 777, frames((shell, 3000, "run_cell")), 1)]
    snap = Snapshot(traces, 10)
    data = data_from_snapshot(snap, title="t", attributor=Attributor(None))
    labels = [r["label"] for r in data["groupings"]["file"]["rows"]]
    assert not any("IPython" in label for label in labels)
    assert "Not shown: 777 B allocated by IPython and the profiler themselves" in " ".join(
        data["notes"])
    shown = data_from_snapshot(snap, title="t", attributor=Attributor(None), hide_internal=False)
    assert any("interactiveshell" in r["label"] for r in shown["groupings"]["file"]["rows"])


def test_report_output_displays_once_and_updates_in_place():
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    InteractiveShell.instance()
    view = interactive.ReportOutput(minimal(title="first"))
    with capture_output() as captured:
        view.display()
        view.update(minimal(title="second"))
        with pytest.raises(ReportDataError):
            view.update(minimal(kind="pie"))
    first, second = captured.outputs
    assert "first" in first.data["text/html"] and "second" in second.data["text/html"]
    assert "data-mpr-replaces='widget'" in second.data["text/html"]
    assert first.transient["display_id"] == second.transient["display_id"]
    assert second.update and not first.update
    assert view.data["title"] == "second"
    with pytest.raises(RuntimeError, match="already displayed"):
        view.display()
