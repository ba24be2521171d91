"""The Python face of the native sampler: start, stop, counters and snapshots.

With :mod:`mprofile_ipy.native_capture` (which it drives) this is the only module that
touches ``mprofile_ipy._native``. It validates arguments,
turns the C tables into the raw traces of ``docs/architecture.md`` and hands them to
:class:`mprofile_ipy.model.Snapshot`. Its functions mirror :mod:`tracemalloc`'s so that
code written for tracemalloc runs unchanged; the differences are listed in the README.

It is on the start path (``import mprofile_ipy; mprofile_ipy.start()``), so it imports only
the native module, :mod:`threading` and the small :mod:`mprofile_ipy.units`; the model,
its dataclasses (:mod:`mprofile_ipy.sampler_records`) and :mod:`typing` load on first use
(``take_snapshot()``, ``get_stats()``...): every object a module creates is one more for
each full collection of the cyclic GC to traverse, for the life of the profiled process.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time

from . import native_capture
from ._native import ffi, lib
from .units import parse_size

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers: True)
if TYPE_CHECKING:
    from typing import Any

    from .model import Snapshot, Traceback
    from .sampler_records import LiveBlock, SamplerStats

DEFAULT_SAMPLE_RATE = 128 * 1024
#: Sets the rate of ``start()`` without ``sample_rate`` (as ``TCMALLOC_SAMPLE_PARAMETER``
#: does for tcmalloc): ``MPROFILE_IPY_SAMPLE_RATE=1`` runs code written for tracemalloc,
#: unchanged, in exact mode. The magics keep their own ``--rate``.
RATE_ENV_VAR = "MPROFILE_IPY_SAMPLE_RATE"
DEFAULT_MAX_FRAMES = 128
MAX_FRAMES_LIMIT: int = lib.mp_max_frames_limit()
SUPPORTED_PYTHONS = ((3, 10), (3, 11), (3, 12), (3, 13))


def _built_for_this_python() -> bool:
    """The extension reads this interpreter's frame structs: built for this 3.x?"""
    built = lib.mp_python_version_built()
    return (built >> 24, (built >> 16) & 0xFF) == sys.version_info[:2]

NO_STACK_FRAME = ("<unknown>", 0, "<no Python frame>", 0)

# cffi creates `lib.<name>` objects lazily, on first access. Touch every function now, at
# import, so that the first take_snapshot() does not show the profiler's own objects.
for _name in dir(lib):
    getattr(lib, _name)
del _name

# The tracemalloc domain of each allocator (model.Allocator's values), filled on the first
# snapshot with the model's constants (the model is not imported before).
_DOMAIN_OF_ALLOCATOR: dict[int, int] = {}

# Settings of the last start(), reported while stopped as tracemalloc does.
# (The rate and the traceback limit are the C sampler's: see get_sample_rate().)
_settings: dict[str, Any] = {
    "seed": None,
    "started_at": None,
    "native": False,
}
_lock = threading.RLock()

#: Names of this module defined elsewhere, imported when first asked for (PEP 562).
_LAZY = {"SamplerStats": ".sampler_records", "LiveBlock": ".sampler_records"}


