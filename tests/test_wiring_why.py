"""Issue 12 wired: ``ProfileResult.retainers(site)`` and ``%mprofile why [SITE]`` in a real
InteractiveShell. Roots are named as the user knows them (the shell's user_ns, Out[N]); the
suggested command frees the memory (the site is gone from the next profile); text in a
terminal, escaped HTML in a notebook; bad input is a UsageError."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

import mprofile_ipy
from mprofile_ipy.result import ProfileResult

MiB = 2**20


@pytest.fixture
def magics(ip):
    found = ip.magics_manager.registry["MProfileMagics"]
    yield found
    found.stop_session()
    found.session = None
    assert not mprofile_ipy.is_tracing()


def test_why_names_user_roots_and_the_command_frees_them(ip, magics, run_cell):
    number, result, _ = run_cell(ip, "%%mprofile -v none -o res\n"
                                     "CACHE = {}\n"
                                     "CACHE['table'] = bytearray(6 * 2**20)\n"
                                     "scratch = bytearray(4 * 2**20)\n")
    assert result.success, result.error_in_exec
    res = ip.user_ns["res"]
    assert magics.last_result is res and res.has_live_blocks
    # THEN the API names the root and step of each site, and the command that frees it
    by_site = {site.frame.line: reports for site, reports in res.retainers_by_site()}
    (cache,) = by_site[3]
    assert cache.size >= 6 * MiB and cache.status == "reachable"
    assert cache.chains[0].root_name == "CACHE" and cache.chains[0].root_kind == "user_ns"
    assert "dict['table']" in cache.chains[0].text
    (scratch,) = res.retainers(f"In [{number}], line 4")
    assert scratch.chains[0].root_name == "scratch"
    assert scratch.chains[0].command == "%xdel scratch"
    # and the magic prints the same in a terminal (text) for one site chosen by its row
    _, result, out = run_cell(ip, "%mprofile why 1")
    assert result.success, result.error_in_exec
    text = out.outputs[0].data["text/plain"]
    assert f"In [{number}], line 4: scratch = bytearray(4 * 2**20): 4.0 MiB alive" in text
    assert "1. scratch -> bytearray" in text and "free it with: %xdel scratch" in text
    assert "CACHE" not in text  # only the site asked for
    assert "the profiler is not running now" in text  # says where the addresses come from
    # WHEN the suggested command runs, the site is gone from the next profile
    run_cell(ip, "%xdel scratch")
    run_cell(ip, "%mprofile start --rate 1")
    try:
        _, _, out = run_cell(ip, "%mprofile show -v none -o after")
        after = ip.user_ns["after"]
        assert not [s for s in after.sites() if "scratch" in s.frame.source]
    finally:
        run_cell(ip, "%mprofile stop")
        ip.user_ns.pop("CACHE", None)


def test_output_history_root_and_escaped_html(ip, magics, run_cell):
    number, result, _ = run_cell(ip, "%%mprofile -v none\n"
                                     "def build():  # </script><script>alert(1)\n"
                                     "    return [bytearray(3 * 2**20)]\n"
                                     "build()\n")
    assert result.success
    _, result, out = run_cell(ip, "%mprofile why")  # every site alive
    assert result.success, result.error_in_exec
    html = out.outputs[0].data["text/html"]
    text = out.outputs[0].data["text/plain"]
    assert f"Out[{number}] -> list[0] -> bytearray" in text
    assert "%reset -f out" in text
    assert f"Out[{number}] -&gt; list[0]" in html and "<script>alert(1)" not in html
    run_cell(ip, "%reset -f out")


def test_a_session_reads_the_blocks_now(ip, magics, run_cell):
    run_cell(ip, "%mprofile start --rate 1")
    try:
        run_cell(ip, "held = bytearray(2 * 2**20)")
        run_cell(ip, "%mprofile show -v none")
        _, result, out = run_cell(ip, "%mprofile why --chains 1 --max-blocks 2 "
                                      "--time-limit 30")
        assert result.success, result.error_in_exec
        text = out.outputs[0].data["text/plain"]
        assert "read now (the profiler is running)" in text
        assert "held -> bytearray" in text
    finally:
        run_cell(ip, "%mprofile stop")
        ip.user_ns.pop("held", None)


@pytest.mark.parametrize("line, message", [
    ("why 99", "site 99 is not a row of the table"),
    ("why In [999], line 1", "no site labelled 'In [999], line 1'"),
    ("why --chains 0", "--chains must be between 1 and 10"),
    ("why --max-blocks x", "--max-blocks must be a whole number"),
    ("why --time-limit -1", "--time-limit must be between 0 and 3600"),
])
def test_bad_why_input_is_a_usage_error(ip, magics, run_cell, line, message):
    run_cell(ip, "%%mprofile -v none\nkeep_me = bytearray(2**20)\n")
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ip.run_line_magic("mprofile", line)
    ip.user_ns.pop("keep_me", None)


def test_why_without_a_result_says_what_to_do(ip, magics):
    magics.last_result = None
    with pytest.raises(UsageError, match="no result to explain yet"):
        ip.run_line_magic("mprofile", "why")


def test_a_result_without_addresses_says_so():
    snapshot = mprofile_ipy.Snapshot([(0, 100, (("x.py", 1),), 1)], 1)
    res = ProfileResult(snapshot)
    assert not res.has_live_blocks
    with pytest.raises(ValueError, match="no record of the live blocks"):
        res.retainers(0)
    with pytest.raises(TypeError, match="site must be a row number"):
        res.site(1.5)
