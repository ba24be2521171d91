"""The flight recorder: a small file that says what the process was doing, kept current.

While recording, the watcher thread of :mod:`mprofile_ipy.budget` rewrites one file per
process at most every ``interval`` seconds (1 s), and only when something changed (the
sampler's samples, the running cell or line, resident memory by more than 1 MiB); a write
that took ``d`` seconds of CPU delays the next one by at least ``100 * d`` (a huge
exact-mode table), so writing stays around 1% of a core at worst. The file
holds the live sample table (when the sampler runs), the cell and line the main thread was
running, the peak and the recent memory timeline. It is written to a temporary file in
the same directory and renamed over the old one (``os.replace``), so a reader, or a kernel
killed in the middle of a write, always sees a whole record. When the process exits
normally the record is removed: a record whose process is gone means that process died
(OOM killer, container limit, ``kill -9``, a crash), and :mod:`mprofile_ipy.postmortem`
reads it from the next kernel.

A record *is* a snapshot file of :mod:`mprofile_ipy.storage` (gzip JSON, never pickle):
``load_snapshot(path)`` reads it, and everything about the process lives in
``snapshot.meta["record"]``. Records live in ``$XDG_STATE_HOME/mprofile-ipy/`` (default
``~/.local/state/mprofile-ipy/``), named ``<pid>-<start ticks>.record.json.gz``; the
process start time (from ``/proc``) and the boot id tell a dead process from a live one
whose pid was reused.
"""

from __future__ import annotations

import atexit
import io
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import budget as _budget
from . import sampler
from .attribution import Attributor, Location
from .model import Snapshot
from .storage import save_snapshot, write_atomically

__all__ = [
    "RECORD_FORMAT",
    "RECORD_SUFFIX",
    "RECORD_VERSION",
    "FlightRecorder",
    "get_recorder",
    "is_recording",
    "process_alive",
    "process_identity",
    "start_recording",
    "state_dir",
    "stop_recording",
]

RECORD_FORMAT = "mprofile-ipy-record"
RECORD_VERSION = 1
RECORD_SUFFIX = ".record.json.gz"
#: Timeline points kept in a record (at most one per 100 ms: the last minute or more).
RECORD_TIMELINE_POINTS = 600
MiB = 1024 * 1024
#: Writes are spaced by at least this many times the duration of the last one.
COST_FACTOR = 100


def state_dir() -> Path:
    """Where records live: ``$XDG_STATE_HOME/mprofile-ipy`` or ``~/.local/state/mprofile-ipy``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "state")
    return Path(base) / "mprofile-ipy"


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fp:
            return fp.read().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22),
    or ``None`` when there is no such process (or no ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fp:
            data = fp.read()
    except OSError:
        return None
    try:
        return int(data[data.rindex(b")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def process_identity(pid: int | None = None) -> dict[str, Any]:
    """What identifies a process across pid reuse and reboots: pid, start ticks, boot id."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "start_ticks": _start_ticks(pid), "boot_id": _boot_id(),
            "host": socket.gethostname()}


def process_alive(identity: dict[str, Any]) -> bool:
    """True while the process a record names still runs (same boot, same start time)."""
    pid = identity.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if identity.get("host") not in (None, socket.gethostname()):
        return False  # another machine's record (a shared home): we cannot tell; not ours
    boot = identity.get("boot_id")
    if boot and _boot_id() and boot != _boot_id():
        return False
    if os.path.isdir("/proc/self"):
        ticks = _start_ticks(pid)
        if ticks is None:
            return False
        start = identity.get("start_ticks")
        return start is None or ticks == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _kernel_context(shell: Any) -> dict[str, Any]:
    """Connection file and notebook path of the kernel, when this runs in one."""
    out: dict[str, Any] = {"cwd": os.getcwd(), "argv": list(sys.argv[:4]),
                           "connection_file": None, "notebook": None}
    app_mod = sys.modules.get("ipykernel.kernelapp")
    try:
        if app_mod is not None and app_mod.IPKernelApp.initialized():
            out["connection_file"] = os.path.basename(
                app_mod.IPKernelApp.instance().connection_file or "") or None
    except Exception:  # noqa: BLE001 - any ipykernel version: best effort
        pass
    notebook = os.environ.get("JPY_SESSION_NAME")
    ns = getattr(shell, "user_ns", None) or {}
    for name in ("__vsc_ipynb_file__", "__session__"):
        value = ns.get(name)
        if not notebook and isinstance(value, str) and value:
            notebook = value
    out["notebook"] = notebook
    return out