def __getattr__(name: str) -> Any:
    """``sampler.SamplerStats`` and ``sampler.LiveBlock``, the dataclasses of
    :mod:`mprofile_ipy.sampler_records`, imported on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import sampler_records

    value = getattr(sampler_records, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return value


def _error() -> str:
    return ffi.string(lib.mp_last_error()).decode("utf-8", "replace")


def start(
    max_frames: int = DEFAULT_MAX_FRAMES,
    sample_rate: int | str | None = None,
    *,
    seed: int | None = None,
    native: bool = False,
) -> None:
    """Start sampling allocations.

    ``max_frames`` limits each traceback (1..1024; tracemalloc's ``nframe``, so
    ``start(25)`` works as it does for tracemalloc). ``sample_rate`` is the mean number of
    bytes between samples (an int or a size such as ``"64KiB"``); 0 or 1 traces every
    allocation, exactly as tracemalloc does; None means the default, 128 KiB or the size
    in the environment variable ``MPROFILE_IPY_SAMPLE_RATE`` (or, while tracing, the
    current rate). ``seed`` makes the sampling reproducible; without it
    every start draws fresh samples (the seed comes from the operating system).

    NumPy array data is always captured (domain ``NUMPY_DOMAIN``). ``native=True`` also
    samples ``malloc``/``mmap`` calls made by native extension libraries (Arrow, PyTorch,
    ...; domain ``NATIVE_DOMAIN``); it needs Linux with glibc and raises ``RuntimeError``
    elsewhere. :mod:`mprofile_ipy.native_capture` says what each mode sees and misses.
    Calling ``start`` while tracing only changes ``max_frames`` and the native mode
    (``start(5)`` works at any rate, as for tracemalloc; a different ``sample_rate``
    raises ``RuntimeError``).
    """
    if sys.version_info[:2] not in SUPPORTED_PYTHONS or not _built_for_this_python():
        raise RuntimeError(
            f"mprofile-ipy supports CPython 3.10 to 3.13; this is "
            f"{sys.implementation.name} {sys.version.split()[0]}, whose frame layout its "
            "stack walker does not know"
        )
    max_frames = _check_int("max_frames", max_frames)
    if not 1 <= max_frames <= MAX_FRAMES_LIMIT:
        hint = ""
        if max_frames > MAX_FRAMES_LIMIT:
            hint = f" (did you mean sample_rate={max_frames}?)"
        raise ValueError(f"max_frames must be between 1 and {MAX_FRAMES_LIMIT}, "
                         f"got {max_frames}{hint}")
    if sample_rate is None:
        sample_rate = _stats().sample_rate if is_tracing() else _default_rate()
    try:
        rate = parse_size(sample_rate)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"sample_rate: {exc}") from None
    if rate > 2**62:
        raise ValueError(f"sample_rate is too large: {rate} bytes")
    if seed is not None:
        seed = _check_int("seed", seed) % 2**64
    if not isinstance(native, bool):
        raise TypeError(f"native must be True or False, not {native!r}")
    settings = {"seed": seed, "started_at": time.time(), "native": native}
    with _lock:
        was_tracing = is_tracing()
        if lib.mp_start(rate, max_frames, seed or 0, seed is not None) != 0:
            raise RuntimeError(_error())
        if not was_tracing:
            with paused():  # the profiler's own bookkeeping is not the user's memory
                _settings.update(settings)
        try:
            native_capture.install(native)
        except RuntimeError:
            if not was_tracing:
                stop()
            raise
        _settings["native"] = native


def _default_rate() -> int:
    """``DEFAULT_SAMPLE_RATE``, or the size in ``$MPROFILE_IPY_SAMPLE_RATE`` when set."""
    text = os.environ.get(RATE_ENV_VAR, "").strip()
    if not text:
        return DEFAULT_SAMPLE_RATE
    try:
        return parse_size(text)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{RATE_ENV_VAR}={text!r}: {exc}") from None


def paused() -> Any:
    """Don't sample the calling thread's allocations inside ``with paused():``.

    For tools built on the sampler: their own bookkeeping (reports, stored snapshots) is
    not the user's memory. Other threads go on being sampled; frees are still seen, so
    nothing goes stale. Blocks nest. The pause begins and ends in C (it is a cffi object,
    see ``native/sampler.c``), so an exception raised by a signal handler, such as a
    ``KeyboardInterrupt``, cannot leave the thread paused; ``start()`` ends every pause.
    """
    return native_capture.pause()


def stop() -> None:
    """Stop sampling, restore the allocators and drop every trace (as tracemalloc does)."""
    with _lock:
        # Put NumPy's handler and the native slots back first: once the sampler's tables
        # are gone, the blocks they recorded could not be matched with their frees.
        native_capture.uninstall()
        lib.mp_stop()


def is_tracing() -> bool:
    """True while the sampler is on."""
    with paused():
        return bool(_stats().tracing)


def clear_traces() -> None:
    """Forget the traces and counters collected so far; sampling goes on."""
    with paused(), _lock:
        lib.mp_clear()


def reset_peak() -> None:
    """Set the peak of traced memory to its current value."""
    lib.mp_reset_peak()


def get_sample_rate() -> int:
    """The sample rate of the current (or last) run, in bytes; 1 or 0 mean exact.

    Read from the C sampler, so it is right even if this module was reloaded."""
    with paused():
        return int(_stats().sample_rate)


def get_traceback_limit() -> int:
    """The maximum number of frames stored per traceback."""
    with paused():
        return int(_stats().max_frames)


def _stats() -> Any:
    out = ffi.new("mp_stats_t *")
    lib.mp_get_stats(out)
    return out


# The getters below run paused: the ints and tuples they build are the profiler's work,
# not the user's memory (tracemalloc leaves its own out as well), so that after
# clear_traces() or stop() get_traced_memory() is (0, 0).

def set_watermark(limit: float | None, fd: int = -1, *, call_main: bool = False) -> None:
    """Once the estimated live bytes reach ``limit``: write 8 bytes (an eventfd increment)
    to ``fd`` and, with ``call_main``, have the main thread call
    ``mprofile_ipy.budget._on_watermark()`` at its next bytecode, as a signal handler
    would run. ``None`` or 0 turns it off; each call re-arms it.

    For the memory budget (:mod:`mprofile_ipy.budget`): the check rides on the sample
    path, so a budget trips the moment traced memory crosses it instead of at the next
    poll. The sample path needs no GIL and allocates nothing for it.
    """
    lib.mp_set_watermark(float(limit or 0), int(fd) if limit else -1, bool(call_main))


def get_traced_memory() -> tuple[int, int]:
    """Estimated (current, peak) bytes of the allocations traced since start."""
    with paused():
        s = _stats()
        return int(round(s.current_bytes)), int(round(s.peak_bytes))


def get_profiler_memory() -> int:
    """Bytes used by the sampler's own tables (tracemalloc's get_tracemalloc_memory)."""
    with paused():
        return int(_stats().profiler_memory)


get_tracemalloc_memory = get_profiler_memory


def get_stats() -> SamplerStats:
    """All counters at once, consistent with each other."""
    with paused():
        return _stats_of(_stats())


def _stats_of(s: Any) -> SamplerStats:
    from .sampler_records import SamplerStats

    return SamplerStats(
        tracing=bool(s.tracing),
        exact=bool(s.exact),
        sample_rate=int(s.sample_rate),
        max_frames=int(s.max_frames),
        samples=int(s.samples),
        live_samples=int(s.live_samples),
        current_bytes=float(s.current_bytes),
        peak_bytes=float(s.peak_bytes),
        allocated_bytes=float(s.alloc_bytes),
        allocated_count=float(s.alloc_count),
        profiler_memory=int(s.profiler_memory),
        foreign_hooks=bool(s.foreign_hooks),
    )


def _u64(ptr: Any, count: int) -> list[int]:
    if count == 0:
        return []
    return memoryview(ffi.buffer(ptr, count * 8)).cast("Q").tolist()


def _domains() -> dict[int, int]:
    """Fill ``_DOMAIN_OF_ALLOCATOR`` from the model's constants (first snapshot only)."""
    from .model import NATIVE_DOMAIN, NUMPY_DOMAIN, Allocator

    _DOMAIN_OF_ALLOCATOR.update({
        Allocator.RAW: 0,
        Allocator.MEM: 0,
        Allocator.OBJ: 0,
        Allocator.NUMPY: NUMPY_DOMAIN,
        Allocator.NATIVE: NATIVE_DOMAIN,
    })
    return _DOMAIN_OF_ALLOCATOR


