"""The IPython face: ``%%mprofile`` (a cell), ``%mprofile`` (a statement, or a session).

Options become sampler settings, the code runs in the user's namespace exactly as without the
magic (its output, value and exceptions are unchanged; an exception propagates after the
report), and the result is a :class:`~mprofile_ipy.result.ProfileResult` shown in the chosen
view. Bad options raise ``UsageError`` before anything starts; the sampler is always stopped
when the code ends, however it ends. ``load_ipython_extension``/``unload_ipython_extension``
register and remove the magics.

Line numbers stay right: the code is compiled under a file name that IPython maps to the cell
(``In [12]``), padded so that its lines are the lines of the cell as typed.
"""

from __future__ import annotations

import ast
import io
import itertools
import linecache
import os
import re
import shlex
import sys
import time
import tokenize
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import (
    Magics,
    line_cell_magic,
    magics_class,
    needs_local_scope,
    no_var_expand,
)
from IPython.core.magic_arguments import (
    MagicArgumentParser,
    argument,
    argument_group,
    magic_arguments,
)

from . import sampler
from .attribution import Attributor, CellInfo, cell_label, register_code
from .renderers import fmt_rate, fmt_size
from .result import GROUP_BY, DiffResult, ProfileResult, TimelinePoint, normalize_group_by
from .units import parse_size

__all__ = ["MProfileMagics", "load_ipython_extension", "unload_ipython_extension"]

VIEWS = ("table", "chart", "flame", "widget", "text", "none")
#: First words that make a line a session command rather than a statement.
COMMANDS = ("start", "stop", "snapshot", "show", "compare", "timeline", "export", "status")
#: The name of "a snapshot taken right now" in show/compare/export.
NOW = "now"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_counter = itertools.count(1)


# ---------------------------------------------------------------------------------------------
# Options


def _rate(text: str) -> int:
    try:
        rate = parse_size(text)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--rate: {exc}") from None
    if rate > 2**40:
        raise UsageError(f"--rate: {text!r} is too large (at most 1TiB between samples)")
    return rate


def _positive(name: str, limit: int | None = None) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise UsageError(f"{name} must be a whole number, got {text!r}") from None
        if value < 1 or (limit is not None and value > limit):
            upper = f" and {limit}" if limit is not None else ""
            raise UsageError(f"{name} must be between 1{upper}, got {value}")
        return value

    return convert


def _group_by(text: str) -> str:
    try:
        return normalize_group_by(text)
    except ValueError as exc:
        raise UsageError(f"--group-by: {exc}") from None


def _view(text: str) -> str:
    if text not in VIEWS:
        raise UsageError(f"--view must be one of {', '.join(VIEWS)}, got {text!r}")
    return text


def _identifier(text: str) -> str:
    if not text.isidentifier():
        raise UsageError(f"--output needs a Python variable name, got {text!r}")
    return text


_RATE_HELP = (
    "Sample rate: mean bytes allocated between two samples, with units (64KiB, 1MB, 512k). "
    "Lower rates see more and cost more; 1 traces every allocation, as tracemalloc. "
    f"Default: {fmt_rate(sampler.DEFAULT_SAMPLE_RATE)}."
)
_SAMPLING = [
    argument("-r", "--rate", type=_rate, default=None, metavar="RATE", help=_RATE_HELP),
    argument("-f", "--max-frames", type=_positive("--max-frames", sampler.MAX_FRAMES_LIMIT),
             default=None, metavar="N",
             help=f"Frames kept per traceback (1 to {sampler.MAX_FRAMES_LIMIT}). "
                  f"Default: {sampler.DEFAULT_MAX_FRAMES}."),
    argument("--seed", type=int, default=None,
             help="Seed of the sampler's random numbers, for reproducible runs."),
]
_SAMPLING.append(argument(
    "--native", action="store_true", default=False,
    help="Also sample malloc/mmap made by native libraries (Arrow, SQLite, PyTorch, ...); "
         "NumPy arrays are always seen. Linux/glibc only."))

