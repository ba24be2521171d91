"""A memory budget and a safety net that stop running code before the kernel dies.

``set_budget("4GB")`` (or ``with budget("+500MB"): ...`` for one block) starts a watcher
thread that reads, every 10 to 50 ms, what the OOM killer counts: the process's resident
memory (``/proc/self/statm``), its cgroup's usage and limit (v2 ``memory.current`` /
``memory.max``, v1 ``memory.usage_in_bytes`` / ``memory.limit_in_bytes``), the machine's
``MemAvailable`` and swap, the address-space limit (``RLIMIT_AS``) and, while the sampler
runs, its estimate of traced memory. When a measure crosses the budget while user code
runs, the watcher raises :class:`~mprofile_ipy.errors.MemoryBudgetExceeded` *in the main
thread*: the code stops with an exception, the kernel stays alive with every variable, and
the exception says which measure tripped, its value and the limit, the line that was
running, the top allocating sites (a snapshot, when the sampler is on) and the memory over
the last minutes. The safety net (on by default while the extension is loaded,
:func:`enable_safety_net`) does the same when the cgroup or the machine is nearly out of
memory (Fil's heuristics: under 100 MiB left, or swap growing past what is available).

How the interrupt lands: ``PyThreadState_SetAsyncExc`` on the main thread. It is delivered
at the next bytecode boundary, so a single long C call (one huge NumPy operation, a
blocking read) finishes first; Python loops, pandas pipelines and anything that returns to
Python between allocations are stopped within a tick. The alternatives and why they were
not chosen: a signal (``pthread_kill`` + a handler) also interrupts blocking system calls
but needs a signal number that ipykernel and the user's code do not use, and its handler
still only runs between bytecodes; ``_thread.interrupt_main`` raises ``KeyboardInterrupt``
(the wrong exception, and the one users catch to stop loops); exiting like Fil loses
every variable. An interrupt is raised only when the main thread is running user code (a
cell or a file of the user's own, outside the standard library and site-packages, is on
its stack, and, when
:func:`register_ipython` wired the cell hooks, a cell is executing). One race remains: a
cell that ends in the microseconds between that check and the delivery gets the exception
in IPython's own code right after it (the kernel survives; that cell's reply may be an
internal error). The window is a few microseconds per trip.

While the sampler runs, traced memory also rides on the sample path, so that memory that
grows faster than any poll (calloc'ed blocks whose pages are never touched: gigabytes in
milliseconds, which RSS never shows) is stopped at the crossing. The thread that sets a
budget arms a watermark in the sampler (:func:`mprofile_ipy.sampler.set_watermark`) at the
traced threshold; the sample that reaches it writes to an eventfd (the watcher sleeps on it
and wakes at once) and schedules a pending call that the main thread runs at its next
bytecode, as it runs a signal handler. That call checks right there, with sampling paused.
It raises only when the interrupted frame is the user's own code, no exception is being
handled (an ``except`` block, a ``finally`` during unwinding) and no exception display or
formatting is on the stack (:func:`may_raise_in`); everywhere else (the kernel's machinery,
this package, IPython formatting a traceback) it leaves the trip to the watcher thread and
its usual rules. When it raises, it queues the same ``PyThreadState_SetAsyncExc`` interrupt
from a C callable, so the exception surfaces in the interrupted frame with a traceback of
the user's code only. The allocation fast path is untouched: the check is one comparison on
the (rare) sample path.

After an interrupt the budget re-arms once memory is back 5% under the limit; until then
it trips again only if memory grows another 10% of the limit, so ``del big`` in the next cell
works while a runaway is still caught. The watcher is one daemon thread, started when a
budget, the safety net or the flight recorder (:mod:`mprofile_ipy.recorder`) needs it and
stopped as soon as none does; it never touches the allocation fast path, and neither its
allocations nor the main thread's bookkeeping for the budget (the checks, the exception's
report) are ever sampled. After ``fork()`` the child starts with nothing enabled.
Linux only for RSS, cgroup and ``MemAvailable``; elsewhere only the sampler's estimate is
watched.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import math
import os
import re
import select
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from . import sampler
from .attribution import Attributor, Location, is_internal, is_profiler_file, is_stdlib
from .errors import BudgetError, MemoryBudgetExceeded
from .estimate import weight as _weight
from .units import format_size, parse_size

__all__ = [
    "BudgetError",
    "BudgetStatus",
    "Reading",
    "Trip",
    "budget",
    "cell_finished",
    "cell_started",
    "describe_location",
    "disable_for_ipython",
    "disable_safety_net",
    "enable_for_ipython",
    "enable_safety_net",
    "get_budget",
    "is_own_code",
    "locate_running",
    "memory_budget",
    "read_memory",
    "refresh_limits",
    "register_ipython",
    "set_budget",
    "shutdown",
    "status",
    "top_sites",
    "unregister_ipython",
]

MiB = 1024 * 1024
#: The safety net trips when less than this is left (Fil's figure).
DEFAULT_MARGIN = 100 * MiB
#: Watcher period near a limit and far from any limit, in seconds.
FAST_INTERVAL = 0.010
SLOW_INTERVAL = 0.050
#: Past a trip, the budget trips again only after this fraction of the limit more.
REARM_STEP = 0.10
#: ... or once memory is this fraction of the limit under it (figures jitter).
REARM_HYSTERESIS = 0.05
#: Ring buffer of the memory timeline: a point every 100 ms at most, the last 2 minutes.
TIMELINE_STEP = 0.1
TIMELINE_POINTS = 1200
#: Above this many live samples (exact mode), the interrupt does not wait for a snapshot.
MAX_TRIP_SAMPLES = 200_000
#: Seconds after which an interrupt whose exception was never instantiated is forgotten.
PENDING_EXPIRY = 1.0
#: Seconds a trip handed over to the main thread's pending call waits before the watcher
#: delivers it itself (see _Watcher.fire): the call runs before any interrupt could land,
#: even after a long C call, so this only covers a call that was lost.
HANDOVER_WAIT = 1.0
#: Seconds the main thread's sample-path check waits for a trip the watcher is firing.
FIRE_WAIT = 1.0
#: Seconds after which the main thread's sample-path check is taken to have ended (its
#: end was lost: a KeyboardInterrupt landed right there); it takes milliseconds.
DECIDING_LIMIT = 2.0
_UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a huge page-rounded number


_F = Any


def _quiet(func: _F) -> _F:
    """Run ``func`` with sampling paused in the calling thread: the watcher's settings,
    thread and probe are the profiler's memory, not the user's."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with sampler.paused():
            return func(*args, **kwargs)

    return wrapper


# ---------------------------------------------------------------------------------------------
# Reading memory


@dataclass(frozen=True)
class Reading:
    """Memory measures at one moment, in bytes (``None``: not available here).

    ``rss`` resident memory of the process; ``vm_size`` its address space; ``traced`` the
    sampler's estimate of live traced memory (``None`` while it is off); ``cgroup_current``
    and ``cgroup_limit`` the tightest limited cgroup level (limit ``None`` when unlimited;
    usage without reclaimable page cache when the cache mattered); ``available`` the
    machine's MemAvailable; ``swap_used`` swap in use on the machine; ``as_limit`` the
    address-space rlimit.
    """

    time: float
    rss: int | None
    vm_size: int | None = None
    traced: int | None = None
    cgroup_current: int | None = None
    cgroup_limit: int | None = None
    available: int | None = None
    swap_used: int | None = None
    as_limit: int | None = None


def _make_pread() -> Callable[[int, int], bytes]:
    """``pread(fd, size)`` from offset 0 *without releasing the GIL*.

    ``os.pread`` releases the GIL around the system call; for a /proc file that takes a
    few microseconds, and getting the GIL back then costs a forced switch of the main
    thread (it must drop the GIL at its next check, after up to ``sys.getswitchinterval()``).
    Holding the GIL for the few microseconds of the read is cheaper for everyone: one
    GIL hand-off per watcher tick instead of four. libc's ``pread`` through ``ctypes.PyDLL``
    (which keeps the GIL); ``os.pread`` where that is not available.
    """
    try:
        libc = ctypes.PyDLL(None, use_errno=True)
        func = libc.pread
        func.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long]
        func.restype = ctypes.c_ssize_t
    except (OSError, AttributeError):  # pragma: no cover - not a glibc/musl system
        return lambda fd, size: os.pread(fd, size, 0)
    buffer = ctypes.create_string_buffer(8192)
    lock = threading.Lock()  # the buffer is shared; reads are short

    def pread(fd: int, size: int) -> bytes:
        size = min(size, len(buffer))
        with lock:
            n = func(fd, buffer, size, 0)
            if n < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            return buffer.raw[:n]

    return pread


