"""Run a cell's code or a statement under the sampler, in the user's namespace.

:func:`compile_code` compiles the code under the file name IPython gives a cell (so
tracebacks say ``Cell In[12]``), padded so that its lines are the lines of the cell as typed,
and registers it for attribution; a trailing expression is compiled apart, as ``%%time``
does, so that its value becomes the magic's value. :func:`run` runs it with the sampler
started and always stops it; it records the stack that called the code
(:func:`caller_stack`) so that the report cuts those frames by position.
"""

from __future__ import annotations

import ast
import contextlib
import io
import itertools
import linecache
import sys
import time
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

from IPython.core.error import UsageError

from .. import budget as _budget
from .. import sampler
from ..attribution import Attributor, register_code
from ..errors import MemoryBudgetExceeded
from ..report import CallerStack, TimelinePoint
from ..result import ProfileResult
from .options import Options

__all__ = ["Compiled", "caller_stack", "check_idle", "compile_code", "ends_with_semicolon",
           "make_result", "run", "start_sampler"]

_counter = itertools.count(1)


@dataclass
class Compiled:
    """Code ready to run: statements, the trailing expression (or None), the file name."""

    code: Any
    last_expr: Any
    filename: str


def compile_code(shell: Any, source: str, first_line: int, number: int | None,
                 raw_lines: tuple[str, ...] | None, line_offset: int) -> Compiled:
    """Compile ``source`` so that its first line is line ``first_line`` of cell ``number``."""
    lines = source.splitlines()
    lead = 0
    while lead < len(lines) and not lines[lead].strip():
        lead += 1
    body = "\n".join(lines[lead:])
    transformed = shell.transform_cell(body) if body.strip() else "pass\n"
    padded = "\n" * (first_line - 1 + lead) + transformed
    if number is not None:
        filename = shell.compile.cache(padded, number, raw_code=padded)
    else:
        filename = f"<mprofile-input-{next(_counter)}>"
        linecache.cache[filename] = (len(padded), None, padded.splitlines(True), filename)
    register_code(filename, number, raw_lines, line_offset)
    tree = shell.compile.ast_parse(padded, filename=filename)
    tree = shell.transform_ast(tree)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    code = shell.compile(tree, filename, "exec")
    last_code = shell.compile(last, filename, "eval") if last is not None else None
    return Compiled(code, last_code, filename)


def ends_with_semicolon(source: str) -> bool:
    """True when the code's last token is ';': as without the magic, its value is not shown."""
    tokens = []
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        pass
    skip = (tokenize.ENDMARKER, tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT,
            tokenize.DEDENT, tokenize.INDENT)
    last = next((tok for tok in reversed(tokens) if tok.type not in skip), None)
    return last is not None and last.type == tokenize.OP and last.string == ";"


def check_idle() -> None:
    """A UsageError when the sampler already runs (a session, or ``mprofile_ipy.start()``)."""
    if sampler.is_tracing():
        raise UsageError(
            "the sampler is already running (a `%mprofile start` session, or "
            "mprofile_ipy.start()). Use `%mprofile snapshot NAME` and `%mprofile compare` "
            "inside a session, or `%mprofile stop` first.")


def start_sampler(opts: Options) -> None:
    """Start sampling with the options; a refusal becomes a UsageError."""
    try:
        sampler.start(opts.max_frames, opts.rate, seed=opts.seed, native=opts.native)
    except (ValueError, TypeError, RuntimeError, OSError) as exc:
        raise UsageError(f"cannot start the profiler: {exc}") from None


def caller_stack(frame: FrameType | None, strict: bool) -> CallerStack:
    """The stack from the outermost frame down to ``frame`` (included): the frames that call
    the user's code, whose own frame will be one deeper."""
    frames = []
    while frame is not None:
        frames.append((frame.f_code.co_filename, frame.f_lineno))
        frame = frame.f_back
    return CallerStack(tuple(reversed(frames)), strict)


def cell_caller_stack(shell: Any) -> CallerStack | None:
    """The stack that runs the calling cell (for a session: later cells run from the same
    place), or None when the magic was not called from a cell."""
    attributor = Attributor(shell)
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if attributor.cell(frame.f_code.co_filename) is not None:
            return caller_stack(frame.f_back, strict=False)
        frame = frame.f_back
    return None