_VIEWING = [
    argument("-g", "--group-by", type=_group_by, default=None, metavar="KEY",
             help=f"How to group allocations into sites: {', '.join(GROUP_BY)}. 'cell' "
                  "(default) folds library frames into the line of the cell that called "
                  "them; 'line' is tracemalloc's 'lineno'."),
    argument("-n", "--top", type=_positive("--top"), default=None, metavar="N",
             help="Number of sites to show. Default: 10."),
    argument("-v", "--view", type=_view, default=None, metavar="VIEW",
             help=f"How to show the report: {', '.join(VIEWS)}. 'table' (default) is HTML "
                  "in notebooks and text in terminals; 'chart' a bar chart; 'flame' an "
                  "icicle graph; 'widget' an interactive explorer; 'none' shows nothing "
                  "(use with -o)."),
    argument("-i", "--include", action="append", default=[], metavar="PATTERN",
             help="Keep only allocations whose traceback passes through a file matching "
                  "PATTERN (fnmatch: '*/mypkg/*'; 'In [*' matches cells). Repeatable."),
    argument("-x", "--exclude", action="append", default=[], metavar="PATTERN",
             help="Drop allocations whose traceback passes through a file matching PATTERN. "
                  "Repeatable."),
    argument("-a", "--all-frames", action="store_true", default=False,
             help="Show every frame, IPython's, ipykernel's and the profiler's included "
                  "(hidden by default)."),
]
_OUTPUT = argument("-o", "--output", type=_identifier, default=None, metavar="VAR",
                   help="Store the result (a ProfileResult) in the variable VAR.")
_PPROF = argument("--pprof", default=None, metavar="PATH",
                  help="Also write the profile to PATH as gzipped pprof (go tool pprof, "
                       "Pyroscope, speedscope).")


def _apply(decorators: list[Any]) -> Callable[[Any], Any]:
    def wrap(func: Any) -> Any:
        for deco in reversed(decorators):
            func = deco(func)
        return func

    return wrap


def _build_parser(prog: str, description: str, *, sampling: bool = False,
                  viewing: bool = False, output: bool = False, pprof: bool = False,
                  positionals: list[tuple[str, dict[str, Any]]] = ()) -> MagicArgumentParser:
    parser = MagicArgumentParser(prog=prog, description=description)
    for name, kwargs in positionals:
        parser.add_argument(name, **kwargs)
    decorators = ((_SAMPLING if sampling else []) + (_VIEWING if viewing else [])
                  + ([_OUTPUT] if output else []) + ([_PPROF] if pprof else []))
    for deco in decorators:
        deco.add_to_parser(parser, None)
    return parser


_PARSERS: dict[str, MagicArgumentParser] = {
    "start": _build_parser(
        "mprofile start", "Start a session: sample allocations across cells until "
        "`%mprofile stop`. Report options set the defaults of later show/compare.",
        sampling=True, viewing=True),
    "stop": _build_parser(
        "mprofile stop", "Stop the session (a last snapshot is kept as 'final')."),
    "snapshot": _build_parser(
        "mprofile snapshot", "Remember what is alive now under NAME.",
        positionals=[("name", {"metavar": "NAME"})]),
    "show": _build_parser(
        "mprofile show", "Show a snapshot of the session (default: now, or 'final' once "
        "stopped).", viewing=True, output=True, pprof=True,
        positionals=[("name", {"metavar": "NAME", "nargs": "?", "default": None})]),
    "compare": _build_parser(
        "mprofile compare", "Show what changed from snapshot A to snapshot B (default: now, "
        "or 'final' once stopped).", viewing=True, output=True,
        positionals=[("old", {"metavar": "A"}),
                     ("new", {"metavar": "B", "nargs": "?", "default": None})]),
    "timeline": _build_parser(
        "mprofile timeline", "Memory still alive after each cell of the session (and at each "
        "named snapshot), and each cell's peak."),
    "export": _build_parser(
        "mprofile export", "Write snapshot NAME ('now' for a new one) as a gzipped pprof "
        "profile at PATH.", positionals=[("name", {"metavar": "NAME"}),
                                         ("path", {"metavar": "PATH"})]),
    "status": _build_parser(
        "mprofile status", "Whether a session runs, its settings and its snapshots."),
}
_PARSERS["timeline"].add_argument("-v", "--view", type=_view, default="chart", metavar="VIEW",
                                  help="chart (default), table, text or none.")
_PARSERS["timeline"].add_argument("-o", "--output", type=_identifier, default=None,
                                  metavar="VAR", help="Store the timeline points in VAR.")


@dataclass
class Options:
    """Settled options of one run (defaults filled in)."""

    rate: int = sampler.DEFAULT_SAMPLE_RATE
    max_frames: int = sampler.DEFAULT_MAX_FRAMES
    seed: int | None = None
    group_by: str = "cell"
    top: int = 10
    view: str = "table"
    output: str | None = None
    pprof: str | None = None
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    all_frames: bool = False
    native: bool = False

    def update(self, args: Any) -> Options:
        """A copy with every option given in ``args`` (an argparse namespace) applied."""
        new = Options(**{**self.__dict__, "include": list(self.include),
                         "exclude": list(self.exclude)})
        for name in ("rate", "max_frames", "seed", "group_by", "top", "view", "output",
                     "pprof"):
            value = getattr(args, name, None)
            if value is not None:
                setattr(new, name, value)
        if getattr(args, "include", None):
            new.include = list(args.include)
        if getattr(args, "exclude", None):
            new.exclude = list(args.exclude)
        if getattr(args, "all_frames", False):
            new.all_frames = True
        if getattr(args, "native", False):
            new.native = True
        return new

    def as_dict(self) -> dict[str, Any]:
        """For ``ProfileResult.options``."""
        return dict(self.__dict__)


