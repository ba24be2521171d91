"""Native mode: malloc/mmap of extension libraries, sampled and attributed to Python lines.

A small C library, compiled here and loaded with ctypes *after* native mode is installed
(so it is also the test that libraries loaded later are covered), calls each hooked
function. ctypes.CDLL releases the GIL around calls (the deferred-stack path), PyDLL keeps
it. Blocks are 10-100 MB, so each is sampled with probability ~1 at the default rate and
the +/-10% bounds are not statistical slack. pyarrow tests skip, saying why, when pyarrow
is not installed; every test skips when no C compiler is found or the platform has no
native mode.
"""

from __future__ import annotations

import ctypes
import gc
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import threading

import pytest

import mprofile_ipy as mp
from mprofile_ipy import _native
from mprofile_ipy import native_capture as nc
from mprofile_ipy.model import NATIVE_DOMAIN, NUMPY_DOMAIN, Allocator

HERE = __file__
MB = 1_000_000

if not nc.status()["native"]["supported"]:
    pytest.skip("native mode needs Linux/glibc on x86-64 or aarch64", allow_module_level=True)

LIB_SOURCE = r"""
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

void *nt_malloc(size_t n) { void *p = malloc(n); if (p) memset(p, 1, n); return p; }
void *nt_calloc(size_t n) { return calloc(n, 1); }
void *nt_realloc(void *p, size_t n) { return realloc(p, n); }
void nt_free(void *p) { free(p); }
void *nt_posix_memalign(size_t n) { void *p = NULL; return posix_memalign(&p, 64, n) ? NULL : p; }
void *nt_aligned_alloc(size_t n) { return aligned_alloc(4096, n); }
void *nt_mmap(size_t n, int prot) {
    void *p = mmap(NULL, n, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}
int nt_munmap(void *p, size_t n) { return munmap(p, n); }
void *nt_dlopen(const char *name) { return dlopen(name, RTLD_NOW); }
void *nt_dlsym(void *h, const char *name) { return dlsym(h, name); }
/* -fPIC: the address of malloc is read from this library's GOT slot for it. */
void *nt_malloc_slot(void) { return (void *)&malloc; }

/* n blocks of `size` bytes, every other one freed again before returning. */
void **nt_many(size_t n, size_t size) {
    void **v = malloc(n * sizeof(void *));
    for (size_t i = 0; i < n; i++) v[i] = malloc(size);
    for (size_t i = 1; i < n; i += 2) { free(v[i]); v[i] = NULL; }
    return v;
}
void nt_free_many(void **v, size_t n) { for (size_t i = 0; i < n; i++) free(v[i]); free(v); }

static size_t thread_size;
static void *thread_result;
static void *thread_main(void *arg) { (void)arg; thread_result = nt_malloc(thread_size); return 0; }
void *nt_malloc_in_native_thread(size_t n) {
    pthread_t t;
    thread_size = n;
    if (pthread_create(&t, NULL, thread_main, NULL)) return NULL;
    pthread_join(t, NULL);
    return thread_result;
}
"""

DEP_SOURCE = r"""
#include <stdlib.h>
#include <string.h>
void *dep_malloc(size_t n) { void *p = malloc(n); if (p) memset(p, 2, n); return p; }
"""


def here() -> int:
    """The caller's line number: ``x, line = make(), here()`` names x's line."""
    return sys._getframe(1).f_lineno


def live_at(snapshot: mp.Snapshot, lineno: int, *, domain: int | None = None) -> float:
    """Estimated live bytes whose traceback passes through this file's ``lineno``."""
    return sum(
        t.estimated_size
        for t in snapshot.traces
        if (domain is None or t.domain == domain)
        and any(f.filename == HERE and f.lineno == lineno for f in t.traceback)
    )


def assert_close(value: float, expected: float, rel: float = 0.10) -> None:
    assert abs(value - expected) <= rel * expected, (
        f"{value / MB:.1f} MB, expected {expected / MB:.1f} MB +/- {rel:.0%}")


def compile_library(directory, name: str, source: str, *extra: str) -> str:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            pytest.skip("no C compiler to build the test library")
    src = directory / f"{name}.c"
    src.write_text(source)
    out = directory / f"lib{name}.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(out), str(src), *extra,
                    "-ldl", "-lpthread"], check=True)
    return str(out)


