"""Post-mortem: what a dead kernel was doing, read from its flight record.

``load_postmortem()`` looks in the per-user state directory (see
:mod:`mprofile_ipy.recorder`) for the newest record of a process that is no longer alive,
preferring one from the same notebook, then the same working directory, and returns a
:class:`PostMortem`: the live sample table at the last write (a
:class:`~mprofile_ipy.model.Snapshot`), the cell and line that were running, the peak and
the memory timeline. It needs nothing from the dead process but the file, so it works
after ``SIGKILL`` from the OOM killer or a container limit. ``to_result()`` wraps it as a
normal report (tables, HTML, DataFrame, pprof). Records older than 7 days are removed, and
only the newest 20 records of dead processes are kept.
"""

from __future__ import annotations

import html
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .attribution import Attributor, CellInfo, cell_label
from .errors import MprofileError, NoPostMortem
from .model import Snapshot
from .recorder import RECORD_FORMAT, RECORD_SUFFIX, RECORD_VERSION, process_alive, state_dir
from .storage import load_snapshot
from .units import format_size

__all__ = ["NoPostMortem", "PostMortem", "cleanup_records", "find_records", "load_postmortem"]

MAX_AGE_DAYS = 7.0
KEEP = 20
_NAME_RE = re.compile(r"^(\d+)-(\d+)" + re.escape(RECORD_SUFFIX) + "$")


@dataclass(frozen=True)
class _Located:
    file: str
    line: int
    source: str
    cell: int | None
    filename: str
    lineno: int

    @classmethod
    def from_dict(cls, d: Any) -> _Located | None:
        if not isinstance(d, dict):
            return None
        try:
            return cls(str(d.get("file") or d.get("filename") or "?"), int(d.get("line") or 0),
                       str(d.get("source") or ""),
                       int(d["cell"]) if isinstance(d.get("cell"), int) else None,
                       str(d.get("filename") or ""), int(d.get("lineno") or 0))
        except (TypeError, ValueError):
            return None

    def describe(self) -> str:
        text = f"{self.file}, line {self.line}"
        return f"{text}: {self.source}" if self.source else text


class RecordAttributor(Attributor):
    """Resolves the dead process's notebook cells from the map its record carries (the
    kernel that compiled them is gone), other files as usual."""

    def __init__(self, cells: Any) -> None:
        super().__init__(shell=None)
        self._record_cells: dict[str, CellInfo] = {}
        for filename, d in (cells or {}).items() if isinstance(cells, dict) else ():
            try:
                number = d.get("number")
                lines = d.get("lines")
                self._record_cells[str(filename)] = CellInfo(
                    number if isinstance(number, int) else None,
                    str(d.get("label") or cell_label(number)),
                    int(d.get("line_offset") or 0),
                    tuple(str(x) for x in lines) if isinstance(lines, list) else None)
            except (AttributeError, TypeError, ValueError):
                continue

    def cell(self, filename: str) -> CellInfo | None:
        found = self._record_cells.get(filename)
        return found if found is not None else super().cell(filename)