def _read_snapshot(snap: Any) -> tuple[list[tuple], list[tuple], list[int], list[int]]:
    """Raw traces and per-traceback allocation totals out of a native snapshot, and the
    thread label (:func:`set_thread_label`) of each trace and of each allocated entry."""
    ntraces = lib.mp_snapshot_ntraces(snap)
    ntb = lib.mp_snapshot_ntracebacks(snap)
    nrefs = lib.mp_snapshot_nframe_refs(snap)
    nframes = lib.mp_snapshot_nframes(snap)
    domain_of = _DOMAIN_OF_ALLOCATOR or _domains()
    flat = _u64(lib.mp_snapshot_traces(snap), 4 * ntraces)
    tbs = _u64(lib.mp_snapshot_tracebacks(snap), 4 * ntb)
    alloc = (
        memoryview(ffi.buffer(lib.mp_snapshot_tb_allocated(snap), 32 * ntb)).cast("d").tolist()
        if ntb
        else []
    )
    refs = (
        memoryview(ffi.buffer(lib.mp_snapshot_frame_refs(snap), 4 * nrefs)).cast("I").tolist()
        if nrefs
        else []
    )

    info = ffi.new("mp_frame_info_t *")
    strings: dict[int, str] = {}

    def text(ptr: Any) -> str:
        key = int(ffi.cast("uintptr_t", ptr))
        s = strings.get(key)
        if s is None:
            # surrogateescape: names that are not UTF-8 come back as the same str
            s = strings[key] = ffi.string(ptr).decode("utf-8", "surrogateescape")
        return s

    frames: list[tuple] = []
    for fid in range(nframes):
        lib.mp_snapshot_frame_info(snap, fid, info)
        frames.append((text(info.filename), info.lineno, text(info.name), info.firstlineno))

    tracebacks: list[tuple[tuple, int]] = []
    tb_labels = tbs[3::4]
    for i in range(ntb):
        first, n, total = tbs[4 * i : 4 * i + 3]
        if n == 0:
            tracebacks.append(((NO_STACK_FRAME,), 0))
        else:
            tracebacks.append((tuple(frames[f] for f in refs[first : first + n]), total))

    traces = []
    trace_labels = []
    for i in range(0, len(flat), 4):
        size, tb, allocator, thread = flat[i : i + 4]
        tb_frames, total = tracebacks[tb]
        traces.append(
            (domain_of.get(allocator, 0), size, tb_frames, total, allocator, thread)
        )
        trace_labels.append(tb_labels[tb])
    # (frames, total_nframe, count estimate, size estimate, samples, size variance)
    kept = [i for i in range(ntb) if alloc[4 * i + 2] > 0.0]
    allocated = [
        (*tracebacks[i], alloc[4 * i], alloc[4 * i + 1], int(alloc[4 * i + 2]), alloc[4 * i + 3])
        for i in kept
    ]
    return traces, allocated, trace_labels, [tb_labels[i] for i in kept]


