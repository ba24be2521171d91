"""What keeps a site alive, in a real browser: an unfolded row of the report shows the
site's reference chains and the command that frees each, with scripts off (the server-side
table, as nbconvert's HTML or an untrusted notebook shows it) and on (the script's table,
after switching the grouping); hostile text in a chain stays text."""

from __future__ import annotations

from pathlib import Path

import pytest
from _chromium import ConsoleLog, browser, screenshot
from _reports import CACHE_CHAIN, EVIL, retention_report_html
from test_static_page import page_html


@pytest.mark.parametrize("javascript", [False, True], ids=["scripts-off", "scripts-on"])
def test_an_unfolded_row_shows_its_chains(tmp_path, javascript):
    path = tmp_path / "why.html"
    path.write_text(page_html(retention_report_html()), encoding="utf-8")
    with browser(tmp_path, javascript=javascript) as context:
        page = context.new_page()
        log = ConsoleLog(page)
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(path.as_uri())
        report = page.locator(".mprofile-ir")
        assert report.evaluate("r => r.classList.contains('mpr-live')") is javascript
        row = report.locator("tr.mpr-row", has_text="In [4], line 4")
        why = row.locator(".mpr-why")
        assert row.count() == 1 and not why.is_visible()  # folded: nothing shown
        # WHEN the row is unfolded (its summary; with the script, a click anywhere on it)
        if javascript:
            row.locator("td.mpr-num").first.click()
        else:
            row.locator("summary").click()
        # THEN its chains show, in order, each with the command that frees it
        assert why.is_visible()
        chains = why.locator("code.mpr-chain").all_inner_texts()
        assert chains == [CACHE_CHAIN,
                          f"Out[4] -> dict['{EVIL}'] -> bytearray.<byte buffer> -> "
                          "bytearray byte buffer"]
        assert why.locator("code.mpr-cmd").all_inner_texts()[:2] == ["%xdel cache",
                                                                     "%reset -f out"]
        text = why.inner_text()
        assert "Why still alive" in text and "1 block, 3.0 MiB" in text
        assert "(also named _3)" in text and "blocks recorded when In [4] was made" in text
        # and no other row has chains
        assert report.locator(".mpr-why").count() == 1
        screenshot(page, f"why-{'live' if javascript else 'static'}", full_page=True)
        if javascript:  # the same site under another grouping shows them too
            report.locator("select.mpr-group").select_option("line")
            row = report.locator("tr.mpr-row", has_text="In [4], line 4")
            row.locator("summary").click()
            assert row.locator(".mpr-why code.mpr-chain").first.inner_text() == CACHE_CHAIN
        assert dialogs == [] and log.errors == [], (dialogs, log.errors)


def test_why_survives_nbconvert(tmp_path):
    """``%%mprofile --why`` in a real kernel, then ``jupyter nbconvert --to html
    --execute``: the page (offline, scripts on) unfolds the site to its chains."""
    import os
    import re
    import subprocess
    import sys

    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbconvert")
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("%load_ext mprofile_ipy"),
        nbformat.v4.new_code_cell("%%mprofile --why --time-limit 60\n"
                                  "rows = [bytearray(3 * 2**20) for _ in range(2)]"),
    ])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    target = tmp_path / "why.ipynb"
    nbformat.write(notebook, target)
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path),
           "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--execute",
                    "--ExecutePreprocessor.timeout=120", str(target)],
                   check=True, timeout=240, capture_output=True, cwd=tmp_path, env=env)
    page_path = tmp_path / "why.html"
    assert "rows -&gt; list[0] -&gt; bytearray" in page_path.read_text(encoding="utf-8")
    with browser(tmp_path) as context:
        context.route(re.compile(r"^https?://"), lambda route: route.abort())  # offline
        page = context.new_page()
        log = ConsoleLog(page, ignore=("net::ERR_FAILED", "Failed to load resource"))
        page.goto(page_path.as_uri())
        report = page.locator(".mprofile-ir.mpr-live")
        assert report.count() == 1
        row = report.locator("tr.mpr-row", has_text="rows = [bytearray")
        why = row.locator(".mpr-why")
        assert not why.is_visible()
        row.locator("td.mpr-num").first.click()
        assert why.is_visible()
        chains = why.locator("code.mpr-chain").all_inner_texts()
        assert sorted(chains) == ["rows -> list[0] -> bytearray.<byte buffer> -> bytearray "
                                  "byte buffer", "rows -> list[1] -> bytearray.<byte buffer> "
                                  "-> bytearray byte buffer"], chains
        assert why.locator("code.mpr-cmd").all_inner_texts() == ["%xdel rows", "%xdel rows"]
        screenshot(page, "why-nbconvert", full_page=True)
        assert log.errors == [], log.errors