def make_result(shell: Any, opts: Options, label: str, elapsed: float,
                **measures: Any) -> ProfileResult:
    """A result for what is alive now, with the sampler's counters. ``measures`` override
    some (a session's peak) or add some (its timeline, the code's error, the caller stack).
    Call it with sampling paused: the result is the profiler's bookkeeping."""
    stats = sampler.get_stats()
    snapshot = measures.pop("snapshot", None) or sampler.take_snapshot()
    # The addresses of the sampled blocks alive now, for `%mprofile why` / result.retainers():
    # once the sampler stops they cannot be read any more.
    measures.setdefault("live_blocks", sampler.live_blocks())
    figures: dict[str, Any] = {
        "current": stats.current_bytes,
        "peak": stats.peak_bytes,
        "allocated": stats.allocated_bytes,
        "allocated_count": stats.allocated_count,
        "samples": stats.samples,
        "sample_rate": stats.sample_rate,
        **measures,
    }
    view = opts.view_options()
    return ProfileResult(snapshot, label=label, elapsed=elapsed, group_by=view.group_by,
                         top=view.top, show_all=view.show_all, include=view.include,
                         exclude=view.exclude, options=opts.as_dict(),
                         attributor=Attributor(shell), **figures)


@contextlib.contextmanager
def cell_budget(limit: str | None) -> Iterator[None]:
    """``--budget``: the budget for the code only (on top of the session's); a limit the
    budget refuses is a UsageError before the code runs."""
    if not limit:
        yield
        return
    guard = _budget.budget(limit)
    try:
        guard.__enter__()
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--budget: {exc}") from None
    try:
        yield
    finally:
        guard.__exit__(None, None, None)


def trip_measures(error: BaseException | None) -> dict[str, Any]:
    """When the budget stopped the code: the report is of the sampled allocations alive at
    the interrupt (what was allocating; unwinding may have freed it since) and the memory
    over the last seconds, as the trip recorded them."""
    if not isinstance(error, MemoryBudgetExceeded):
        return {}
    out: dict[str, Any] = {}
    snapshot = getattr(error, "snapshot", None)
    if snapshot is not None:
        out.update(snapshot=snapshot, current=None)
    points = getattr(error, "timeline", None) or []
    if points:
        end = points[-1][0]
        out["timeline"] = [
            TimelinePoint(f"{t - end:+.1f} s", None, t,
                          float(traced if traced is not None else rss or 0), float(rss or 0))
            for t, rss, traced in points]
    return out


def run(shell: Any, compiled: Compiled, opts: Options, local_ns: Any,
        label: str) -> tuple[Any, ProfileResult | None, BaseException | None]:
    """Run the code under the sampler (and its ``--budget``); always stops it. Returns
    (value, result, error).

    The result is None when the code itself stopped the sampler (nothing to report). When
    the budget stopped the code, the result is of the allocations alive at the interrupt.
    """
    __tracebackhide__ = True  # noqa: F841 - IPython hides this frame from tracebacks
    check_idle()
    glob = shell.user_global_ns
    loc = local_ns if local_ns is not None else shell.user_ns
    value = None
    error: BaseException | None = None
    result = None
    base = caller_stack(sys._getframe(), strict=True)  # the code runs one frame deeper
    start_sampler(opts)
    followers = None
    try:
        if opts.children or opts.dask:
            from .followers import Followers

            followers = Followers(opts)
        start = time.perf_counter()
        with cell_budget(opts.budget):
            try:
                exec(compiled.code, glob, loc)
                if compiled.last_expr is not None:
                    value = eval(compiled.last_expr, glob, loc)
            except BaseException as exc:  # noqa: BLE001 - re-raised after the report
                error = exc
        elapsed = time.perf_counter() - start
        if sampler.is_tracing():
            with sampler.paused():
                result = make_result(shell, opts, label, elapsed, error=error,
                                     caller_stack=base, **trip_measures(error))
                if followers is not None:
                    result = followers.merge_into(result)
    finally:
        if followers is not None:
            followers.close()
        sampler.stop()
    if result is None:
        print("mprofile: the profiled code stopped the profiler; no report.", file=sys.stderr)
    return value, result, error
