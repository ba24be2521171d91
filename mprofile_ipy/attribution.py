"""Map a frame's file name and line to what the user sees: a notebook cell and its source line.

``Attributor.locate(filename, lineno)`` turns ``<ipython-input-12-...>`` (terminal IPython) and
``/tmp/ipykernel_PID/HASH.py`` (ipykernel) into ``In [12]``, with the line number as the user
reads it in the cell and the text of that line; other files keep their path. ``is_internal``
says which files belong to the machinery around the user's code (IPython, ipykernel, the
profiler, ...), whose frames the views hide by default.

Line numbers: IPython compiles a *transformed* cell (leading blank lines removed, magics turned
into calls). When the raw cell is known and has the same number of lines once its leading blank
lines are skipped, lines are shifted back to the raw cell's numbering and the raw text is shown,
so ``%time x = f()`` reads as typed. Code compiled by this package (the body of ``%%mprofile``)
is registered with ``register_code`` and needs no guessing.
"""

from __future__ import annotations

import os
import re
import sys
import sysconfig
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .aggregate import source_lines

__all__ = [
    "CellInfo",
    "Location",
    "Attributor",
    "cell_label",
    "is_internal",
    "is_profiler_file",
    "is_stdlib",
    "register_code",
    "short_path",
]

# Terminal IPython (all versions since 0.11): "<ipython-input-12-0123456789ab>".
_IPYTHON_INPUT_RE = re.compile(r"^<ipython-input-(\d+)-([0-9a-fA-F]+)>$")
# ipykernel >= 6 (XCachingCompiler): "<tmp>/ipykernel_<pid>/<murmur2 hash>.py".
_IPYKERNEL_RE = re.compile(r"[\\/]ipykernel_(\d+)[\\/](\d+)\.py$")
# IPython's CachingCompiler.format_code_name: ("Cell", "In[12]").
_CODE_NAME_RE = re.compile(r"^In\s*\[(\d+)\]$")


def cell_label(number: int | None, fallback: str = "?") -> str:
    """The label a cell has in the notebook's prompt: ``In [12]`` (``In [?]`` if unknown)."""
    return f"In [{number if number is not None else fallback}]"


@dataclass(frozen=True)
class CellInfo:
    """What is known about one compiled cell.

    ``number`` is the execution count (``None`` when unknown), ``label`` what to show,
    ``line_offset`` what to add to a code line number to get the line of the cell as typed,
    ``lines`` the cell's text as typed (raw), when known and line-for-line with the code;
    ``raw`` the raw text even when it is not (a cell magic's cell compiles to one line).
    """

    number: int | None
    label: str
    line_offset: int = 0
    lines: tuple[str, ...] | None = None
    raw: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Location:
    """A frame position resolved for display.

    ``filename``/``lineno`` are the frame's own values (the grouping key); ``file`` and
    ``line`` are what to show (``In [12]``, line 3 of the cell); ``source`` is the stripped
    text of that line ('' if unknown); ``cell`` the cell number or ``None``; ``internal`` and
    ``is_cell`` and ``stdlib`` classify the file.
    """

    filename: str
    lineno: int
    file: str
    line: int
    source: str
    cell: int | None
    internal: bool
    is_cell: bool = False
    stdlib: bool = False


# Code compiled by this package: filename -> CellInfo. Guarded by _registry_lock.
_registered: dict[str, CellInfo] = {}
_registry_lock = threading.Lock()


def register_code(
    filename: str, number: int | None, raw_lines: Iterable[str] | None = None, line_offset: int = 0
) -> None:
    """Record that ``filename`` holds code of cell ``number`` compiled by this package.

    ``raw_lines`` is the cell as typed; ``line_offset`` is added to the code's line numbers
    to find the raw line (0 when the code was padded so that its lines already match).
    """
    lines = tuple(raw_lines) if raw_lines is not None else None
    label = cell_label(number) if number is not None else f"%%mprofile [{filename.strip('<>')}]"
    with _registry_lock:
        _registered[filename] = CellInfo(number, label, line_offset, lines)


# ---------------------------------------------------------------------------------------------
# Internal frames

# Top-level packages and modules whose frames are the machinery around the user's code.
INTERNAL_PACKAGES: tuple[str, ...] = (
    "IPython",
    "ipykernel",
    "ipykernel_launcher",
    "traitlets",
    "tornado",
    "zmq",
    "jupyter_client",
    "jupyter_core",
    "comm",
    "debugpy",
    "nest_asyncio",
    "mprofile_ipy",
)
# Standard library modules and packages treated the same way.
INTERNAL_STDLIB: tuple[str, ...] = ("asyncio", "runpy", "selectors", "concurrent", "codeop")
_FROZEN_INTERNAL = ("<frozen importlib.", "<frozen runpy>", "<frozen zipimport>")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_GENERATED_PREFIXES = ("<decorator-gen-",)  # IPython magics wrapped by `decorator` (old IPython)


