"""What keeps a site alive, asked in one go and then shown by every view, in a real
InteractiveShell: ``%%mprofile --why``, ``result.retainers()`` keeping its answers with the
result (and the results derived from it), the explorer's "Why alive?" button, and nothing
searched until asked."""

from __future__ import annotations

import re

import pytest
from IPython.core.error import UsageError

import mprofile_ipy
import mprofile_ipy.retainers
from mprofile_ipy.report import report_data
from mprofile_ipy.result import ProfileResult

MiB = 2**20


@pytest.fixture
def magics(ip):
    found = ip.magics_manager.registry["MProfileMagics"]
    yield found
    found.stop_session()
    found.session = None
    assert not mprofile_ipy.is_tracing()
    for name in ("keep", "scratch", "res"):
        ip.user_ns.pop(name, None)


def row_of(page: str, label: str) -> str:
    rows = re.findall(r"<tr class='mpr-row'.*?</tr>", page, re.S)
    found = [r for r in rows if f"class='mpr-label'>{label}" in r]
    assert len(found) == 1, [r[:200] for r in rows]
    return found[0]


def test_why_option_explains_every_site_and_the_report_shows_it(ip, magics, run_cell):
    number, result, out = run_cell(ip, "%%mprofile --why --time-limit 30 -o res\n"
                                       "keep = [bytearray(3 * 2**20)]\n"
                                       "scratch = bytearray(2 * 2**20)\n")
    assert result.success, result.error_in_exec
    res = ip.user_ns["res"]
    assert res.report.has_retention
    keep = res.retention(f"In [{number}], line 2")
    (group,) = keep.groups
    assert group.status == "reachable" and group.size >= 3 * MiB
    assert group.chains[0].text.startswith("keep -> list[0] -> bytearray")
    assert group.chains[0].command == "%xdel keep"
    assert keep.when == f"blocks recorded when In [{number}] was made"
    scratch = res.retention(f"In [{number}], line 3")
    assert scratch.groups[0].chains[0].root == "scratch"
    # THEN the notebook's output (the interactive report) shows each site's chains in its
    # unfolded row, and the terminal's text shows them after the table
    page = out.outputs[0].data["text/html"]
    row = row_of(page, f"In [{number}], line 2")
    assert "Why still alive" in row and "keep -&gt; list[0] -&gt; bytearray" in row
    assert "free it with <code class='mpr-cmd'>%xdel keep</code>" in row
    assert "scratch -&gt; bytearray" in row_of(page, f"In [{number}], line 3")
    plain = out.outputs[0].data["text/plain"]
    assert "Why still alive" in plain and "free it with: %xdel scratch" in plain
    # and so does the static HTML, and a result with other view options
    assert "free it with <code" in res.to_html()
    wider = res.filtered(show_all=True, group_by="line")
    assert wider.report.has_retention and wider.retention(
        f"In [{number}], line 3").groups[0].chains[0].root == "scratch"


def test_nothing_is_searched_until_asked_then_the_next_display_shows_it(
        ip, magics, run_cell, monkeypatch):
    calls = []
    real = mprofile_ipy.retainers.find_retainers

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(mprofile_ipy.retainers, "find_retainers", counted)
    number, result, out = run_cell(ip, "%%mprofile -o res\nkeep = [bytearray(3 * 2**20)]\n")
    assert result.success and calls == []
    res = ip.user_ns["res"]
    assert not res.report.has_retention and res.retention(0) is None
    assert "retention" not in report_data(res.report)
    assert "Why still alive" not in out.outputs[0].data["text/html"].split("<script")[0]
    # WHEN asked in code (every site, one search), the answers stay with the result
    reports = res.retainers()
    assert calls == [1] and reports and reports == sorted(reports, key=lambda r: -r.size)
    assert reports[0].chains[0].root_name == "keep"
    page = res.to_interactive_html()
    assert "keep -&gt; list[0]" in row_of(page, f"In [{number}], line 2")
    assert res._repr_mimebundle_()["text/html"].count("<div class='mpr-why'>") == 1
    assert res.with_measures(label="again").report.has_retention


def test_why_option_errors(ip, magics, run_cell, capsys):
    with pytest.raises(UsageError, match="--time-limit must be between 0 and 3600"):
        ip.run_cell_magic("mprofile", "--why --time-limit 0", "x = 1\n")
    # the statement form takes it too
    _, result, out = run_cell(ip, "%mprofile --why -v text keep = [bytearray(2**21)]")
    assert result.success, result.error_in_exec
    assert "1. keep -> list[0] -> bytearray" in out.stdout
    # a result without the blocks' addresses: one line, never an exception
    from mprofile_ipy.ipython import display
    from mprofile_ipy.ipython.options import Options

    bare = ProfileResult(mprofile_ipy.Snapshot([(0, 100, (("x.py", 1),), 1)], 1))
    display.explain(ip, bare, Options(why=True))
    assert "--why: the result  has no record of its blocks' addresses" in \
        capsys.readouterr().err


def test_explorer_why_button(ip, magics, run_cell):
    pytest.importorskip("ipywidgets")
    from mprofile_ipy.renderers.widget import Explorer

    number, result, _ = run_cell(ip, "%%mprofile -v none -o res\n"
                                     "keep = [bytearray(3 * 2**20)]\n"
                                     "scratch = bytearray(2 * 2**20)\n")
    res = ip.user_ns["res"]
    explorer = Explorer(res)
    seen = []
    explorer.on_view_change(seen.append)
    explorer.site.value = 1  # the second row: scratch
    assert explorer.selected_site().label == f"In [{number}], line 3"
    assert explorer.why.value == "" and not explorer.why_button.disabled
    # WHEN the button is clicked
    explorer.why_button.click()
    # THEN the chains show as text, and the report beside the explorer gets them
    assert "1. scratch -&gt; bytearray" in explorer.why.value
    assert "free it with: %xdel scratch" in explorer.why.value
    assert seen and seen[-1].has_retention
    assert res.retention(f"In [{number}], line 3") is not None
    assert res.retention(f"In [{number}], line 2") is None  # only the site asked for
    # switching sites shows what is known of each
    explorer.site.value = 0
    assert explorer.why.value == ""
    explorer.site.value = 1
    assert "scratch" in explorer.why.value
    # a result without the blocks' addresses cannot be asked
    bare = ProfileResult(mprofile_ipy.Snapshot([(0, 100, (("x.py", 1),), 1)], 1))
    assert Explorer(bare).why_button.disabled
