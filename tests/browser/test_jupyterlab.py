"""The report in a real JupyterLab 4: run the notebook, save, RELOAD the page, and check that
every report is there with its table, that every control still works (the notebook is
trusted, so its scripts run), that nothing says "Error displaying widget", and that the
report reads in the light and the dark theme. Then nbconvert's HTML, offline."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _checks import check_diff_report, check_profile_report, check_timeline
from _chromium import ConsoleLog, browser, screenshot
from _jupyterlab import jupyterlab, jupyterlab_missing

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "_browser_demo.ipynb"
REPORTS = 4  # profile, diff, timeline, the explorer's view
EXPLORER = 3
BASELINE = ("import ipywidgets\n"
            "ipywidgets.IntSlider(description='a plain widget, for comparison')")
TIMEOUT_MS = 60_000
LIVE = ".jp-OutputArea-output .mprofile-ir.mpr-live"

pytestmark = pytest.mark.skipif(jupyterlab_missing() is not None,
                                reason=jupyterlab_missing() or "")


def wait_for_reports(page, live: bool = True, step: str = "") -> None:
    """Wait until every report is shown (and enhanced, when ``live``); on a timeout, save a
    screenshot and say what the page shows instead."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    selector = LIVE if live else ".jp-OutputArea-output .mprofile-ir"
    try:
        page.wait_for_function(f"document.querySelectorAll('{selector}').length >= {REPORTS}",
                               timeout=TIMEOUT_MS)
    except PlaywrightTimeout:
        shot = screenshot(page, f"lab-timeout-{step}")
        found = page.evaluate(f"document.querySelectorAll('{selector}').length")
        outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
        raise AssertionError(f"{step}: {found} of {REPORTS} reports after "
                             f"{TIMEOUT_MS / 1000:.0f} s (see {shot}); outputs: "
                             f"{[o[:200] for o in outputs]}") from None


