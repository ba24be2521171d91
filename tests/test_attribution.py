"""Cells are named as the user sees them (In [N], line as typed), under terminal IPython and
under ipykernel's compiler; the machinery's files are classified as internal."""

from __future__ import annotations

import asyncio
import json
import linecache
import os
import runpy
import sys

import IPython
import pandas
import pytest
import traitlets
from ipykernel.compiler import XCachingCompiler

import mprofile_ipy.ipython.magic as magic_module
from mprofile_ipy import attribution
from mprofile_ipy.attribution import (
    Attributor,
    cell_label,
    is_internal,
    is_stdlib,
    register_code,
    short_path,
)


@pytest.fixture(scope="module")
def ip(ipython_shell):
    return ipython_shell


def _frame_of_cell(ip, source: str):
    """Run ``source`` as a cell that stores a frame in ``fr``; return (frame, cell number)."""
    number = ip.execution_count
    result = ip.run_cell(source, store_history=True)
    assert result.success, result.error_in_exec
    return ip.user_ns["fr"], number


def test_terminal_cell_gets_label_line_and_raw_source(ip):
    # GIVEN a cell with two leading blank lines (IPython strips them before compiling) and a
    # line magic (IPython compiles it as a call)
    source = "\n\nimport sys\n%time _y = 2\ndef f():\n    return sys._getframe()\nfr = f()\n"
    frame, number = _frame_of_cell(ip, source)
    assert frame.f_code.co_filename.startswith(f"<ipython-input-{number}-")
    # WHEN its frames are resolved
    attributor = Attributor(ip)
    loc = attributor.locate(frame.f_code.co_filename, frame.f_lineno)
    magic = attributor.locate(frame.f_code.co_filename, frame.f_lineno - 2)
    # THEN they read as the cell as typed: In [N], the line numbers of the raw cell
    assert loc.file == f"In [{number}]" and loc.cell == number and loc.is_cell
    assert loc.line == 6 and loc.source == "return sys._getframe()"
    assert loc.lineno == 4  # the frame's own line stays the grouping key
    assert magic.line == 4 and magic.source == "%time _y = 2"
    assert not loc.internal


def test_label_is_frozen_per_attributor(ip):
    frame, number = _frame_of_cell(ip, "import sys\nfr = sys._getframe()\n")
    filename = frame.f_code.co_filename
    attributor = Attributor(ip)
    assert attributor.locate(filename, 1).file == f"In [{number}]"
    # A later change of IPython's map (ipykernel reuses names for identical cells) does
    # not relabel what an attributor has already resolved.
    ip.compile._filename_map[filename] = number + 100
    try:
        assert attributor.locate(filename, 2).file == f"In [{number}]"
        assert Attributor(ip).locate(filename, 2).file == f"In [{number + 100}]"
    finally:
        ip.compile._filename_map[frame.f_code.co_filename] = number


class _KernelLikeShell:
    """The two attributes attribution reads from a shell, with ipykernel's real compiler."""

    def __init__(self) -> None:
        self.compile = XCachingCompiler()
        self.history_manager = None


def test_ipykernel_file_names_map_to_cells():
    # GIVEN code cached by ipykernel's compiler as cell 7: a temporary file name
    shell = _KernelLikeShell()
    code = "x = 1\ny = [x] * 10\n"
    filename = shell.compile.cache(code, 7, raw_code=code)
    assert f"ipykernel_{os.getpid()}" in filename and filename.endswith(".py")
    # WHEN resolved THEN it is In [7] with the source from linecache, lines unchanged
    loc = Attributor(shell).locate(filename, 2)
    assert (loc.file, loc.line, loc.source, loc.cell) == ("In [7]", 2, "y = [x] * 10", 7)
    assert loc.is_cell and not loc.internal