@pytest.fixture(scope="module")
def libpaths(tmp_path_factory):
    d = tmp_path_factory.mktemp("native")
    (d / "sub").mkdir()
    compile_library(d / "sub", "ntdep", DEP_SOURCE)
    # RUNPATH $ORIGIN/sub: dlopen("libntdep.so") from this library must search there.
    main = compile_library(d, "nt", LIB_SOURCE, "-Wl,--enable-new-dtags,-rpath,$ORIGIN/sub")
    return main


def declare(lib):
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    for name, res, args in [
        ("nt_malloc", vp, [sz]), ("nt_calloc", vp, [sz]), ("nt_realloc", vp, [vp, sz]),
        ("nt_free", None, [vp]), ("nt_posix_memalign", vp, [sz]),
        ("nt_aligned_alloc", vp, [sz]), ("nt_mmap", vp, [sz, ctypes.c_int]),
        ("nt_munmap", ctypes.c_int, [vp, sz]), ("nt_dlopen", vp, [ctypes.c_char_p]),
        ("nt_dlsym", vp, [vp, ctypes.c_char_p]), ("nt_malloc_slot", vp, []),
        ("nt_malloc_in_native_thread", vp, [sz]), ("nt_many", vp, [sz, sz]),
        ("nt_free_many", None, [vp, sz]),
    ]:
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


@pytest.fixture
def native(libpaths):
    """Sampler started, native mode on, then the test library loaded (a later dlopen)."""
    gc.collect()
    mp.start(seed=4242, native=True)
    lib = declare(ctypes.CDLL(libpaths))          # calls release the GIL
    yield lib
    mp.stop()


def hook(name: str) -> int:
    return int(_native.ffi.cast("uintptr_t", _native.lib.mp_native_hook_address(name.encode())))


def real_malloc() -> int:
    return ctypes.cast(ctypes.CDLL(None).malloc, ctypes.c_void_p).value


# ---- attribution and freeing -------------------------------------------------------------


def test_malloc_without_gil_is_attributed_to_the_calling_line(native):
    before = nc.status()["deferred"]["recorded"]
    p, line = native.nt_malloc(100 * MB), here()
    snap = mp.take_snapshot()
    assert_close(live_at(snap, line, domain=NATIVE_DOMAIN), 100 * MB)
    traces = [t for t in snap.traces if t.domain == NATIVE_DOMAIN and t.size >= 100 * MB]
    assert [t.allocator for t in traces] == [Allocator.NATIVE]
    assert traces[0].traceback[-1].lineno == line   # the innermost frame is the call
    assert nc.status()["deferred"]["recorded"] == before + 1
    native.nt_free(p)
    assert live_at(mp.take_snapshot(), line) < 1 * MB


def test_malloc_with_gil_held(native, libpaths):
    pylib = declare(ctypes.PyDLL(libpaths))          # calls keep the GIL
    before = nc.status()["deferred"]["recorded"]
    p, line = pylib.nt_malloc(50 * MB), here()
    assert_close(live_at(mp.take_snapshot(), line, domain=NATIVE_DOMAIN), 50 * MB)
    assert nc.status()["deferred"]["recorded"] == before
    pylib.nt_free(p)
    assert live_at(mp.take_snapshot(), line) < 1 * MB


@pytest.mark.parametrize("fn", ["nt_calloc", "nt_posix_memalign", "nt_aligned_alloc"])
def test_other_allocation_functions(native, fn):
    p, line = getattr(native, fn)(64 * MB), here()
    assert p
    assert_close(live_at(mp.take_snapshot(), line, domain=NATIVE_DOMAIN), 64 * MB)
    native.nt_free(p)
    assert live_at(mp.take_snapshot(), line) < 1 * MB


def test_realloc_moves_the_record(native):
    p, first = native.nt_malloc(20 * MB), here()
    q, line = native.nt_realloc(p, 80 * MB), here()
    snap = mp.take_snapshot()
    assert live_at(snap, first) < 1 * MB
    assert_close(live_at(snap, line, domain=NATIVE_DOMAIN), 80 * MB)
    native.nt_free(q)
    assert live_at(mp.take_snapshot(), line) < 1 * MB


