"""What keeps a site alive, as the report carries it (plain data attached per site) and as
every view shows it: the interactive report (data, schema, bounds, server-side HTML inside
the site's <details>), the static HTML and the text report. Built from a synthetic
snapshot, with hostile strings in the chains."""

from __future__ import annotations

import json
import re

import pytest
from _helpers import frames, register_cell

from mprofile_ipy.attribution import Attributor
from mprofile_ipy.model import Snapshot
from mprofile_ipy.renderers import html, interactive, text
from mprofile_ipy.renderers.interactive import (
    MAX_CHAINS,
    MAX_ROWS,
    MAX_STEPS,
    ReportDataError,
    chain_text,
    render_report,
    validate_report_data,
)
from mprofile_ipy.report import Report, RetainedBlocks, Retention, RetentionChain, report_data

EVIL = "</script><script>alert(1)</script><!--"
CELL = register_cell("<ipython-input-9-00000000cafe>", [
    "table = [bytearray(2**20) for _ in range(3)]",
    "scratch = bytearray(2**19)",
])
TABLE = frames((CELL, 1, "<listcomp>"))
SCRATCH = frames((CELL, 2, "<module>"))


def make_report() -> Report:
    traces = [(0, 2**20, TABLE, 1)] * 3 + [(0, 2**19, SCRATCH, 1)]
    return Report(Snapshot(traces, 10, sample_rate=1), attributor=Attributor(None))


def table_why(evil: str = "") -> Retention:
    return Retention((
        RetainedBlocks(3, 3 * 2**20, "not a Python object: the byte buffer of a bytearray",
                       "reachable", (
                           RetentionChain("table", "user_ns", ("list[0]", "bytearray.<buf>"),
                                          "bytearray buf", "%xdel table", ("Out[9]",)),
                           RetentionChain("Out[9]", "output_history",
                                          (f"dict['{evil}']",) if evil else (),
                                          "list", "%reset -f out"))),
        RetainedBlocks(1, 64, "a dict of 2 items", "cycle", (
            RetentionChain("unreachable: a reference cycle that gc.collect() would free",
                           "unreachable_cycle", (), "dict", "import gc; gc.collect()"),),
                       "no root reaches it"),
    ), 4, 0.042, "blocks recorded when In [9] was made")


def attached(evil: str = "") -> Report:
    report = make_report()
    report.set_retention({(name, site.key): table_why(evil)
                          for name in ("cell", "line") for site in report.sites(name)
                          if site.frame.lineno == 1})
    return report


def data_json(page: str) -> dict:
    match = re.search(r"<script type='application/json' class='mpr-data'>(.*?)</script>",
                      page, re.S)
    assert match
    return json.loads(match.group(1))


def row_html(page: str, label: str) -> str:
    """The server-side HTML of the table row whose label starts with ``label``."""
    rows = re.findall(r"<tr class='mpr-row'.*?</tr>", page, re.S)
    found = [r for r in rows if f"<summary class='mpr-label'>{label}" in r
             or f"<span class='mpr-label'>{label}" in r]
    assert len(found) == 1, rows
    return found[0]


def test_chain_text_is_the_same_as_the_search_says():
    chain = table_why().groups[0].chains[0]
    assert chain.text == "table -> list[0] -> bytearray.<buf> -> bytearray buf"
    cycle = table_why().groups[1].chains[0]
    assert cycle.text == "unreachable: a reference cycle that gc.collect() would free"
    assert table_why().groups[0].commands == ["%xdel table", "%reset -f out"]
    assert table_why().commands == ["%xdel table", "%reset -f out", "import gc; gc.collect()"]
    plain = interactive.validate_report_data(report_data(attached()))["retention"][0]
    assert [chain_text(c) for g in plain["groups"] for c in g["chains"]] == [
        c.text for g in table_why().groups for c in g.chains]


def test_nothing_until_asked():
    report = make_report()
    assert not report.has_retention
    assert all(report.retention(site) is None for site in report.sites())
    data = report_data(report)
    assert "retention" not in data
    assert all("retention" not in row for group in data["groupings"].values()
               for row in group["rows"])
    page = render_report(data)
    assert "<div class='mpr-why'>" not in page and "Why still alive" not in page.split("<script")[0]
    assert "Why still alive" not in text.render_report(report)
    assert "Why still alive" not in html.render_report(report)


def test_report_data_links_each_grouping_row_to_one_entry():
    report = attached()
    data = report_data(report)
    assert len(data["retention"]) == 1  # one Retention object, listed once
    entry = data["retention"][0]
    assert entry["searched"] == 4 and entry["elapsed"] == 0.042
    assert entry["when"] == "blocks recorded when In [9] was made"
    assert [g["blocks"] for g in entry["groups"]] == [3, 1]
    assert entry["groups"][0]["chains"][0] == {
        "root": "table", "kind": "user_ns", "steps": ["list[0]", "bytearray.<buf>"],
        "target": "bytearray buf", "command": "%xdel table", "also": ["Out[9]"]}
    linked = {name: [row["label"] for row in group["rows"] if "retention" in row]
              for name, group in data["groupings"].items()}
    assert linked["cell"] == ["In [9], line 1"] and linked["line"] == ["In [9], line 1"]
    assert linked["function"] == linked["file"] == linked["traceback"] == []
    # a report with other view options carries none (the result attaches it again)
    assert not report.replace(show_all=True).has_retention


