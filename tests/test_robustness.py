"""The profiler must never crash or deadlock the interpreter.

Threads, fork, GC, generators, asyncio, exceptions, deep recursion, start/stop in a loop,
and other tools replacing the allocators. Each risky scenario runs in a subprocess so a
crash is reported as a failure (with its exit status) instead of killing the test run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import mprofile_ipy as mp


def run_script(body: str, timeout: float = 120) -> str:
    code = "import mprofile_ipy as mp\n" + textwrap.dedent(body)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_threads_allocating_while_snapshots_are_taken():
    out = run_script(
        """
        import threading
        mp.start(16, sample_rate=2048, seed=5)
        stop = threading.Event()
        def work(k):
            keep = []
            while not stop.is_set():
                keep.append([str(i) * 10 for i in range(200)])
                if len(keep) > 50:
                    keep.clear()
        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        sizes = []
        idents = set()
        for _ in range(40):
            snap = mp.take_snapshot()
            sizes.append(len(snap.traces))
            idents.update(t.thread_id for t in snap.traces)
            snap.statistics("traceback")
            mp.get_traced_memory()
        stop.set()
        for t in threads:
            t.join()
        mp.stop()
        print(len(idents) >= 2, max(sizes) > 0)
        """
    )
    assert out.split() == ["True", "True"]


def test_fork_child_keeps_a_consistent_profiler():
    out = run_script(
        """
        import os, threading
        mp.start(8, sample_rate=1)
        stop = threading.Event()
        def churn():
            while not stop.is_set():
                [bytearray(64) for _ in range(100)]
        t = threading.Thread(target=churn)
        t.start()
        before = bytearray(2_000_000)
        pids = []
        for _ in range(5):
            pid = os.fork()
            if pid == 0:
                extra = bytearray(3_000_000)
                snap = mp.take_snapshot()
                sizes = sorted(t.size for t in snap.traces)
                ok = 3_000_001 in sizes and 2_000_001 in sizes
                mp.stop()
                os._exit(0 if ok else 3)
            pids.append(pid)
        stop.set()
        t.join()
        codes = [os.waitpid(p, 0)[1] for p in pids]
        print(codes)
        mp.stop()
        """
    )
    assert out.strip() == "[0, 0, 0, 0, 0]"


def test_gc_generators_asyncio_exceptions_and_deep_recursion():
    out = run_script(
        """
        import asyncio, gc, sys
        mp.start(64, sample_rate=512, seed=9)

        class Node:
            def __init__(self):
                self.ref = self
                self.payload = bytearray(256)
        for _ in range(2000):
            Node()
        gc.collect()

        def gen():
            for i in range(5000):
                yield [i] * 20
        total = sum(len(x) for x in gen())

        async def task(n):
            data = []
            for i in range(200):
                data.append(bytes(100 + i))
                await asyncio.sleep(0)
            return len(data)
        async def main():
            return sum(await asyncio.gather(*(task(i) for i in range(20))))
        done = asyncio.run(main())

        errors = 0
        for i in range(3000):
            try:
                raise ValueError("x" * 100 + str(i))
            except ValueError as exc:
                errors += len(str(exc)) > 0

        sys.setrecursionlimit(20000)
        def deep(n):
            if n == 0:
                return bytearray(100_000)
            return deep(n - 1)
        block = deep(5000)
        snap = mp.take_snapshot()
        deepest = max((t.traceback.total_nframe for t in snap.traces), default=0)
        snap.statistics("traceback")
        mp.stop()
        print(total, done, errors, deepest >= 5000)
        """
    )
    assert out.split() == ["100000", "4000", "3000", "True"]


def test_start_stop_cycles_do_not_leak():
    out = run_script(
        """
        import gc
        def cycle(i):
            mp.start(8, sample_rate=(1 if i % 2 else 4096))
            keep = [bytearray(100) for _ in range(100)]
            if i % 10 == 0:
                mp.take_snapshot().statistics("lineno")
            mp.stop()
        for i in range(200):
            cycle(i)
        gc.collect()
        import resource
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for i in range(1000):
            cycle(i)
        gc.collect()
        rss2 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(mp.get_profiler_memory() < 4 * 2**20, rss2 - rss1 < 20_000)
        """
    )
    assert out.split() == ["True", "True"]


def test_tracemalloc_stacked_on_top_then_stopped_in_any_order():
    out = run_script(
        """
        import tracemalloc
        # tracemalloc stacks on us; we stop first: our layer stays as a pass-through.
        mp.start(4, sample_rate=1)
        tracemalloc.start(4)
        x = [bytearray(10) for _ in range(100)]
        assert mp.get_stats().foreign_hooks
        mp.stop()
        y = [bytearray(10) for _ in range(100)]
        assert tracemalloc.take_snapshot().statistics("lineno")
        tracemalloc.stop()
        # Start again: a new layer on top; sampling works as before.
        for _ in range(20):
            mp.start(4, sample_rate=1)
            z = bytearray(123_456)  # a 123_457-byte block (bytearray keeps a NUL)
            assert any(t.size == 123_457 for t in mp.take_snapshot().traces)
            mp.stop()
        # tracemalloc under us, removed while we run: no crash, counters stay sane.
        tracemalloc.start(2)
        mp.start(4, sample_rate=1)
        tracemalloc.stop()
        w = [bytearray(10) for _ in range(1000)]
        mp.take_snapshot()
        mp.stop()
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_profiling_itself_is_not_sampled_into_snapshots():
    mp.start(8, sample_rate=1)
    try:
        first = mp.take_snapshot()
        second = mp.take_snapshot()
        ours = [
            s
            for s in second.statistics("traceback")
            if any(f.filename.endswith(("sampler.py", "model.py")) for f in s.traceback)
        ]
        assert not ours, [(s.size, [str(f) for f in s.traceback]) for s in ours]
        del first
    finally:
        mp.stop()


@pytest.mark.parametrize("rate", [1, 4096, 131072])
def test_snapshot_statistics_all_key_types(rate):
    mp.start(8, sample_rate=rate, seed=2)
    try:
        keep = [str(i) * 50 for i in range(20_000)]
        snap = mp.take_snapshot()
        for key in ("lineno", "filename", "traceback"):
            for cumulative in (False, True) if key != "traceback" else (False,):
                stats = snap.statistics(key, cumulative=cumulative)
                assert stats and all(s.size >= 0 and s.count >= 0 for s in stats)
        del keep
    finally:
        mp.stop()
