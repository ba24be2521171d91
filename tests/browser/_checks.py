"""Drive one report like a user and check that every control changes the DOM as it should.

Shared by the static-page test and the JupyterLab test (the same checks after a reload).
Each check reads the DOM before and after the action and compares values, not just
"something changed".
"""

from __future__ import annotations

import re
from typing import Any

ROW_LABELS = """r => Array.from(r.querySelectorAll('.mpr-table tbody tr.mpr-row')).map(
    tr => tr.querySelector('.mpr-label').firstChild.textContent)"""
COLUMN = """(r, i) => Array.from(r.querySelectorAll('.mpr-table tbody tr.mpr-row')).map(
    tr => tr.children[i].textContent)"""
RECT_WIDTHS = """r => Array.from(r.querySelectorAll('.mpr-node')).map(
    g => g.style.display === 'none' ? null : g.querySelector('rect').getAttribute('width'))"""
NODE_INDEX = """(r, name) => r.mprofileReport.flat.findIndex(n => n.name === name)"""


def _number(text: str) -> float:
    return float(text.replace(",", "").replace("+", "").split()[0])


def check_profile_report(page: Any, report: Any, filter_text: str = "homogen"
                         ) -> dict[str, Any]:
    """Sorting, grouping, top-N, filter, unfolding, flame zoom/search/tooltip on ``report``
    (a Playwright locator of one ``.mprofile-ir``). ``filter_text`` must match the
    ``_homogenize`` function's row only. Returns what it saw, for messages."""
    seen: dict[str, Any] = {}
    report.scroll_into_view_if_needed()
    assert "mpr-live" in (report.get_attribute("class") or ""), "the script did not run"
    data_rows = report.evaluate("r => r.mprofileReport.data.groupings.line.rows.length")

    # Sort by site (ascending), then by samples (descending), via the column headers.
    before = report.evaluate(ROW_LABELS)
    report.locator("th[data-key=label]").click()
    by_label = report.evaluate(ROW_LABELS)
    assert by_label == sorted(by_label, key=str.lower) or by_label == sorted(by_label), by_label
    assert report.locator("th[data-key=label]").get_attribute("aria-sort") == "ascending"
    report.locator("th[data-key=samples]").click()
    samples = [_number(t) for t in report.evaluate(COLUMN, 5)]
    assert samples == sorted(samples, reverse=True) and len(set(samples)) > 1, samples
    report.locator("th[data-key=samples]").click()
    samples_up = [_number(t) for t in report.evaluate(COLUMN, 5)]
    assert samples_up == sorted(samples_up), samples_up
    seen["sorted"] = (before, by_label)

    # Top-N: 'all' shows every row of the grouping.
    report.locator("select.mpr-top").select_option("0")
    assert len(report.evaluate(ROW_LABELS)) == data_rows

    # Grouping: by function the rows are function names.
    report.locator("select.mpr-group").select_option("function")
    functions = report.evaluate(ROW_LABELS)
    assert any("arrays_to_mgr" in f for f in functions), functions
    assert any("_homogenize" in f for f in functions), functions
    assert "function" in report.locator(".mpr-count").inner_text()

    # Filter: a substring of one function leaves one row; clearing it brings all back.
    report.locator("input.mpr-filter").fill(filter_text)
    matching = report.evaluate(ROW_LABELS)
    assert matching and all("_homogenize" in f for f in matching), matching
    assert len(matching) < len(functions)
    report.locator("input.mpr-filter").fill("")
    assert len(report.evaluate(ROW_LABELS)) == len(functions)

    # Unfold: a click on a row's number cell opens its tracebacks, a second one folds them.
    report.locator("select.mpr-group").select_option("line")
    report.locator("th[data-key=size]").click()
    first = report.locator(".mpr-table tbody tr.mpr-row").first
    assert first.locator("details.mpr-tbs[open]").count() == 0
    first.locator("td.mpr-num").first.click()
    assert first.locator("details.mpr-tbs[open]").count() == 1
    frame = first.locator(".mpr-frame").first
    assert frame.is_visible() and re.match(r"In \[\d+\], line \d+", frame.inner_text()), \
        frame.inner_text()
    seen["unfolded"] = first.locator("details").inner_text()
    first.locator("td.mpr-num").first.click()
    assert first.locator("details.mpr-tbs[open]").count() == 0

    # Flame graph: zoom into _homogenize (a part of the width), then back through the root.
    full = report.evaluate(RECT_WIDTHS)
    index = report.evaluate(NODE_INDEX, "_homogenize")
    assert index > 0
    report.locator(f".mpr-node[data-i='{index}'] rect").click()
    zoomed = report.evaluate(RECT_WIDTHS)
    assert zoomed[[int(x) for x in report.evaluate(
        "r => Array.from(r.querySelectorAll('.mpr-node')).map(g => g.dataset.i)")].index(index)
    ] == "100.0000%"
    assert zoomed != full and zoomed.count(None) > full.count(None), (full, zoomed)
    label = report.locator(f".mpr-node[data-i='{index}'] text").text_content()
    assert label.startswith("_homogenize (") and "…" not in label, label
    report.locator(".mpr-node[data-i='0'] rect").click()
    assert report.evaluate(RECT_WIDTHS) == full

    # Hover: the tooltip names the box, its size, share and uncertainty.
    report.locator(f".mpr-node[data-i='{index}'] rect").hover()
    tip = report.locator(".mpr-tip")
    assert tip.is_visible()
    text = tip.inner_text()
    assert "_homogenize" in text and "of total" in text and "±" in text and "samples" in text
    seen["tooltip"] = text

    # Search highlights matching boxes and sums their size once.
    report.locator("input.mpr-search").fill("_mgr")
    assert report.locator(".mpr-node.mpr-hit").count() >= 2
    assert "matching boxes" in report.locator(".mpr-matches").inner_text()
    report.locator("input.mpr-search").fill("")
    assert report.locator(".mpr-node.mpr-hit").count() == 0
    return seen


