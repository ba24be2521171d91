"""Capture the memory that CPython's allocator hooks never see: NumPy array data, always,
and, in native mode, the ``malloc``/``mmap`` calls of extension libraries.

``install(native)`` wires the captures into the running sampler (``sampler.start`` calls it),
``uninstall()`` removes them (``sampler.stop`` calls it), ``status()`` says what is wired.
Samples use the sampler's byte countdown and weights, and are attributed to the Python stack
that made the allocation, or, for a block allocated by the main thread while a native call
had released the GIL, to the Python line that made that call.

What the default mode sees (``install(native=False)``)
    Everything the PyMem hooks see (Python objects, ``PyMem_*`` buffers, domain 0), plus
    NumPy array data on every NumPy >= 1.22 (``NUMPY_DOMAIN``, allocator ``NUMPY``): arrays,
    their copies and temporaries, pandas' NumPy-backed columns and indexes. NumPy's default
    data-memory handler (NEP 49) is wrapped in place, so all threads and contexts are
    covered; NumPy imported after ``install`` is wrapped as soon as its core module loads
    (an import hook on ``sys.meta_path`` that finds nothing itself and never changes what
    is imported). On NumPy 2.5, which allocates array data through ``PyMem_RawMalloc``,
    the buffer is recorded once, as NUMPY, not a second time as RAW.
It misses
    arrays made with a data handler that a user set with ``PyDataMem_SetHandler``; all
    array data with NumPy older than 1.22 (no handler API: ``status()["numpy"]["error"]``
    says so, nothing is raised); memory
    that NumPy allocates outside its handler (small scratch buffers of ufuncs and sorts);
    every other library's ``malloc``/``mmap`` (Arrow, PyTorch, Polars, BLAS workspaces,
    pandas' hash tables built in C).

What native mode adds (``install(native=True)``)
    ``malloc``, ``calloc``, ``realloc``, ``reallocarray``, ``free``, ``posix_memalign``,
    ``aligned_alloc``, ``memalign``, ``valloc``, ``pvalloc``, and anonymous ``mmap`` /
    ``munmap`` / ``mremap`` called by any loaded shared library other than libc, the
    dynamic loader and the interpreter itself (``NATIVE_DOMAIN``, allocator ``NATIVE``).
    C++ ``new``/``delete`` are seen through libstdc++. The libraries' import slots (GOT)
    are rewritten, so libraries loaded later (imports, ``ctypes``, ``dlopen``) are covered
    as they load; ``uninstall`` puts every slot back. pyarrow: its default memory pool
    is switched to the system allocator while native mode is on (``pa.set_memory_pool``,
    as soon as ``pyarrow.lib`` is loaded), because Arrow's bundled mimalloc/jemalloc serve
    buffers from arenas reserved long before and never call ``malloc``; ``uninstall``
    restores the previous pool. Buffers already made keep the pool they came from; C++
    code that asks for ``arrow::default_memory_pool()`` itself rather than pyarrow's pool
    still uses the bundled allocator (set ``ARROW_DEFAULT_MEMORY_POOL=system`` before
    importing pyarrow to route that too).
It misses
    allocations made inside libc on a library's behalf (``strdup``, ``fopen`` buffers);
    calls through a pointer to ``malloc`` that a library stored in its own data before
    native mode started (only import slots are redirected);
    allocators linked into a library (Polars' jemalloc, a pool in a Rust or Go extension,
    Arrow if its pool is set back by hand): only the big regions they ``mmap`` are seen,
    and such allocators rarely unmap them, so they stay reported; file-backed ``mmap``
    (page cache, not allocations); ``PROT_NONE`` and ``MAP_NORESERVE`` reservations; an
    ``munmap`` that starts inside a sampled region (the region stays reported until its
    start is unmapped); memory of libraries that call the kernel directly (``syscall``).
    Blocks allocated without the GIL by a thread other than the main thread have no Python
    stack (``<no Python frame>``): only the main thread's stack can be read safely later.
    Native mode needs Linux with glibc on x86-64 or aarch64; elsewhere ``install(True)``
    raises ``RuntimeError`` and the default mode still works.

NumPy, pandas and pyarrow are optional: without them only the PyMem hooks (and, in native
mode, the other libraries) are at work.
"""

from __future__ import annotations

import sys
import threading