def _meta() -> dict[str, Any]:
    threads = {str(t.ident): t.name for t in threading.enumerate() if t.ident is not None}
    return {
        "python": sys.version.split()[0],
        "implementation": sys.implementation.name,
        "pid": os.getpid(),
        "sample_rate": get_sample_rate(),
        "max_frames": get_traceback_limit(),
        "seed": _settings["seed"],
        "native": _settings["native"],
        "started_at": _settings["started_at"],
        "taken_at": time.time(),
        "threads": threads,
    }


def _copy_tables() -> tuple[list[tuple], list[tuple], list[int], list[int]]:
    """What :func:`_read_snapshot` gives, from a copy of the sampler's tables taken now.

    The model loads (first snapshot) only once the tables are copied: the objects its
    modules create may reuse blocks that user code freed to CPython's free lists (a dict, a
    tuple), which the sampler, seeing no allocator call, would still count at the user's
    line; in exact mode the snapshot would then differ from tracemalloc's
    (docs/architecture.md, "Import cost")."""
    snap = lib.mp_snapshot_take()
    if snap == ffi.NULL:
        raise MemoryError("not enough memory to copy the sampler's tables")
    try:
        return _read_snapshot(snap)
    finally:
        lib.mp_snapshot_free(snap)


#: ``take_snapshot()`` while not tracing: tracemalloc's exact words, because code written
#: for tracemalloc (its own test suite among it) compares them.
NOT_TRACING = "the tracemalloc module must be tracing memory allocations to take a snapshot"


def _get_traces() -> list[tuple]:
    """tracemalloc's private ``_get_traces()``: the sampled live blocks in its raw format.

    A list of ``(domain, size, frames, total_nframe)`` where ``frames`` is a tuple of
    ``(filename, lineno)`` pairs, most recent first, and traces with the same traceback
    share one ``frames`` tuple, as in tracemalloc. For code written against tracemalloc's
    internals (its own tests use it); our snapshots carry more (function names, the thread,
    the estimates), so :func:`take_snapshot` does not go through this. Empty when not
    tracing.
    """
    if not is_tracing():
        return []
    with paused():
        traces = _copy_tables()[0]
        pairs: dict[int, tuple] = {}  # id of a shared frames tuple -> its short form
        out = []
        for domain, size, frames, total, *_ in traces:
            short = pairs.get(id(frames))
            if short is None:
                short = pairs[id(frames)] = tuple((f[0], f[1]) for f in frames)
            out.append((domain, size, short, total))
        return out