def test_anonymous_mmap_and_munmap(native):
    mib = 1 << 20  # munmap works on whole pages
    prot_rw = 0x1 | 0x2
    p, line = native.nt_mmap(64 * mib, prot_rw), here()
    r, line_reserved = native.nt_mmap(64 * mib, 0), here()    # PROT_NONE: address space only
    snap = mp.take_snapshot()
    assert_close(live_at(snap, line, domain=NATIVE_DOMAIN), 64 * mib)
    assert live_at(snap, line_reserved) == 0.0
    assert native.nt_munmap(p, 16 * mib) == 0          # the first quarter goes
    assert_close(live_at(mp.take_snapshot(), line), 48 * mib)
    assert native.nt_munmap(p + 16 * mib, 48 * mib) == 0
    assert live_at(mp.take_snapshot(), line) < 1 * MB
    assert native.nt_munmap(r, 64 * mib) == 0


@pytest.mark.parametrize("blocks", [3000, 5000])
def test_many_samples_waiting_for_the_stack(native, blocks):
    # Exact mode: every block is a sample, all made while the GIL is released, half of them
    # freed before the call returns. 3000 wait for the main thread's stack; of 5000, those
    # beyond the waiting list's 4096 places are recorded at once, without a stack.
    mp.stop()
    mp.start(sample_rate=1, native=True)
    st0 = nc.status()["deferred"]
    v, line = native.nt_many(blocks, 1000), here()
    snap = mp.take_snapshot()
    st1 = nc.status()["deferred"]
    kept = [t for t in snap.traces if t.domain == NATIVE_DOMAIN and t.size == 1000]
    at_line = [t for t in kept if t.traceback[-1].lineno == line]
    no_stack = [t for t in kept if t.traceback[-1].filename == "<unknown>"]
    assert len(kept) == blocks // 2 == len(at_line) + len(no_stack)
    assert st1["pending"] == 0
    if blocks < 4096:
        assert not no_stack
        assert st1["recorded"] - st0["recorded"] == blocks // 2 + 1    # + the array itself
    else:
        assert len(at_line) >= 1000 and st1["without_stack"] > st0["without_stack"]
    native.nt_free_many(v, blocks)
    snap = mp.take_snapshot()
    assert not [t for t in snap.traces if t.domain == NATIVE_DOMAIN and t.size == 1000]


def test_native_thread_allocations_have_no_python_stack(native):
    p = native.nt_malloc_in_native_thread(40 * MB)
    snap = mp.take_snapshot()
    big = [t for t in snap.traces if t.domain == NATIVE_DOMAIN and t.size == 40 * MB]
    assert len(big) == 1
    assert big[0].traceback[-1].filename == "<unknown>"
    assert big[0].thread_id != threading.get_ident()
    native.nt_free(p)


def test_python_thread_without_gil_is_recorded_without_stack(native):
    # Only the main thread's stack can be read later; other threads get no stack.
    out = []
    t = threading.Thread(target=lambda: out.append(native.nt_malloc(30 * MB)))
    t.start()
    t.join()
    snap = mp.take_snapshot()
    big = [t for t in snap.traces if t.domain == NATIVE_DOMAIN and t.size == 30 * MB]
    assert len(big) == 1 and big[0].traceback[-1].filename == "<unknown>"
    native.nt_free(out[0])


# ---- patching, later libraries, dlopen, uninstall ----------------------------------------


def test_library_loaded_after_install_is_patched_and_restored(native):
    assert native.nt_malloc_slot() == hook("malloc")
    st = nc.status()["native"]
    assert st["enabled"] and st["libraries"] >= 2 and st["slots"] > 0 and st["failures"] == 0
    nc.uninstall()
    assert native.nt_malloc_slot() == real_malloc()
    assert nc.status()["native"]["slots"] == 0
    p, line = native.nt_malloc(20 * MB), here()
    assert live_at(mp.take_snapshot(), line) == 0.0
    native.nt_free(p)
    nc.install(True)                                   # and back, on the same library
    assert native.nt_malloc_slot() == hook("malloc")


def test_dlopen_of_a_bare_name_searches_the_callers_runpath(native):
    # glibc searches the *caller's* RUNPATH; the hook must not make it ours.
    h = native.nt_dlopen(b"libntdep.so")
    assert h, "dlopen through the hook lost the caller's RUNPATH"
    fn = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t)(native.nt_dlsym(h, b"dep_malloc"))
    p, line = fn(30 * MB), here()
    assert_close(live_at(mp.take_snapshot(), line, domain=NATIVE_DOMAIN), 30 * MB)
    native.nt_free(p)