def _location_dict(loc: Location | None) -> dict[str, Any] | None:
    if loc is None:
        return None
    return {"filename": loc.filename, "lineno": loc.lineno, "file": loc.file, "line": loc.line,
            "source": loc.source, "cell": loc.cell}


class FlightRecorder:
    """Keeps this process's record file current; see the module docstring.

    ``path`` is the record file; ``writes`` counts the files written, ``skipped`` the
    ticks where nothing had changed, ``write_seconds`` the time spent writing.
    """

    def __init__(self, directory: str | os.PathLike | None = None, *, interval: float = 1.0,
                 shell: Any = None) -> None:
        if not isinstance(interval, (int, float)) or isinstance(interval, bool) or not (
                interval > 0):
            raise ValueError(f"interval must be a positive number of seconds, not {interval!r}")
        self.directory = Path(directory) if directory is not None else state_dir()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.interval = float(interval)
        self.shell = shell if shell is not None else _current_shell()
        self.identity = process_identity()
        self.context = _kernel_context(self.shell)
        self.started_at = time.time()
        self.path = self.directory / (
            f"{self.identity['pid']}-{self.identity['start_ticks'] or 0}{RECORD_SUFFIX}")
        self._last_write = 0.0
        self._cost_gap = 0.0
        self._fingerprint: tuple | None = None
        self._attributor = Attributor(self.shell)
        self._lock = threading.Lock()
        self.writes = 0
        self.skipped = 0
        self.write_seconds = 0.0
        self.last_error = ""

    # -- called by the watcher thread -----------------------------------------------------
    def on_tick(self, reading: _budget.Reading) -> None:
        """Watcher listener: write when ``interval`` passed and something changed."""
        if reading.time - self._last_write < max(self.interval, self._cost_gap):
            return
        self.write(reading)

    def write(self, reading: _budget.Reading | None = None, *, force: bool = False) -> bool:
        """Write the record now if something changed (always with ``force``); True if written."""
        with self._lock:
            reading = reading or _budget.read_memory()
            stats = sampler.get_stats()
            frame = _budget.main_thread_frame()
            running, inner = _budget.locate_running(frame, self._attributor)
            del frame
            fingerprint = (
                stats.tracing, stats.samples, stats.live_samples,
                running and (running.filename, running.lineno),
                (reading.rss or 0) // MiB,
            )
            if not force and fingerprint == self._fingerprint:
                self.skipped += 1
                self._last_write = reading.time
                return False
            t0, cpu0 = time.perf_counter(), time.thread_time()
            try:
                self._write(reading, stats, running, inner)
            except Exception as exc:  # noqa: BLE001 - never disturb the user's code
                self.last_error = f"{type(exc).__name__}: {exc}"
                return False
            finally:
                self._last_write = reading.time
            self.write_seconds += time.perf_counter() - t0
            # A huge sample table (exact mode, millions of traces) makes writes slow: space
            # them so that writing takes at most ~1% of the CPU. CPU time of this thread,
            # not wall time: a slow disk or a busy machine is no reason to write less.
            self._cost_gap = COST_FACTOR * (time.thread_time() - cpu0)
            self.writes += 1
            self._fingerprint = fingerprint
            return True

    def _write(self, reading: _budget.Reading, stats: sampler.SamplerStats,
               running: Location | None, inner: Location | None) -> None:
        if stats.tracing:
            snapshot = sampler.take_snapshot()
        else:
            snapshot = Snapshot([], 1, meta={"pid": os.getpid(), "taken_at": reading.time})
        status = _budget.status()
        points = _budget.timeline()[-RECORD_TIMELINE_POINTS:]
        execution_count = getattr(self.shell, "execution_count", None)
        record = {
            "format": RECORD_FORMAT,
            "version": RECORD_VERSION,
            **self.identity,
            **self.context,
            "started_at": self.started_at,
            "written_at": reading.time,
            "executing": running is not None,
            "running": _location_dict(running),
            "inner": _location_dict(inner),
            "cell": _location_dict(running) if running and running.is_cell else None,
            "execution_count": execution_count if isinstance(execution_count, int) else None,
            "rss": reading.rss,
            "peak_rss": max(status.peak_rss, reading.rss or 0),
            "traced": reading.traced,
            "peak_traced": int(stats.peak_bytes) if stats.tracing else None,
            "cgroup_current": reading.cgroup_current,
            "cgroup_limit": reading.cgroup_limit,
            "available": reading.available,
            "budget": status.limit,
            "safety_net": status.safety_net,
            "timeline": [[t, r, tr] for t, r, tr in points],
        }
        record["cells"] = self._cells(snapshot, running, inner)
        snapshot.meta["record"] = record
        buffer = io.BytesIO()
        save_snapshot(snapshot, buffer)
        write_atomically(self.path, buffer.getbuffer(), mode=0o600)

    def _cells(self, snapshot: Snapshot, *locations: Location | None) -> dict[str, Any]:
        """What a later process needs to show this one's cells: for each notebook cell file
        in the snapshot or on the running stack, its number, label, line offset and lines."""
        filenames = {loc.filename for loc in locations if loc is not None and loc.is_cell}
        seen_frames: set[int] = set()
        for trace in snapshot.raw_traces:
            frames = trace[2]
            if id(frames) in seen_frames:
                continue
            seen_frames.add(id(frames))
            filenames.update(f[0] for f in frames)
        out: dict[str, Any] = {}
        for filename in filenames:
            info = self._attributor.cell(filename)
            if info is None:
                continue
            lines = info.lines
            if lines is None:
                import linecache

                lines = tuple(x.rstrip("\n") for x in linecache.getlines(filename)) or None
                offset = 0
            else:
                offset = info.line_offset
            out[filename] = {"number": info.number, "label": info.label,
                             "line_offset": offset, "lines": list(lines) if lines else None}
        return out

    def remove(self) -> None:
        """Delete this process's record (a clean exit is not a death)."""
        for path in (self.path, self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")):
            try:
                path.unlink()
            except OSError:
                pass


def _current_shell() -> Any:
    if "IPython" not in sys.modules:
        return None
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return None
    return get_ipython()


_recorder: FlightRecorder | None = None
_recorder_lock = threading.Lock()


def start_recording(directory: str | os.PathLike | None = None, *, interval: float = 1.0,
                    shell: Any = None) -> FlightRecorder:
    """Start (or restart with new settings) this process's flight recorder and write a
    first record. Old records of dead processes are cleaned up (7 days, 20 kept)."""
    global _recorder
    stop_recording()
    with sampler.paused():  # the recorder's own objects are not the user's memory
        recorder = FlightRecorder(directory, interval=interval, shell=shell)
        from .postmortem import cleanup_records

        try:
            cleanup_records(recorder.directory)
        except OSError:
            pass
        with _recorder_lock:
            _recorder = recorder
        recorder.write(force=True)
    _budget.add_listener(recorder.on_tick)
    return recorder


def stop_recording(*, keep: bool = False) -> None:
    """Stop recording and delete the record (``keep=True`` leaves the last one on disk)."""
    global _recorder
    with _recorder_lock:
        recorder, _recorder = _recorder, None
    if recorder is None:
        return
    _budget.remove_listener(recorder.on_tick)
    with recorder._lock:  # a write in progress finishes first
        if not keep:
            recorder.remove()


def get_recorder() -> FlightRecorder | None:
    """The running recorder, if any."""
    return _recorder


def is_recording() -> bool:
    """True while the flight recorder runs."""
    return _recorder is not None


@atexit.register
def _remove_at_exit() -> None:
    # A clean exit leaves no record: only a process that died keeps one.
    recorder = _recorder
    if recorder is not None and recorder.identity["pid"] == os.getpid():
        _budget.remove_listener(recorder.on_tick)
        recorder.remove()


def _after_fork_in_child() -> None:
    global _recorder, _recorder_lock
    _recorder = None  # the parent's record is the parent's
    _recorder_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
