"""Stress runs for the interleavings that once crashed or silenced the profiler (issue 15).

Scenarios, each in a child process of its own so that a crash is reported with its signal
instead of ending the run:

- ``nogil``: three threads compress with bz2, lzma and zlib (their C code calls
  ``PyMem_RawMalloc``/``PyMem_RawFree`` with the GIL released) while the main thread loops
  ``start(sample_rate=1 if n % 2 else 4096); stop()``, with a snapshot now and then.
  Before the fix: SIGSEGV within two minutes on 3.10-3.13.
- ``interrupt``: a ``SIGALRM`` handler raises ``KeyboardInterrupt`` every 0.2 ms while the
  main thread loops ``with paused(): pass``, ``take_snapshot()``, ``live_blocks()`` and
  start/stop; afterwards the thread must still be sampled.
- ``tracemalloc``: round trips ``tracemalloc.start(); start(); tracemalloc.stop(); stop()``
  in both orders, with an allocating thread; ``start()`` must never run out of allocator
  layers and the profiler must still record afterwards.

Usage: ``python benchmarks/stress.py --seconds 120 [--only nogil]``. Prints one line per
scenario and exits non-zero if any scenario failed (crash, exception, lost state).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time

SCENARIOS = ("nogil", "interrupt", "tracemalloc")


def _compress_forever(kind: str, stop: threading.Event, counts: dict[str, int]) -> None:
    import bz2
    import lzma
    import zlib

    data = os.urandom(1 << 16) + bytes(1 << 16)
    n = 0
    while not stop.is_set():
        if kind == "bz2":
            bz2.compress(data, 1)
        elif kind == "lzma":
            lzma.compress(data, preset=0)
        else:
            zlib.decompress(zlib.compress(data, 1))
        n += 1
    counts[kind] = n


def _still_records(mp: object) -> bool:
    """Does the calling thread's allocation show up at sample_rate=1?"""
    mp.start(sample_rate=1)  # type: ignore[attr-defined]
    keep = [bytearray(1000) for _ in range(100)]
    current, _ = mp.get_traced_memory()  # type: ignore[attr-defined]
    mp.stop()  # type: ignore[attr-defined]
    del keep
    return current >= 100 * 1000


def scenario_nogil(seconds: float) -> str:
    import mprofile_ipy as mp

    stop = threading.Event()
    counts: dict[str, int] = {}
    threads = [threading.Thread(target=_compress_forever, args=(k, stop, counts))
               for k in ("bz2", "lzma", "zlib")]
    for t in threads:
        t.start()
    n = 0
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            mp.start(sample_rate=1 if n % 2 else 4096)
            if n % 50 == 0:
                mp.take_snapshot()
            mp.stop()
            n += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
    if not _still_records(mp):
        raise AssertionError("the main thread no longer records")
    return f"{n} start/stop cycles, compressions {counts}"


def scenario_interrupt(seconds: float) -> str:
    from mprofile_ipy._native import lib

    import mprofile_ipy as mp
    from mprofile_ipy import sampler

    # The handler raises only while `armed`, and disarms itself first: the interrupts land
    # inside the profiler's calls below, never in this loop's own bookkeeping.
    state = {"armed": False, "interrupts": 0, "leaks": 0}

    def raise_interrupt(signum: int, frame: object) -> None:
        if state["armed"]:
            state["armed"] = False
            raise KeyboardInterrupt

    # One unarmed round first: the package loads its model, storage and aggregation on
    # first use (lazy imports keep `start()` light), and an interrupt inside the import
    # machinery's own callbacks is printed by Python as "Exception ignored", which says
    # nothing about the profiler.
    mp.start(sample_rate=4096)
    mp.take_snapshot()
    sampler.live_blocks()
    mp.stop()
    n = 0
    signal.signal(signal.SIGALRM, raise_interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            state["armed"] = True
            with mp.paused():
                pass
            if not mp.is_tracing():
                mp.start(sample_rate=4096)
            mp.take_snapshot()
            sampler.live_blocks()
            with mp.paused():
                mp.get_traced_memory()
            if n % 20 == 19:
                mp.stop()
            state["armed"] = False
        except KeyboardInterrupt:
            state["interrupts"] += 1
            if lib.mp_thread_paused():   # outside every pause: nothing may be left on
                state["leaks"] += 1
        n += 1
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    if state["leaks"]:
        raise AssertionError(f"{state['leaks']} interrupts left the thread paused")
    if mp.is_tracing():   # still sampled without the help of a new start()
        keep = [bytearray(100_000) for _ in range(20)]
        if not any(b.size >= 100_000 for b in sampler.live_blocks()):
            raise AssertionError("the thread is no longer sampled")
        del keep
    mp.stop()
    if not _still_records(mp):
        raise AssertionError("an interrupt left the main thread silenced")
    if state["interrupts"] == 0:
        raise AssertionError("no interrupt landed: the scenario tested nothing")
    return f"{n} rounds, {state['interrupts']} interrupts"


def _churn_forever(stop: threading.Event, counts: dict[str, int]) -> None:
    """Python-level allocations (with the GIL held: tracemalloc's own RAW hook crashes when
    a thread without the GIL allocates while tracemalloc starts or stops)."""
    n = 0
    keep: list = []
    while not stop.is_set():
        keep.append({"n": n, "s": str(n) * 20, "l": list(range(50))})
        if len(keep) > 200:
            keep.clear()
        n += 1
    counts["churn"] = n


def scenario_tracemalloc(seconds: float) -> str:
    import tracemalloc

    import mprofile_ipy as mp

    stop = threading.Event()
    counts: dict[str, int] = {}
    worker = threading.Thread(target=_churn_forever, args=(stop, counts))
    worker.start()
    n = 0
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            if n % 2:
                tracemalloc.start()
                mp.start(sample_rate=4096)
                tracemalloc.stop()
                mp.stop()
            else:
                mp.start(sample_rate=4096)
                tracemalloc.start()
                mp.stop()
                tracemalloc.stop()
            n += 1
    finally:
        stop.set()
        worker.join()
    if not _still_records(mp):
        raise AssertionError("the profiler no longer records after tracemalloc round trips")
    return f"{n} round trips"


def run_child(name: str, seconds: float) -> int:
    """Run one scenario in this process; 0 on success."""
    try:
        detail = globals()[f"scenario_{name}"](seconds)
    except BaseException as exc:  # noqa: BLE001 - any failure is the scenario's result
        print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)
        return 1
    print(f"ok {name}: {detail}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="how long each scenario runs (default 10)")
    parser.add_argument("--only", choices=SCENARIOS, action="append",
                        help="run only this scenario (repeatable)")
    parser.add_argument("--child", choices=SCENARIOS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    if args.child:
        return run_child(args.child, args.seconds)
    failed = 0
    version = ".".join(map(str, sys.version_info[:3]))
    for name in args.only or SCENARIOS:
        began = time.monotonic()
        try:
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", name,
                 "--seconds", str(args.seconds)],
                capture_output=True, text=True, timeout=args.seconds * 3 + 60,
            )
            out = (proc.stdout + proc.stderr).strip()
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            out, rc = "timed out (deadlock?)", -999
        took = time.monotonic() - began
        if rc != 0:
            failed += 1
            why = f"signal {signal.Signals(-rc).name}" if -64 < rc < 0 else f"exit {rc}"
            print(f"FAIL {name} on {version} after {took:.0f} s ({why})\n{out[-2000:]}")
        else:
            print(f"{out.splitlines()[-1]} [{version}, {took:.0f} s]")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