_pread = _make_pread()


def _pread_int(fd: int) -> int | None:
    try:
        text = _pread(fd, 64)
    except OSError:
        return None
    text = text.strip()
    if not text or text == b"max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= _UNLIMITED else value


@dataclass
class _CgroupLevel:
    """One directory of the process's cgroup chain that has a memory limit."""

    directory: str
    version: int
    limit: int
    current_fd: int = -1

    @property
    def current_name(self) -> str:
        return "memory.current" if self.version == 2 else "memory.usage_in_bytes"

    @property
    def limit_name(self) -> str:
        return "memory.max" if self.version == 2 else "memory.limit_in_bytes"

    def working_set(self, usage: int) -> int:
        """``usage`` minus the inactive page cache the kernel reclaims before any OOM kill
        (what ``docker stats`` and the kubelet call the working set)."""
        key = "inactive_file" if self.version == 2 else "total_inactive_file"
        try:
            with open(os.path.join(self.directory, "memory.stat"), "rb") as fp:
                for line in fp:
                    name, _, value = line.partition(b" ")
                    if name.decode() == key:
                        return max(0, usage - int(value))
        except (OSError, ValueError):
            pass
        return usage


def parse_cgroup_dirs(proc_cgroup: str, mountinfo: str) -> list[tuple[str, int]]:
    """The memory cgroup directories of a process, innermost first, with their version.

    ``proc_cgroup`` is the text of ``/proc/<pid>/cgroup``, ``mountinfo`` of
    ``/proc/<pid>/mountinfo``. Version 2 comes first when its hierarchy has the memory
    controller; v1's ``memory`` hierarchy otherwise (hybrid hosts have both). Every
    ancestor up to the mount point is listed, since a parent's limit applies too. Paths
    that do not exist (a cgroup namespace hides the outer path) fall back to the mount point.
    """
    v2_path = v1_path = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            v2_path = path
        elif "memory" in controllers.split(","):
            v1_path = path
    mounts: dict[int, list[tuple[str, str]]] = {1: [], 2: []}
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        root, mountpoint = fields[3], fields[4].replace("\\040", " ")
        fstype, superopts = rfields[0], rfields[2]
        if fstype == "cgroup2":
            mounts[2].append((root, mountpoint))
        elif fstype == "cgroup" and "memory" in superopts.split(","):
            mounts[1].append((root, mountpoint))

    def chain(path: str | None, version: int) -> list[tuple[str, int]]:
        if path is None:
            return []
        for root, mountpoint in mounts[version]:
            rel = path
            if root != "/" and (path == root or path.startswith(root + "/")):
                rel = path[len(root):]
            directory = os.path.normpath(mountpoint + "/" + rel.lstrip("/"))
            if not os.path.isdir(directory):
                directory = mountpoint
            probe = "memory.current" if version == 2 else "memory.usage_in_bytes"
            out = []
            d = directory
            while True:
                if os.path.exists(os.path.join(d, probe)) or (
                    version == 2 and os.path.exists(os.path.join(d, "memory.max"))
                ):
                    out.append((d, version))
                if os.path.normpath(d) == os.path.normpath(mountpoint) or d in ("/", ""):
                    break
                d = os.path.dirname(d)
            if out:
                return out
        return []

    return chain(v2_path, 2) or chain(v1_path, 1)


class _Probe:
    """Reads the measures cheaply: files kept open and read with ``pread``; limits that
    rarely change (cgroup, rlimit) re-read every 2 s. One instance per process (fork
    resets it)."""

    LIMITS_EVERY = 2.0

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        # reentrant: a signal handler in the main thread may read while that thread reads
        self._lock = threading.RLock()
        self._statm = self._open(f"{proc}/self/statm")
        self._meminfo = self._open(f"{proc}/meminfo")
        self._levels: list[_CgroupLevel] = []
        self._own: _CgroupLevel | None = None
        self._limits_at = -math.inf
        self._as_limit: int | None = None

    @staticmethod
    def _open(path: str) -> int:
        try:
            return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return -1

    def close(self) -> None:
        """Close every file kept open (the probe reads nothing afterwards)."""
        with self._lock:
            levels = self._all_levels()
            for level in levels:
                fd, level.current_fd = level.current_fd, -1
                if fd >= 0:
                    os.close(fd)
            for fd in (self._statm, self._meminfo):
                if fd >= 0:
                    os.close(fd)
            self._statm = self._meminfo = -1
            self._levels, self._own = [], None

    def _all_levels(self) -> list[_CgroupLevel]:
        levels = list(self._levels)
        if self._own is not None and self._own not in levels:
            levels.append(self._own)
        return levels

    def _refresh_limits(self) -> None:
        for level in self._all_levels():
            fd, level.current_fd = level.current_fd, -1  # never closed twice
            if fd >= 0:
                os.close(fd)
        self._levels, self._own = [], None
        try:
            with open(f"{self.proc}/self/cgroup") as fp:
                cg = fp.read()
            with open(f"{self.proc}/self/mountinfo") as fp:
                mi = fp.read()
            dirs = parse_cgroup_dirs(cg, mi)
        except OSError:
            dirs = []
        for index, (directory, version) in enumerate(dirs):
            name = "memory.max" if version == 2 else "memory.limit_in_bytes"
            try:
                with open(os.path.join(directory, name), "rb") as fp:
                    text = fp.read().strip()
                limit = None if text == b"max" else int(text)
            except (OSError, ValueError):
                limit = None
            if limit is not None and limit >= _UNLIMITED:
                limit = None
            level = _CgroupLevel(directory, version, limit if limit is not None else -1)
            if limit is None and index > 0:
                continue
            level.current_fd = self._open(os.path.join(directory, level.current_name))
            if index == 0:
                self._own = level
            if limit is not None:
                self._levels.append(level)
        try:
            import resource

            soft, _ = resource.getrlimit(resource.RLIMIT_AS)
            self._as_limit = None if soft == resource.RLIM_INFINITY else int(soft)
        except (ImportError, OSError, ValueError):
            self._as_limit = None

    def cgroup_events(self) -> dict[str, int]:
        """Counters of ``memory.events`` (v2) of the own cgroup: oom, oom_kill, max, high."""
        if self._own is None or self._own.version != 2:
            return {}
        out = {}
        try:
            with open(os.path.join(self._own.directory, "memory.events")) as fp:
                for line in fp:
                    name, _, value = line.partition(" ")
                    out[name] = int(value)
        except (OSError, ValueError):
            return {}
        return out

    def read(self, margin: int = DEFAULT_MARGIN, traced: bool = True) -> Reading:
        """Every measure now; ``traced=False`` skips the sampler's counters (a call into C
        that releases the GIL: only a budget needs it at every tick)."""
        # One reader at a time: the watcher and the main thread both read, and a refresh
        # closes and reopens the cgroup files; unlocked, one thread could close an fd number
        # that the other (or the user's code) has just reopened.
        with self._lock:
            now = time.time()
            if now - self._limits_at > self.LIMITS_EVERY:
                self._limits_at = now
                self._refresh_limits()
            rss = vm = None
            if self._statm >= 0:
                try:
                    fields = _pread(self._statm, 128).split()
                    vm, rss = int(fields[0]) * self.page, int(fields[1]) * self.page
                except (OSError, ValueError, IndexError):
                    pass
            available = swap = None
            if self._meminfo >= 0:
                try:
                    info = _pread(self._meminfo, 8192)
                    available = _meminfo_field(info, b"MemAvailable:")
                    total = _meminfo_field(info, b"SwapTotal:")
                    free = _meminfo_field(info, b"SwapFree:")
                    if total is not None and free is not None:
                        swap = total - free
                except OSError:
                    pass
            cg_current = cg_limit = None
            best = math.inf
            for level in self._levels:
                usage = _pread_int(level.current_fd) if level.current_fd >= 0 else None
                if usage is None:
                    continue
                if level.limit - usage < 2 * margin + level.limit // 10:
                    usage = level.working_set(usage)  # near the limit: don't count page cache
                if level.limit - usage < best:
                    best, cg_current, cg_limit = level.limit - usage, usage, level.limit
            if cg_current is None and self._own is not None and self._own.current_fd >= 0:
                cg_current = _pread_int(self._own.current_fd)
            estimate = None
            if traced:
                try:
                    stats = sampler.get_stats()
                    if stats.tracing:
                        estimate = int(stats.current_bytes)
                except Exception:  # noqa: BLE001 - the sampler must never take the watcher down
                    estimate = None
            return Reading(now, rss, vm, estimate, cg_current, cg_limit, available, swap,
                           self._as_limit)


