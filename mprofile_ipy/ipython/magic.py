"""``%%mprofile`` (a cell) and ``%mprofile`` (a statement, or a session command).

A thin front end: :mod:`.options` parses, :mod:`.runner` runs the code under the sampler,
:mod:`.session` keeps a session's snapshots, :mod:`.display` shows and exports. The code
runs in the user's namespace exactly as without the magic (its output, value and exceptions
are unchanged; an exception propagates after the report). Bad options raise ``UsageError``
before anything starts; the sampler is always stopped when the code ends, however it ends.
"""

from __future__ import annotations

import re
import time
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import (
    Magics,
    line_cell_magic,
    magics_class,
    needs_local_scope,
    no_var_expand,
)

from .. import sampler
from ..attribution import Attributor, CellInfo, cell_label
from ..renderers import fmt_rate, fmt_size
from ..result import DiffResult, ProfileResult
from . import display, options, runner
from .options import COMMANDS, NOW, Options
from .session import Session

__all__ = ["MProfileMagics"]

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


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


def _with_view(result: ProfileResult, opts: Options) -> ProfileResult:
    """The result with the view options of this command (grouping, hiding, patterns)."""
    view = opts.view_options()
    return result.filtered(show_all=view.show_all, include=view.include, exclude=view.exclude,
                           group_by=view.group_by, top=view.top)


def budget_status_text(status: Any, now: Any = None) -> str:
    """``%mprofile budget`` without argument: the budget, the safety net, memory now
    (``now``: a reading of the memory, default the watcher's last one)."""
    parts = []
    if status.limit is None:
        parts.append("no memory budget")
    else:
        parts.append(f"memory budget {fmt_size(status.limit)}")
        if status.block_limits:
            parts[-1] += (f" (this cell's --budget; the session's: "
                          f"{fmt_size(status.session_limit) if status.session_limit else 'none'})")
    parts.append(f"safety net {'on' if status.safety_net else 'off'}"
                 + (f" (margin {fmt_size(status.margin)})" if status.safety_net else ""))
    reading = now if now is not None else status.reading
    if reading is not None and reading.rss is not None:
        peak = max(status.peak_rss or 0, reading.rss)
        parts.append(f"resident memory now {fmt_size(reading.rss)}, peak {fmt_size(peak)}")
    if status.trips:
        parts.append(f"{status.trips} interrupt{'s' if status.trips != 1 else ''} so far")
    return "mprofile: " + "; ".join(parts)


