"""What keeps a site alive, in a real browser: an unfolded row of the report shows the
site's reference chains and the command that frees each, with scripts off (the server-side
table, as nbconvert's HTML or an untrusted notebook shows it) and on (the script's table,
after switching the grouping); hostile text in a chain stays text."""

from __future__ import annotations

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