def _meminfo_field(info: bytes, name: bytes) -> int | None:
    start = info.find(name)
    if start < 0:
        return None
    end = info.find(b"\n", start)
    parts = info[start + len(name): end if end >= 0 else None].split()
    try:
        return int(parts[0]) * 1024
    except (IndexError, ValueError):
        return None


@_quiet
def read_memory() -> Reading:
    """The memory measures of this process now (what the watcher reads at each tick)."""
    return _get_probe().read()


def refresh_limits() -> None:
    """Re-read the cgroup and ``RLIMIT_AS`` limits at the next reading (they are otherwise
    re-read every 2 s): after moving the process to another cgroup or changing its rlimit."""
    _get_probe()._limits_at = -math.inf


_probe: _Probe | None = None


def _get_probe() -> _Probe:
    global _probe
    if _probe is None:
        _probe = _Probe()
    return _probe


# ---------------------------------------------------------------------------------------------
# Where the main thread is


def main_thread_frame() -> Any:
    """The frame the main thread is executing now (``None`` if it has none)."""
    return sys._current_frames().get(threading.main_thread().ident)


def user_frames(frame: Any) -> Iterator[Any]:
    """Frames of ``frame``'s stack (innermost first) that are not the machinery around
    user code (IPython, ipykernel, asyncio, this package, ...)."""
    while frame is not None:
        if not is_internal(frame.f_code.co_filename):
            yield frame
        frame = frame.f_back


def is_own_code(loc: Location) -> bool:
    """A line the user wrote: a notebook cell, or a file outside the standard library,
    site-packages and the machinery around user code."""
    if loc.is_cell:
        return True
    if loc.internal or loc.stdlib:
        return False
    name = loc.filename
    return not ("site-packages" in name or "dist-packages" in name or name.startswith("<frozen"))


def locate_running(frame: Any, attributor: Attributor | None = None
                   ) -> tuple[Location | None, Location | None]:
    """(the user's line, the innermost line) of a stack, resolved with cell labels.

    The user's line is the innermost notebook-cell frame, else the innermost frame of the
    user's own files (see :func:`is_own_code`), else the innermost frame outside the
    machinery; the innermost line is the innermost frame outside the machinery (a line of
    pandas, say). Both are ``None`` when only machinery runs (a kernel waiting for input).
    """
    attributor = attributor or Attributor()
    inner = own = None
    for f in user_frames(frame):
        loc = attributor.locate(f.f_code.co_filename, f.f_lineno or 0)
        if inner is None:
            inner = loc
        if loc.is_cell:
            return loc, inner
        if own is None and is_own_code(loc):
            own = loc
    return own or inner, inner


def describe_location(loc: Location | None) -> str:
    """``In [3], line 2: x = f()`` or ``pandas/core/frame.py, line 120: ...``."""
    if loc is None:
        return "?"
    text = f"{loc.file}, line {loc.line}"
    return f"{text}: {loc.source}" if loc.source else text


def top_sites(snapshot: Any, n: int = 5, attributor: Attributor | None = None
              ) -> list[tuple[str, float]]:
    """The ``n`` lines holding the most estimated live memory in ``snapshot``, each as
    (where, bytes). A site is the innermost notebook-cell frame of a traceback, else its
    innermost frame of the user's own files, else its innermost frame outside the
    machinery: the line a notebook user would edit."""
    if snapshot is None:
        return []
    attributor = attributor or Attributor()
    rate = getattr(snapshot, "sample_rate", 1)
    sums: dict[tuple[str, int], float] = collections.defaultdict(float)
    for trace in snapshot.raw_traces:
        frames = trace[2]
        chosen = own = fallback = None
        for filename, lineno, *_ in frames:
            loc = attributor.locate(filename, lineno)
            if loc.is_cell:
                chosen = (filename, lineno)
                break
            if own is None and is_own_code(loc):
                own = (filename, lineno)
            if fallback is None and not loc.internal:
                fallback = (filename, lineno)
        key = (chosen or own or fallback
               or ((frames[0][0], frames[0][1]) if frames else ("?", 0)))
        sums[key] += trace[1] * _weight(trace[1], rate)
    ranked = sorted(sums.items(), key=lambda kv: -kv[1])[:n]
    return [(describe_location(attributor.locate(*key)), size) for key, size in ranked]


# ---------------------------------------------------------------------------------------------
# The trip report and the exception raised in the main thread


@dataclass
class Trip:
    """Why and where the watcher interrupted the main thread.

    ``kind`` is ``"budget"`` or ``"safety net"``; ``measure`` names what tripped
    (``"rss"``, ``"traced"``, ``"cgroup"``, ``"available"``, ``"swap"``,
    ``"address space"``); ``value`` and ``limit`` are bytes (for ``"available"``, what is
    left and the margin); ``running`` the user's line the main thread was in (a cell's
    line in a notebook) and ``inner`` the innermost line outside the machinery (in pandas,
    say);
    ``sites`` the top allocating sites (when the sampler is on), ``timeline`` the recent
    (time, rss, traced) points, ``reading`` every measure at that moment.
    """

    kind: str
    measure: str
    value: int
    limit: int
    reading: Reading
    running: Location | None = None
    inner: Location | None = None
    snapshot: Any = None
    sites: list[tuple[str, float]] = field(default_factory=list)
    timeline: list[tuple[float, int | None, int | None]] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)
    detected_at: float = 0.0  # time.perf_counter() when the watcher saw it
    delivered_at: float | None = None
    reading_margin: int = DEFAULT_MARGIN  # the safety net's margin when it tripped

    @property
    def latency(self) -> float | None:
        """Seconds from detection to the exception being raised in the main thread."""
        if self.delivered_at is None:
            return None
        return self.delivered_at - self.detected_at

    def headline(self) -> str:
        v, lim = format_size(self.value), format_size(self.limit)
        if self.kind == "budget":
            what = {"rss": "resident memory (RSS)", "traced": "traced memory (estimated)"}
            return f"memory budget exceeded: {what.get(self.measure, self.measure)} {v} > " \
                   f"budget {lim}"
        if self.measure == "available":
            return (f"memory nearly exhausted (safety net): only {v} available on the machine "
                    f"(margin {lim})")
        if self.measure == "swap":
            return (f"memory nearly exhausted (safety net): {v} pushed to swap since start, "
                    f"more than the {lim} still available")
        if self.measure == "cgroup":
            return (f"memory nearly exhausted (safety net): cgroup usage {v} of its limit "
                    f"{lim} (under {format_size(self.reading_margin)} left)")
        return (f"memory nearly exhausted (safety net): address space {v} of its limit "
                f"{lim} (RLIMIT_AS)")

    def message(self) -> str:
        lines = [self.headline()]
        lines.append(f"  running: {describe_location(self.running)}")
        if self.inner is not None and self.inner != self.running:
            lines.append(f"    inside: {describe_location(self.inner)}")
        if self.sites:
            lines.append("  top allocating sites (sampled, alive at the interrupt):")
            for where, size in self.sites:
                lines.append(f"    {format_size(size):>10}  {where}")
        if len(self.timeline) >= 2:
            t0, r0, _ = self.timeline[0]
            t1, r1, _ = self.timeline[-1]
            if r0 is not None and r1 is not None:
                lines.append(f"  RSS over the last {t1 - t0:.1f} s: {format_size(r0)} -> "
                             f"{format_size(r1)}")
        if self.events.get("oom_kill"):
            lines.append(f"  this cgroup has already seen {self.events['oom_kill']} OOM kill(s)")
        lines.append("  The kernel is alive with its variables: free memory (del ...) or "
                     "raise the budget.")
        return "\n".join(lines)