#: Every option of the statement form -> whether it takes a value.
_TAKES_VALUE: dict[str, bool] = {
    opt: deco.kwds.get("action") not in ("store_true", "store_false")
    for deco in _SAMPLING + _VIEWING + [_OUTPUT, _PPROF]
    for opt in deco.args
}


def _split_options(line: str) -> tuple[list[str], str, bool]:
    """Leading options of ``%mprofile [options] [--] statement``, and the statement verbatim.

    Options are read as a shell would (quotes allowed); the statement is everything after
    them, untouched. Returns (option tokens, statement, whether ``--`` was given).
    """
    takes_value = _TAKES_VALUE
    tokens: list[str] = []
    pos = 0
    n = len(line)
    while True:
        while pos < n and line[pos].isspace():
            pos += 1
        if pos >= n:
            return tokens, "", False
        if line.startswith("--", pos) and (pos + 2 == n or line[pos + 2].isspace()):
            return tokens, line[pos + 2 :].strip(), True
        if line[pos] != "-":
            return tokens, line[pos:].strip(), False
        token, pos = _read_token(line, pos)
        name = token.split("=", 1)[0]
        if name in takes_value:
            tokens.append(token)
            if takes_value[name] and "=" not in token:
                while pos < n and line[pos].isspace():
                    pos += 1
                if pos >= n:
                    raise UsageError(f"option {name} needs a value")
                value, pos = _read_token(line, pos)
                tokens.append(value)
            continue
        short = token[:2]
        if not token.startswith("--") and takes_value.get(short):  # -r64KiB
            tokens.extend([short, token[2:]])
            continue
        raise UsageError(
            f"unknown option {token!r}. Options: "
            f"{', '.join(sorted(o for o in takes_value if o.startswith('--')))}. "
            "To profile a statement that starts with '-', put '--' before it."
        )


def _read_token(line: str, pos: int) -> tuple[str, int]:
    """One shell-like word starting at ``pos`` (quotes removed) and the position after it."""
    end = pos
    quote = None
    while end < len(line):
        char = line[end]
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char.isspace():
            break
        end += 1
    if quote:
        raise UsageError(f"unbalanced quote in {line[pos:end]!r}")
    word = line[pos:end]
    try:
        parts = shlex.split(word)
    except ValueError as exc:
        raise UsageError(f"cannot read {word!r}: {exc}") from None
    return (parts[0] if parts else ""), end


def _expand(shell: Any, text: str) -> str:
    """``{expr}`` and ``$name`` in options, from the user's namespace (as other magics do);
    the text unchanged when it does not expand."""
    if "{" not in text and "$" not in text:
        return text
    from IPython.utils.text import DollarFormatter

    try:
        return DollarFormatter().vformat(text, args=[], kwargs=shell.user_ns)
    except Exception:  # noqa: BLE001 - like IPython's own var_expand
        return text


def _parse(parser: MagicArgumentParser, argstring: str) -> Any:
    try:
        argv = shlex.split(argstring)
    except ValueError as exc:
        raise UsageError(f"cannot read the options {argstring!r}: {exc}") from None
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Running code


@dataclass
class _Compiled:
    code: Any
    last_expr: Any  # code of a trailing expression, evaluated for its value, or None
    filename: str


def _compile(shell: Any, source: str, first_line: int, number: int | None,
             raw_lines: tuple[str, ...] | None, line_offset: int) -> _Compiled:
    """Compile ``source`` so that its first line is line ``first_line`` of the cell.

    The file name is the one IPython gives a cell (so tracebacks say ``Cell In[12]``) and is
    registered for attribution; a trailing expression is compiled apart, as ``%%time`` does,
    so that its value becomes the magic's value.
    """
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
    return _Compiled(code, last_code, filename)