from ._native import ffi, lib

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers: True)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["install", "uninstall", "status", "is_installed"]

#: NumPy's core extension module, whose import makes the data handler available.
NUMPY_CORE_MODULES = ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath")
#: pyarrow's Cython core, which defines the memory-pool functions.
ARROW_LIB_MODULE = "pyarrow.lib"

_lock = threading.RLock()

# A pause of the calling thread's sampling, as a cffi object: `with pause():` pauses when
# cffi creates the object and resumes when it is released, both in C, so an exception
# (a KeyboardInterrupt from a signal handler) cannot separate the two; a pause that is
# never released ends when the object is garbage, or at the next start().
# native/sampler.c (mp_pause_alloc) explains.
_new_pause = ffi.new_allocator(alloc=lib.mp_pause_alloc, free=lib.mp_pause_free,
                               should_clear_after_alloc=False)


def pause() -> Any:
    """A context manager that pauses sampling on the calling thread (nests)."""
    return _new_pause("char[1]")

_state: dict[str, Any] = {
    "installed": False,
    "native": False,
    "numpy_error": None,       # why NumPy's handler could not be wrapped
    "arrow_previous": None,    # the pyarrow pool to put back at uninstall
    "arrow_switched": False,
}


def _error() -> str:
    return ffi.string(lib.mp_last_error()).decode("utf-8", "replace")


class _ImportWatcher:
    """A ``sys.meta_path`` entry that finds nothing: it only notices, at each import, that
    NumPy's core (or pyarrow's) has been loaded since, and wires it in. NumPy and pyarrow
    both import further modules right after their core, so the wiring happens before the
    importing statement returns."""

    def __init__(self) -> None:
        self._local = threading.local()  # per thread: wiring may import, don't recurse

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if not getattr(self._local, "busy", False):
            self._local.busy = True
            try:
                _on_import()
            finally:
                self._local.busy = False
        return None

    def invalidate_caches(self) -> None:
        pass


_watcher = _ImportWatcher()


def _numpy_loaded() -> bool:
    return any(name in sys.modules for name in NUMPY_CORE_MODULES)


def _numpy_installed() -> bool:
    out = ffi.new("mp_capture_status_t *")
    lib.mp_capture_status(out)
    return bool(out.numpy_installed)


def _wire_numpy() -> None:
    """Wrap NumPy's default data handler if NumPy is loaded and it is not wrapped yet
    (mp_numpy_install answers 1, "not yet", until NumPy's C-API table exists)."""
    if _state["numpy_error"] is not None or not _numpy_loaded() or _numpy_installed():
        return
    if lib.mp_numpy_install() < 0:
        _state["numpy_error"] = _error()


def _wire_arrow() -> None:
    """Route pyarrow's default pool to the system allocator (native mode, pyarrow loaded)."""
    if not _state["native"] or _state["arrow_switched"]:
        return
    pa_lib = sys.modules.get(ARROW_LIB_MODULE)
    if pa_lib is None:
        return
    try:
        previous = pa_lib.default_memory_pool()
        system = pa_lib.system_memory_pool()
        if previous.backend_name != system.backend_name:
            pa_lib.set_memory_pool(system)
            _state["arrow_previous"] = previous
    except (AttributeError, TypeError, ValueError):
        return  # a pyarrow without these functions: its pool's arenas are all we see
    _state["arrow_switched"] = True


def _unwire_arrow() -> None:
    previous, _state["arrow_previous"] = _state["arrow_previous"], None
    _state["arrow_switched"] = False
    pa_lib = sys.modules.get(ARROW_LIB_MODULE)
    if previous is not None and pa_lib is not None:
        pa_lib.set_memory_pool(previous)


def _needs_watch() -> bool:
    # "Loaded" is not enough: NumPy 2's core is in sys.modules while its init still runs
    # (and imports other modules), before its C-API table exists.
    # (Checked at every import while watching: the cheap sys.modules test goes first.)
    numpy_pending = _state["numpy_error"] is None and not (_numpy_loaded()
                                                           and _numpy_installed())
    arrow_pending = _state["native"] and not _state["arrow_switched"]
    return numpy_pending or arrow_pending


def _on_import() -> None:
    with pause(), _lock:  # wiring is the profiler's work, not the user's memory
        if not _state["installed"]:
            return
        _wire_numpy()
        if _state["native"]:
            _wire_arrow()
            lib.mp_native_rescan()  # libraries loaded by a path that bypassed dlopen
        if not _needs_watch():
            _remove_watcher()