def wait_for_kernel(page) -> None:
    """Wait until the notebook's kernel is connected and idle; answer the kernel picker if
    JupyterLab shows it (it does when the kernel specs arrive late)."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        picker = page.locator(".jp-Dialog button", has_text=re.compile(r"^Select$"))
        if picker.count():
            picker.first.click()
        ready = page.evaluate("""() => {
            const name = document.querySelector('.jp-NotebookPanel-toolbar .jp-KernelName');
            const state = document.querySelector('.jp-Notebook-ExecutionIndicator');
            return !!name && /Python/.test(name.textContent) && !!state
                && state.dataset.status === 'idle';
        }""")
        if ready:
            return
        page.wait_for_timeout(250)
    shot = screenshot(page, "lab-timeout-kernel")
    raise AssertionError(f"no idle kernel after {TIMEOUT_MS / 1000:.0f} s (see {shot})")


def run_all_cells(page) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def saved_outputs(path: Path) -> int:
    """How many report outputs the notebook file holds."""
    try:
        nb = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0
    return sum("mprofile-ir" in "".join(out.get("data", {}).get("text/html", ""))
               for cell in nb["cells"] for out in cell.get("outputs", []))


def watch_dialogs(page) -> list[str]:
    """Record alerts/confirms (a report's script must never open one) and dismiss them;
    accept JupyterLab's own "leave the page?" question so that reloads go through."""
    seen: list[str] = []

    def on_dialog(dialog) -> None:
        if dialog.type == "beforeunload":
            dialog.accept()
        else:
            seen.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

    page.on("dialog", on_dialog)
    return seen


def end_session(lab, name: str) -> None:
    """Shut the notebook's kernel down through the REST API (as a culled or restarted
    server would): the widget models it held are gone for good."""
    import urllib.request

    def call(method: str, path: str) -> bytes:
        request = urllib.request.Request(f"{lab.url}{path}", method=method,
                                         headers={"Authorization": f"token {lab.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    sessions = json.loads(call("GET", "/api/sessions"))
    (session,) = [s for s in sessions if s["path"].endswith(name)]
    call("DELETE", f"/api/sessions/{session['id']}")


def luminance(css_color: str) -> float:
    r, g, b = (int(x) for x in re.findall(r"\d+", css_color)[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


def test_reports_survive_save_and_reload(tmp_path):
    started = time.monotonic()
    with jupyterlab(tmp_path) as lab, browser(tmp_path, height=1800) as context:
        # The repository's notebook plus one plain widget: after the kernel is gone, that one
        # must show ipywidgets' error (the bug, reproduced) while the explorer's is hidden.
        import nbformat

        notebook = nbformat.read(NOTEBOOK, as_version=4)
        notebook.cells.append(nbformat.v4.new_code_cell(BASELINE))
        nbformat.write(notebook, lab.root / "demo.ipynb")
        page = context.new_page()
        page.set_default_timeout(30_000)
        # Lab itself may log failed look-ups of optional services; ours must not log at all.
        log = ConsoleLog(page, ignore=("favicon", "/api/", "Failed to load resource"))
        dialogs = watch_dialogs(page)
        page.goto(lab.tree("demo.ipynb"), wait_until="domcontentloaded")
        page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=TIMEOUT_MS)
        wait_for_kernel(page)
        run_all_cells(page)
        wait_for_reports(page, step="run-all")
        assert "Error displaying" not in page.locator(".jp-Notebook").inner_text()
        # Live: the explorer's dropdown (a widget) re-renders its view through the kernel.
        explorer = page.locator(LIVE).nth(EXPLORER)
        assert "by line" in explorer.locator(".mpr-count").inner_text()
        page.locator(".widget-dropdown select").select_option("function")
        page.wait_for_function(
            f"document.querySelectorAll('{LIVE}')[{EXPLORER}]"
            ".querySelector('.mpr-count').textContent.startsWith('by function')",
            timeout=TIMEOUT_MS)
        page.wait_for_selector(".widget-slider", timeout=TIMEOUT_MS)
        page.keyboard.press("Control+s")
        deadline = time.monotonic() + 30
        while saved_outputs(lab.root / "demo.ipynb") < REPORTS:
            assert time.monotonic() < deadline, "the notebook was not saved with its outputs"
            time.sleep(0.3)

        page.reload(wait_until="domcontentloaded")
        wait_for_reports(page, step="reload")
        text = page.locator(".jp-Notebook").inner_text()
        assert "Error displaying widget" not in text
        reports = page.locator(LIVE)
        assert reports.count() == REPORTS
        for i in range(2):
            assert reports.nth(i).locator(".mpr-table tbody tr.mpr-row").count() >= 2
        screenshot(page, "lab-light-after-reload")
        check_profile_report(page, reports.nth(0), filter_text="'price'")
        reports.nth(0).locator("td.mpr-num").first.click()
        reports.nth(0).screenshot(path=str(screenshot_path("lab-light-profile")))
        check_diff_report(reports.nth(1))
        check_timeline(page, reports.nth(2))
        reports.nth(1).screenshot(path=str(screenshot_path("lab-light-diff")))
        reports.nth(2).screenshot(path=str(screenshot_path("lab-light-timeline")))

        lab.set_theme("JupyterLab Dark")
        page.reload(wait_until="domcontentloaded")
        page.wait_for_selector("body[data-jp-theme-light='false']", state="attached",
                               timeout=TIMEOUT_MS)
        wait_for_reports(page, step="dark")
        report = page.locator(LIVE).first
        report.scroll_into_view_if_needed()
        report.locator("td.mpr-num").first.click()
        color = report.locator(".mpr-table td").first.evaluate("e => getComputedStyle(e).color")
        background = page.locator(".jp-Notebook").evaluate(
            "e => getComputedStyle(e).backgroundColor")
        assert luminance(color) > 0.6 > 0.3 > luminance(background), (color, background)
        report.screenshot(path=str(screenshot_path("lab-dark-profile")))
        page.locator(LIVE).nth(2).screenshot(path=str(screenshot_path("lab-dark-timeline")))
        assert dialogs == []
        assert log.errors == [], log.errors

        # The kernel goes away; the page is reloaded and gets a new kernel. The plain widget
        # shows ipywidgets' error; the explorer's controls error is hidden by its view, which
        # still shows the view chosen before the save (by function) and still sorts.
        lab.set_theme("JupyterLab Light")
        end_session(lab, "demo.ipynb")
        page.reload(wait_until="domcontentloaded")
        wait_for_reports(page, step="kernel-gone")
        page.wait_for_selector("[data-mpr-hidden]", state="attached", timeout=TIMEOUT_MS)
        errors = page.get_by_text("Error displaying widget")
        assert errors.count() == 2, errors.count()  # the explorer's and the plain widget's
        assert [errors.nth(i).is_visible() for i in range(2)].count(True) == 1
        explorer = page.locator(LIVE).nth(EXPLORER)
        assert explorer.locator(".mpr-widget-note").is_visible()
        assert explorer.locator(".mpr-count").inner_text().startswith("by function")
        explorer.locator("th[data-key=label]").click()
        assert explorer.locator("th[data-key=label]").get_attribute("aria-sort") == "ascending"
        explorer.screenshot(path=str(screenshot_path("lab-explorer-kernel-gone")))
        screenshot(page, "lab-kernel-gone")
        assert dialogs == []

        # Untrusted (someone else's notebook): no script runs, the HTML is sanitized, and
        # every report still shows its table, as rendered on the server.
        foreign = json.loads((lab.root / "demo.ipynb").read_text())
        foreign["metadata"]["shared_by"] = "someone else"  # breaks the signature
        (lab.root / "foreign.ipynb").write_text(json.dumps(foreign))
        other = context.new_page()
        other_dialogs = watch_dialogs(other)
        other.goto(lab.tree("foreign.ipynb"), wait_until="domcontentloaded")
        wait_for_reports(other, live=False, step="untrusted")
        static = other.locator(".jp-OutputArea-output .mprofile-ir")
        assert static.count() == REPORTS and other.locator(LIVE).count() == 0
        for i in (0, 1, EXPLORER):
            assert static.nth(i).locator("table tbody tr").count() >= 2
        assert "'price'" in static.nth(0).locator("table").inner_text()
        # No picture's text spills out where the sanitizer drops the SVG (it comes as text).
        assert "of total" not in static.nth(0).inner_text()
        assert "shown where scripts run" in static.nth(0).inner_text()
        screenshot(other, "lab-untrusted")
        assert other_dialogs == []
    print(f"JupyterLab round trip: {time.monotonic() - started:.1f} s")


def screenshot_path(name: str) -> Path:
    from _chromium import ARTIFACTS

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / f"{name}.png"


def test_nbconvert_html_offline_holds_every_table(tmp_path):
    """``jupyter nbconvert --to html --execute``: each report output carries its table and
    data, and the page works from a file:// URL with the network off."""
    target = tmp_path / "demo.ipynb"
    shutil.copy(NOTEBOOK, target)
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--execute",
                    "--ExecutePreprocessor.timeout=120", str(target)],
                   check=True, timeout=240, capture_output=True, cwd=tmp_path,
                   env={**__import__("os").environ, "JUPYTER_RUNTIME_DIR": str(tmp_path)})
    html = (tmp_path / "demo.html").read_text(encoding="utf-8")
    assert html.count('class="mprofile-ir"') == REPORTS
    assert html.count("mpr-data") >= REPORTS and "alert(1)</script>" not in html
    with browser(tmp_path) as context:
        context.route(re.compile(r"^https?://"), lambda route: route.abort())  # offline
        page = context.new_page()
        log = ConsoleLog(page, ignore=("net::ERR_FAILED", "Failed to load resource"))
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto((tmp_path / "demo.html").as_uri())
        reports = page.locator(".mprofile-ir.mpr-live")
        assert reports.count() == REPORTS
        for i in range(2):
            assert reports.nth(i).locator(".mpr-table tbody tr.mpr-row").count() >= 2
        check_profile_report(page, reports.nth(0), filter_text="'price'")
        screenshot(page, "nbconvert-offline", full_page=True)
        assert dialogs == [] and log.errors == [], (dialogs, log.errors)