def _ends_with_semicolon(source: str) -> bool:
    """True when the code's last token is ';': as without the magic, its value is not shown.

    (IPython's ``output_can_be_silenced`` would check this after the magic returns, under a
    running session's sampler, for every session command too.)
    """
    tokens = []
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        pass
    skip = (tokenize.ENDMARKER, tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT,
            tokenize.DEDENT, tokenize.INDENT)
    last = next((tok for tok in reversed(tokens) if tok.type not in skip), None)
    return last is not None and last.type == tokenize.OP and last.string == ";"


def _check_idle() -> None:
    if sampler.is_tracing():
        raise UsageError(
            "the sampler is already running (a `%mprofile start` session, or "
            "mprofile_ipy.start()). Use `%mprofile snapshot NAME` and `%mprofile compare` "
            "inside a session, or `%mprofile stop` first."
        )


def _start_sampler(opts: Options) -> None:
    """Start sampling with the options; a refusal becomes a UsageError."""
    try:
        sampler.start(opts.max_frames, opts.rate, seed=opts.seed, native=opts.native)
    except (ValueError, TypeError, RuntimeError, OSError) as exc:
        raise UsageError(f"cannot start the profiler: {exc}") from None


def _make_result(shell: Any, opts: Options, label: str, elapsed: float,
                 **extra: Any) -> ProfileResult:
    """A result for what is alive now, with the sampler's counters. ``extra`` overrides
    some (a session's peak) or adds fields (its timeline, the code's error). Call it with
    sampling paused: the result is the profiler's bookkeeping."""
    stats = sampler.get_stats()
    snapshot = sampler.take_snapshot()
    settings: dict[str, Any] = {
        "current": stats.current_bytes,
        "peak": stats.peak_bytes,
        "allocated": stats.allocated_bytes,
        "allocated_count": stats.allocated_count,
        "samples": stats.samples,
        "sample_rate": stats.sample_rate,
        **extra,
    }
    return ProfileResult(
        snapshot,
        label=label,
        elapsed=elapsed,
        group_by=opts.group_by,
        top=opts.top,
        show_all=opts.all_frames,
        include=opts.include,
        exclude=opts.exclude,
        options=opts.as_dict(),
        attributor=Attributor(shell),
        **settings,
    )


def _run_profiled(shell: Any, compiled: _Compiled, opts: Options, local_ns: Any,
                  label: str) -> tuple[Any, ProfileResult | None, BaseException | None]:
    """Run the code under the sampler; always stops it. Returns (value, result, error).

    The result is None when the code itself stopped the sampler (nothing to report).
    """
    __tracebackhide__ = True  # noqa: F841 - IPython hides this frame from tracebacks
    _check_idle()
    glob = shell.user_global_ns
    loc = local_ns if local_ns is not None else shell.user_ns
    value = None
    error: BaseException | None = None
    result = None
    _start_sampler(opts)
    try:
        start = time.perf_counter()
        try:
            exec(compiled.code, glob, loc)
            if compiled.last_expr is not None:
                value = eval(compiled.last_expr, glob, loc)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller after the report
            error = exc
        elapsed = time.perf_counter() - start
        if sampler.is_tracing():
            with sampler.paused():
                result = _make_result(shell, opts, label, elapsed, error=error)
    finally:
        sampler.stop()
    if result is None:
        print("mprofile: the profiled code stopped the profiler; no report.", file=sys.stderr)
    return value, result, error


# ---------------------------------------------------------------------------------------------
# Showing results


class _Bundle:
    """Something to display: HTML or a matplotlib figure (as PNG) with a text form for
    terminals and frontends that show only text."""

    def __init__(self, text: str, *, html: str | None = None, figure: Any = None) -> None:
        self.text, self.html, self.figure = text, html, figure

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle: dict[str, Any] = {"text/plain": self.text}
        if self.html is not None:
            bundle["text/html"] = self.html
        if self.figure is not None:
            from .renderers.chart import to_png

            bundle["image/png"] = to_png(self.figure)
        return bundle


def _display(obj: Any) -> None:
    from IPython.display import display

    display(obj)


def _show_chart(result: ProfileResult | DiffResult, view: str) -> None:
    """The summary (figures and notes) as HTML/text, then the chart, whose text form is the
    rest of the text report (so a terminal shows the whole report once)."""
    from .renderers import html, text

    if isinstance(result, DiffResult):
        figure = result.plot()
        summary = _Bundle("\n".join(text.diff_summary(result)),
                          html=html.diff_summary_html(result))
        rest = text.render_diff(result, summary=False)
    else:
        figure = result.plot("flame" if view == "flame" else "bar")
        summary = _Bundle("\n".join(text.result_summary(result)),
                          html=html.summary_html(result))
        rest = text.render_result(result, summary=False)
    _display(summary)
    _display(_Bundle(rest, figure=figure))