class PostMortem:
    """A dead process's last record.

    Attributes: ``path``, ``snapshot`` (the sampled allocations alive at the last write;
    empty when the sampler was off), ``record`` (the raw metadata dict), ``pid``,
    ``notebook``, ``cwd``, ``connection_file``, ``started_at``/``written_at`` (epoch
    seconds), ``running`` (the user's line: a cell's line in a notebook), ``inner`` (the
    innermost line, in a library say) and ``cell`` (``running`` when it is a cell), each
    with ``file``/``line``/``source``/``cell``, ``executing`` (whether code was running),
    ``rss``, ``peak_rss``, ``traced``, ``peak_traced`` (bytes or ``None``), ``budget``,
    ``timeline`` (a list of (time, rss, traced)).
    """

    def __init__(self, path: str | os.PathLike, snapshot: Snapshot) -> None:
        record = snapshot.meta.get("record")
        if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
            raise NoPostMortem(f"{os.fspath(path)!r} is a snapshot but not a flight record")
        if not isinstance(record.get("version"), int) or record["version"] > RECORD_VERSION:
            raise NoPostMortem(f"{os.fspath(path)!r} is a record of a newer version "
                               f"({record.get('version')!r}); upgrade mprofile-ipy")
        self.path = Path(path)
        self.snapshot = snapshot
        self.record = record
        get = record.get
        self.pid = get("pid")
        self.notebook = get("notebook")
        self.cwd = get("cwd")
        self.connection_file = get("connection_file")
        self.started_at = _num(get("started_at"))
        self.written_at = _num(get("written_at"))
        self.running = _Located.from_dict(get("running"))
        self.inner = _Located.from_dict(get("inner"))
        self.cell = _Located.from_dict(get("cell")) or (
            self.running if self.running and self.running.cell is not None else None)
        self.executing = bool(get("executing"))
        self.rss = _int(get("rss"))
        self.peak_rss = _int(get("peak_rss"))
        self.traced = _int(get("traced"))
        self.peak_traced = _int(get("peak_traced"))
        self.budget = _int(get("budget"))
        self.attributor = RecordAttributor(get("cells"))
        self.timeline: list[tuple[float, int | None, int | None]] = []
        for point in get("timeline") or []:
            if isinstance(point, list) and len(point) == 3:
                self.timeline.append((_num(point[0]) or 0.0, _int(point[1]), _int(point[2])))

    @property
    def label(self) -> str:
        """``post-mortem of In [7]`` or ``post-mortem of pid 1234``."""
        if self.cell is not None:
            return f"post-mortem of {self.cell.file}"
        return f"post-mortem of pid {self.pid}"

    @property
    def traced_total(self) -> int:
        """Estimated bytes of the sampled allocations alive at the last write."""
        return self.snapshot.total_size if len(self.snapshot.raw_traces) else 0

    def top_sites(self, n: int = 5) -> list[tuple[str, float]]:
        """The ``n`` lines holding the most estimated live memory: (where, bytes)."""
        from .budget import top_sites

        return top_sites(self.snapshot, n, self.attributor)

    def summary(self) -> str:
        """A few lines for people: who died, where, how big."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.written_at or 0))
        who = f"pid {self.pid}"
        if self.notebook:
            who += f" ({self.notebook})"
        lines = [f"Post-mortem of {who}: its last record was written at {when}."]
        if self.executing and self.running is not None:
            lines.append(f"  running: {self.running.describe()}")
            if self.inner is not None and self.inner != self.running:
                lines.append(f"    inside: {self.inner.describe()}")
        else:
            lines.append("  no code of the notebook was running at the last record")
        figures = []
        if self.rss is not None:
            figures.append(f"RSS {format_size(self.rss)}")
        if self.peak_rss:
            figures.append(f"peak RSS {format_size(self.peak_rss)}")
        if self.traced is not None:
            figures.append(f"traced {format_size(self.traced)}")
        if self.budget:
            figures.append(f"budget {format_size(self.budget)}")
        if figures:
            lines.append("  " + ", ".join(figures))
        sites = self.top_sites()
        if sites:
            lines.append("  largest sites alive (sampled):")
            lines += [f"    {format_size(size):>10}  {where}" for where, size in sites]
        elif not self.record.get("peak_traced"):
            lines.append("  (the sampler was off: start a session with `%mprofile start` to "
                         "record what is alive)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return f"<PostMortem pid={self.pid} {self.label!r} path={str(self.path)!r}>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.summary())

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td style='text-align:right'>{html.escape(format_size(size))}</td>"
            f"<td><code>{html.escape(where)}</code></td></tr>" for where, size in self.top_sites())
        head, *rest = self.summary().split("\n")
        body = "<br>".join(html.escape(line.strip()) for line in rest
                           if not line.startswith("    "))
        table = (f"<table><tr><th>alive</th><th>site</th></tr>{rows}</table>" if rows else "")
        return f"<div><b>{html.escape(head)}</b><br>{body}{table}</div>"

    def to_result(self, **options: Any) -> Any:
        """The record as a :class:`~mprofile_ipy.result.ProfileResult`: the same tables,
        HTML, DataFrames and pprof export as a profiled cell. ``options`` go to
        ``ProfileResult`` (``group_by``, ``top``, ...)."""
        from .result import ProfileResult, TimelinePoint

        timeline = [TimelinePoint(f"{t - (self.started_at or t):.1f} s", None, t,
                                  float(traced if traced is not None else rss or 0),
                                  float(rss or 0))
                    for t, rss, traced in self.timeline]
        peak = self.peak_traced if self.peak_traced is not None else self.peak_rss
        return ProfileResult(self.snapshot, label=self.label, current=float(self.traced_total),
                             peak=float(peak) if peak is not None else None,
                             timeline=timeline or None, created=self.written_at,
                             **{"attributor": self.attributor, **options})


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


@dataclass(frozen=True)
class RecordInfo:
    """A record file found on disk: ``path``, ``pid``, ``start_ticks``, ``mtime``,
    ``alive`` (its process still runs)."""

    path: Path
    pid: int
    start_ticks: int
    mtime: float
    alive: bool


def _directory(directory: str | os.PathLike | None) -> Path:
    return Path(directory) if directory is not None else state_dir()


def find_records(directory: str | os.PathLike | None = None) -> list[RecordInfo]:
    """Every record in ``directory`` (default: the state directory), newest first."""
    root = _directory(directory)
    out = []
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return []
    host = None
    for entry in entries:
        match = _NAME_RE.match(entry.name)
        if not match or not entry.is_file():
            continue
        try:
            mtime = entry.stat().st_mtime
        except OSError:
            continue
        pid, ticks = int(match.group(1)), int(match.group(2))
        if host is None:
            import socket

            host = socket.gethostname()
        alive = process_alive({"pid": pid, "start_ticks": ticks or None, "host": host})
        out.append(RecordInfo(Path(entry.path), pid, ticks, mtime, alive))
    out.sort(key=lambda r: -r.mtime)
    return out


def cleanup_records(directory: str | os.PathLike | None = None, *,
                    max_age_days: float = MAX_AGE_DAYS, keep: int = KEEP) -> list[Path]:
    """Delete records of dead processes older than ``max_age_days`` or beyond the newest
    ``keep``, and temporary files left by writers that died; returns what was deleted.
    Records of live processes are never touched."""
    root = _directory(directory)
    removed = []
    now = time.time()
    dead = [r for r in find_records(root) if not r.alive]
    for index, info in enumerate(dead):
        if index >= keep or now - info.mtime > max_age_days * 86400:
            try:
                info.path.unlink()
                removed.append(info.path)
            except OSError:
                pass
    try:
        for entry in os.scandir(root):
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                pid_text = entry.name.rsplit(".", 2)[-2]
                if pid_text.isdigit() and not process_alive({"pid": int(pid_text)}):
                    try:
                        os.unlink(entry.path)
                        removed.append(Path(entry.path))
                    except OSError:
                        pass
    except OSError:
        pass
    return removed


def _current_notebook() -> str | None:
    from .recorder import _current_shell, _kernel_context

    return _kernel_context(_current_shell()).get("notebook")


def load_postmortem(path: str | os.PathLike | None = None, *, notebook: str | None = None,
                    cwd: str | None = None, cleanup: bool = True) -> PostMortem:
    """The newest record of a dead process, as a :class:`PostMortem`.

    ``path`` may name a record file (read as is) or a directory to search (default: the
    state directory). Among records of processes no longer alive, one from the same
    ``notebook`` (default: this kernel's) comes first, then one from the same ``cwd``
    (default: the current directory), then the newest. Raises :class:`NoPostMortem` when
    there is none, and ``SnapshotFormatError`` for a damaged file named explicitly.
    """
    if path is not None and Path(path).is_file():
        return PostMortem(path, load_snapshot(path))
    root = _directory(path)
    if path is not None and not root.is_dir():
        raise NoPostMortem(f"{os.fspath(path)!r} is neither a record file nor a directory")
    if cleanup:
        cleanup_records(root)
    notebook = notebook if notebook is not None else _current_notebook()
    cwd = cwd if cwd is not None else os.getcwd()
    candidates: list[tuple[int, float, PostMortem]] = []
    for info in find_records(root):
        if info.alive or info.pid == os.getpid():
            continue
        try:
            pm = PostMortem(info.path, load_snapshot(info.path))
        except (MprofileError, OSError, ValueError):
            continue  # a damaged or foreign file does not hide the others
        rank = 0 if notebook and pm.notebook == notebook else 1 if pm.cwd == cwd else 2
        candidates.append((rank, -(pm.written_at or info.mtime), pm))
    if not candidates:
        raise NoPostMortem(f"no record of a dead process in {str(root)!r}: a kernel leaves one "
                           "only while the flight recorder runs, and removes it when it exits "
                           "normally")
    candidates.sort(key=lambda c: (c[0], c[1]))
    return candidates[0][2]