def test_interactive_html_shows_the_chains_in_the_unfolded_row():
    page = render_report(report_data(attached(EVIL)))
    row = row_html(page, "In [9], line 1")
    assert "<details class='mpr-tbs'>" in row and "<div class='mpr-why'>" in row
    assert ("<code class='mpr-chain'>table -&gt; list[0] -&gt; bytearray.&lt;buf&gt; -&gt; "
            "bytearray buf</code>") in row
    assert "free it with <code class='mpr-cmd'>%xdel table</code>" in row
    assert "(also named Out[9])" in row
    assert "to free it, run all of: <code class='mpr-cmd'>%xdel table; %reset -f out</code>" in row
    assert "3 blocks, 3.0 MiB: not a Python object" in row
    assert "4 sampled blocks searched in 42 ms; blocks recorded when In [9] was made" in row
    assert "no root reaches it" in row
    # hostile text in a step is text, in the HTML and in the JSON
    assert EVIL not in page and "&lt;/script&gt;&lt;script&gt;alert(1)" in row
    assert data_json(page)["retention"][0]["groups"][0]["chains"][1]["steps"] == [
        f"dict['{EVIL}']"]
    # the other row unfolds to its tracebacks only
    assert "mpr-why" not in row_html(page, "In [9], line 2")


def test_a_row_without_tracebacks_still_unfolds_to_its_chains():
    data = report_data(attached())
    for group in data["groupings"].values():
        for row in group["rows"]:
            row["tracebacks"] = []
    row = row_html(render_report(data), "In [9], line 1")
    assert "<details class='mpr-tbs'>" in row and "mpr-why" in row


def test_static_html_and_text_show_them_too():
    report = attached()
    page = html.render_report(report)
    assert page.count("class='mprofile-why'") == 1
    assert "table -&gt; list[0] -&gt; bytearray.&lt;buf&gt; -&gt; bytearray buf" in page
    assert "%xdel table" in page
    body = text.render_report(report)
    assert body.split("Why still alive (blocks recorded when In [9] was made):\n")[1] == (
        "  In [9], line 1: table = [bytearray(2**20) for _ in range(3)]\n"
        "    3 blocks, 3.0 MiB: not a Python object: the byte buffer of a bytearray\n"
        "      1. table -> list[0] -> bytearray.<buf> -> bytearray buf\n"
        "         (also named Out[9])\n"
        "         free it with: %xdel table\n"
        "      2. Out[9] -> list\n"
        "         free it with: %reset -f out\n"
        "      to free it, run all of: %xdel table; %reset -f out\n"
        "    1 block, 64 B: a dict of 2 items\n"
        "      1. unreachable: a reference cycle that gc.collect() would free\n"
        "         free it with: import gc; gc.collect()\n"
        "      no root reaches it")


def test_bounds_and_schema_errors():
    data = report_data(attached())
    chain = data["retention"][0]["groups"][0]["chains"][0]
    chain["steps"] = [f"[{i}]" for i in range(MAX_STEPS + 25)]
    data["retention"][0]["groups"][0]["chains"] = [chain] * (MAX_CHAINS + 3)
    out = validate_report_data(data)["retention"][0]["groups"][0]
    assert len(out["chains"]) == MAX_CHAINS
    steps = out["chains"][0]["steps"]
    assert len(steps) == MAX_STEPS + 1 and steps[MAX_STEPS // 2] == "… 25 steps …"
    assert steps[0] == "[0]" and steps[-1] == f"[{MAX_STEPS + 24}]"
    bad = report_data(attached())
    bad["groupings"]["cell"]["rows"][0]["retention"] = 5
    with pytest.raises(ReportDataError, match=r"\['rows'\]\[0\]\['retention'\]: expected an "
                                              r"index below 1"):
        validate_report_data(bad)
    bad = report_data(attached())
    bad["retention"][0]["groups"][0]["size"] = "big"
    with pytest.raises(ReportDataError, match=r"\['retention'\]\[0\]\['groups'\]\[0\]"
                                              r"\['size'\]: expected a number"):
        validate_report_data(bad)


def test_entries_of_rows_cut_by_max_rows_are_dropped_and_renumbered():
    data = report_data(make_report())
    row = dict(data["groupings"]["line"]["rows"][0], size=1.0)
    entry = report_data(attached())["retention"][0]
    data["groupings"]["line"]["rows"] = [dict(row, retention=i, label=f"r{i}")
                                         for i in range(MAX_ROWS + 1)]
    data["groupings"]["line"]["rows"][-1]["size"] = 0.5  # the one cut
    data["retention"] = [dict(entry, when=f"w{i}") for i in range(MAX_ROWS + 1)]
    out = validate_report_data(data)
    assert len(out["retention"]) == MAX_ROWS
    assert [out["retention"][r["retention"]]["when"] for r in out["groupings"]["line"]["rows"]
            ] == [f"w{i}" for i in range(MAX_ROWS)]