def _add_watcher() -> None:
    if not any(f is _watcher for f in sys.meta_path):
        sys.meta_path.insert(0, _watcher)


def _remove_watcher() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if f is not _watcher]


def install(native: bool = False) -> None:
    """Wire NumPy array data (and, with ``native=True``, native libraries) into the sampler.

    Call it right after the sampler has started; calling it again changes the mode.
    Raises ``RuntimeError`` if native mode cannot work on this platform (the NumPy capture
    stays installed) and ``TypeError`` if ``native`` is not a bool.
    """
    if not isinstance(native, bool):
        raise TypeError(f"native must be True or False, not {native!r}")
    with pause(), _lock:  # wiring is the profiler's work, not the user's memory
        if _state["installed"] and _state["native"] and not native:
            _uninstall_native()
        main = threading.main_thread().ident or 0
        lib.mp_capture_set_main_thread(main)
        _state["installed"] = True
        _state["numpy_error"] = None
        _wire_numpy()
        if native and not _state["native"]:
            if lib.mp_native_install() != 0:
                raise RuntimeError(_error())
            _state["native"] = True
            _wire_arrow()
        if _needs_watch():
            _add_watcher()


def _uninstall_native() -> None:
    lib.mp_native_uninstall()
    _unwire_arrow()
    _state["native"] = False


def uninstall() -> None:
    """Put NumPy's handler, every patched import slot and pyarrow's pool back.

    The records of blocks captured here are dropped (their frees would no longer be
    seen). Safe to call when nothing is installed.
    """
    with pause(), _lock:  # wiring is the profiler's work, not the user's memory
        _remove_watcher()
        if _state["native"]:
            _uninstall_native()
        lib.mp_numpy_uninstall()
        _state["installed"] = False
        _state["numpy_error"] = None


def is_installed() -> bool:
    """True between install() and uninstall()."""
    return bool(_state["installed"])


def status() -> dict[str, Any]:
    """What is wired right now, as a JSON-able dict.

    ``numpy``: ``installed`` (the handler is wrapped), ``imported``, ``version``,
    ``handler`` (its name), ``api_feature_version``, ``error`` (why it could not be
    wrapped), ``waiting_for_import``. ``native``: ``enabled``, ``supported``, ``libraries``
    and ``interpreter_objects`` (objects whose import slots point at our wrappers),
    ``slots``, ``failures`` (slots that could not be written), ``scans``. ``arrow``:
    ``imported``, ``pool`` (backend of pyarrow's default pool), ``switched``.
    ``deferred``: samples made without the GIL on the main thread, ``recorded`` with the
    stack read later, ``without_stack``, ``pending`` now.
    """
    out = ffi.new("mp_capture_status_t *")
    lib.mp_capture_status(out)
    numpy = sys.modules.get("numpy")
    pa_lib = sys.modules.get(ARROW_LIB_MODULE)
    pool = None
    if pa_lib is not None:
        try:
            pool = pa_lib.default_memory_pool().backend_name
        except (AttributeError, TypeError):
            pool = None
    with _lock:
        watching = any(f is _watcher for f in sys.meta_path)
        return {
            "installed": bool(_state["installed"]),
            "numpy": {
                "installed": bool(out.numpy_installed),
                "imported": _numpy_loaded(),
                "version": getattr(numpy, "__version__", None),
                "handler": ffi.string(out.numpy_handler).decode("utf-8", "replace") or None,
                "api_feature_version": int(out.numpy_feature_version),
                "error": _state["numpy_error"],
                "waiting_for_import": watching and not out.numpy_installed
                and _state["numpy_error"] is None,
            },
            "native": {
                "enabled": bool(_state["native"]),
                "supported": bool(out.native_supported),
                "libraries": int(out.native_objects),
                "interpreter_objects": int(out.native_python_objects),
                "slots": int(out.native_slots),
                "failures": int(out.native_failures),
                "scans": int(out.native_scans),
            },
            "arrow": {
                "imported": pa_lib is not None,
                "pool": pool,
                "switched": bool(_state["arrow_switched"]),
            },
            "deferred": {
                "recorded": int(out.deferred),
                "without_stack": int(out.deferred_nostack),
                "pending": int(out.pending),
            },
        }
