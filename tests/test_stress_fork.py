"""fork() while every lock of the native sampler is busy (issue 8): the table (Python
allocations sampled at a low rate), the deferred no-GIL path (the main thread calling
malloc through ctypes with the GIL released) and native mode's patched slots. The parent
forks from a thread, many times; each child allocates, reads the profiler and exits. A
child that inherited a held lock hangs: it is killed after a timeout and the test fails.
The whole run is a subprocess, so a crash fails the test instead of killing pytest."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from mprofile_ipy import native_capture as nc

SCRIPT = textwrap.dedent("""
    import ctypes, os, threading, time, warnings
    warnings.simplefilter("ignore", DeprecationWarning)   # fork with threads (3.12+)
    import mprofile_ipy as mp
    from mprofile_ipy import native_capture as nc

    FORKS = int(os.environ.get("FORKS", "150"))
    mp.start(sample_rate=512, native=True)
    libc = ctypes.CDLL(None)                  # calls release the GIL
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    stop = threading.Event()

    def churn():
        keep = []
        while not stop.is_set():
            keep.append([0] * 50)
            if len(keep) > 500:
                keep.clear()

    results = []

    def forker():
        for _ in range(FORKS):
            pid = os.fork()
            if pid == 0:
                try:
                    keep = [bytearray(1000) for _ in range(20)]
                    p = libc.malloc(100_000)
                    libc.free(p)
                    mp.get_traced_memory()
                    mp.take_snapshot()
                finally:
                    os._exit(0)
            deadline = time.monotonic() + 30
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    results.append(status)
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    results.append("hang")
                    break
                time.sleep(0.001)
        stop.set()

    threads = [threading.Thread(target=churn), threading.Thread(target=forker)]
    for t in threads:
        t.start()
    n = 0
    while not stop.is_set():
        ptrs = [libc.malloc(2048) for _ in range(64)]
        for p in ptrs:
            libc.free(p)
        n += 1
    for t in threads:
        t.join()
    deferred = nc.status()["deferred"]["recorded"]
    mp.stop()
    print(len(results), results.count(0), results.count("hang"), deferred > 0)
""")


@pytest.mark.skipif(not nc.status()["native"]["supported"],
                    reason="native mode needs Linux with glibc (x86-64 or aarch64)")
def test_fork_while_the_table_and_the_deferred_path_are_busy():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "FORKS": "150"})
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.split() == ["150", "150", "0", "True"]
