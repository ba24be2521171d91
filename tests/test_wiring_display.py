"""Issue 11 wired into the magics: in a real InteractiveShell the default rich output of a
cell, a comparison and a session timeline is the self-contained interactive HTML report
(with its data, escaped), and the widget view shows that report as an output of its own
before the widget, so a reload without the widget's kernel still shows the report."""

from __future__ import annotations

import json
import re

import pytest

MiB = 2**20


pytestmark = pytest.mark.usefixtures("no_session_left")  # ip: tests/conftest.py


def report_data(html: str) -> dict:
    """The JSON data block the interactive report carries."""
    found = re.search(r"<script type=['\"]application/json['\"][^>]*>(.*?)</script>", html,
                      re.S)
    assert found, "no data block in the report"
    return json.loads(found.group(1))


def test_cell_shows_the_interactive_report_with_its_sites(ip, run_cell):
    number, result, out = run_cell(ip, "%%mprofile --seed 3\nkept = bytearray(5 * 2**20)\n")
    assert result.success, result.error_in_exec
    (shown,) = out.outputs
    html = shown.data["text/html"]
    assert html.startswith("<div class='mprofile-ir'") and "data-kind='profile'" in html
    data = report_data(html)
    top = data["groupings"]["cell"]["rows"][0]
    assert top["label"] == f"In [{number}], line 2"
    assert top["detail"] == "kept = bytearray(5 * 2**20)"
    assert top["size"] == pytest.approx(5 * MiB, rel=0.01)
    assert data["flame"]["size"] >= 5 * MiB  # the flame graph travels with the report
    # the server-side table shows without scripts, and a terminal gets the text report
    assert f"In [{number}], line 2" in html.split("<script")[0]
    assert "5.0 MiB" in shown.data["text/plain"]
    del ip.user_ns["kept"]


def test_hostile_cell_text_renders_as_text(ip, run_cell):
    _, result, out = run_cell(ip, "%%mprofile\ns = bytearray(2**20); t = "
                                  "'</script><script>alert(1)'\n")
    assert result.success
    html = out.outputs[0].data["text/html"]
    assert "<script>alert(1)" not in html
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in html


def test_compare_and_timeline_are_interactive_reports(ip, run_cell):
    run_cell(ip, "%mprofile start --seed 5")
    try:
        run_cell(ip, "%mprofile snapshot before")
        run_cell(ip, "grown = bytearray(4 * 2**20)")
        _, _, out = run_cell(ip, "%mprofile compare before")
        html = out.outputs[0].data["text/html"]
        assert "data-kind='diff'" in html
        rows = report_data(html)["groupings"]["cell"]["rows"]
        assert rows[0]["size_diff"] == pytest.approx(4 * MiB, rel=0.01)
        assert "grown = bytearray(4 * 2**20)" in rows[0]["detail"]
        _, _, out = run_cell(ip, "%mprofile timeline")
        html = out.outputs[0].data["text/html"]
        assert "data-kind='timeline'" in html
        points = report_data(html)["timeline"]["points"]
        labels = [p["label"] for p in points]
        assert "before" in labels
        grown = next(p for p in points[labels.index("before") + 1:] if p["current"] > 4 * MiB)
        assert grown["label"].startswith("In [")
        # the PNG is still there on request, and a bad view is refused
        pytest.importorskip("matplotlib")
        _, _, out = run_cell(ip, "%mprofile timeline -v image")
        assert out.outputs[0].data["image/png"].startswith(b"\x89PNG")
        _, result, _ = run_cell(ip, "%mprofile timeline -v pie")
        assert "invalid choice: 'pie'" in str(result.error_in_exec)
    finally:
        run_cell(ip, "%mprofile stop")
        ip.user_ns.pop("grown", None)


def test_widget_view_shows_the_report_first(ip, run_cell):
    pytest.importorskip("ipywidgets")
    _, result, out = run_cell(ip, "%%mprofile -v widget\nw = bytearray(3 * 2**20)\n")
    assert result.success
    report, widget = out.outputs
    assert "application/vnd.jupyter.widget-view+json" not in report.data
    html = report.data["text/html"]
    assert report_data(html)["groupings"]["cell"]["rows"][0]["detail"] == (
        "w = bytearray(3 * 2**20)")
    assert "application/vnd.jupyter.widget-view+json" in widget.data
    del ip.user_ns["w"]


def test_results_display_interactively_outside_the_magic(ip, run_cell):
    run_cell(ip, "%%mprofile -v none -o r1\na1 = bytearray(2**20)\n")
    run_cell(ip, "%%mprofile -v none -o r2\na2 = bytearray(3 * 2**20)\n")
    # what IPython's display formatter makes of a result and of a comparison
    data, _ = ip.display_formatter.format(ip.user_ns["r2"].compare_to(ip.user_ns["r1"]))
    assert "data-kind='diff'" in data["text/html"]
    assert "+2.0 MiB" in data["text/plain"]
    data, _ = ip.display_formatter.format(ip.user_ns["r1"])
    assert "data-kind='profile'" in data["text/html"]
    assert "a1 = bytearray(2**20)" in data["text/plain"]
    for name in ("a1", "a2", "r1", "r2"):
        ip.user_ns.pop(name, None)


def test_the_report_beside_the_widget_follows_the_explorer(ip, run_cell):
    pytest.importorskip("ipywidgets")
    from IPython.utils.capture import capture_output

    from mprofile_ipy.ipython import display

    run_cell(ip, "%%mprofile -v none -o wres\nw2 = bytearray(3 * 2**20)\n")
    res = ip.user_ns["wres"]
    explorer = res.widget()
    res.widget = lambda: explorer  # the explorer the test drives
    with capture_output() as out:
        display.show_widget(res)
        first = report_data(out.outputs[0].data["text/html"])
        assert "data-mpr-replaces='widget'" in out.outputs[0].data["text/html"]
        assert first["default_grouping"] == "cell" and first["top"] == 10
        explorer.group_by.value = "file"
        explorer.top.value = 3
    html = out.outputs[-1].data["text/html"]  # the same output, updated in place
    assert "data-mpr-replaces='widget'" in html
    data = report_data(html)
    assert data["default_grouping"] == "file" and data["top"] == 3
    assert "grouped by file" in out.outputs[-1].data["text/plain"]
    del ip.user_ns["w2"], ip.user_ns["wres"]