@magics_class
class MProfileMagics(Magics):
    """``%mprofile`` and ``%%mprofile``; holds the session, if any."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.session: Session | None = None
        #: The last ProfileResult shown or stored (what `%mprofile why` explains).
        self.last_result: ProfileResult | None = None

    # -- events (sampling paused: their work is the profiler's bookkeeping) ---------------------
    def _on_cell_event(self, action: Any) -> None:
        """Run ``action(session)`` for a running session; an event never breaks a cell."""
        with sampler.paused():
            session = self.session
            if session is None or not session.running or not sampler.is_tracing():
                return
            try:
                action(session)
            except Exception:  # noqa: BLE001 - an event must never break the user's cell
                pass

    def pre_run_cell(self, info: Any = None) -> None:
        """Per-cell peaks: the peak restarts with each cell of a running session."""

        def restart_peak(session: Session) -> None:
            session.max_peak = max(session.max_peak, sampler.get_stats().peak_bytes)
            sampler.reset_peak()

        self._on_cell_event(restart_peak)

    def post_run_cell(self, result: Any = None) -> None:
        """Record the memory alive after each cell of a running session."""
        number = getattr(result, "execution_count", None)

        def record(session: Session) -> None:
            label = cell_label(number) if number is not None else f"#{len(session.timeline)}"
            session.record(label, number)

        self._on_cell_event(record)

    # -- the magic ----------------------------------------------------------------------------
    @no_var_expand
    @needs_local_scope
    @line_cell_magic
    def mprofile(self, line: str = "", cell: str | None = None, local_ns: Any = None) -> Any:
        __tracebackhide__ = True  # noqa: F841 - read by IPython's traceback formatter
        if cell is not None:
            return self._cell(line, cell)
        with sampler.paused():  # a session's bookkeeping is not the user's memory
            command, rest = (line.split(None, 1) + ["", ""])[:2]
            if command in COMMANDS:
                args = options.parse_command(command, _expand(self.shell, rest))
                return getattr(self, f"_cmd_{command}")(args)
        args, statement, dashed = options.split_statement(line)
        if not statement:
            raise UsageError(
                "nothing to profile: give a statement (%mprofile [options] statement), use "
                "%%mprofile on a cell, or a session command: " + ", ".join(COMMANDS) + ".")
        word = statement.split(None, 1)[0]
        if word in COMMANDS and not dashed:
            raise UsageError(
                f"{word!r} is a session command and must come first: `%mprofile {word} ...`. "
                f"To profile a statement starting with {word!r}, write "
                f"`%mprofile [options] -- {statement}`.")
        return self._statement(statement, Options().update(args), local_ns)

    mprofile.__doc__ = options.help_text()

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
        opts = Options().update(options.parse_cell_line(_expand(self.shell, line)))
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
        if raw_lines is not None and 0 < call_line + offset <= len(raw_lines):
            # A line that is only the magic reads as the statement it profiles.
            index = call_line + offset - 1
            text = raw_lines[index]
            if text.lstrip().startswith("%mprofile"):
                indent = text[: len(text) - len(text.lstrip())]
                raw_lines = (*raw_lines[:index], indent + statement, *raw_lines[index + 1:])
        return self._profile(statement, opts, local_ns, number, call_line, raw_lines, offset)

    def _profile(self, source: str, opts: Options, local_ns: Any, number: int | None,
                 first_line: int, raw_lines: tuple[str, ...] | None, line_offset: int) -> Any:
        """Compile ``source`` as lines ``first_line...`` of cell ``number``, run it under the
        sampler, report, and give back its value or raise its exception."""
        __tracebackhide__ = True  # noqa: F841 - read by IPython's traceback formatter
        runner.check_idle()
        display.check_path(opts.pprof, "--pprof")
        compiled = runner.compile_code(self.shell, source, first_line, number, raw_lines,
                                       line_offset)
        silent = runner.ends_with_semicolon(source)
        label = cell_label(number) if number is not None else "mprofile"
        value, result, error = runner.run(self.shell, compiled, opts, local_ns, label)
        if result is not None:
            self.last_result = result
            display.finish(self.shell, result, opts)
        if error is not None:
            raise error
        return None if silent else value

    # -- session commands -------------------------------------------------------------------------
    def _need_session(self, running: bool = False) -> Session:
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
        runner.check_idle()
        opts = Options().update(args)
        base = runner.cell_caller_stack(self.shell)
        runner.start_sampler(opts)
        self.session = Session(self.shell, opts, base)
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

    def _get(self, session: Session, name: str | None, opts: Options) -> ProfileResult:
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
        display.check_path(opts.pprof, "--pprof")
        result = self._get(session, args.name, opts)
        if result.label != NOW:  # a stored snapshot: apply this command's view options
            result = _with_view(result, opts)
        self.last_result = result
        display.finish(self.shell, result, opts)

    def _cmd_compare(self, args: Any) -> None:
        session = self._need_session()
        opts = session.opts.update(args)
        old = _with_view(self._get(session, args.old, opts), opts)
        new = _with_view(self._get(session, args.new, opts), opts)
        display.finish(self.shell, DiffResult(new, old, group_by=opts.group_by, top=opts.top),
                       opts)

    def _cmd_timeline(self, args: Any) -> None:
        session = self._need_session()
        points = list(session.timeline)
        if args.output:
            self.shell.user_ns[args.output] = points
        display.show_timeline(points, args.view)

    def _cmd_export(self, args: Any) -> None:
        session = self._need_session()
        display.check_path(args.path, "export")
        result = self._get(session, args.name, session.opts)
        display.write_pprof(result, args.path)

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

    def _cmd_why(self, args: Any) -> None:
        result = self.last_result
        if result is None:
            raise UsageError("no result to explain yet: profile a cell with %%mprofile, or "
                             "show a snapshot of a session (`%mprofile show`), then "
                             "`%mprofile why [SITE]`")
        opts = Options().update(args)
        text = " ".join(args.site).strip()
        site: int | str | None = int(text) if text.isdigit() else (text or None)
        fresh = sampler.is_tracing()
        blocks = sampler.live_blocks() if fresh else None
        if not fresh and not result.has_live_blocks:
            raise UsageError(f"the result {result.label or ''} has no record of its blocks' "
                             "addresses; profile the code again with %%mprofile")
        try:
            pairs = result.retainers_by_site(
                [site] if site is not None else None, blocks=blocks,
                user_ns=self.shell.user_ns, max_blocks=opts.max_blocks,
                max_chains=opts.chains, time_limit=opts.time_limit)
        except (IndexError, KeyError) as exc:
            raise UsageError(f"%mprofile why: {exc.args[0]}") from None
        display.show_retainers(result, pairs, fresh)

    def _cmd_budget(self, args: Any) -> None:
        from .. import budget

        limit = (args.limit or "").strip()
        if limit.lower() == "off":
            budget.set_budget(None, safety_net=False)
            print("mprofile: no memory budget, safety net off (`%mprofile budget SIZE` sets "
                  "one; the safety net comes back with a budget)")
            return
        if limit:
            try:
                budget.set_budget(limit, safety_net=True)
            except (ValueError, TypeError) as exc:
                raise UsageError(f"%mprofile budget: {exc} (a size such as 4GB, +1GB or "
                                 f"'off')") from None
        print(budget_status_text(budget.status(), budget.read_memory()))

    def _cmd_postmortem(self, args: Any) -> None:
        from ..postmortem import NoPostMortem, load_postmortem

        opts = Options().update(args)
        display.check_path(opts.pprof, "--pprof")
        try:
            found = load_postmortem(args.path)
        except NoPostMortem as exc:
            raise UsageError(f"%mprofile postmortem: {exc}") from None
        except (OSError, ValueError) as exc:
            raise UsageError(f"%mprofile postmortem: cannot read {args.path!r}: {exc}") from None
        view = opts.view_options()
        result = found.to_result(group_by=view.group_by, top=view.top,
                                 show_all=view.show_all, include=view.include,
                                 exclude=view.exclude)
        display.show_postmortem(found.summary(), str(found.path))
        self.last_result = result
        display.finish(self.shell, result, opts)

    def stop_session(self) -> None:
        """Stop the session's sampling, if this object started it."""
        if self.session is not None and self.session.running:
            self.session.running = False
            if sampler.is_tracing():
                sampler.stop()
