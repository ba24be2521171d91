"""The options of ``%mprofile``/``%%mprofile`` and its session commands, declared once.

Each option is one field of :class:`Options` whose metadata (flags, help, converter, group)
drives the argument parsers, the help text of ``%mprofile?`` and the defaults; a command's
parsed options are applied with ``dataclasses.replace``. :func:`split_statement` reads the
leading options of ``%mprofile [options] [--] statement`` with :mod:`shlex` and leaves the
statement verbatim. A ``# comment`` ends the options of ``%%mprofile`` and of the session
commands. Bad options raise IPython's ``UsageError`` naming the option.
"""

from __future__ import annotations

import argparse
import keyword
import shlex
import textwrap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from IPython.core.error import UsageError

from .. import sampler
from ..report import GROUP_BY, ViewOptions, normalize_group_by
from ..units import parse_size

__all__ = ["COMMANDS", "NOW", "TIMELINE_VIEWS", "VIEWS", "Options", "command_parser",
           "help_text", "parse_cell_line", "parse_command", "split_statement"]

VIEWS = ("table", "chart", "flame", "widget", "text", "none")
TIMELINE_VIEWS = ("chart", "image", "table", "text", "none")
#: First words that make a line a session command rather than a statement.
COMMANDS = ("start", "stop", "snapshot", "show", "compare", "timeline", "export", "status",
            "why", "budget", "postmortem")
#: The name of "a snapshot taken right now" in show/compare/export.
NOW = "now"
#: Largest number of sites a report lists.
MAX_TOP = 1000


# ---------------------------------------------------------------------------------------------
# Converters: each raises a UsageError that names its option


def _rate(text: str) -> int:
    try:
        rate = parse_size(text)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--rate: {exc}") from None
    if rate > 2**40:
        raise UsageError(f"--rate: {text!r} is too large (at most 1TiB between samples)")
    return rate