def _bytes(text: str) -> float:
    number, unit = text.replace(",", "").split()[:2]
    return float(number) * 1024 ** ["B", "KiB", "MiB", "GiB"].index(unit)


def check_diff_report(report: Any) -> None:
    """A diff report: rows by size of the change, growth and shrinkage marked, and a click
    on the change column reverses the order."""
    assert "mpr-live" in (report.get_attribute("class") or "")
    assert report.evaluate(ROW_LABELS)
    changes = [_bytes(t) for t in report.evaluate(COLUMN, 1)]
    assert [abs(c) for c in changes] == sorted((abs(c) for c in changes), reverse=True)
    assert any(c > 0 for c in changes) and any(c < 0 for c in changes), changes
    grows = report.evaluate("""r => Array.from(r.querySelectorAll('.mpr-table tbody tr'))
        .map(tr => !!tr.querySelector('.mpr-grow'))""")
    assert grows == [c >= 0 for c in changes]
    assert all(t.startswith("±") for t in report.evaluate(COLUMN, 2))
    report.locator("th[data-key=size_diff]").click()
    flipped = [abs(_bytes(t)) for t in report.evaluate(COLUMN, 1)]
    assert flipped == sorted(flipped) and flipped[0] <= min(abs(c) for c in changes)
    assert report.locator("th[data-key=size_diff]").get_attribute("aria-sort") == "ascending"


def check_timeline(page: Any, report: Any) -> str:
    """Hovering a timeline point shows its cell and size (and peak, when known)."""
    point = report.evaluate("r => r.mprofileReport.data.timeline.points[2]")
    report.locator(".mpr-point").nth(2).hover()
    tip = report.locator(".mpr-tip")
    assert tip.is_visible()
    text = tip.inner_text()
    assert re.match(re.escape(point["label"]) + r": [\d.]+ (B|KiB|MiB)", text), text
    if point["peak"] is not None:
        assert "peak" in text, text
    return text
