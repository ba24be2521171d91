"""Countdowns that outlive a session (native/sampler.c, "Stale countdowns").

A thread's countdown survives stop() and start(). When every sampled session of the
process used the same rate, the hooks skip the generation check and a stale countdown is
used as it is (it is as good as a fresh one); another rate, or exact mode, installs the
checked hooks. Each scenario runs in a fresh interpreter, because which hooks a session
gets depends on every earlier session of the process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PRELUDE = textwrap.dedent("""
    import threading
    import mprofile_ipy as mp
    from mprofile_ipy import sampler

    SIZE = 400          # bytes(400): a 433-byte object, a pymalloc block (the fast path)

    def unchecked():
        return sampler.lib.mp_test_hooks_unchecked()

    class Worker:
        '''A thread that allocates when asked and keeps (or drops) what it made.'''
        def __init__(self):
            self.go, self.done, self.kept = threading.Event(), threading.Event(), []
            self.n = 0
            self.thread = threading.Thread(target=self.run, daemon=True)
            self.thread.start()
        def run(self):
            while True:
                self.go.wait()
                self.go.clear()
                if self.n < 0:
                    return
                self.kept = [bytes(SIZE) for _ in range(self.n)]  # worker-site
                self.done.set()
        def make(self, n):
            self.n = n
            self.done.clear()
            self.go.set()
            assert self.done.wait(60)
        def stop(self):
            self.n = -1
            self.go.set()
            self.thread.join(60)

    def worker_bytes(snap):
        # the estimated bytes of the worker's 433-byte objects (no other block has that size)
        return sum(t.size * t.weight for t in snap.traces
                   if t.size == 433)
""")


def run(body: str) -> str:
    code = PRELUDE + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_same_rate_sessions_use_unchecked_hooks_and_stay_unbiased():
    out = run("""
        w = Worker()
        mp.start(sample_rate=4096, seed=3)
        assert unchecked() == 1
        w.make(3000)                      # the worker's countdown is now a drawn one
        mp.stop()
        mp.start(sample_rate=4096, seed=4)
        assert unchecked() == 1
        w.make(30000)                     # starts on the stale countdown
        est = worker_bytes(mp.take_snapshot())
        true = 30000 * 433
        print(round(est / true, 3))
        assert abs(est / true - 1) < 0.08, (est, true)
        mp.stop()
        w.stop()
    """)
    assert out.strip()


def test_another_rate_and_exact_mode_use_checked_hooks():
    out = run("""
        w = Worker()
        mp.start(sample_rate=1 << 20, seed=3)
        w.make(3000)                      # a countdown drawn at 1 MiB, mostly unspent
        mp.stop()
        mp.start(sample_rate=4096, seed=4)
        assert unchecked() == 0           # another rate: checked from now on
        w.make(30000)
        est = worker_bytes(mp.take_snapshot())
        true = 30000 * 433
        assert abs(est / true - 1) < 0.08, (est, true)
        mp.stop()
        # exact mode after that: every block of the worker is traced
        mp.start(sample_rate=1)
        assert unchecked() == 0
        w.make(2000)
        snap = mp.take_snapshot()
        n = sum(1 for t in snap.traces if t.size == 433)
        assert n == 2000, n
        mp.stop()
        w.stop()
        print("ok")
    """)
    assert out.strip() == "ok"


def test_exact_session_between_sessions_at_one_rate():
    out = run("""
        w = Worker()
        mp.start(sample_rate=4096, seed=3)
        w.make(3000)
        mp.stop()
        mp.start(sample_rate=1)           # exact: the checked set, every block traced
        assert unchecked() == 0
        w.make(1500)
        snap = mp.take_snapshot()
        assert sum(1 for t in snap.traces if t.size == 433) == 1500
        mp.stop()
        mp.start(sample_rate=4096, seed=5)
        assert unchecked() == 1           # the same rate again: unchecked again
        w.make(30000)
        est = worker_bytes(mp.take_snapshot())
        assert abs(est / (30000 * 433) - 1) < 0.08, est
        mp.stop()
        w.stop()
        print("ok")
    """)
    assert out.strip() == "ok"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_restarts_at_one_rate_keep_the_estimate(seed):
    """Many short sessions at one rate: the worker's countdown carries across all of them,
    and the sum of their estimates still matches what was allocated."""
    out = run(f"""
        w = Worker()
        total_est = 0.0
        for i in range(12):
            mp.start(sample_rate=8192, seed={seed} * 100 + i)
            assert unchecked() == 1
            w.make(4000)
            total_est += worker_bytes(mp.take_snapshot())
            mp.stop()
        true = 12 * 4000 * 433
        print(round(total_est / true, 3))
        assert abs(total_est / true - 1) < 0.1, (total_est, true)
        w.stop()
    """)
    assert out.strip()