def _get_object_traceback(obj: object) -> tuple | None:
    """tracemalloc's private ``_get_object_traceback()``: the raw ``(filename, lineno)``
    frames, most recent first, of the sampled block holding ``obj``, or None."""
    traceback = get_object_traceback(obj)
    return None if traceback is None else tuple((f[0], f[1]) for f in traceback.raw_frames)


def take_snapshot() -> Snapshot:
    """A snapshot of the sampled allocations that are still alive.

    Building it is not itself sampled (the calling thread pauses sampling meanwhile), so
    the profiler's own work does not show up in later snapshots.
    """
    with paused():
        if not is_tracing():
            raise RuntimeError(NOT_TRACING)
        traces, allocated, trace_labels, allocated_labels = _copy_tables()
        from .model import Snapshot
        stats = get_stats()
        meta = _meta()
        if any(trace_labels) or any(allocated_labels):
            # Thread labels (set_thread_label), only when some thread had one, so that an
            # unlabelled snapshot is exactly what it always was: one label per raw trace
            # in the order of ``traces`` and one per entry of ``allocated``; 0 is none.
            meta["trace_labels"] = trace_labels
            meta["allocated_labels"] = allocated_labels
        meta.update(
            samples_total=stats.samples,
            peak_bytes=stats.peak_bytes,
            allocated_bytes=stats.allocated_bytes,
            allocated_count=stats.allocated_count,
            foreign_hooks=stats.foreign_hooks,
        )
        return Snapshot(
            traces,
            get_traceback_limit(),
            sample_rate=get_sample_rate(),
            allocated=allocated,
            meta=meta,
        )


def live_blocks() -> list[LiveBlock]:
    """Every sampled block still alive, with its address (for tools that map blocks to
    objects, e.g. to ask why something is still alive).

    The profiler's own allocations while building the list are not sampled. Returns an
    empty list when the profiler is not tracing.
    """
    with paused():
        if not is_tracing():
            return []
        snap = lib.mp_snapshot_take()
        if snap == ffi.NULL:
            raise MemoryError("not enough memory to copy the sampler's tables")
        try:
            traces = _read_snapshot(snap)[0]
            addresses = _u64(lib.mp_snapshot_addresses(snap), len(traces))
        finally:
            lib.mp_snapshot_free(snap)
        from .sampler_records import LiveBlock

        return [
            LiveBlock(address=addr, size=t[1], allocator=t[4], domain=t[0], thread_id=t[5],
                      frames=t[2])
            for addr, t in zip(addresses, traces, strict=True)
        ]


def get_object_traceback(obj: object) -> Traceback | None:
    """The traceback where ``obj`` was allocated, if that allocation was sampled.

    With sampling, most small objects are not sampled and give None; start with
    ``sample_rate=1`` to trace every object, as tracemalloc does.
    """
    if not is_tracing():
        return None
    with paused():
        snap = lib.mp_snapshot_of_object(id(obj))
        if snap == ffi.NULL:
            return None
        try:
            traces = _read_snapshot(snap)[0]
        finally:
            lib.mp_snapshot_free(snap)
        if not traces:
            return None
        from .model import Traceback

        _, _, frames, total, _, _ = traces[0]
        return Traceback(frames, total)


@atexit.register
def _stop_at_exit() -> None:
    # Leave the interpreter's finalization to its own allocators.
    if is_tracing():
        stop()


def set_thread_label(label: int) -> None:
    """Label the calling thread's allocations from now on with ``label`` (0 clears it).

    A label is a small integer the caller maps to a name, e.g. the Dask task prefix a
    worker thread is running (``read_parquet``). It is part of a traceback's identity: the
    same stack under two labels gives two traces. Snapshots carry it in
    ``meta["trace_labels"]`` (one per raw trace) and ``meta["allocated_labels"]`` (one per
    ``allocated`` entry), present only when some label is non-zero. Only the calling thread
    is affected; other threads and a forked child start unlabelled. The call is a single
    thread-local store, cheap enough to make around every task.
    """
    value = _check_int("label", label)
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"label must be between 0 and 2**32 - 1, not {value}")
    lib.mp_set_thread_label(value)


def get_thread_label() -> int:
    """The calling thread's label (0: none); see :func:`set_thread_label`."""
    return int(lib.mp_thread_label())
