"""Which frames of a traceback the views show, and how a frame is shown.

:class:`FrameInfo` is one frame as the views show it (its file, line and function, and its
display form: ``In [12], line 3`` with the source text). :func:`visible_frames` decides
which frames of a traceback are the user's: the frames that called the profiled code are cut
*by position* against the stack the IPython layer recorded (:class:`CallerStack`); without
one, the first frame of user code starts the traceback. Frames of mprofile_ipy itself are
never shown, and a comprehension and the line that runs it are one frame (Python 3.11 and
older give the comprehension a frame of its own on the same line). The report
(:mod:`mprofile_ipy.report`) applies it once per distinct traceback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .attribution import Location, is_profiler_file

__all__ = ["CallerStack", "FrameInfo", "is_user", "visible_frames"]

_COMPREHENSIONS = ("<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>")
#: A cell line that runs the profiler's magic (as typed).
_MAGIC_LINE = re.compile(r"(?:^|[\s=(;])%%?mprofile\b")


@dataclass(frozen=True)
class CallerStack:
    """The frames that called the profiled code, outermost first, as ``(filename, lineno)``.

    A traceback that passes through all of them is cut there: what remains is the user's
    code. ``strict`` (a cell run by the profiler): a traceback of the same thread that leaves
    this stack early is the machinery's own and is hidden. Otherwise (a session, where
    IPython runs the cells) such a traceback keeps the frames from its oldest cell frame, or
    is hidden when it has none. The last frame is compared by file only: the caller runs
    the code from several lines (statements, then the value of the last expression).
    """

    frames: tuple[tuple[str, int], ...]
    strict: bool = True



@dataclass(frozen=True)
class FrameInfo:
    """One frame as shown: the frame's own file/line/function plus its display form."""

    filename: str
    lineno: int
    name: str
    file: str
    line: int
    source: str
    cell: int | None
    internal: bool
    is_cell: bool
    stdlib: bool = False
    firstlineno: int = 0

    @classmethod
    def from_location(cls, location: Location, name: str, firstlineno: int = 0) -> FrameInfo:
        """Combine a resolved location with the frame's function name and first line."""
        return cls(location.filename, location.lineno, name, location.file, location.line,
                   location.source, location.cell, location.internal, location.is_cell,
                   location.stdlib, firstlineno)

    def __hash__(self) -> int:
        # Tracebacks (tuples of frames) are dict keys everywhere: hash what tells frames
        # apart, not all eleven fields.
        return hash((self.filename, self.lineno, self.name))

    @property
    def where(self) -> str:
        """``In [3], line 2`` for cells, ``path:12`` for files."""
        if self.is_cell:
            return f"{self.file}, line {self.line}"
        return f"{self.file}:{self.line}"

    def format(self) -> str:
        """One line: where, in which function, and the source text."""
        text = self.where
        if self.name and self.name != "<module>":
            text += f" in {self.name}"
        if self.source:
            text += f": {self.source}"
        return text



def _fold_comprehensions(frames: tuple[FrameInfo, ...]) -> tuple[FrameInfo, ...]:
    """One frame per line for comprehensions: Python <= 3.11 runs a comprehension in a
    frame of its own on the line of its caller; the caller's frame is dropped (the
    comprehension's, which names it, stays)."""
    out: list[FrameInfo] = []
    for frame in frames:
        if (out and frame.name and frame.name.endswith(_COMPREHENSIONS)
                and (out[-1].filename, out[-1].lineno) == (frame.filename, frame.lineno)):
            out[-1] = frame
            continue
        out.append(frame)
    return tuple(out)


def _cut_callers(frames: tuple[FrameInfo, ...], total_nframe: int | None,
                 base: CallerStack) -> int | None:
    """Index of the first frame of the user's code in ``frames`` (oldest first), by position.

    ``-1``: the allocation is the machinery's own (hide it). ``None``: the traceback does
    not start with the caller stack (another thread): decide by the frames themselves.
    """
    callers = base.frames
    depth = len(callers)
    count = len(frames)
    offset = max(total_nframe or count, count) - count  # frames cut off at the old end
    if offset >= depth:
        return 0  # only frames deeper than the callers were kept: all the user's
    matched = False
    for index in range(count):
        level = offset + index
        if level >= depth:
            return index
        filename, lineno = callers[level]
        frame = frames[index]
        if frame.filename == filename and (level == depth - 1 or frame.lineno == lineno):
            matched = True
            continue
        if not matched:
            return None
        if base.strict:
            return -1
        return next((i for i in range(index, count) if frames[i].is_cell), -1)
    return -1 if matched else None


def is_user(frame: FrameInfo) -> bool:
    """True for a frame of the user's code: a cell, or a file that is neither of the
    machinery (IPython, the kernel, the profiler) nor of the standard library."""
    return frame.is_cell or not (frame.internal or frame.stdlib)


def _runs_the_magic(frames: tuple[FrameInfo, ...]) -> bool:
    """True when the innermost user frame is a cell line that calls ``%mprofile`` and only
    IPython's frames follow it: IPython running the profiler's own command."""
    for index in range(len(frames) - 1, -1, -1):
        frame = frames[index]
        if frame.is_cell:
            return bool(_MAGIC_LINE.search(frame.source))
        if is_user(frame):
            return False
    return False


def visible_frames(frames: tuple[FrameInfo, ...], total_nframe: int | None = None, *,
                   show_all: bool = False, base: CallerStack | None = None
                   ) -> tuple[FrameInfo, ...]:
    """The frames a view shows of one traceback (oldest first); ``()`` when it hides it.

    1. The callers of the user's code are cut by position (``base``); without it, frames
       older than the innermost frame of the profiler that called user code are cut.
    2. The profiler's own frames are never shown; an allocation the profiler made itself,
       called from user code, is hidden (unless ``show_all``), and so is what IPython
       allocates to run a ``%mprofile`` line of a session.
    3. Unless ``show_all``: the traceback starts at the first frame of user code (a cell, or
       a file that is neither of the machinery nor of the standard library), later frames of
       the machinery are dropped, and an allocation with no user frame is hidden.
    """
    start = None
    if base is not None:  # positions count the frames as recorded: cut before folding
        start = _cut_callers(frames, total_nframe, base)
        if start == -1:
            return ()
    frames = _fold_comprehensions(frames[start or 0:])
    if start is None:
        start = 0
        for index in range(len(frames) - 1):
            if is_profiler_file(frames[index].filename) and not is_profiler_file(
                    frames[index + 1].filename):
                start = index + 1  # the profiler called this code: older frames called it
        frames = frames[start:]
    if not show_all:
        for frame in reversed(frames):
            if is_profiler_file(frame.filename):
                return ()  # made by the profiler, called from user code
            if is_user(frame):
                break
    frames = tuple(f for f in frames if not is_profiler_file(f.filename))
    if (base is None or not base.strict) and _runs_the_magic(frames):
        return ()
    if show_all:
        return frames
    for index, frame in enumerate(frames):
        if is_user(frame):
            return tuple(f for f in frames[index:] if not f.internal)
    return ()
