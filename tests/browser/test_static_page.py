"""Reports in a plain page (what nbconvert's HTML or a shared file is): every control works,
two reports of the same kind do not interfere, hostile strings stay text, no console error."""

from __future__ import annotations

import html as html_lib

from _checks import ROW_LABELS, check_diff_report, check_profile_report, check_timeline
from _chromium import ConsoleLog, browser, screenshot
from _reports import EVIL, diff_data, profile_data, timeline_data

from mprofile_ipy.renderers.interactive import render_report


def page_html(*reports: str, dark: bool = False) -> str:
    # A dark page defines JupyterLab's variables the way its dark theme does.
    theme = ("<style>body{--jp-ui-font-color0:#e0e0e0;--jp-ui-font-color1:#e0e0e0;"
             "--jp-ui-font-color2:#bdbdbd;--jp-layout-color0:#111;--jp-layout-color1:#212121;"
             "--jp-layout-color2:#2a2a2a;--jp-border-color1:#616161;background:#111;"
             "color:#e0e0e0}</style>" if dark else "")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>"
            f"{html_lib.escape(EVIL)}</title>{theme}</head><body>"
            + "<hr>".join(reports) + "</body></html>")


def test_two_reports_in_one_page(tmp_path):
    first, second = profile_data("first report"), profile_data("second report")
    path = tmp_path / "reports.html"
    path.write_text(page_html(render_report(first), render_report(second),
                              render_report(diff_data()), render_report(timeline_data())),
                    encoding="utf-8")
    with browser(tmp_path) as context:
        page = context.new_page()
        log = ConsoleLog(page)
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(path.as_uri())
        reports = page.locator(".mprofile-ir")
        assert reports.count() == 4
        assert page.locator(".mprofile-ir.mpr-live").count() == 4
        screenshot(page, "static-light-initial", full_page=True)
        untouched = reports.nth(1).evaluate(ROW_LABELS)
        seen = check_profile_report(page, reports.nth(0))
        # The second report did not move while the first one was driven.
        assert reports.nth(1).evaluate(ROW_LABELS) == untouched
        assert reports.nth(1).locator("details[open]").count() == 0
        check_diff_report(reports.nth(2))
        check_timeline(page, reports.nth(3))
        # Hostile text is shown as text: in the table and in the flame graph's labels.
        reports.nth(0).locator("select.mpr-group").select_option("function")
        reports.nth(0).locator("input.mpr-filter").fill("alert")
        assert EVIL in reports.nth(0).locator(".mpr-table tbody").inner_text()
        reports.nth(0).locator("td.mpr-num").first.click()
        screenshot(page, "static-light-driven", full_page=True)
        # Zoomed flame graph with its tooltip, for the eye.
        flame = reports.nth(0).locator(".mpr-flame")
        index = reports.nth(0).evaluate("r => r.mprofileReport.flat.findIndex("
                                        "n => n.name === 'dict_to_mgr')")
        flame.locator(f".mpr-node[data-i='{index}'] rect").click()
        flame.locator(f".mpr-node[data-i='{index}'] rect").hover()
        reports.nth(0).screenshot(path=str(screenshot(page, "static-flame-zoomed")))
        assert dialogs == [] and log.errors == [], (dialogs, log.errors)
        assert "_homogenize" in seen["tooltip"]


def test_dark_page_is_readable(tmp_path):
    path = tmp_path / "dark.html"
    path.write_text(page_html(render_report(profile_data()), render_report(timeline_data()),
                              dark=True), encoding="utf-8")
    with browser(tmp_path) as context:
        page = context.new_page()
        log = ConsoleLog(page)
        page.goto(path.as_uri())
        report = page.locator(".mprofile-ir").first
        report.locator("td.mpr-num").first.click()
        color = report.locator(".mpr-table td").first.evaluate(
            "e => getComputedStyle(e).color")
        assert color == "rgb(224, 224, 224)", color
        shot = screenshot(page, "static-dark", full_page=True)
        assert shot.stat().st_size > 10_000 and log.errors == []