def test_install_uninstall_while_threads_allocate(native):
    stop = threading.Event()
    errors = []

    def churn():
        try:
            while not stop.is_set():
                ptrs = [native.nt_malloc(4096 + i) for i in range(200)]
                for ptr in ptrs:
                    native.nt_free(ptr)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=churn) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(15):
            nc.uninstall()
            nc.install(True)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert native.nt_malloc_slot() == hook("malloc")


def test_fork_child_allocates_and_exits(native):
    pid = os.fork()
    if pid == 0:  # the child: allocate through the hooks, then leave at once
        code = 0
        try:
            p = native.nt_malloc(10 * MB)
            native.nt_free(p)
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_numpy_data_is_not_counted_twice(native):
    np = pytest.importorskip("numpy", reason="NumPy is not installed")
    a, line = np.zeros(25_000_000), here()   # NumPy <= 2.4: malloc from a patched library
    snap = mp.take_snapshot()
    assert_close(live_at(snap, line), a.nbytes)                  # every domain together
    assert_close(live_at(snap, line, domain=NUMPY_DOMAIN), a.nbytes)
    assert live_at(snap, line, domain=NATIVE_DOMAIN) < 1 * MB


# ---- pyarrow -----------------------------------------------------------------------------


@pytest.fixture
def pa(native):
    return pytest.importorskip("pyarrow", reason="pyarrow is not installed: Arrow not tested")


def test_arrow_compute_result_attributed_to_its_line(pa):
    import pyarrow.compute as pc

    np = pytest.importorskip("numpy", reason="NumPy is not installed")
    assert nc.status()["arrow"]["pool"] == "system"
    x = pa.array(np.arange(12_500_000, dtype=np.int64))   # zero-copy view of NumPy data
    y, line = pc.add(x, 1), here()                        # 100 MB from Arrow's pool
    assert_close(live_at(mp.take_snapshot(), line, domain=NATIVE_DOMAIN), 100 * MB)
    del y
    gc.collect()
    assert live_at(mp.take_snapshot(), line) < 1 * MB


def test_arrow_backed_pandas_column(pa):
    pd = pytest.importorskip("pandas", reason="pandas is not installed")
    np = pytest.importorskip("numpy", reason="NumPy is not installed")
    s = pd.Series(np.arange(12_500_000, dtype=np.int64), dtype="int64[pyarrow]")
    t, line = s * 3, here()                                # 100 MB Arrow buffer
    assert_close(live_at(mp.take_snapshot(), line, domain=NATIVE_DOMAIN), 100 * MB)
    del t
    gc.collect()
    assert live_at(mp.take_snapshot(), line) < 1 * MB


def test_arrow_pool_is_put_back(pa):
    previous = nc.status()["arrow"]
    assert previous["switched"] and previous["pool"] == "system"
    nc.uninstall()
    st = nc.status()["arrow"]
    assert not st["switched"] and st["pool"] == pa.default_memory_pool().backend_name


def test_pyarrow_imported_after_start():
    pytest.importorskip("pyarrow", reason="pyarrow is not installed: Arrow not tested")
    pytest.importorskip("numpy", reason="NumPy is not installed")
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import mprofile_ipy as mp
        from mprofile_ipy import native_capture as nc
        mp.start(seed=3, native=True)
        import pyarrow as pa, pyarrow.compute as pc
        x = pa.array(np.arange(12_500_000, dtype=np.int64))
        z, line = pc.multiply(x, 3), sys._getframe().f_lineno
        snap = mp.take_snapshot()
        st = nc.status()
        size = sum(t.estimated_size for t in snap.traces
                   if t.domain == mp.NATIVE_DOMAIN and any(f.lineno == line for f in t.traceback))
        print(st["arrow"]["pool"], st["native"]["libraries"] > 5, round(size / 100e6, 2))
        mp.stop()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pool, patched, ratio = proc.stdout.split()
    assert pool == "system" and patched == "True"
    assert 0.9 <= float(ratio) <= 1.1


def test_malloc_looked_up_through_ctypes_is_seen(native):
    # Issue 15: ctypes finds libc's malloc with dlsym and calls it through that pointer.
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    p, line = libc.malloc(40 * MB), here()
    assert p
    snap = mp.take_snapshot()
    assert_close(live_at(snap, line, domain=NATIVE_DOMAIN), 40 * MB)
    libc.free(p)
    assert live_at(mp.take_snapshot(), line) < 1 * MB
    # Names that are not allocators, and RTLD_NEXT-free lookups, are untouched.
    assert ctypes.cast(libc.strlen, ctypes.c_void_p).value != hook("malloc")
