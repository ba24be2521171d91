"""Short versions of benchmarks/stress.py (issue 15), each in a subprocess so that a crash
fails the test instead of killing pytest. The two-minute runs are benchmarks/stress.py's."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

STRESS = Path(__file__).resolve().parent.parent / "benchmarks" / "stress.py"


def run(args: list[str], timeout: float = 120) -> str:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_start_stop_while_threads_allocate_without_the_gil():
    out = run([str(STRESS), "--seconds", "3", "--only", "nogil"])
    assert out.startswith("ok nogil:"), out


def test_tracemalloc_round_trips_with_an_allocating_thread():
    out = run([str(STRESS), "--seconds", "2", "--only", "tracemalloc"])
    assert out.startswith("ok tracemalloc:"), out


def test_layers_cut_out_by_tracemalloc_are_reused():
    # Issue 15: after 8 of these rounds start() raised "too many allocator layers" forever.
    out = run(["-c", textwrap.dedent("""
        import tracemalloc
        import mprofile_ipy as mp
        for _ in range(50):
            tracemalloc.start()
            mp.start(sample_rate=1)
            tracemalloc.stop()
            mp.stop()
        for _ in range(50):
            mp.start(sample_rate=1)
            tracemalloc.start()
            mp.stop()
            tracemalloc.stop()
        mp.start(sample_rate=1)
        keep = [bytearray(1000) for _ in range(100)]
        print(mp.get_traced_memory()[0] >= 100_000, mp.get_stats().foreign_hooks)
        mp.stop()
        """)])
    assert out.split() == ["True", "False"]


def test_a_layer_under_a_running_tracemalloc_stays_a_pass_through():
    # tracemalloc stacked on our hook keeps calling it after our stop(): that layer must
    # stay callable and must not sample; tracemalloc still sees every allocation.
    out = run(["-c", textwrap.dedent("""
        import tracemalloc
        import mprofile_ipy as mp
        mp.start(sample_rate=1)
        tracemalloc.start()
        mp.stop()
        keep = [bytearray(1000) for _ in range(100)]
        current = tracemalloc.get_traced_memory()[0]
        mp.start(sample_rate=1)      # a new layer on top of tracemalloc
        more = [bytearray(1000) for _ in range(100)]
        ours = mp.get_traced_memory()[0]
        tracemalloc.stop()
        mp.stop()
        print(current >= 100_000, ours >= 100_000, ours < 400_000)
        """)])
    assert out.split() == ["True", "True", "True"]


def test_interrupts_never_leave_the_thread_paused():
    # A SIGALRM handler raises KeyboardInterrupt every 0.2 ms around paused(),
    # take_snapshot(), live_blocks() and start/stop (issue 15).
    out = run([str(STRESS), "--seconds", "3", "--only", "interrupt"])
    assert out.startswith("ok interrupt:"), out


def test_start_ends_a_pause_that_was_never_released():
    out = run(["-c", textwrap.dedent("""
        import mprofile_ipy as mp
        from mprofile_ipy import sampler
        from mprofile_ipy._native import lib
        mp.start(sample_rate=1)
        held = sampler.paused()
        held.__enter__()            # never exited (as if an exception skipped __exit__)
        keep = [bytearray(1000) for _ in range(100)]
        before = mp.get_traced_memory()[0]
        depth = lib.mp_thread_paused()
        mp.stop()
        mp.start(sample_rate=1)
        keep2 = [bytearray(1000) for _ in range(100)]
        after = mp.get_traced_memory()[0]
        print(depth, before < 50_000, after >= 100_000, lib.mp_thread_paused())
        del held                     # an old pause, released late, changes nothing
        print(lib.mp_thread_paused(), mp.get_traced_memory()[0] >= 100_000)
        mp.stop()
        """)])
    assert out.split() == ["1", "True", "True", "0", "0", "True"]


def test_a_pause_ends_when_its_object_is_garbage():
    out = run(["-c", textwrap.dedent("""
        import mprofile_ipy as mp
        from mprofile_ipy import sampler
        from mprofile_ipy._native import lib
        mp.start(sample_rate=1)
        def interrupted():
            with sampler.paused():
                with sampler.paused():
                    print(lib.mp_thread_paused())
                    raise KeyboardInterrupt
        try:
            interrupted()
        except KeyboardInterrupt:
            pass
        print(lib.mp_thread_paused())
        mp.stop()
        """)])
    assert out.split() == ["2", "0"]