def _module_roots(names: Iterable[str]) -> list[str]:
    """Directory (for packages) or file (for modules) of each name already imported."""
    roots = []
    for name in names:
        module = sys.modules.get(name)
        if module is None:
            continue
        path = getattr(module, "__file__", None)
        if not path:  # namespace package
            roots.extend(os.path.abspath(p) + os.sep for p in getattr(module, "__path__", ()))
            continue
        path = os.path.abspath(path)
        if os.path.basename(path).startswith("__init__."):
            roots.append(os.path.dirname(path) + os.sep)
        else:
            roots.append(os.path.splitext(path)[0])  # matches .py and .pyc alike
    return roots


#: Directories of the standard library (each ends with a separator).
_STDLIB_DIRS: tuple[str, ...] = tuple(sorted({
    os.path.abspath(p) + os.sep
    for p in (sysconfig.get_paths().get("stdlib"), sysconfig.get_paths().get("platstdlib"),
              os.path.dirname(os.__file__))
    if p
}))


class _InternalClassifier:
    """Decides, with a cache, whether a file belongs to the machinery around user code.

    Two tests: the file is under the directory of an imported internal package, or its path
    names such a package right after ``site-packages``/``dist-packages`` or the standard
    library directory (which works for snapshots from another process).
    """

    def __init__(self) -> None:
        self._cache: dict[str, bool] = {}
        self._roots: tuple[str, ...] = ()
        self._seen_modules = -1
        stdlib = "|".join(re.escape(d) for d in _STDLIB_DIRS)
        pkgs = "|".join(re.escape(p) for p in INTERNAL_PACKAGES)
        std = "|".join(re.escape(p) for p in INTERNAL_STDLIB)
        self._pattern = re.compile(
            rf"(?:[\\/](?:site|dist)-packages[\\/](?:{pkgs})(?:[\\/]|\.py[co]?$))"
            rf"|(?:^(?:{stdlib})(?:{std})(?:[\\/]|\.py[co]?$))"
            rf"|(?:[\\/]lib[\\/]python3\.\d+[\\/](?:{std})(?:[\\/]|\.py[co]?$))"
        )
        self._lock = threading.Lock()

    def _refresh_roots(self) -> None:
        count = len(sys.modules)
        if count != self._seen_modules:
            roots = _module_roots(INTERNAL_PACKAGES) + _module_roots(INTERNAL_STDLIB)
            roots = tuple(dict.fromkeys([_PACKAGE_DIR, *roots]))
            if roots != self._roots:
                self._roots = roots
                # A root may have appeared: forget only negative answers.
                self._cache = {k: v for k, v in self._cache.items() if v}
            self._seen_modules = count

    def __call__(self, filename: str) -> bool:
        with self._lock:
            self._refresh_roots()
            found = self._cache.get(filename)
            if found is None:
                found = self._classify(filename)
                self._cache[filename] = found
            return found

    def _classify(self, filename: str) -> bool:
        if not filename:
            return False
        if filename.startswith(_FROZEN_INTERNAL) or filename.startswith(_GENERATED_PREFIXES):
            return True
        if filename.startswith("<"):
            return False
        path = os.path.abspath(filename)
        for root in self._roots:
            if path.startswith(root) and (root.endswith(os.sep) or path[len(root) :] in (
                ".py", ".pyc", ".pyo"
            )):
                return True
        return bool(self._pattern.search(path))


def is_stdlib(filename: str) -> bool:
    """True for files of the standard library (frozen modules included), not site-packages."""
    if filename.startswith("<frozen "):
        return True
    if filename.startswith("<") or "site-packages" in filename or "dist-packages" in filename:
        return False
    return os.path.abspath(filename).startswith(_STDLIB_DIRS)


_PACKAGES_RE = re.compile(r"[\\/](?:site|dist)-packages[\\/]")


def short_path(filename: str) -> str:
    """A file name for people: relative to site-packages, the standard library or the
    current folder when it is under one of them, else the full path (``~`` for home)."""
    if not filename or filename.startswith("<"):
        return filename
    matches = list(_PACKAGES_RE.finditer(filename))
    if matches:
        return filename[matches[-1].end():]
    path = os.path.abspath(filename)
    for root in _STDLIB_DIRS:
        if path.startswith(root):
            return path[len(root):]
    try:
        cwd = os.getcwd() + os.sep
    except OSError:
        cwd = ""
    if cwd and path.startswith(cwd):
        return path[len(cwd):]
    home = os.path.expanduser("~")
    if home not in ("", "/", "~") and path.startswith(home + os.sep):
        return "~" + path[len(home):]
    return filename


def is_profiler_file(filename: str) -> bool:
    """True for files of this package."""
    return filename.startswith(_PACKAGE_DIR)


is_internal = _InternalClassifier()
is_internal.__doc__ = (
    "True for files of IPython, ipykernel, traitlets, tornado, zmq, asyncio, runpy, the import "
    "machinery and mprofile_ipy itself: frames that views hide unless asked to show all."
)


# ---------------------------------------------------------------------------------------------
# Cells


def _leading_blank_lines(lines: list[str]) -> int:
    count = 0
    for line in lines:
        if line.strip():
            break
        count += 1
    return count