def show_result(result: ProfileResult | DiffResult, view: str) -> None:
    """Display a result in one of :data:`VIEWS`."""
    if view == "none":
        return
    if view == "text":
        print(result.to_text())
    elif view == "widget":
        _display(result.widget())
    elif view in ("chart", "flame"):
        _show_chart(result, view)
    else:
        _display(result)


def _finish(shell: Any, result: ProfileResult | DiffResult, opts: Options) -> None:
    """Store, show and export a result as the options say.

    Never raises (the code has run; its value or exception matter more): a report that
    cannot be shown or exported is explained on stderr.
    """
    if opts.output:
        shell.user_ns[opts.output] = result
    try:
        show_result(result, opts.view)
    except Exception as exc:  # noqa: BLE001 - the user's value or exception comes first
        print(f"mprofile: cannot show the report ({type(exc).__name__}: {exc})",
              file=sys.stderr)
    if opts.pprof and isinstance(result, ProfileResult):
        try:
            _write_pprof(result, opts.pprof)
        except UsageError as exc:
            print(f"mprofile: {exc}", file=sys.stderr)


def _check_pprof_path(path: str | None) -> None:
    """Reject an unusable --pprof path before anything runs."""
    if not path:
        return
    path = os.path.expanduser(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"--pprof: the folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"--pprof: {path!r} is a folder; give a file name such as "
                         f"'profile.pb.gz'")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"--pprof: cannot write in {folder!r}")


def _write_pprof(result: ProfileResult, path: str) -> None:
    path = os.path.expanduser(path)
    try:
        result.to_pprof(path)
    except ImportError as exc:
        raise UsageError(f"pprof export is not available: {exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot write the pprof profile to {path!r}: {exc}") from None
    print(f"pprof profile written to {path}")


# ---------------------------------------------------------------------------------------------
# Sessions


class _Session:
    """A profiling session that spans cells: named snapshots and a per-cell timeline.

    Its methods run with sampling paused (the magics see to it): what a session stores is
    the profiler's bookkeeping, not the user's memory.
    """

    def __init__(self, shell: Any, opts: Options) -> None:
        self.shell = shell
        self.opts = opts
        self.running = True
        self.started = time.time()
        self.snapshots: dict[str, ProfileResult] = {}
        self.timeline: list[TimelinePoint] = []
        self.max_peak = 0.0

    def record(self, label: str, cell: int | None) -> None:
        """Add a timeline point with the sampler's current figures."""
        stats = sampler.get_stats()
        self.max_peak = max(self.max_peak, stats.peak_bytes)
        self.timeline.append(TimelinePoint(label, cell, time.time(), stats.current_bytes,
                                           stats.peak_bytes, stats.allocated_bytes))

    def take(self, label: str, opts: Options | None = None) -> ProfileResult:
        """A result for what is alive now; its peak is the session's highest so far."""
        self.max_peak = max(self.max_peak, sampler.get_stats().peak_bytes)
        return _make_result(self.shell, opts or self.opts, label, time.time() - self.started,
                            peak=self.max_peak, timeline=list(self.timeline))


