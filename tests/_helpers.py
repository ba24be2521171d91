"""Helpers shared by the report tests (tests/test_interactive.py) and the browser tests
(tests/browser/_reports.py): hand-written raw frames and notebook cells that the attribution
can read, for reports built from a synthetic snapshot."""

from __future__ import annotations

import linecache


def frames(*triples: tuple[str, int, str]) -> tuple:
    """Raw frames, most recent first (as the sampler records them), from (filename, lineno,
    function name) triples; every function starts on line 1."""
    return tuple((filename, line, name, 1) for filename, line, name in triples)


def register_cell(filename: str, lines: list[str]) -> str:
    """Make ``lines`` the source of the cell file ``filename`` (``<ipython-input-4-...>``),
    so that reports show its lines' text; returns ``filename``."""
    text = [line if line.endswith("\n") else line + "\n" for line in lines]
    linecache.cache[filename] = (len(text), None, text, filename)
    return filename