def test_cell_names_without_a_shell():
    # A terminal cell name carries its number; a kernel cell from another process does not.
    loc = Attributor(shell=None).locate("<ipython-input-12-0123456789ab>", 3)
    assert loc.file == "In [12]" and loc.line == 3 and loc.is_cell
    other = Attributor(shell=None).locate("/tmp/ipykernel_1/123456.py", 2)
    assert other.file == "Cell 123456" and other.is_cell
    plain = Attributor(shell=None).locate(json.__file__, 1)
    assert plain.file == "json/__init__.py" and not plain.is_cell and plain.stdlib


def test_registered_code_uses_its_raw_lines():
    filename = "<mprofile-input-test-1>"
    code = "\n\nz = 3\n"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    register_code(filename, 42, ["%%mprofile -r 1", "", "z = 3   # typed"], 0)
    loc = Attributor(shell=None).locate(filename, 3)
    assert (loc.file, loc.line, loc.source, loc.cell) == ("In [42]", 3, "z = 3   # typed", 42)
    assert loc.is_cell


def test_cell_label_format():
    assert cell_label(3) == "In [3]"
    assert cell_label(None) == "In [?]"


@pytest.mark.parametrize(
    "filename",
    [
        IPython.core.interactiveshell.__file__,
        traitlets.__file__,
        asyncio.base_events.__file__,
        runpy.__file__,
        "<frozen importlib._bootstrap>",
        "<frozen runpy>",
        magic_module.__file__,
        attribution.__file__,
        # not imported here, recognised by its place in site-packages
        "/somewhere/lib/python3.11/site-packages/tornado/ioloop.py",
        "/somewhere/lib/python3.11/site-packages/zmq/sugar/socket.py",
    ],
)
def test_internal_files(filename):
    assert is_internal(filename)


@pytest.mark.parametrize(
    "filename",
    [
        pandas.__file__,
        json.__file__,
        __file__,
        "<string>",
        "<ipython-input-3-abcdef012345>",
        "/tmp/ipykernel_1/123.py",
        "/home/user/IPython_notes/analysis.py",
        "/work/mprofile_ipy_extra/helper.py",
    ],
)
def test_user_and_library_files_are_not_internal(filename):
    assert not is_internal(filename)


def test_stdlib_classification():
    assert is_stdlib(json.__file__) and is_stdlib("<frozen importlib._bootstrap>")
    assert not is_stdlib(pandas.__file__) and not is_stdlib("<ipython-input-1-ab>")
    assert not is_stdlib(__file__)


def test_short_paths():
    assert short_path(pandas.__file__) == "pandas/__init__.py"
    assert short_path(json.__file__) == "json/__init__.py"
    assert short_path("<string>") == "<string>"
    assert short_path(os.path.join(os.getcwd(), "pkg", "mod.py")) == os.path.join("pkg", "mod.py")


def test_caller_cell_finds_the_calling_cell(ip):
    number = ip.execution_count
    ip.user_ns["Attributor"] = Attributor
    ip.run_cell("\nfound = Attributor(get_ipython()).caller_cell()\n", store_history=True)
    filename, lineno, found_number = ip.user_ns["found"]
    assert found_number == number and lineno == 1  # line 1 of the compiled (stripped) cell
    assert Attributor(ip).locate(filename, lineno).line == 2  # line 2 as typed


def test_frames_of_this_process_are_resolved_once():
    attributor = Attributor(shell=None)
    first = attributor.locate(__file__, 1)
    assert attributor.locate(__file__, 1) is first
    assert sys.modules["mprofile_ipy.attribution"] is attribution


def test_sources_are_read_from_regular_files_only(tmp_path):
    """A snapshot from elsewhere may name a device or a FIFO: reading it must not hang."""
    import os

    from mprofile_ipy import Snapshot
    from mprofile_ipy.result import ProfileResult

    fifo = tmp_path / "pipe.py"
    os.mkfifo(fifo)
    snap = Snapshot([(0, 64, (("/dev/zero", 1),), 1), (0, 64, ((str(fifo), 2),), 1)], 1)
    text = ProfileResult(snap, show_all=True).to_text()
    assert "dev/zero:1" in text and "Top 2 of 2" in text