@magics_class
class MProfileMagics(Magics):
    """``%mprofile`` and ``%%mprofile``; holds the session, if any."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.session: _Session | None = None

    # -- events (sampling paused: their work is the profiler's bookkeeping) ---------------------
    def _live_session(self) -> _Session | None:
        session = self.session
        if session is not None and session.running and sampler.is_tracing():
            return session
        return None

    def pre_run_cell(self, info: Any = None) -> None:
        """Per-cell peaks: the peak restarts with each cell of a running session."""
        with sampler.paused():
            session = self._live_session()
            if session is None:
                return
            try:
                session.max_peak = max(session.max_peak, sampler.get_stats().peak_bytes)
                sampler.reset_peak()
            except Exception:  # noqa: BLE001 - an event must never break the user's cell
                pass

    def post_run_cell(self, result: Any = None) -> None:
        """Record the memory alive after each cell of a running session."""
        with sampler.paused():
            session = self._live_session()
            if session is None:
                return
            try:
                number = getattr(result, "execution_count", None)
                label = cell_label(number) if number is not None else f"#{len(session.timeline)}"
                session.record(label, number)
            except Exception:  # noqa: BLE001 - an event must never break the user's cell
                pass

    # -- the magic ----------------------------------------------------------------------------
    @magic_arguments()
    @argument("statement", nargs="*", help="(line magic) the statement to profile.")
    @argument_group("Sampling")
    @_apply(_SAMPLING)
    @argument_group("Report")
    @_apply(_VIEWING + [_OUTPUT, _PPROF])
    @no_var_expand
    @needs_local_scope
    @line_cell_magic
    def mprofile(self, line: str = "", cell: str | None = None, local_ns: Any = None) -> Any:
        """Profile the memory of a cell, a statement or a session of cells, by sampling.

        ::

          %%mprofile [options]                       profile the cell below
          %mprofile [options] [--] statement         profile one statement (like %time)
          %mprofile start [options]                  start a session across cells
          %mprofile snapshot NAME                    remember what is alive now as NAME
          %mprofile show [NAME|now] [options]        show a snapshot (default: now)
          %mprofile compare A [B|now] [options]      what changed from A to B (default: now)
          %mprofile timeline [-v chart|table|text]   memory after each cell of the session
          %mprofile export NAME|now PATH             write a snapshot as a pprof profile
          %mprofile status                           the session's settings and snapshots
          %mprofile stop                             stop (snapshots stay until next start)

        A line whose first word is one of start, stop, snapshot, show, compare, timeline,
        export or status is a session command. To profile a statement that begins with one
        of these words (or with '-'), put '--' before it: ``%mprofile -- start = 3``.
        Options of ``%%mprofile`` and of session commands expand ``{expr}`` and ``$name``
        from the user's namespace, as other magics do; a statement is never expanded.

        The report gives the memory the code allocated that is still alive at its end, the
        peak during the run, all it allocated (freed included), the time, the number of
        samples, and the top allocation sites with a 95% interval. Sizes are unbiased
        estimates from samples; ``--rate 1`` measures every allocation exactly. Cells show as
        ``In [12]`` with their line numbers as typed. Frames of IPython, ipykernel and the
        profiler are hidden unless ``--all-frames``. The cell's output, value and exceptions
        are unchanged: an exception propagates after the report.

        Examples::

          %%mprofile -r 16KiB -o res
          df = pd.read_csv(path)

          %mprofile -n 5 x = build()        # statement form
          res.to_dataframe()                # the sites as a DataFrame
        """
        __tracebackhide__ = True  # noqa: F841 - read by IPython's traceback formatter
        if cell is not None:
            return self._cell(line, cell)
        with sampler.paused():  # a session's bookkeeping is not the user's memory
            command, rest = (line.split(None, 1) + ["", ""])[:2]
            if command in COMMANDS:
                return self._command(command, rest)
        tokens, statement, dashed = _split_options(line)
        args = self.mprofile.parser.parse_args(tokens)
        if not statement:
            raise UsageError(
                "nothing to profile: give a statement (%mprofile [options] statement), use "
                "%%mprofile on a cell, or a session command: " + ", ".join(COMMANDS) + "."
            )
        word = statement.split(None, 1)[0]
        if word in COMMANDS and not dashed:
            raise UsageError(
                f"{word!r} is a session command and must come first: `%mprofile {word} ...`. "
                f"To profile a statement starting with {word!r}, write "
                f"`%mprofile [options] -- {statement}`."
            )
        return self._statement(statement, Options().update(args), local_ns)

    # -- cells and statements -------------------------------------------------------------------
    def _where(self) -> tuple[int | None, int, CellInfo | None]:
        """The calling cell: (number, code line of the magic call, what is known of it)."""
        attributor = Attributor(self.shell)
        found = attributor.caller_cell(depth=2)
        if found is None:
            return None, 1, None
        filename, lineno, number = found
        return number, lineno, attributor.cell(filename)

    def _cell(self, line: str, cell: str) -> Any:
        __tracebackhide__ = True  # noqa: F841 - read by IPython's traceback formatter
        args = _parse(self.mprofile.parser, _expand(self.shell, line))
        if args.statement:
            raise UsageError(
                "%%mprofile takes options only; the code goes in the cell below it. Got: "
                + " ".join(args.statement)
            )
        opts = Options().update(args)
        number, call_line, info = self._where()
        first_line = call_line + 1  # the body starts below the magic line
        raw_lines = info.raw if info is not None else None
        if raw_lines is not None:
            magic_lines = [i for i, text in enumerate(raw_lines)
                           if text.lstrip().startswith("%%mprofile")]
            if magic_lines:
                first_line = magic_lines[0] + 2  # the body is padded to the raw cell's lines
            else:
                raw_lines = None
        return self._profile(cell, opts, None, number, first_line, raw_lines, 0)

    def _statement(self, statement: str, opts: Options, local_ns: Any) -> Any:
        __tracebackhide__ = True  # noqa: F841 - read by IPython's traceback formatter
        number, call_line, info = self._where()
        raw_lines = info.lines if info is not None else None
        offset = info.line_offset if info is not None else 0
        return self._profile(statement, opts, local_ns, number, call_line, raw_lines, offset)

    def _profile(self, source: str, opts: Options, local_ns: Any, number: int | None,
                 first_line: int, raw_lines: tuple[str, ...] | None, line_offset: int) -> Any:
        """Compile ``source`` as lines ``first_line...`` of cell ``number``, run it under the
        sampler, report, and give back its value or raise its exception."""
        __tracebackhide__ = True  # noqa: F841 - read by IPython's traceback formatter
        _check_idle()
        _check_pprof_path(opts.pprof)
        compiled = _compile(self.shell, source, first_line, number, raw_lines, line_offset)
        silent = _ends_with_semicolon(source)
        label = cell_label(number) if number is not None else "mprofile"
        value, result, error = _run_profiled(self.shell, compiled, opts, local_ns, label)
        if result is not None:
            _finish(self.shell, result, opts)
        if error is not None:
            raise error
        return None if silent else value

    # -- session commands -------------------------------------------------------------------------
    def _command(self, command: str, rest: str) -> Any:
        args = _parse(_PARSERS[command], _expand(self.shell, rest))
        return getattr(self, f"_cmd_{command}")(args)

    def _need_session(self, running: bool = False) -> _Session:
        """The session (``running``: a running one), or a UsageError saying what to do."""
        session = self.session
        if session is None:
            raise UsageError("no session: start one with `%mprofile start [options]`")
        if session.running and not sampler.is_tracing():
            session.running = False  # mprofile_ipy.stop() was called behind its back
            raise UsageError("the profiler was stopped outside the session (by "
                             "mprofile_ipy.stop()?); start a new one with `%mprofile start`")
        if running and not session.running:
            raise UsageError("the session is stopped: start a new one with `%mprofile start`")
        return session

    def _cmd_start(self, args: Any) -> None:
        if self.session is not None and self.session.running:
            raise UsageError("a session is already running: `%mprofile stop` ends it")
        _check_idle()
        opts = Options().update(args)
        _start_sampler(opts)
        self.session = _Session(self.shell, opts)
        print(f"mprofile session started: 1 sample per {fmt_rate(opts.rate)} on average, "
              f"{opts.max_frames} frames. `%mprofile snapshot NAME`, `show`, `compare`, "
              f"`timeline`, `stop`.")

    def _cmd_stop(self, args: Any) -> None:
        session = self._need_session()
        if not session.running:
            print("the session is already stopped")
            return
        try:
            session.record("stop", None)
            session.snapshots["final"] = session.take("final")
        finally:
            sampler.stop()
            session.running = False
        final = session.snapshots["final"]
        print(f"mprofile session stopped after {time.time() - session.started:.1f} s: "
              f"{fmt_size(final.current)} still alive, peak {fmt_size(session.max_peak)}, "
              f"{fmt_size(final.allocated)} allocated. Snapshots: "
              f"{', '.join(session.snapshots)}.")

    def _cmd_snapshot(self, args: Any) -> None:
        session = self._need_session(running=True)
        name = args.name
        if name == NOW or not _NAME_RE.match(name):
            raise UsageError(f"a snapshot name is a word such as 'before' or 'step_2' (not "
                             f"'{NOW}'), got {name!r}")
        session.record(name, None)
        result = session.take(name)
        session.snapshots[name] = result
        print(f"snapshot {name!r}: {fmt_size(result.current)} alive, "
              f"{result.live_samples} samples alive")

    def _get(self, session: _Session, name: str | None, opts: Options) -> ProfileResult:
        if name is None:
            name = NOW if session.running else "final"
        if name == NOW:
            if not session.running:
                raise UsageError("the session is stopped, so there is no 'now'; snapshots: "
                                 + (", ".join(session.snapshots) or "none"))
            return session.take(NOW, opts)
        found = session.snapshots.get(name)
        if found is None:
            raise UsageError(f"no snapshot named {name!r}; snapshots: "
                             + (", ".join(session.snapshots) or "none yet"))
        return found

    def _cmd_show(self, args: Any) -> None:
        session = self._need_session()
        opts = session.opts.update(args)
        _check_pprof_path(opts.pprof)
        result = self._get(session, args.name, opts)
        if result.label != NOW:  # a stored snapshot: apply this command's view options
            result = _with_view(result, opts)
        _finish(self.shell, result, opts)

    def _cmd_compare(self, args: Any) -> None:
        session = self._need_session()
        opts = session.opts.update(args)
        old = _with_view(self._get(session, args.old, opts), opts)
        new = _with_view(self._get(session, args.new, opts), opts)
        diff = DiffResult(new, old, group_by=opts.group_by, top=opts.top)
        _finish(self.shell, diff, opts)

    def _cmd_timeline(self, args: Any) -> None:
        session = self._need_session()
        points = list(session.timeline)
        if args.output:
            self.shell.user_ns[args.output] = points
        if args.view == "none":
            return
        from .renderers.text import render_timeline

        text = render_timeline(points)
        if args.view == "text":
            print(text)
        elif args.view == "table":
            from .renderers.html import timeline_html

            _display(_Bundle(text, html=timeline_html(points)))
        else:
            from .renderers.chart import timeline

            _display(_Bundle(text, figure=timeline(points)))

    def _cmd_export(self, args: Any) -> None:
        session = self._need_session()
        _check_pprof_path(args.path)
        result = self._get(session, args.name, session.opts)
        _write_pprof(result, args.path)

    def _cmd_status(self, args: Any) -> None:
        session = self.session
        if session is None:
            print("no mprofile session (start one with `%mprofile start`)")
            return
        state = "running" if session.running else "stopped"
        opts = session.opts
        current = ""
        if session.running and sampler.is_tracing():
            stats = sampler.get_stats()
            current = (f", {fmt_size(stats.current_bytes)} alive now, "
                       f"{stats.samples} samples, profiler memory "
                       f"{fmt_size(stats.profiler_memory)}")
        print(f"mprofile session {state} (rate {fmt_rate(opts.rate)}, {opts.max_frames} "
              f"frames{current}); snapshots: {', '.join(session.snapshots) or 'none'}; "
              f"{len(session.timeline)} timeline points")

    def stop_session(self) -> None:
        """Stop the session's sampling, if this object started it."""
        if self.session is not None and self.session.running:
            self.session.running = False
            if sampler.is_tracing():
                sampler.stop()