_pending: Trip | None = None
# Re-entrant: the interrupt may land in the main thread while it holds this lock.
_pending_lock = threading.RLock()
_last_trip: Trip | None = None


class _BudgetInterrupt(MemoryBudgetExceeded):
    """What the watcher raises in the main thread.

    ``PyThreadState_SetAsyncExc`` takes an exception *class* and Python instantiates it
    with no arguments when it lands, so this subclass takes its details from the trip the
    watcher left pending. It shows as ``mprofile_ipy.MemoryBudgetExceeded``. Attributes:
    ``kind``, ``measure``, ``value``, ``limit``, ``location`` (the user's line, as text),
    ``inner_location`` (the innermost line, in a library say), ``cell`` (``In [N]`` or
    ``None``), ``sites``, ``snapshot``, ``timeline``, ``trip``.
    """

    def __init__(self, *args: object) -> None:
        with sampler.paused():  # the interrupt's own bookkeeping is not the user's memory
            self._take(args)

    def _take(self, args: tuple[object, ...]) -> None:
        global _pending, _last_trip
        trip = None
        if not args:
            with _pending_lock:
                trip, _pending = _pending, None
        if trip is None:
            super().__init__(*args)
            self.trip = None
            return
        trip.delivered_at = time.perf_counter()
        _last_trip = trip
        super().__init__(trip.message())
        self.trip = trip
        self.kind = trip.kind
        self.measure = trip.measure
        self.value = trip.value
        self.limit = trip.limit
        self.location = describe_location(trip.running)
        self.inner_location = describe_location(trip.inner)
        self.cell = trip.running.file if trip.running and trip.running.is_cell else None
        self.sites = trip.sites
        self.snapshot = trip.snapshot
        self.timeline = trip.timeline


_BudgetInterrupt.__name__ = _BudgetInterrupt.__qualname__ = "MemoryBudgetExceeded"
_BudgetInterrupt.__module__ = "mprofile_ipy"

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = [ctypes.c_ulong, ctypes.py_object]
_set_async_exc.restype = ctypes.c_int
_clear_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi))


def _withdraw_pending() -> bool:
    """Withdraw an interrupt that has not landed yet (call from the main thread)."""
    global _pending
    with _pending_lock:
        _watcher.handed_over = False
        if _pending is None:
            return False
        _pending = None
        _clear_async_exc(threading.main_thread().ident, None)
        return True


# ---------------------------------------------------------------------------------------------
# The watcher


@dataclass(frozen=True)
class BudgetStatus:
    """What the watcher does now: ``limit`` (the effective budget in bytes, or ``None``),
    ``session_limit`` and ``block_limits`` (its parts), ``safety_net``, ``margin``,
    ``watching`` (the thread runs), ``interval`` (its current period), ``peak_rss`` and
    ``reading`` (the last one), ``trips`` (interrupts raised), ``last_trip``."""

    limit: int | None
    session_limit: int | None
    block_limits: tuple[int, ...]
    safety_net: bool
    margin: int
    watching: bool
    interval: float
    peak_rss: int
    reading: Reading | None
    trips: int
    last_trip: Trip | None


class _Wake:
    """How the watcher sleeps: on an eventfd that the sampler's record path writes to when
    traced memory reaches the armed watermark (:func:`mprofile_ipy.sampler.set_watermark`),
    with the poll interval as the time-out; ``poke`` wakes it to stop. Where eventfds do
    not exist (not Linux) it waits on the stop event alone and the watermark stays off."""

    def __init__(self, open_fd: bool = True) -> None:
        self.fd = -1
        if open_fd and hasattr(os, "eventfd"):
            with contextlib.suppress(OSError):
                self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    @classmethod
    def off(cls) -> _Wake:
        """No eventfd (yet): a plain wait."""
        return cls(open_fd=False)

    def wait(self, timeout: float, stop_event: threading.Event) -> None:
        """Sleep up to ``timeout`` seconds, or until the eventfd is written."""
        fd = self.fd
        if fd < 0:
            stop_event.wait(timeout)
            return
        try:
            select.select([fd], [], [], timeout)
        except (OSError, ValueError):  # closed under us: stop() is under way
            stop_event.wait(timeout)

    def drain(self) -> int:
        """How many writes the eventfd got since the last drain (0 if none)."""
        if self.fd < 0:
            return 0
        try:
            return os.eventfd_read(self.fd)
        except OSError:  # nothing written (EAGAIN), or closed
            return 0

    def poke(self) -> None:
        """Wake the waiting thread now (it is being stopped; the write counts as a firing of
        the watermark, which at worst re-arms it once more)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.eventfd_write(self.fd, 1)

    def close(self) -> None:
        """Turn the sampler's watermark off and close the eventfd (the thread is gone)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(Exception):
                sampler.set_watermark(None)  # under the sampler's lock: no write in flight
            os.close(fd)


def _no_trip() -> None:
    """What the sampler's pending call runs when the main thread is not interrupted."""


# Exception display and formatting: IPython's traceback and display machinery, the standard
# library's traceback and linecache, the libraries IPython formats with, this package's
# report. User code that runs inside them (a ``__str__`` or ``__repr__`` of the user's own,
# called while a traceback is shown) is not interrupted from the sample path: an exception
# raised there breaks the display ("Unexpected exception formatting exception"), not the
# user's runaway loop.
_DISPLAY_FRAMES = re.compile(
    r"[\\/](?:IPython[\\/]core[\\/](?:ultratb|formatters|displayhook|display_functions|"
    r"display|displaypub|display_trap|oinspect|debugger|tbtools|tips)\.py"
    r"|IPython[\\/]lib[\\/]pretty\.py|ipykernel[\\/](?:displayhook|iostream|debugger)\.py"
    r"|(?:stack_data|executing|pure_eval|asttokens|pygments)[\\/]"
    r"|(?:traceback|linecache|pdb|bdb|pprint|reprlib)\.py"
    r"|mprofile_ipy[\\/](?:report|renderers|result)\b)"
)
# ... and the functions that show or store an exception wherever they live (IPython's shell
# formats the exception of a failed cell for its history in `_format_exception_for_storage`).
_DISPLAY_FUNCTIONS = frozenset({
    "showtraceback", "_showtraceback", "showsyntaxerror", "showindentationerror",
    "_format_exception_for_storage", "get_exception_only", "structured_traceback",
    "format_exception", "format_exception_only", "print_exception", "format_exc",
    "print_exc", "excepthook", "_excepthook", "unraisablehook",
})


def may_raise_in(frame: Any) -> bool:
    """Whether the budget may raise right at ``frame``, the innermost frame of the main
    thread, from the sampler's pending call (see :func:`_watermark_decision`).

    Only when that frame is the user's own code (a cell, or a file of the user's outside
    the standard library, site-packages and the machinery around user code), no exception
    is being handled (an ``except`` block, or a ``finally`` running while an exception
    unwinds the stack) and no exception display or formatting is on the stack. Elsewhere
    the trip is left to the watcher thread, which interrupts where the user's code is.

    The first tests look only at file names, without taking any lock: the main thread may
    have been stopped inside this package while it held one.
    """
    if frame is None or threading.current_thread() is not threading.main_thread():
        return False
    name = frame.f_code.co_filename
    if (is_profiler_file(name) or name.startswith("<frozen") or "site-packages" in name
            or "dist-packages" in name or is_stdlib(name)):
        return False
    if sys.exc_info()[1] is not None:
        return False
    f = frame
    while f is not None:
        code = f.f_code
        if code.co_name in _DISPLAY_FUNCTIONS or _DISPLAY_FRAMES.search(code.co_filename):
            return False
        f = f.f_back
    if is_internal(name):
        return False
    return is_own_code(Attributor().locate(name, frame.f_lineno or 0))