class Attributor:
    """Resolves file names and lines against one IPython shell (or none), with caches.

    Build one per result: labels and source text are captured when first asked, so a view
    rendered later is not changed by cells run in between.
    """

    def __init__(self, shell: Any | None = None) -> None:
        if shell is None:
            shell = _current_shell()
        self.shell = shell
        self._cells: dict[str, CellInfo | None] = {}
        self._locations: dict[tuple[str, int], Location] = {}
        # file name -> (short path, internal, stdlib, its lines): one answer per file
        self._files: dict[str, tuple[str, bool, bool, list[str]]] = {}

    # -- cells ----------------------------------------------------------------------------
    def cell(self, filename: str) -> CellInfo | None:
        """The cell compiled under ``filename``, or ``None`` if it is not cell code."""
        try:
            return self._cells[filename]
        except KeyError:
            info = self._find_cell(filename)
            self._cells[filename] = info
            return info

    def _cell_number(self, filename: str) -> int | None:
        """The execution count IPython's compiler gave ``filename`` (``None``: not a cell).

        Read through the compiler's public ``format_code_name`` (IPython >= 8), which names
        a cell ``("Cell", "In[12]")`` in tracebacks.
        """
        namer = getattr(getattr(self.shell, "compile", None), "format_code_name", None)
        if namer is None:
            return None
        try:
            named = namer(filename)
        except Exception:  # noqa: BLE001 - a foreign compiler: not a cell we know
            return None
        if not named:
            return None
        match = _CODE_NAME_RE.match(str(named[1]))
        return int(match.group(1)) if match else None

    def _find_cell(self, filename: str) -> CellInfo | None:
        registered = _registered.get(filename)
        if registered is not None:
            return registered
        number = self._cell_number(filename)
        if number is None:
            match = _IPYTHON_INPUT_RE.match(filename)
            if match:
                number = int(match.group(1))
            elif _IPYKERNEL_RE.search(filename):
                # A cell of a kernel whose compiler we cannot see (another process).
                return CellInfo(None, f"Cell {_IPYKERNEL_RE.search(filename).group(2)}")
            else:
                return None
        code_lines = source_lines(filename)
        raw = self._raw_cell(number, code_lines)
        offset = 0
        lines: tuple[str, ...] | None = None
        raw_lines: tuple[str, ...] | None = None
        if raw is not None:
            raw_lines = tuple(raw.splitlines())
            lead = _leading_blank_lines(list(raw_lines))
            code_count = len("".join(code_lines).rstrip("\n").splitlines())
            if code_count and len(raw_lines) - lead == code_count:
                offset, lines = lead, raw_lines
        return CellInfo(number, cell_label(number), offset, lines, raw_lines)

    def _raw_cell(self, number: int, code_lines: list[str]) -> str | None:
        """The raw text of cell ``number``, checked against the code that was compiled."""
        history = getattr(self.shell, "history_manager", None)
        if history is None or not code_lines:
            return None
        parsed = getattr(history, "input_hist_parsed", None)
        raw = getattr(history, "input_hist_raw", None)
        if not parsed or not raw or len(parsed) != len(raw):
            return None
        code = "".join(code_lines).rstrip("\n")
        if number < len(parsed) and parsed[number].rstrip("\n") == code:
            return raw[number]
        for index in range(len(parsed) - 1, 0, -1):  # history with gaps: find the same code
            if parsed[index].rstrip("\n") == code:
                return raw[index]
        return None

    # -- frames ---------------------------------------------------------------------------
    def locate(self, filename: str, lineno: int) -> Location:
        """Resolve one frame position (cached)."""
        key = (filename, lineno)
        found = self._locations.get(key)
        if found is None:
            found = self._locate(filename, lineno)
            self._locations[key] = found
        return found

    def _locate(self, filename: str, lineno: int) -> Location:
        info = self.cell(filename)
        if info is None:
            file = self._files.get(filename)
            if file is None:
                file = self._files[filename] = (short_path(filename), is_internal(filename),
                                                is_stdlib(filename), source_lines(filename))
            short, internal, stdlib, lines = file
            source = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
            return Location(filename, lineno, short, lineno, source, None, internal, False,
                            stdlib)
        line = lineno + info.line_offset
        source = ""
        if info.lines is not None and 0 < line <= len(info.lines):
            source = info.lines[line - 1].strip()
        elif lineno > 0:
            lines_ = source_lines(filename)
            source = lines_[lineno - 1].strip() if lineno <= len(lines_) else ""
        return Location(filename, lineno, info.label, line, source, info.number, False, True)

    def caller_cell(self, depth: int = 1) -> tuple[str, int, int] | None:
        """The innermost frame of the calling stack that is cell code: (filename, lineno,
        cell number), or ``None`` (for example when a magic is called from a script)."""
        frame = sys._getframe(depth)
        while frame is not None:
            filename = frame.f_code.co_filename
            number = self._cell_number(filename)
            if number is None and filename in _registered:
                number = _registered[filename].number
            if number is not None:
                return filename, frame.f_lineno, number
            frame = frame.f_back
        return None


def _current_shell() -> Any | None:
    """The running IPython shell, without importing IPython when it is not loaded."""
    if "IPython" not in sys.modules:
        return None
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython broken
        return None
    return get_ipython()