def _with_view(result: ProfileResult, opts: Options) -> ProfileResult:
    """The result with the view options of this command (grouping, hiding, patterns)."""
    return result.filtered(show_all=opts.all_frames, include=opts.include,
                           exclude=opts.exclude, group_by=opts.group_by, top=opts.top)


def _session_help() -> str:
    parts = ["", "Session commands", "----------------"]
    for parser in _PARSERS.values():
        usage = parser.format_usage().strip().replace("::\n\n  %", "%")
        parts.append(f"{usage}\n    {parser.description}")
    return "\n".join(parts)


MProfileMagics.mprofile.__doc__ = (MProfileMagics.mprofile.__doc__ or "") + _session_help()


# ---------------------------------------------------------------------------------------------
# Extension entry points

_loaded: dict[int, MProfileMagics] = {}


def load_ipython_extension(ip: Any) -> None:
    """Register ``%mprofile``/``%%mprofile`` and the session's cell events."""
    if id(ip) in _loaded:
        return
    magics = MProfileMagics(ip)
    ip.register_magics(magics)
    _register_figure_png(ip)
    ip.events.register("pre_run_cell", magics.pre_run_cell)
    ip.events.register("post_run_cell", magics.post_run_cell)
    _loaded[id(ip)] = magics


def _register_figure_png(ip: Any) -> None:
    """Let a returned matplotlib Figure (``result.plot()``) show as an image even when no
    matplotlib backend was set up (``%matplotlib inline`` would); never override one."""
    formatter = getattr(getattr(ip, "display_formatter", None), "formatters", {}).get(
        "image/png")
    if formatter is None:
        return
    try:
        formatter.lookup_by_type("matplotlib.figure.Figure")
        return  # someone (the inline backend) handles figures already
    except KeyError:
        pass

    def to_png(figure: Any) -> bytes | None:
        from IPython.core.pylabtools import print_figure

        return print_figure(figure, "png", bbox_inches="tight")

    formatter.for_type_by_name("matplotlib.figure", "Figure", to_png)


def unload_ipython_extension(ip: Any) -> None:
    """Remove the magics and events, and stop a session they started."""
    magics = _loaded.pop(id(ip), None)
    if magics is None:
        return
    magics.stop_session()
    for event, callback in (("pre_run_cell", magics.pre_run_cell),
                            ("post_run_cell", magics.post_run_cell)):
        try:
            ip.events.unregister(event, callback)
        except ValueError:
            pass
    manager = ip.magics_manager
    for kind in ("line", "cell"):
        table = manager.magics.get(kind, {})
        if getattr(table.get("mprofile"), "__self__", None) is magics:
            del table["mprofile"]
    manager.registry.pop(type(magics).__name__, None)