def _bounded(name: str, limit: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise UsageError(f"{name} must be a whole number, got {text!r}") from None
        if not 1 <= value <= limit:
            raise UsageError(f"{name} must be between 1 and {limit}, got {value}")
        return value

    return convert


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--seed must be a whole number, got {text!r}") from None


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
    if not text.isidentifier() or keyword.iskeyword(text):
        raise UsageError(f"--output needs a Python variable name, got {text!r}")
    return text


def _budget(text: str) -> str:
    """A budget as ``budget.set_budget`` takes it: a size (``4GB``) or ``+SIZE`` (above
    the resident memory when the cell starts); checked now, applied when the cell runs."""
    size = text[1:] if text.startswith("+") else text
    try:
        value = parse_size(size)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--budget: {exc} (a size such as 4GB, 512MiB or +1GB)") from None
    if value <= 0:
        raise UsageError(f"--budget must be a positive size, got {text!r}")
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--time-limit must be a number of seconds, got {text!r}") from None
    if not 0 < value <= 3600:
        raise UsageError(f"--time-limit must be between 0 and 3600 seconds, got {text!r}")
    return value


def _rate_text(rate: int) -> str:
    for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        step = 1024**power
        if rate >= step and rate % step == 0:
            return f"{rate // step}{unit}"
    return str(rate)


# ---------------------------------------------------------------------------------------------
# The declarations


@dataclass(frozen=True)
class Spec:
    """How one option is typed: flags, help, converter (None: a switch), group, repeatable."""

    flags: tuple[str, ...]
    help: str
    group: str
    convert: Callable[[str], Any] | None = None
    metavar: str | None = None
    repeat: bool = False


def _option(*flags: str, default: Any, help: str, group: str,
            convert: Callable[[str], Any] | None = None, metavar: str | None = None,
            repeat: bool = False) -> Any:
    return field(default=default, metadata={"spec": Spec(flags, help, group, convert, metavar,
                                                          repeat)})


#: Option groups, in the order of the help text.
GROUPS = {"sampling": "Sampling", "limits": "Memory limit", "processes": "Processes",
          "report": "Report", "output": "Output", "why": "Why (%mprofile why)"}
#: The groups of ``%%mprofile`` and of ``%mprofile statement`` (the why options bound
#: ``--why``).
RUN_GROUPS = ("sampling", "limits", "processes", "report", "output", "why")


@dataclass(frozen=True)
class Options:
    """Settled options of one run or session (defaults filled in)."""

    rate: int = _option(
        "-r", "--rate", default=sampler.DEFAULT_SAMPLE_RATE, convert=_rate, metavar="RATE",
        group="sampling",
        help="Sample rate: mean bytes allocated between two samples, with units (64KiB, 1MB, "
             "512k). Lower rates see more and cost more; 1 traces every allocation, as "
             f"tracemalloc. Default: {_rate_text(sampler.DEFAULT_SAMPLE_RATE)}.")
    max_frames: int = _option(
        "-f", "--max-frames", default=sampler.DEFAULT_MAX_FRAMES, metavar="N",
        convert=_bounded("--max-frames", sampler.MAX_FRAMES_LIMIT), group="sampling",
        help=f"Frames kept per traceback (1 to {sampler.MAX_FRAMES_LIMIT}). "
             f"Default: {sampler.DEFAULT_MAX_FRAMES}.")
    seed: int | None = _option(
        "--seed", default=None, convert=_seed, metavar="SEED", group="sampling",
        help="Seed of the sampler's random numbers, for reproducible runs.")
    native: bool = _option(
        "--native", default=False, group="sampling",
        help="Also sample malloc/mmap made by native libraries (Arrow, SQLite, PyTorch, ...); "
             "NumPy arrays are always seen. Linux/glibc only.")
    budget: str | None = _option(
        "--budget", default=None, convert=_budget, metavar="SIZE", group="limits",
        help="A memory budget for this cell only (4GB, 512MiB, or +1GB above the memory in "
             "use when it starts): when the process's memory (RSS, or the sampler's "
             "estimate) crosses it, the cell stops with MemoryBudgetExceeded, the report "
             "shows what was allocating, and the kernel keeps every variable. On top of "
             "the session's `%%mprofile budget` (the tighter one applies).")
    children: bool = _option(
        "--children", default=False, group="processes",
        help="Also profile the processes the code starts (multiprocessing with fork, spawn "
             "or forkserver, ProcessPoolExecutor, joblib/loky, subprocess python): their "
             "snapshots are merged into the report, with a table per process.")
    dask: bool = _option(
        "--dask", default=False, group="processes",
        help="Also profile every worker of the current Dask distributed Client (workers "
             "that join during the cell too); merged into the report, per worker.")
    group_by: str = _option(
        "-g", "--group-by", default="cell", convert=_group_by, metavar="KEY", group="report",
        help=f"How to group allocations into sites: {', '.join(GROUP_BY)}. 'cell' (default) "
             "folds library frames into the line of the cell that called them; 'line' is "
             "tracemalloc's 'lineno'.")
    top: int = _option(
        "-n", "--top", default=10, convert=_bounded("--top", MAX_TOP), metavar="N",
        group="report", help=f"Number of sites to show (1 to {MAX_TOP}). Default: 10.")
    view: str = _option(
        "-v", "--view", default="table", convert=_view, metavar="VIEW", group="report",
        help=f"How to show the report: {', '.join(VIEWS)}. 'table' (default) is the "
             "interactive HTML report in notebooks (sort, group, filter, unfold tracebacks, "
             "flame graph; no kernel needed) and text in terminals; 'chart' a bar chart; "
             "'flame' an icicle graph; 'widget' the report, then an explorer (ipywidgets) "
             "for what needs the kernel; 'none' shows nothing (use with -o).")
    include: tuple[str, ...] = _option(
        "-i", "--include", default=(), metavar="PATTERN", repeat=True, convert=str,
        group="report",
        help="Keep only allocations whose traceback passes through a file matching PATTERN "
             "(fnmatch: '*/mypkg/*'; 'In [*' matches cells). Repeatable.")
    exclude: tuple[str, ...] = _option(
        "-x", "--exclude", default=(), metavar="PATTERN", repeat=True, convert=str,
        group="report",
        help="Drop allocations whose traceback passes through a file matching PATTERN. "
             "Repeatable.")
    all_frames: bool = _option(
        "-a", "--all-frames", default=False, group="report",
        help="Show the frames of libraries and IPython that the user's code called (hidden "
             "by default). The frames that called the cell and the profiler's own are never "
             "shown.")
    why: bool = _option(
        "--why", default=False, group="report",
        help="Also find what keeps each site's memory alive at the end (the reference "
             "chains of %%mprofile why, each with the command that frees it, bounded by "
             "--time-limit): the report shows them when a site is unfolded. Runs no code of "
             "yours.")
    output: str | None = _option(
        "-o", "--output", default=None, convert=_identifier, metavar="VAR", group="output",
        help="Store the result (a ProfileResult) in the variable VAR.")
    pprof: str | None = _option(
        "--pprof", default=None, convert=str, metavar="PATH", group="output",
        help="Also write the profile to PATH as gzipped pprof (go tool pprof, Pyroscope, "
             "speedscope).")

    chains: int = _option(
        "--chains", default=3, convert=_bounded("--chains", 10), metavar="N", group="why",
        help="Reference chains per block (1 to 10): chain k+1 is what still holds the "
             "object once chain k's command has run. Default: 3.")
    max_blocks: int = _option(
        "--max-blocks", default=20, convert=_bounded("--max-blocks", 1000), metavar="N",
        group="why", help="Largest live sampled blocks searched per site (1 to 1000). "
                          "Default: 20.")
    time_limit: float = _option(
        "--time-limit", default=60.0, convert=_seconds, metavar="SECONDS", group="why",
        help="Stop the search after this many seconds and say so. Default: 60.")

    def update(self, given: Mapping[str, Any] | argparse.Namespace) -> Options:
        """A copy with the options given (an argparse namespace or a dict) applied; only
        known option names count, repeatable ones become tuples."""
        values = vars(given) if isinstance(given, argparse.Namespace) else dict(given)
        known = {f.name for f in fields(self)}
        changes = {name: tuple(value) if isinstance(value, list) else value
                   for name, value in values.items() if name in known and value is not None}
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """For ``ProfileResult.options`` (lists for the repeatable options)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in fields(self)}

    def view_options(self) -> ViewOptions:
        """The report's view options."""
        return ViewOptions(self.group_by, self.top, self.all_frames, self.include,
                           self.exclude)


def specs(groups: Iterable[str] = tuple(GROUPS)) -> list[tuple[str, Spec]]:
    """(field name, spec) of every option of ``groups``, in declaration order."""
    wanted = set(groups)
    return [(f.name, f.metadata["spec"]) for f in fields(Options)
            if f.metadata["spec"].group in wanted]


#: Every flag of the statement form -> whether it takes a value.
TAKES_VALUE: dict[str, bool] = {flag: spec.convert is not None
                                for _name, spec in specs(RUN_GROUPS) for flag in spec.flags}


# ---------------------------------------------------------------------------------------------
# Parsers


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise UsageError(message or f"{self.prog}: bad options")


def _parser(prog: str, description: str, groups: Iterable[str],
            positionals: Iterable[tuple[str, dict[str, Any]]] = ()) -> _Parser:
    parser = _Parser(prog=prog, description=description, add_help=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, kwargs in positionals:
        parser.add_argument(name, **kwargs)
    by_group: dict[str, Any] = {}
    for name, spec in specs(groups):
        target = by_group.get(spec.group)
        if target is None:
            target = by_group[spec.group] = parser.add_argument_group(
                f"{GROUPS[spec.group]} options")
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": spec.help}
        if spec.convert is None:
            kwargs["action"] = "store_true"
        else:
            kwargs.update(type=spec.convert, metavar=spec.metavar)
            if spec.repeat:
                kwargs["action"] = "append"
        target.add_argument(*spec.flags, **kwargs)
    return parser


#: The parser of ``%%mprofile`` and of the options of ``%mprofile statement``.
RUN_PARSER = _parser("%mprofile", "Profile a cell or a statement.", RUN_GROUPS,
                     [("rest", {"nargs": "*", "help": argparse.SUPPRESS})])

_COMMANDS: dict[str, tuple[str, str, tuple[str, ...], list[tuple[str, dict[str, Any]]]]] = {
    "start": ("start [options]", "Start a session: sample allocations across cells until "
              "`%mprofile stop`. Report options set the defaults of later show/compare.",
              ("sampling", "report"), []),
    "stop": ("stop", "Stop the session (a last snapshot is kept as 'final').", (), []),
    "snapshot": ("snapshot NAME", "Remember what is alive now under NAME.", (),
                 [("name", {"metavar": "NAME"})]),
    "show": ("show [NAME|now] [options]", "Show a snapshot of the session (default: now, or "
             "'final' once stopped).", ("report", "output"),
             [("name", {"metavar": "NAME", "nargs": "?", "default": None})]),
    "compare": ("compare A [B|now] [options]", "Show what changed from snapshot A to "
                "snapshot B (default: now, or 'final' once stopped).", ("report", "output"),
                [("old", {"metavar": "A"}), ("new", {"metavar": "B", "nargs": "?",
                                                     "default": None})]),
    "timeline": ("timeline [-v chart|image|table|text|none] [-o VAR]", "Memory still alive after "
                 "each cell of the session (and at each named snapshot), and each cell's "
                 "peak.", (), []),
    "export": ("export NAME|now PATH", "Write snapshot NAME ('now' for a new one) as a "
               "gzipped pprof profile at PATH.", (),
               [("name", {"metavar": "NAME"}), ("path", {"metavar": "PATH"})]),
    "status": ("status", "Whether a session runs, its settings and its snapshots.", (), []),
    "why": ("why [SITE] [options]", "Why is this memory still alive? For a site of the last "
            "result (its label, such as 'In [5], line 3', or its row in the table, 0 being "
            "the top one; default: every site with memory still alive), the objects its "
            "live sampled blocks are and the shortest reference chains that keep them "
            "alive, from names you know (df, Out[12], mymod.CACHE, a closure, "
            "sys.last_traceback), each with the command that frees it (%xdel df, "
            "%reset -f out, gc.collect()). Runs no code of yours; bounded in time. In a "
            "running session the blocks are read now; otherwise they are the ones alive "
            "when the result was made.", ("why",),
            [("site", {"metavar": "SITE", "nargs": "*"})]),
    "budget": ("budget [SIZE|+SIZE|off]", "Set the session's memory budget (4GB; +1GB: 1 GB "
               "above the memory in use now): a cell whose memory crosses it stops with "
               "MemoryBudgetExceeded and the kernel keeps its variables. 'off' removes the "
               "budget and the safety net (on since %load_ext: it stops a cell before the "
               "machine, the container or ulimit -v runs out of memory). Without an "
               "argument: the budget, the safety net and the memory now.", (),
               [("limit", {"metavar": "SIZE", "nargs": "?", "default": None})]),
    "postmortem": ("postmortem [PATH] [options]", "What a kernel that died (killed by the OOM "
                   "killer, say) was doing: the cell and line that were running, the peak, "
                   "and what was alive, as a normal report, from the flight record it left "
                   "(this notebook's first, then this directory's; PATH: a record file or a "
                   "folder of records).", ("report", "output"),
                   [("path", {"metavar": "PATH", "nargs": "?", "default": None})]),
}


def command_parser(command: str) -> _Parser:
    """The parser of one session command."""
    usage, description, groups, positionals = _COMMANDS[command]
    parser = _parser(f"%mprofile {command}", description, groups, positionals)
    if command == "timeline":  # the report's -v and -o, with the timeline's own views
        view = dict(specs(["report"]))["view"]
        output = dict(specs(["output"]))["output"]
        parser.add_argument(*view.flags, dest="view", default="chart", metavar=view.metavar,
                            choices=TIMELINE_VIEWS,
                            help="chart (default: an interactive chart that needs no kernel), "
                                 "image (a PNG, needs matplotlib), table, text or none.")
        parser.add_argument(*output.flags, dest="output", default=None, type=_identifier,
                            metavar="VAR", help="Store the timeline points in VAR.")
    return parser


_COMMAND_PARSERS = {command: command_parser(command) for command in _COMMANDS}


def _words(text: str) -> list[str]:
    """Shell-like words of an option string; a ``#`` starts a comment."""
    try:
        return shlex.split(text, comments=True)
    except ValueError as exc:
        raise UsageError(f"cannot read the options {text!r}: {exc}") from None


def parse_command(command: str, rest: str) -> argparse.Namespace:
    """The arguments of a session command."""
    return _COMMAND_PARSERS[command].parse_args(_words(rest))


def parse_cell_line(line: str) -> argparse.Namespace:
    """The options on the ``%%mprofile`` line (nothing else is allowed there)."""
    args = RUN_PARSER.parse_args(_words(line))
    if args.rest:
        raise UsageError("%%mprofile takes options only; the code goes in the cell below it. "
                         "Got: " + " ".join(args.rest))
    return args


def split_statement(line: str) -> tuple[argparse.Namespace, str, bool]:
    """Leading options of ``%mprofile [options] [--] statement``, and the statement verbatim.

    Options are read as a shell would (quotes allowed); the statement is everything after
    them, untouched. Returns (parsed options, statement, whether ``--`` was given).
    """
    lexer = shlex.shlex(line, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    argv: list[str] = []

    def word() -> str | None:
        try:
            return lexer.get_token()
        except ValueError as exc:
            raise UsageError(f"cannot read the options of {line!r}: {exc}") from None

    statement, dashed = "", False
    while True:
        rest = line[lexer.instream.tell():].lstrip()
        if not rest or rest.startswith("#"):
            break
        if rest.startswith("--") and (len(rest) == 2 or rest[2].isspace()):
            statement, dashed = rest[2:].strip(), True
            break
        if not rest.startswith("-"):
            statement = rest.strip()
            break
        token = word() or ""
        name, equals, _value = token.partition("=")
        if name in TAKES_VALUE:
            argv.append(token)
            if TAKES_VALUE[name] and not equals:
                value = word()
                if value is None:
                    raise UsageError(f"option {name} needs a value")
                argv.append(value)
            continue
        short = token[:2]
        if not token.startswith("--") and TAKES_VALUE.get(short):  # -r64KiB
            argv.extend([short, token[2:]])
            continue
        raise UsageError(
            f"unknown option {token!r}. Options: "
            f"{', '.join(sorted(f for f in TAKES_VALUE if f.startswith('--')))}. "
            "To profile a statement that starts with '-', put '--' before it.")
    return RUN_PARSER.parse_args(argv), statement, dashed


# ---------------------------------------------------------------------------------------------
# Help

_INTRO = """\
Profile the memory of a cell, a statement or a session of cells, by sampling.

Usage:
  %%mprofile [options]                       profile the cell below
  %mprofile [options] [--] statement         profile one statement (like %time)
  %mprofile start [options]                  start a session across cells
  %mprofile snapshot NAME                    remember what is alive now as NAME
  %mprofile show [NAME|now] [options]        show a snapshot (default: now)
  %mprofile compare A [B|now] [options]      what changed from A to B (default: now)
  %mprofile timeline [-v chart|image|table|text]  memory after each cell of the session
  %mprofile export NAME|now PATH             write a snapshot as a pprof profile
  %mprofile status                           the session's settings and snapshots
  %mprofile stop                             stop (snapshots stay until next start)
  %mprofile why [SITE]                       what keeps a site's memory alive
  %mprofile budget [SIZE|+SIZE|off]          a memory budget for the session
  %mprofile postmortem [PATH]                what a kernel that died was doing

A line whose first word is one of start, stop, snapshot, show, compare, timeline, export,
status, why, budget or postmortem is a command. To profile a statement that begins with one
of these words (or with '-'), put '--' before it: `%mprofile -- start = 3`. A `# comment`
may end the line of %%mprofile and of a session command. Options of %%mprofile and of
session commands expand {expr} and $name from the user's namespace, as other magics do; a
statement is never expanded.

The report gives the memory the code allocated that is still alive at its end, the peak
during the run, all it allocated (freed included), the time, the number of samples, and the
top allocation sites with a 95% interval. Sizes are unbiased estimates from samples;
`--rate 1` measures every allocation exactly. Cells show as `In [12]` with their line numbers
as typed. The frames that called the cell and the profiler's own frames are never shown;
frames of IPython and ipykernel that the code called are hidden unless --all-frames. The
cell's output, value and exceptions are unchanged: an exception propagates after the report.
"""

_EXAMPLES = """\
Examples:
  %%mprofile -r 16KiB -o res   # a cell, sampled finely, result kept in `res`
  df = pd.read_csv(path)

  %mprofile -n 5 x = build()          # statement form
  res.to_dataframe()                  # the sites as a DataFrame
"""


def help_text() -> str:
    """The text of ``%mprofile?``: usage, every option (from the declarations), the session
    commands and examples. Plain text (no reST markers)."""
    options = RUN_PARSER.format_help()
    options = options[options.index("\n\n") + 2:] if "\n\n" in options else options
    options = options.split("\n", 1)[1] if options.startswith("Profile a cell") else options
    parts = [_INTRO, options.strip("\n"), "", "Session commands:"]
    for usage, description, groups, _pos in _COMMANDS.values():
        parts.append(f"  %mprofile {usage}")
        shared = [g for g in groups if g in RUN_GROUPS]
        if shared:
            names = " and ".join(GROUPS[g].lower() for g in shared)
            description += f" Takes the {names} options above."
        parts.append(textwrap.fill(description, 88, initial_indent=" " * 6,
                                   subsequent_indent=" " * 6))
        for _name, spec in specs([g for g in groups if g not in RUN_GROUPS]):
            flags = ", ".join(spec.flags) + (f" {spec.metavar}" if spec.metavar else "")
            parts.append(f"      {flags}")
            parts.append(textwrap.fill(spec.help, 88, initial_indent=" " * 10,
                                       subsequent_indent=" " * 10))
    parts += ["", _EXAMPLES]
    return "\n".join(parts)