class _Watcher:
    """The one watcher thread and the settings it reads. Settings change under ``lock``;
    the thread reads them once per tick; ``arm_lock`` guards the sampler's watermark."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.session_limit: int | None = None
        self.block_limits: list[int] = []
        self.safety_net = False
        self.margin = DEFAULT_MARGIN
        self.listeners: list[Callable[[Reading], None]] = []
        self.ipython = False  # cell hooks registered: interrupt only inside a cell
        self.executing = False
        self.fired_in_cell = False
        self.thread: threading.Thread | None = None
        self.stop_event = threading.Event()
        self.interval = SLOW_INTERVAL
        self.probe: Any = None  # made by the thread that starts the watcher
        self.wake = _Wake.off()  # the watermark's eventfd and the thread's sleep
        self.arm_lock = threading.Lock()
        self.armed: int | None = None  # the watermark set in the sampler (None: off)
        self.direct_trips = 0  # trips raised from the sample path
        # The hand-over (see fire): firings of the watermark the watcher has read from the
        # eventfd, pending calls of the main thread that have begun, and a trip the watcher
        # left for the main thread's pending call to raise (all under _pending_lock).
        self.fired_total = 0
        self.decided_total = 0
        self.handed_over = False
        self.handed_at = 0.0
        self.fired_at = 0.0
        self.deciding = False  # the main thread runs the sample path's check ...
        self.deciding_since = 0.0  # ... since then (a flag left by a lost exit expires)
        self.rearm_wanted = False  # a firing was read: set the watermark again
        self.fire_idle = threading.Event()  # cleared while the watcher thread fires
        self.fire_idle.set()
        self.last_trip_time = -math.inf  # time of the reading of the last trip queued
        self.deferred = 0  # sample-path crossings left to the watcher thread
        self.timeline: collections.deque = collections.deque(maxlen=TIMELINE_POINTS)
        self.peak_rss = 0
        self.cell_peak_rss = 0
        self.reading: Reading | None = None
        self.swap_base: int | None = None
        self.trips = 0
        self.rearm: dict[str, int] = {}  # measure -> threshold while re-arming
        self.errors = 0
        self.last_error = ""
        self.probe_factory: Callable[[], Any] = _get_probe

    # -- settings -----------------------------------------------------------------------
    def limit(self) -> int | None:
        limits = [x for x in [self.session_limit, *self.block_limits] if x is not None]
        return min(limits) if limits else None

    def needed(self) -> bool:
        return self.limit() is not None or self.safety_net or bool(self.listeners)

    def update(self) -> None:
        """Start or stop the thread to match the settings (call without ``lock`` held).
        The sampler's watermark is armed for the new limits here, in the caller's thread,
        so that a budget set right before a fast allocation loop already rides on the sample
        path (the new watcher thread may need a few switch intervals to get the GIL)."""
        if self.needed():
            self.start()
            with sampler.paused():
                self.arm_watermark(_traced_now())
        else:
            self.stop()

    def start(self) -> None:
        global _pending
        with self.lock:
            if self.thread is not None and self.thread.is_alive():
                return
            with sampler.paused():
                self.probe = self.probe_factory()
                if self.wake.fd < 0:
                    self.wake = _Wake()
                with self.arm_lock:
                    self.armed = None  # whatever the sampler holds, arm afresh
                with _pending_lock:  # no firing of an earlier watch is still due
                    self.decided_total = self.fired_total
                    if self.handed_over:  # a trip of the earlier watch: forget it
                        _pending = None
                    self.handed_over = self.deciding = False
                with contextlib.suppress(Exception):  # where memory stood when watching began
                    self.note(self.probe.read(self.margin, True))
            self.stop_event = threading.Event()
            self.thread = threading.Thread(target=self.run, args=(self.stop_event,),
                                           name="mprofile-ipy watcher", daemon=True)
            self.thread.start()

    def stop(self) -> None:
        with self.lock:
            thread, self.thread = self.thread, None
            self.stop_event.set()
        self.wake.poke()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
            if not thread.is_alive():  # nothing waits on the eventfd any more
                with self.arm_lock:
                    self.wake.close()
                    self.armed = None
                self.probe = None

    # -- the thread ---------------------------------------------------------------------
    def run(self, stop_event: threading.Event) -> None:
        # The watcher's own allocations (its waits included) are not the user's memory:
        # never sample them. A pause per step, not one for the thread's life: start() ends
        # every pause, so the step after a wait takes a fresh one, and a pause ends when its
        # object is released.
        probe, wake = self.probe, self.wake
        while True:
            with sampler.paused():
                wake.wait(self.interval, stop_event)
            with sampler.paused():
                if stop_event.is_set():
                    break
                self.drain_firings()
                try:
                    self.tick(probe.read(self.margin, self.limit() is not None
                                         or bool(self.listeners)), probe)
                    self.errors = 0
                except Exception as exc:  # noqa: BLE001 - the watcher must survive anything
                    self.errors += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    if self.errors >= 50:  # something is persistently broken: stop watching
                        break
                try:
                    self.deliver_if_stale()
                    self.drain_firings()
                    r = self.reading
                    fired, self.rearm_wanted = self.rearm_wanted, False
                    self.arm_watermark(r.traced if r is not None else None, fired=fired)
                except Exception as exc:  # noqa: BLE001 - polling goes on without it
                    self.last_error = f"{type(exc).__name__}: {exc}"

    def observe(self, r: Reading) -> Reading | None:
        """Take ``r`` as the last reading (peaks, swap base); returns the previous one."""
        prev = self.reading
        self.reading = r
        if r.rss is not None:
            self.peak_rss = max(self.peak_rss, r.rss)
            self.cell_peak_rss = max(self.cell_peak_rss, r.rss)
        if self.swap_base is None and r.swap_used is not None:
            self.swap_base = r.swap_used
        return prev

    def note(self, r: Reading, trip: bool = False) -> None:
        """Put ``r`` on the timeline: a point every TIMELINE_STEP at most, and always the
        reading of a trip (the report's last point is the moment it tripped)."""
        if not self.timeline or r.time - self.timeline[-1][0] >= TIMELINE_STEP or trip:
            self.timeline.append((r.time, r.rss, r.traced))

    def tick(self, r: Reading, probe: Any = None) -> None:
        """One check: record the reading, interrupt if a limit is crossed, call listeners."""
        prev = self.observe(r)
        found = self.check(r)
        self.note(r, found is not None)
        if found is not None:
            self.fire(*found, r, probe)
        for listener in list(self.listeners):
            listener(r)
        self.interval = self.next_interval(r, prev)

    # -- the sample path ----------------------------------------------------------------
    def drain_firings(self) -> None:
        """Count the watermark's firings written to the eventfd (watcher thread only)."""
        n = self.wake.drain()
        if n:
            with _pending_lock:
                self.fired_total += n
                self.fired_at = time.monotonic()
            self.rearm_wanted = True

    def main_busy_here(self) -> bool:
        """The main thread runs, or is about to run, the sample path's check (hold
        ``_pending_lock``): its pending call is scheduled and has not begun (for
        HANDOVER_WAIT at most: the call may have been lost), or it runs. An interrupt queued
        now would land in the check, in this module, where a library's ``except
        MemoryError`` (``linecache`` has one) could even swallow it."""
        now = time.monotonic()
        if self.deciding and now - self.deciding_since < DECIDING_LIMIT:
            return True
        return self.fired_total > self.decided_total and now - self.fired_at < HANDOVER_WAIT

    def begin_decision(self) -> bool:
        """The main thread's pending call begins: count it; True when the watcher handed
        it a trip to raise."""
        with _pending_lock:
            self.decided_total += 1
            self.deciding, self.deciding_since = True, time.monotonic()
            handed, self.handed_over = self.handed_over, False
            return handed and _pending is not None

    def end_decision(self) -> bool:
        """The main thread's pending call ends its check; True when the watcher handed it a
        trip meanwhile."""
        with _pending_lock:
            self.deciding = False
            handed, self.handed_over = self.handed_over, False
            return handed and _pending is not None

    def deliver_if_stale(self) -> None:
        """A trip handed over to a pending call that has not begun for HANDOVER_WAIT (the
        main thread is in a long C call, or the call was lost): the watcher interrupts the
        main thread itself, as it does without the sample path, if user code still runs
        there (else the trip is dropped, as the watcher drops any trip then)."""
        global _pending
        if not self.handed_over or time.monotonic() - self.handed_at < HANDOVER_WAIT:
            return
        with self.lock, _pending_lock:
            if (not self.handed_over or self.deciding
                    and time.monotonic() - self.deciding_since < DECIDING_LIMIT):
                return  # the check runs: it takes the trip as it ends
            self.handed_over = False
            if _pending is None:
                return
            if (self.ipython and not self.executing) or not _main_runs_user_code():
                _pending = None
                return
            _set_async_exc(threading.main_thread().ident, _BudgetInterrupt)

    def traced_threshold(self) -> int | None:
        """The traced-memory level at which the budget trips now (None: no budget)."""
        limit = self.limit()
        if limit is None:
            return None
        return self.rearm.get("traced", limit)

    def arm_watermark(self, traced: int | None, fired: bool = False) -> None:
        """Point the sampler's watermark at the traced threshold of the budget, or turn it
        off: when there is no budget, and while traced memory is already at or past the
        threshold (the polls see that; it is armed again once memory is back under it, or
        the threshold moved up after a trip). ``fired``: the watermark went off since it
        was last armed (the sampler disarms it then), so it is set again even if unchanged.
        """
        with self.arm_lock:
            if fired:
                self.armed = None
            fd = self.wake.fd
            threshold = self.traced_threshold() if fd >= 0 else None
            if threshold is not None and traced is not None and traced >= threshold:
                threshold = None
            if threshold != self.armed:
                sampler.set_watermark(threshold, fd, call_main=True)
                self.armed = threshold

    def watermark_action(self, frame: Any) -> Callable[[], Any]:
        """The main thread's check when the sampler saw traced memory reach the watermark
        (its pending call, run at the next bytecode of the main thread, see
        :func:`_watermark_decision`); ``frame`` is the frame that was interrupted.

        Returns what the pending call then calls: ``_set_async_exc`` bound to the main
        thread and the interrupt when a limit is crossed and the budget may raise right
        there (:func:`may_raise_in`), else a no-op. The exception is thus raised by the
        interpreter as the pending call returns, in the user's frame, with a traceback of
        the user's code only, exactly as the watcher thread's interrupt is. Anything
        else (machinery running, an exception being handled or shown, the watcher in the
        middle of its own check) is left to the watcher thread, which the sampler's eventfd
        has woken already.
        """
        probe = self.probe
        if probe is None or self.limit() is None:
            return _no_trip
        if not may_raise_in(frame):
            self.deferred += 1
            return _no_trip
        # The watcher thread may check at the same moment (it reads in parallel, and the
        # sampler's eventfd has just woken it): one of the two queues the interrupt (fire()
        # does so once, under _pending_lock). Should the watcher's land in here, it is
        # queued again from the user's frame (_watermark_decision).
        r = probe.read(self.margin, True)
        self.observe(r)
        found = self.check(r)
        self.note(r, found is not None)
        queued = found is not None and self.fire(*found, r, probe, direct=True)
        if not queued and not self.fire_idle.is_set():
            # The watcher found the crossing first and is making its report: wait for it
            # (safe: this frame is the user's, the main thread holds none of our locks);
            # while this check runs it hands the trip over instead of interrupting here.
            self.fire_idle.wait(FIRE_WAIT)
        self.arm_watermark(r.traced, fired=True)
        if not queued:
            return _no_trip
        self.direct_trips += 1
        return _queue_interrupt()

    def check(self, r: Reading) -> tuple[str, str, int, int] | None:
        """(kind, measure, value, limit) of the first limit crossed, or ``None``."""
        limit = self.limit()
        if limit is not None:
            for measure, value in (("rss", r.rss), ("traced", r.traced)):
                if value is None:
                    continue
                threshold = self.rearm.get(measure, limit)
                if value < limit - int(limit * REARM_HYSTERESIS):
                    self.rearm.pop(measure, None)
                elif value >= threshold:
                    return "budget", measure, value, limit
        if self.safety_net:
            m = self.margin
            if r.cgroup_limit is not None and r.cgroup_current is not None:
                if self._crossed("cgroup", r.cgroup_limit - r.cgroup_current, m):
                    return "safety net", "cgroup", r.cgroup_current, r.cgroup_limit
            if r.as_limit is not None and r.vm_size is not None:
                if self._crossed("address space", r.as_limit - r.vm_size, m):
                    return "safety net", "address space", r.vm_size, r.as_limit
            if r.available is not None:
                if self._crossed("available", r.available, m):
                    return "safety net", "available", r.available, m
                grown = (r.swap_used or 0) - (self.swap_base or 0)
                if grown > 0 and self._crossed("swap", r.available - grown, 0):
                    return "safety net", "swap", grown, r.available
        return None

    def _crossed(self, measure: str, left: int, margin: int) -> bool:
        """Headroom ``left`` under ``margin``; after a trip, only once it shrank by another
        half margin (going back above 1.5 margins re-arms: usage figures jitter)."""
        if left >= margin + margin // 2:  # hysteresis: usage figures jitter
            self.rearm.pop(measure, None)
            return False
        if left >= margin:
            return False
        threshold = self.rearm.get(measure)
        return threshold is None or left <= threshold

    def next_interval(self, r: Reading, prev: Reading | None) -> float:
        """10 ms near a limit or while memory grows fast, 50 ms otherwise."""
        ratios = []
        limit = self.limit()
        if limit is not None:
            ratios += [v / limit for v in (r.rss, r.traced) if v is not None]
        if self.safety_net:
            if r.cgroup_limit and r.cgroup_current is not None:
                ratios.append((r.cgroup_current + self.margin) / r.cgroup_limit)
            if r.as_limit and r.vm_size is not None:
                ratios.append((r.vm_size + self.margin) / r.as_limit)
            if r.available is not None:
                ratios.append((self.margin + 512 * MiB) / max(r.available, 1))
        if any(x > 0.8 for x in ratios):
            return FAST_INTERVAL
        if prev is not None and prev.rss is not None and r.rss is not None and limit:
            rate = (r.rss - prev.rss) / max(r.time - prev.time, 1e-3)
            if rate > 0 and (limit - r.rss) / rate < 1.0:  # under a second to the budget
                return FAST_INTERVAL
        return SLOW_INTERVAL

    def fire(self, kind: str, measure: str, value: int, limit: int, r: Reading,
             probe: Any, direct: bool = False) -> bool:
        """Interrupt the main thread with the trip if user code runs there; True when the
        interrupt is queued. From the watcher thread it is queued with
        ``PyThreadState_SetAsyncExc``; ``direct`` (the main thread itself, from the
        sampler's pending call) leaves that call to the caller (:meth:`watermark_action`).
        """
        if direct:
            return self._fire(kind, measure, value, limit, r, probe, True)
        # The main thread's check, running meanwhile, sees the thresholds this moves up and
        # finds nothing: it waits for this to finish (and takes the trip handed over).
        self.fire_idle.clear()
        try:
            return self._fire(kind, measure, value, limit, r, probe, False)
        finally:
            self.fire_idle.set()

    def _fire(self, kind: str, measure: str, value: int, limit: int, r: Reading,
              probe: Any, direct: bool) -> bool:
        global _pending
        detected = time.perf_counter()
        main = threading.main_thread()
        if main.ident is None or not main.is_alive():
            return False
        with self.lock:
            if self.ipython and not self.executing:
                return False
            if self.ipython and kind == "budget" and self.fired_in_cell:
                return False  # one budget interrupt per cell: the rest of it is error handling
        with _pending_lock:
            # One interrupt at a time; a trip that was never instantiated (3.10/3.11 create
            # the exception lazily, `except MemoryError: pass` never does) expires.
            if _pending is not None and detected - _pending.detected_at < PENDING_EXPIRY:
                return False
        frame = sys._current_frames().get(main.ident)
        if frame is None or next(user_frames(frame), None) is None:
            return False  # the main thread waits for input: nothing to stop
        attributor = Attributor()
        running, inner = locate_running(frame, attributor)
        del frame
        if running is None or not is_own_code(running):
            # Only libraries and tools run (IPython formatting a traceback with
            # stack_data, say): the user's code is not on the stack, nothing to stop.
            return False
        snapshot = None
        sites: list[tuple[str, float]] = []
        stats = sampler.get_stats()
        if stats.tracing and stats.live_samples <= MAX_TRIP_SAMPLES:
            try:
                snapshot = sampler.take_snapshot()
                sites = top_sites(snapshot, 5, attributor)
            except Exception:  # noqa: BLE001 - a report without sites beats no interrupt
                snapshot = None
        events = probe.cgroup_events() if probe is not None and measure == "cgroup" else {}
        # the recent points up to this reading, which is always the last one (the other
        # thread may have added newer points meanwhile)
        points = [p for p in list(self.timeline) if p[0] < r.time][-299:]
        points.append((r.time, r.rss, r.traced))
        trip = Trip(kind, measure, value, limit, r, running, inner, snapshot, sites,
                    points, events, detected, reading_margin=self.margin)
        # Re-arm rule: trip again only after another step of growth, of every budget
        # measure over the limit (else `traced` would trip while IPython formats the
        # traceback of an `rss` trip).
        if kind == "budget":
            step = max(int(limit * REARM_STEP), MiB)
            for name, level in (("rss", r.rss), ("traced", r.traced)):
                if level is not None and level >= limit:
                    self.rearm[name] = max(self.rearm.get(name, 0), level + step)
            self.rearm[measure] = max(self.rearm.get(measure, 0), value + step)
        else:
            left = {"cgroup": limit - value, "address space": limit - value,
                    "available": value, "swap": limit - value}[measure]
            self.rearm[measure] = left - self.margin // 2
        with self.lock:
            if self.ipython and not self.executing:
                return False
            if r.time <= self.last_trip_time:
                # The watcher and the main thread (the sample path) both check: a trip seen
                # in a reading older than one that already tripped is that same crossing.
                return False
            # the settings changed during the check (the block whose budget it was ended)
            if kind == "budget" and self.limit() != limit:
                return False
            if kind != "budget" and not self.safety_net:
                return False
            with _pending_lock:
                if _pending is not None and detected - _pending.detected_at < PENDING_EXPIRY:
                    return False
                _pending = trip
                # Marked before the interrupt can land: once it has, the main thread may
                # allocate again (the report, the traceback) before this thread runs on, and
                # a second check (the sample path's) must see that this cell has had its one.
                fired_before = self.fired_in_cell
                if kind == "budget":
                    self.fired_in_cell = True
                if not direct:
                    self.drain_firings()  # a firing not read yet: its pending call is due
                if direct:
                    pass  # the caller (the main thread's pending call) queues it
                elif self.main_busy_here():
                    # The main thread is about to run the sample path's check (its pending
                    # call is scheduled): an interrupt queued now would land in that check,
                    # in this module. Hand the trip over; it raises it in the user's frame.
                    self.handed_over, self.handed_at = True, time.monotonic()
                elif _set_async_exc(main.ident, _BudgetInterrupt) != 1:
                    _pending = None
                    self.fired_in_cell = fired_before
                    return False
                self.last_trip_time = r.time
        self.trips += 1
        return True


_watcher = _Watcher()


def _after_fork_in_child() -> None:
    """The watcher thread does not exist in a child: start it there with nothing enabled."""
    global _watcher, _probe, _pending, _pending_lock
    with contextlib.suppress(Exception):
        sampler.set_watermark(None)  # the parent's eventfd is not this process's watcher
    with contextlib.suppress(OSError):
        if _watcher.wake.fd >= 0:
            os.close(_watcher.wake.fd)
    _watcher = _Watcher()
    _probe = None
    _pending = None
    _pending_lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _traced_now() -> int:
    """The sampler's estimate of live traced bytes now (0 while it is off)."""
    stats = sampler.get_stats()
    return int(stats.current_bytes) if stats.tracing else 0


def _watermark_decision() -> Callable[[], Any]:
    """What the sampler's pending call runs (see :func:`__getattr__`, whose caller's frame
    is the one interrupted): the global watcher's :meth:`_Watcher.watermark_action`, with
    sampling paused (the budget's own bookkeeping never adds samples) and never an error of
    its own. Everything happens inside the ``try``: an interrupt of the watcher that lands
    in here is caught and queued again (see :func:`_requeue`)."""
    try:
        watcher = _watcher
        frame = sys._getframe(2)
        handed = False
        try:
            handed = watcher.begin_decision()
            if handed or watcher.thread is None:
                action: Callable[[], Any] = _no_trip
            else:
                with sampler.paused():
                    action = watcher.watermark_action(frame)
        finally:
            handed = watcher.end_decision() or handed
        del frame
        if handed:  # the watcher's trip, raised from here instead of by the watcher
            watcher.direct_trips += 1
            action = _queue_interrupt()
        return action
    except MemoryBudgetExceeded as exc:
        # The watcher thread's interrupt landed in here (it raced this check): queue it
        # again, so that it is raised in the interrupted frame, not in this module.
        return _requeue(exc)
    except KeyboardInterrupt:
        # A Ctrl-C whose handler ran in here would be dropped by the pending call (it
        # passes on only a MemoryError): deliver it again, at the next bytecode.
        import _thread

        _thread.interrupt_main()
        return _no_trip
    except Exception as exc:  # noqa: BLE001 - never turn a check into the user's error
        _watcher.last_error = f"{type(exc).__name__}: {exc}"
        return _no_trip


def _main_runs_user_code() -> bool:
    """The main thread's stack holds the user's own code now (the watcher's rule)."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    if frame is None or next(user_frames(frame), None) is None:
        return False
    running, _ = locate_running(frame, Attributor())
    return running is not None and is_own_code(running)


def _queue_interrupt() -> Callable[[], Any]:
    """A C callable (no Python frame) that queues the pending trip on the main thread."""
    return functools.partial(_set_async_exc, threading.main_thread().ident, _BudgetInterrupt)


def _requeue(exc: MemoryBudgetExceeded) -> Callable[[], Any]:
    """Put a trip whose exception was raised in this module back as the pending one and
    return the callable that queues it on the main thread again."""
    global _pending
    trip = getattr(exc, "trip", None)
    if trip is None:
        raise exc
    with _pending_lock:
        if _pending is None:
            _pending = trip
    return _queue_interrupt()


def __getattr__(name: str) -> Any:
    """``_on_watermark``: the hook the sampler calls in the main thread when traced memory
    reaches the budget's watermark (``sampler.set_watermark(..., call_main=True)``).

    The sampler's pending call (``native/hooks.c``) runs, at the main thread's next bytecode
    as a signal handler would, ``mprofile_ipy.budget._on_watermark()``. The attribute is
    resolved here, by the module's ``__getattr__``, so that the check runs in a Python frame
    that has *returned* before anything is raised: it hands back either a no-op or a C
    callable (``functools.partial`` over ``PyThreadState_SetAsyncExc``) that queues the
    interrupt on the main thread, which the interpreter raises right after the pending call,
    in the interrupted frame. The exception then looks exactly like the watcher thread's:
    its traceback holds the user's code only, not this module.
    """
    if name == "_on_watermark":
        return _watermark_decision()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------
# Public API




def _parse_limit(limit: int | str, what: str = "budget") -> int:
    """Bytes of a budget: a size (``4GB``, ``512MiB``, an int) or ``+size`` for the
    process's resident memory now plus that much."""
    relative = isinstance(limit, str) and limit.strip().startswith("+")
    try:
        size = parse_size(limit.strip()[1:] if relative else limit)  # type: ignore[union-attr]
    except TypeError as exc:
        raise TypeError(f"{what}: {exc}") from None
    except ValueError as exc:
        raise BudgetError(f"{what}: {exc}") from None
    if size <= 0:
        raise BudgetError(f"{what} must be a positive size, got {limit!r}")
    rss = read_memory().rss
    if relative:
        if rss is None:
            raise BudgetError(f"{what} {limit!r} is relative to resident memory, which is "
                              "not readable on this system")
        return rss + size
    if rss is not None and size <= rss:
        raise BudgetError(
            f"{what} {format_size(size)} is below the process's resident memory already "
            f"({format_size(rss)}); give a larger size, or '+{format_size(size)}' for that "
            "much on top of what is used now")
    return size


@_quiet
def set_budget(limit: int | str | None, *, safety_net: bool = True) -> None:
    """Set the session's memory budget (``None`` removes it) and switch the safety net.

    ``limit`` is a size (``"4GB"``, ``"512MiB"``, bytes) or ``"+1GB"`` (resident memory now
    plus 1 GB). When resident memory or the sampler's estimate crosses it while user code
    runs in the main thread, that code is interrupted with ``MemoryBudgetExceeded``.
    ``safety_net=False`` also turns the safety net off; with neither a budget nor a net
    (nor a flight recorder) the watcher thread stops before this returns.
    """
    value = None if limit is None else _parse_limit(limit)
    w = _watcher
    with w.lock:
        w.session_limit = value
        w.safety_net = bool(safety_net)
        w.rearm.clear()
    w.update()


def get_budget() -> int | None:
    """The budget in force now in bytes (the session's, or a tighter ``budget()`` block's),
    or ``None``."""
    return _watcher.limit()


@_quiet
def enable_safety_net(margin: int | str = DEFAULT_MARGIN) -> None:
    """Interrupt user code when the cgroup, the address space limit or the machine has less
    than ``margin`` left (or swap has grown past what is available). The extension loader
    calls this; :func:`disable_safety_net` (``%mprofile budget off``) opts out."""
    m = _parse_margin(margin)
    w = _watcher
    with w.lock:
        w.safety_net = True
        w.margin = m
    w.update()


def _parse_margin(margin: int | str) -> int:
    try:
        m = parse_size(margin)
    except TypeError as exc:
        raise TypeError(f"margin: {exc}") from None
    except ValueError as exc:
        raise BudgetError(f"margin: {exc}") from None
    if m <= 0:
        raise BudgetError(f"margin must be a positive size, got {margin!r}")
    return m


@_quiet
def disable_safety_net() -> None:
    """Turn the safety net off (the watcher stops if nothing else needs it)."""
    w = _watcher
    with w.lock:
        w.safety_net = False
    w.update()


@contextmanager
def budget(limit: int | str) -> Iterator[None]:
    """``with budget("2GB"): ...``: a budget for one block (``%%mprofile --budget``), on
    top of the session's (the tighter one applies). Blocks nest. The interrupt lands in the
    main thread; a trip still pending when the block ends is forgotten."""
    with sampler.paused():
        value = _parse_limit(limit)
        w = _watcher
        with w.lock:
            w.block_limits.append(value)
            w.rearm.clear()
        w.update()
    try:
        yield
    finally:
        with sampler.paused():
            with w.lock:
                try:
                    w.block_limits.remove(value)
                except ValueError:
                    pass
                w.rearm.clear()
            # after the limit is gone: a check under way no longer queues this block's trip
            _withdraw_pending()
            w.update()


memory_budget = budget  # the name under which the package exports it


def status() -> BudgetStatus:
    """The watcher's settings and its last figures."""
    w = _watcher
    with w.lock:
        return BudgetStatus(w.limit(), w.session_limit, tuple(w.block_limits), w.safety_net,
                            w.margin, w.thread is not None and w.thread.is_alive(), w.interval,
                            w.peak_rss, w.reading, w.trips, _last_trip)


def timeline() -> list[tuple[float, int | None, int | None]]:
    """The watcher's recent memory points: (time.time(), rss, traced), oldest first."""
    return list(_watcher.timeline)


def peak_rss() -> int:
    """The highest resident memory the watcher saw since it started."""
    return _watcher.peak_rss


@_quiet
def add_listener(callback: Callable[[Reading], None]) -> None:
    """Call ``callback(reading)`` in the watcher thread after each tick (the recorder's
    hook); starts the watcher."""
    w = _watcher
    with w.lock:
        if callback not in w.listeners:
            w.listeners.append(callback)
    w.update()


@_quiet
def remove_listener(callback: Callable[[Reading], None]) -> None:
    """Stop calling ``callback``; the watcher stops if nothing else needs it."""
    w = _watcher
    with w.lock:
        if callback in w.listeners:
            w.listeners.remove(callback)
    w.update()


@_quiet
def cell_started(*_: Any) -> None:
    """IPython ``pre_run_cell`` hook: interrupts may land from now on (a cell that starts
    over the budget is interrupted only if it grows memory by another 10% of it)."""
    w = _watcher
    with w.lock:
        w.executing = True
        w.fired_in_cell = False
        r = w.reading
        w.cell_peak_rss = r.rss if r and r.rss else 0
        limit = w.limit()
        if r is not None and limit is not None:
            # Already over the budget as the cell starts (an earlier cell kept the memory):
            # interrupt this cell only if it grows memory further, so `del big` runs.
            for measure, value in (("rss", r.rss), ("traced", r.traced)):
                if value is not None and value >= limit:
                    step = max(int(limit * REARM_STEP), MiB)
                    w.rearm[measure] = max(w.rearm.get(measure, 0), value + step)
    if r is not None and limit is not None:
        w.arm_watermark(r.traced)  # the traced threshold may have moved up


@_quiet
def cell_finished(*_: Any) -> None:
    """IPython ``post_run_cell`` hook: no interrupt may land outside a cell."""
    w = _watcher
    with w.lock:
        w.executing = False
    if threading.current_thread() is threading.main_thread():
        _withdraw_pending()


@_quiet
def register_ipython(shell: Any) -> None:
    """Wire the cell hooks into an IPython shell: interrupts then land only while a cell
    runs, never in the kernel's own loop between cells."""
    events = shell.events
    for name, hook in (("pre_run_cell", cell_started), ("post_run_cell", cell_finished)):
        if hook not in events.callbacks.get(name, []):
            events.register(name, hook)
    with _watcher.lock:
        _watcher.ipython = True


@_quiet
def unregister_ipython(shell: Any) -> None:
    """Remove the cell hooks of :func:`register_ipython`."""
    events = shell.events
    for name, hook in (("pre_run_cell", cell_started), ("post_run_cell", cell_finished)):
        if hook in events.callbacks.get(name, []):
            events.unregister(name, hook)
    with _watcher.lock:
        _watcher.ipython = False
        _watcher.executing = False


@_quiet
def enable_for_ipython(shell: Any, *, safety_net: bool = True, record: bool = True,
                       directory: str | os.PathLike | None = None) -> None:
    """Everything the extension loader turns on: the cell hooks, the safety net (unless
    ``safety_net=False``) and the flight recorder (unless ``record=False``; records go to
    ``directory``, default the per-user state directory)."""
    register_ipython(shell)
    if safety_net:
        enable_safety_net()
    if record:
        from .recorder import start_recording

        start_recording(directory, shell=shell)


@_quiet
def disable_for_ipython(shell: Any) -> None:
    """Undo :func:`enable_for_ipython` (``%unload_ext``): hooks, budget, safety net and
    recorder off, watcher stopped, the record removed."""
    from .recorder import stop_recording

    stop_recording()
    unregister_ipython(shell)
    shutdown()


@_quiet
def shutdown() -> None:
    """Remove the budget, the safety net and the listeners and stop the watcher (the
    extension's unload calls this)."""
    w = _watcher
    with w.lock:
        w.session_limit = None
        w.block_limits.clear()
        w.safety_net = False
        w.listeners.clear()
        w.rearm.clear()
    w.stop()
    if threading.current_thread() is threading.main_thread():
        _withdraw_pending()
