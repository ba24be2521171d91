"""The memory budget and the safety net: measures, trip rules, the interrupt, real kernels.

In-process tests drive the watcher with real allocations (a budget a few tens of MB above
the test process's RSS) or with a fake probe (the safety net cannot be tested by starving
the shared machine). Kernel tests run a real ipykernel through jupyter_client.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from pathlib import Path

import pytest

import mprofile_ipy as mp
from mprofile_ipy import budget as B
from mprofile_ipy.errors import MemoryBudgetExceeded, MprofileError

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="RSS, cgroups and MemAvailable come from /proc")


def _reset() -> None:
    """No budget, no safety net, no IPython cell hooks, no sampler: earlier tests in the
    same process may have loaded the extension into the shared InteractiveShell."""
    B.shutdown()
    with B._watcher.lock:
        B._watcher.ipython = False
        B._watcher.executing = False
        B._watcher.fired_in_cell = False
    if mp.is_tracing():
        mp.stop()


@pytest.fixture(autouse=True)
def _clean_watcher():
    _reset()
    yield
    B.shutdown()
    if mp.is_tracing():
        mp.stop()
    assert not B.status().watching


# ---------------------------------------------------------------------------------------------
# Measures


def test_read_memory_sees_this_process():
    r = B.read_memory()
    assert r.rss is not None and 5 * MiB < r.rss < 4096 * MiB
    assert r.vm_size >= r.rss
    assert r.available is not None and r.available > 0
    assert r.traced is None  # sampler off
    blob = bytearray(64 * MiB)
    r2 = B.read_memory()
    assert r2.rss - r.rss >= 60 * MiB
    del blob


def _fake_cgroup_tree(tmp_path, version: int, limit: str, current: int, inactive: int = 0):
    """A /proc and a cgroup mount in tmp_path, with the process in /kube/pod1."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "statm").write_text("25600 12800 100 1 0 100 0\n")  # 100 MiB, 50 MiB
    (proc / "meminfo").write_text("MemTotal: 1000 kB\nMemAvailable: 204800 kB\n"
                                  "SwapTotal: 10240 kB\nSwapFree: 10240 kB\n")
    mount = tmp_path / "cg"
    leaf = mount / "kube" / "pod1"
    leaf.mkdir(parents=True)
    names = (("memory.current", "memory.max", "inactive_file") if version == 2 else
             ("memory.usage_in_bytes", "memory.limit_in_bytes", "total_inactive_file"))
    for d in (mount, mount / "kube", leaf):
        (d / names[0]).write_text("1\n")
        (d / names[1]).write_text("max\n" if version == 2 else "9223372036854771712\n")
    (mount / "kube" / names[0]).write_text(f"{current}\n")
    (mount / "kube" / names[1]).write_text(f"{limit}\n")
    (mount / "kube" / "memory.stat").write_text(f"anon 5\n{names[2]} {inactive}\n")
    (leaf / names[0]).write_text(f"{current // 2}\n")
    if version == 2:
        (proc / "self" / "cgroup").write_text("0::/kube/pod1\n")
        (proc / "self" / "mountinfo").write_text(
            f"30 20 0:26 / {mount} rw,nosuid - cgroup2 cgroup2 rw\n")
    else:
        (proc / "self" / "cgroup").write_text("5:cpu:/x\n4:memory:/kube/pod1\n0::/\n")
        (proc / "self" / "mountinfo").write_text(
            f"30 20 0:26 / {tmp_path}/other rw - cgroup2 cgroup2 rw\n"
            f"31 20 0:27 / {mount} rw - cgroup cgroup rw,memory\n")
    return proc, mount, leaf


@pytest.mark.parametrize("version", [2, 1])
def test_cgroup_limit_of_a_parent_level_is_found(tmp_path, version):
    # GIVEN a process in /kube/pod1 (no limit) under /kube (limit 1 GiB, 900 MiB used)
    proc, mount, leaf = _fake_cgroup_tree(tmp_path, version, str(1024 * MiB), 900 * MiB)
    dirs = B.parse_cgroup_dirs((proc / "self" / "cgroup").read_text(),
                               (proc / "self" / "mountinfo").read_text())
    assert [d for d, _ in dirs] == [str(leaf), str(mount / "kube"), str(mount)]
    assert {v for _, v in dirs} == {version}
    # WHEN the probe reads it
    r = B._Probe(str(proc)).read()
    # THEN the tightest level is reported, and the statm/meminfo figures are read
    assert (r.cgroup_current, r.cgroup_limit) == (900 * MiB, 1024 * MiB)
    page = os.sysconf("SC_PAGE_SIZE")
    assert (r.vm_size, r.rss) == (25600 * page, 12800 * page)
    assert r.available == 200 * MiB and r.swap_used == 0


def test_concurrent_reads_never_close_a_file_they_do_not_own(tmp_path):
    # The watcher and the main thread read at once, each read re-opening the cgroup files
    # (normally every 2 s). Unlocked, one reader closed the fd number another had just
    # re-opened: readers died with EBADF and the user's own files were closed under them.
    proc, *_ = _fake_cgroup_tree(tmp_path, 2, str(1024 * MiB), 900 * MiB)
    probe = B._Probe(str(proc))
    mine = tmp_path / "mine.txt"
    mine.write_bytes(b"the user's file")
    stop = threading.Event()
    errors: list = []

    def reader():
        try:
            while not stop.is_set():
                probe._limits_at = -float("inf")  # re-open the cgroup files at every read
                r = probe.read(traced=False)
                assert r.rss is not None and r.cgroup_limit == 1024 * MiB, r
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 1.5
    try:
        while time.monotonic() < deadline and not errors:
            fd = os.open(mine, os.O_RDONLY)
            try:
                assert os.pread(fd, 64, 0) == b"the user's file"
            finally:
                os.close(fd)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    probe.close()
    assert probe.read(traced=False).rss is None  # closed: reads nothing, raises nothing


def test_cgroup_page_cache_is_not_counted_near_the_limit(tmp_path):
    # 1000 of 1024 MiB used, but 600 MiB of it is inactive page cache the kernel reclaims
    proc, *_ = _fake_cgroup_tree(tmp_path, 2, str(1024 * MiB), 1000 * MiB, 600 * MiB)
    r = B._Probe(str(proc)).read()
    assert r.cgroup_current == 400 * MiB


def test_no_cgroup_memory_controller_is_not_an_error(tmp_path):
    assert B.parse_cgroup_dirs("0::/\n", "") == []
    assert B.parse_cgroup_dirs("garbage\n", "also garbage\n") == []


# ---------------------------------------------------------------------------------------------
# Trip rules (pure: readings in, decisions out)


def reading(**kw) -> B.Reading:
    base = dict(time=time.time(), rss=100 * MiB, vm_size=200 * MiB, traced=None,
                cgroup_current=None, cgroup_limit=None, available=8192 * MiB, swap_used=0,
                as_limit=None)
    base.update(kw)
    return B.Reading(**base)


def test_budget_trips_on_rss_or_traced_and_rearms_after_freeing():
    w = B._Watcher()
    w.session_limit = 500 * MiB
    assert w.check(reading(rss=499 * MiB)) is None
    assert w.check(reading(rss=501 * MiB)) == ("budget", "rss", 501 * MiB, 500 * MiB)
    assert w.check(reading(rss=200 * MiB, traced=600 * MiB))[1] == "traced"
    # after a trip at 501 MiB, the next one needs another 10% of the limit
    w.rearm["rss"] = 501 * MiB + 50 * MiB
    assert w.check(reading(rss=540 * MiB)) is None
    assert w.check(reading(rss=552 * MiB))[1] == "rss"
    # back under the limit re-arms at the limit
    assert w.check(reading(rss=400 * MiB)) is None
    assert "rss" not in w.rearm
    assert w.check(reading(rss=501 * MiB))[1] == "rss"


def test_block_budget_tighter_than_session_applies():
    w = B._Watcher()
    w.session_limit = 1000 * MiB
    w.block_limits.append(300 * MiB)
    assert w.limit() == 300 * MiB
    assert w.check(reading(rss=301 * MiB))[3] == 300 * MiB


def test_safety_net_heuristics():
    w = B._Watcher()
    w.safety_net = True
    assert w.check(reading()) is None
    assert w.check(reading(available=99 * MiB)) == ("safety net", "available", 99 * MiB,
                                                    100 * MiB)
    w.rearm.clear()
    got = w.check(reading(cgroup_current=1950 * MiB, cgroup_limit=2000 * MiB))
    assert got == ("safety net", "cgroup", 1950 * MiB, 2000 * MiB)
    got = w.check(reading(vm_size=1990 * MiB, as_limit=2048 * MiB))
    assert got[:2] == ("safety net", "address space")
    # swap: what was pushed out since start, compared with what is still available
    w.swap_base = 1000 * MiB
    assert w.check(reading(swap_used=1500 * MiB, available=800 * MiB)) is None
    assert w.check(reading(swap_used=2000 * MiB, available=800 * MiB))[1] == "swap"
    # and the net is off by default
    assert B._Watcher().check(reading(available=1)) is None


def test_interval_is_fast_only_near_a_limit():
    w = B._Watcher()
    w.session_limit = 1000 * MiB
    assert w.next_interval(reading(rss=100 * MiB), None) == B.SLOW_INTERVAL
    assert w.next_interval(reading(rss=850 * MiB), None) == B.FAST_INTERVAL
    prev = reading(time=0.0, rss=100 * MiB)
    assert w.next_interval(reading(time=0.5, rss=600 * MiB), prev) == B.FAST_INTERVAL


def test_bad_budgets_are_clear_errors():
    with pytest.raises(B.BudgetError, match="cannot read"):
        B.set_budget("lots")
    with pytest.raises(MprofileError):
        B.set_budget(-5)
    with pytest.raises(ValueError, match="below the process's resident memory"):
        B.set_budget("1MB")
    with pytest.raises(TypeError):
        B.set_budget(3.5)
    with pytest.raises(B.BudgetError, match="margin"):
        B.enable_safety_net("none")
    assert not B.status().watching


def test_relative_budget_and_watcher_lifecycle():
    rss = B.read_memory().rss
    B.set_budget("+1GiB", safety_net=False)
    assert abs(B.get_budget() - (rss + 1024 * MiB)) < 64 * MiB
    assert B.status().watching
    B.set_budget(None, safety_net=True)  # the net alone keeps the watcher
    assert B.get_budget() is None and B.status().watching
    B.set_budget(None, safety_net=False)
    assert not B.status().watching  # stopped before set_budget returned


# ---------------------------------------------------------------------------------------------
# The interrupt, in this process


def _grow(blocks: list, step: int = MiB, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        blocks.append(bytearray(step))  # the line the budget must name


@pytest.mark.flaky(reruns=2)  # wall-clock latency on a shared machine
def test_budget_interrupts_the_main_thread_and_names_the_line():
    mp.start(seed=1)
    blocks: list = []
    with pytest.raises(MemoryBudgetExceeded) as info:
        with B.budget("+120MB"):
            _grow(blocks)
    err = info.value
    assert isinstance(err, MemoryError) and isinstance(err, MprofileError)
    assert type(err).__name__ == "MemoryBudgetExceeded"
    assert err.kind == "budget" and err.measure in ("rss", "traced")
    assert err.value >= err.limit
    # the line running when the crossing was seen: the loop's (an RSS trip is seen by the
    # watcher thread between two bytecodes of the loop; a traced one at the allocation)
    assert "test_budget.py" in err.location
    assert ("blocks.append(bytearray(step))" in err.location
            or "while time.monotonic() < deadline" in err.location)
    assert "blocks.append(bytearray(step))" in str(err)  # the top site names it
    # the top site is the growing line, about as big as what was kept
    where, size = err.sites[0]
    assert "blocks.append" in where
    assert abs(size - len(blocks) * MiB) < 0.25 * len(blocks) * MiB
    assert err.snapshot is not None and err.timeline
    # it stopped soon: not far past the budget (20 s of this loop would be gigabytes)
    assert len(blocks) * MiB < 120 * MiB + 400 * MiB
    assert err.trip.latency is not None and err.trip.latency < 1.0
    blocks.clear()
    assert not B.status().watching  # the block's watcher is gone with the block


# ---------------------------------------------------------------------------------------------
# The sample path: the sampler's watermark and the main thread's pending call


def _untouched_loop(blocks: list, n: int = 20_000) -> None:
    for _ in range(n):  # 20 GB of address space if nothing stopped it
        blocks.append(bytes(10**6))  # calloc'ed, no page touched: RSS does not move


def test_untouched_memory_trips_at_the_crossing_through_the_sample_path():
    # GIVEN the sampler (64 KiB rate: a 1 MB block is always a sample) and a budget
    mp.start(sample_rate=65536, seed=1)
    blocks: list = []
    try:
        with pytest.raises(MemoryBudgetExceeded) as info:
            with B.budget("+200MB"):
                limit, start = B.get_budget(), B._traced_now()
                # WHEN memory grows faster than any poll could see (gigabytes in ms)
                _untouched_loop(blocks)
        err = info.value
        # THEN the crossing sample stops the loop there, not gigabytes later (polling
        # alone let it run 1,700 to 18,000 blocks)
        crossing = -(-(limit - start) // 10**6)  # the block that takes traced past it
        assert err.measure == "traced" and err.value >= err.limit == limit
        assert crossing - 2 <= len(blocks) <= crossing + 100, (len(blocks), crossing)
        assert "blocks.append(bytes(10**6))" in err.location
        # the traceback is the user's code only, as for the watcher's interrupt
        files = {os.path.basename(f.f_code.co_filename) for f, _ in
                 __import__("traceback").walk_tb(err.__traceback__)}
        assert files == {"test_budget.py"}, files
        # the trip's own reading is the last point of its timeline
        r = err.trip.reading
        assert err.timeline[-1] == (r.time, r.rss, r.traced)
    finally:
        blocks.clear()
        mp.stop()


def test_watermark_is_armed_only_with_a_budget():
    mp.start(sample_rate=65536, seed=1)
    try:
        B.set_budget(None, safety_net=True)  # the watcher runs, no budget
        assert B.status().watching and B._watcher.armed is None
        keep = [bytes(10**6) for _ in range(50)]
        assert len(keep) == 50  # nothing is raised
        B.set_budget("+1GB", safety_net=True)
        # armed by the thread that set the budget, before set_budget returned
        assert B._watcher.armed == B.get_budget()
        B.set_budget(None, safety_net=True)
        assert B._watcher.armed is None
    finally:
        mp.stop()


def test_direct_trip_bookkeeping_is_never_sampled():
    # every allocation is a sample: none of the budget's work in the main thread (the
    # check, the snapshot, the exception's report) may show up as the user's memory.
    # A first trip beforehand: on 3.10 a function's first call allocates the frame object
    # its code keeps for later calls, before any pause in its body can begin.
    blocks: list = []
    mp.start(sample_rate=65536)
    with pytest.raises(MemoryBudgetExceeded):
        with B.budget("+100MB"):
            _untouched_loop(blocks)
    blocks.clear()
    mp.stop()
    mp.start(sample_rate=1)
    try:
        with pytest.raises(MemoryBudgetExceeded):
            with B.budget("+100MB"):
                _untouched_loop(blocks)
        snap = mp.take_snapshot()
        ours = {os.path.join(os.path.dirname(B.__file__), name)
                for name in ("budget.py", "attribution.py")}
        found = [(t[1], [(os.path.basename(f[0]), f[1], f[2]) for f in t[2]])
                 for t in snap.raw_traces if any(f[0] in ours for f in t[2])]
        assert found == [], repr(found)
    finally:
        blocks.clear()
        mp.stop()


class _Over:
    """A probe whose readings are over any budget of a few MiB."""

    def read(self, margin=B.DEFAULT_MARGIN, traced=True):
        return reading(rss=10 * MiB, traced=500 * MiB)

    def cgroup_events(self):
        return {}


def _over_budget_watcher() -> B._Watcher:
    w = B._Watcher()  # not the global one: no thread, nothing else trips
    w.session_limit = 100 * MiB
    w.probe = _Over()
    return w


def test_sample_path_raises_in_user_code():
    # the control for the tests below: from the user's frame, the check queues the
    # interrupt and the callable it returns raises it at the next bytecode
    w = _over_budget_watcher()
    action = w.watermark_action(sys._getframe())
    assert action is not B._no_trip and w.direct_trips == 1
    with pytest.raises(MemoryBudgetExceeded) as info:
        action()
        sum(range(10))
    assert info.value.measure == "traced" and "test_budget.py" in info.value.location
    assert B._pending is None


def test_sample_path_defers_inside_an_exception_handler_or_finally():
    w = _over_budget_watcher()
    try:
        raise ValueError("being handled")
    except ValueError:
        in_except = w.watermark_action(sys._getframe())
    with pytest.raises(KeyError):
        try:
            raise KeyError("unwinding")
        finally:
            in_finally = w.watermark_action(sys._getframe())
    assert in_except is B._no_trip and in_finally is B._no_trip
    assert w.deferred == 2 and w.trips == 0 and B._pending is None


def test_sample_path_defers_inside_our_machinery():
    # a frame of this package (the budget's own code, the magic's runner, ...) innermost
    w = _over_budget_watcher()
    namespace = {"w": w, "sys": sys}
    exec(compile("got = w.watermark_action(sys._getframe())", B.__file__, "exec"), namespace)
    assert namespace["got"] is B._no_trip
    # and a library's frame innermost (the watcher interrupts where the user's code is)
    exec(compile("got = w.watermark_action(sys._getframe())", threading.__file__, "exec"),
         namespace)
    assert namespace["got"] is B._no_trip
    assert w.deferred == 2 and B._pending is None


def test_sample_path_defers_while_ipython_formats_an_exception(ipython_shell, run_cell):
    # GIVEN a crossing seen while IPython formats a traceback: the user's own __str__ runs
    # (innermost frame: user code) inside IPython's traceback machinery
    w = _over_budget_watcher()
    got: list = []

    class Loud(Exception):
        def __str__(self):
            got.append(w.watermark_action(sys._getframe()))
            return "loud"

    class Shown:
        def _repr_html_(self):  # and while IPython displays a result
            got.append(w.watermark_action(sys._getframe()))
            return "<b>shown</b>"

        def __repr__(self):
            got.append(w.watermark_action(sys._getframe()))
            return "shown"

    ipython_shell.user_ns.update(Loud=Loud, Shown=Shown)
    _, result, out = run_cell(ipython_shell, "raise Loud()")
    _, shown, _ = run_cell(ipython_shell, "Shown()")
    # THEN nothing is raised there: the display is whole, the trip left to the watcher
    assert isinstance(result.error_in_exec, Loud) and shown.success
    assert "Unexpected exception formatting exception" not in out.stdout + out.stderr
    assert got and all(a is B._no_trip for a in got)
    assert w.deferred == len(got) and w.trips == 0 and B._pending is None


def test_a_watcher_interrupt_landing_in_the_check_is_raised_from_the_users_frame():
    # The watcher thread may queue its interrupt while the main thread runs the sample
    # path's check; it then lands inside this module, which queues it again.
    trip = B.Trip("budget", "traced", 2, 1, reading())
    with B._pending_lock:
        B._pending = trip
    landed = B._BudgetInterrupt()  # what landing instantiates (it takes the pending trip)
    assert B._pending is None and landed.trip is trip
    action = B._requeue(landed)
    with pytest.raises(MemoryBudgetExceeded) as info:
        action()
        sum(range(10))
    assert info.value.trip is trip
    files = {os.path.basename(f.f_code.co_filename) for f, _ in
             __import__("traceback").walk_tb(info.value.__traceback__)}
    assert files == {"test_budget.py"}


def test_watcher_hands_a_trip_to_a_pending_call_that_is_due():
    # GIVEN the sampler's pending call scheduled in the main thread (the watermark fired)
    w = _over_budget_watcher()
    w.session_limit = 1
    w.fired_total, w.fired_at = 1, time.monotonic()
    done = threading.Event()

    def watcher_thread():
        w.fire("budget", "rss", 2, 1, reading(), None)
        done.set()

    # WHEN the watcher thread finds the crossing first
    helper = threading.Thread(target=watcher_thread)
    helper.start()
    helper.join()  # the main thread waits here, without running bytecode
    assert done.is_set()
    # THEN it queues nothing on the main thread (it would land in the pending call's
    # check, in this module) but hands the trip over ...
    total = sum(range(10000))
    assert total == 49995000 and w.handed_over and B._pending is not None
    # ... and the pending call raises it from the user's frame
    assert w.begin_decision() and not w.handed_over and w.decided_total == 1
    assert not w.end_decision()
    with pytest.raises(MemoryBudgetExceeded) as info:
        B._queue_interrupt()()
        sum(range(10))
    assert info.value.measure == "rss" and B._pending is None


def test_watcher_never_interrupts_the_pending_calls_check_while_it_runs():
    # The check runs Python code (linecache among it, whose `except MemoryError` would
    # swallow an interrupt and clear its cache): a trip found meanwhile is handed over.
    w = _over_budget_watcher()
    w.session_limit = 1
    assert not w.begin_decision()  # the check begins (nothing due before it)
    helper = threading.Thread(target=w.fire, args=("budget", "rss", 2, 1, reading(), None))
    helper.start()
    helper.join()
    total = sum(range(10000))  # nothing landed
    assert total == 49995000 and w.handed_over
    w.deliver_if_stale()
    w.handed_at -= B.HANDOVER_WAIT
    w.deliver_if_stale()  # not even late: the check takes it as it ends
    assert w.handed_over
    assert w.end_decision() and not w.deciding
    with pytest.raises(MemoryBudgetExceeded):
        B._queue_interrupt()()
        sum(range(10))


def test_a_hand_over_the_main_thread_never_takes_is_delivered_by_the_watcher():
    # the main thread is in a long C call (or the pending call was never scheduled)
    w = _over_budget_watcher()
    w.session_limit = 1
    w.fired_total, w.fired_at = 1, time.monotonic()
    helper = threading.Thread(target=w.fire, args=("budget", "rss", 2, 1, reading(), None))
    helper.start()
    helper.join()
    assert w.handed_over
    w.deliver_if_stale()  # too soon: still the pending call's
    assert w.handed_over
    w.handed_at -= B.HANDOVER_WAIT
    with pytest.raises(MemoryBudgetExceeded):
        w.deliver_if_stale()
        sum(range(10))
    assert not w.handed_over and B._pending is None


def test_code_compiled_by_the_magic_is_the_users_code():
    # What `%%mprofile --budget` will run: a cell body compiled and registered by the
    # package, executed by the package's runner (an internal frame) under budget().
    from mprofile_ipy.attribution import register_code

    source = "blocks = []\nwhile True:\n    blocks.append(bytearray(2**20))\n"
    filename = "<mprofile-cell-test-41>"
    register_code(filename, 41, source.splitlines())
    code = compile(source, filename, "exec")
    namespace: dict = {}
    with pytest.raises(MemoryBudgetExceeded) as info:
        with B.budget("+100MB"):
            exec(code, namespace)
    assert info.value.location == "In [41], line 3: blocks.append(bytearray(2**20))"
    assert info.value.cell == "In [41]"
    assert len(namespace["blocks"]) > 50  # the namespace keeps what was built


def test_rss_trips_without_the_sampler():
    assert not mp.is_tracing()
    blocks: list = []
    with pytest.raises(MemoryBudgetExceeded) as info:
        with B.budget("+100MB"):
            _grow(blocks)
    assert info.value.measure == "rss" and info.value.sites == []
    assert info.value.snapshot is None


def test_interrupt_not_landed_is_withdrawn():
    # GIVEN an interrupt queued on the main thread by another thread (as the watcher does)
    # WHEN that thread withdraws it before the main thread runs another bytecode
    def queue_and_withdraw():
        with B._pending_lock:
            B._pending = B.Trip("budget", "rss", 2, 1, reading())
            assert B._set_async_exc(threading.main_thread().ident, B._BudgetInterrupt) == 1
            assert B._withdraw_pending()

    helper = threading.Thread(target=queue_and_withdraw)
    helper.start()
    helper.join()  # the main thread waits here, without running bytecode
    # THEN nothing lands in the main thread
    total = sum(range(10000))
    assert total == 49995000 and B._pending is None


def test_a_trip_never_instantiated_does_not_block_later_trips():
    # 3.10/3.11 create the exception object lazily: `except MemoryError:` without `as`
    # never does, so the pending trip must not stay in the way forever.
    B._pending = B.Trip("budget", "rss", 2, 1, reading(), detected_at=time.perf_counter() - 5)
    blocks: list = []
    with pytest.raises(MemoryBudgetExceeded):
        with B.budget("+100MB"):
            _grow(blocks)
    assert B._pending is None


def test_safety_net_interrupts_with_a_fake_probe(monkeypatch):
    class Starving:
        def read(self, margin, traced=True):
            return reading(available=50 * MiB)

        def cgroup_events(self):
            return {}

    monkeypatch.setattr(B._watcher, "probe_factory", Starving)
    B.enable_safety_net()
    with pytest.raises(MemoryBudgetExceeded) as info:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            sum(range(1000))
    err = info.value
    assert (err.kind, err.measure) == ("safety net", "available")
    assert "safety net" in str(err) and "50.0 MiB available" in str(err)
    B.disable_safety_net()
    assert not B.status().watching


def test_no_interrupt_when_the_main_thread_runs_no_user_code():
    w = B._Watcher()
    w.session_limit = 1
    done = threading.Event()
    got: queue.Queue = queue.Queue()

    def fire_from_thread():
        # main thread is in this test (user code): fires; but flagged as "outside a cell"
        w.ipython, w.executing = True, False
        w.fire("budget", "rss", 2, 1, reading(), None)
        got.put(B._pending)
        done.set()

    threading.Thread(target=fire_from_thread).start()
    done.wait(5)
    assert got.get() is None and w.trips == 0


def test_watcher_allocations_are_not_sampled():
    mp.start(sample_rate=1)
    B.set_budget("+2GB", safety_net=True)
    time.sleep(0.3)
    snap = mp.take_snapshot()
    files = {f[0] for t in snap.raw_traces for f in t[2]}
    assert not any(name.endswith("budget.py") for name in files)


def test_own_code_is_cells_and_user_files_not_libraries():
    from mprofile_ipy.attribution import Location

    def loc(filename, internal=False, is_cell=False, stdlib=False):
        return Location(filename, 1, filename, 1, "", None, internal, is_cell, stdlib)

    assert B.is_own_code(loc("/tmp/ipykernel_1/2.py", is_cell=True))
    assert B.is_own_code(loc("/home/me/project/pipeline.py"))
    assert not B.is_own_code(loc("/v/lib/python3.11/site-packages/stack_data/core.py"))
    assert not B.is_own_code(loc("/usr/lib/python3.11/ast.py", stdlib=True))
    assert not B.is_own_code(loc("/v/site-packages/IPython/core/ultratb.py", internal=True))


def test_forked_child_starts_with_nothing_enabled():
    B.set_budget("+2GB")
    pid = os.fork()
    if pid == 0:  # child: nothing enabled, no thread
        code = 0 if (B.get_budget() is None and not B.status().watching) else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert B.get_budget() is not None


# ---------------------------------------------------------------------------------------------
# Real kernels


class Kernel:
    """A real ipykernel driven through jupyter_client, with the package importable and
    records written to ``state``."""

    def __init__(self, state: Path) -> None:
        from jupyter_client.manager import KernelManager

        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env["XDG_STATE_HOME"] = str(state)
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env, cwd=str(state))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    @property
    def pid(self) -> int:
        return self.km.provisioner.process.pid

    def run(self, code: str, timeout: float = 60) -> dict:
        """Run a cell: {"status", "text", "ename", "evalue", "count"}."""
        out: dict = {"text": "", "ename": None, "evalue": None, "traceback": ""}

        def hook(msg):
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out["text"] += content["text"]
            elif kind in ("execute_result", "display_data"):
                out["text"] += content["data"].get("text/plain", "") + "\n"
            elif kind == "error":
                out["ename"], out["evalue"] = content["ename"], content["evalue"]
                out["traceback"] = "\n".join(content["traceback"])

        reply = self.kc.execute_interactive(code, output_hook=hook, timeout=timeout)
        out["status"] = reply["content"]["status"]
        out["count"] = reply["content"].get("execution_count")
        return out

    def ok(self, code: str, timeout: float = 60) -> str:
        out = self.run(code, timeout)
        assert out["status"] == "ok", out
        return out["text"]

    def shutdown(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


SETUP = """
import mprofile_ipy as mp
from mprofile_ipy import budget as B
B.enable_for_ipython(get_ipython())
"""


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    k = Kernel(tmp_path_factory.mktemp("kernel-state"))
    k.ok(SETUP)
    yield k
    k.shutdown()


def test_kernel_cell_past_budget_stops_and_the_kernel_keeps_its_variables(kernel):
    kernel.ok("precious = {'answer': 42}\nimport numpy as np")
    kernel.ok("B.set_budget('+150MB'); mp.start(seed=3)")
    out = kernel.run("rows = []\nfor i in range(10_000):\n    rows.append(b'x' * 1_000_000)\n")
    assert out["status"] == "error" and out["ename"] == "MemoryBudgetExceeded", out
    cell = out["count"]
    assert f"In [{cell}], line 3: rows.append(b'x' * 1_000_000)" in out["evalue"]
    assert "budget" in out["evalue"] and "top allocating sites" in out["evalue"]
    # the kernel is alive, with the earlier variables and what the cell had built so far
    text = kernel.ok("print(precious['answer'], 50 < len(rows) < 400, len(rows))")
    assert text.split()[:2] == ["42", "True"], (text, out["evalue"])
    # freeing memory makes the next cells run normally
    kernel.ok("del rows; import gc; gc.collect(); x = sum(range(10**6))")
    kernel.ok("mp.stop(); B.set_budget(None)")


def test_kernel_untouched_memory_stops_at_the_crossing(kernel):
    # the sample path in a real kernel: the loop stops at the block that crosses, and the
    # error shown is the cell's, whole (no "Unexpected exception formatting exception")
    kernel.ok("B.set_budget('+200MB'); mp.start(sample_rate=65536, seed=5)\n"
              "limit, start = B.get_budget(), B._traced_now()")
    out = kernel.run("blocks = []\nfor _ in range(20_000):\n    blocks.append(bytes(10**6))\n")
    assert out["ename"] == "MemoryBudgetExceeded", out["text"]
    assert "traced memory" in out["evalue"]
    assert f"In [{out['count']}], line 3: blocks.append(bytes(10**6))" in out["evalue"]
    assert "Unexpected exception" not in out["traceback"] + out["text"]
    assert "budget.py" not in out["traceback"]
    n, crossing = map(int, kernel.ok("print(len(blocks), -(-(limit - start) // 10**6))").split())
    assert crossing - 2 <= n <= crossing + 100, (n, crossing)
    kernel.ok("del blocks; mp.stop(); B.set_budget(None)")


def test_kernel_native_allocation_trips_through_rss(kernel):
    kernel.ok("B.set_budget('+200MB'); assert not mp.is_tracing()")
    out = kernel.run("arrays = []\nwhile True:\n    arrays.append(np.ones(2_500_000))\n")
    assert out["ename"] == "MemoryBudgetExceeded", out
    assert "resident memory (RSS)" in out["evalue"]
    assert f"In [{out['count']}], line 3: arrays.append(np.ones(2_500_000))" in out["evalue"]
    kernel.ok("del arrays; B.set_budget(None)")


def test_kernel_under_an_address_space_limit_is_saved_by_the_safety_net(kernel):
    # GIVEN the kernel under RLIMIT_AS (what `prlimit --as` or `ulimit -v` set), 300 MB
    # above what it maps now, and the safety net on (the extension's default)
    kernel.ok("import resource\n"
              "soft, hard = resource.getrlimit(resource.RLIMIT_AS)\n"
              "vm = B.read_memory().vm_size\n"
              "resource.setrlimit(resource.RLIMIT_AS, (vm + 300 * 2**20, hard))\n"
              "B.refresh_limits(); __import__('time').sleep(0.2)")
    # WHEN a cell grows without end
    out = kernel.run("chunks = []\nwhile True:\n    chunks.append(bytearray(4 * 2**20))\n")
    try:
        # THEN the safety net stops it before the allocator fails
        assert out["ename"] == "MemoryBudgetExceeded", out
        assert "safety net" in out["evalue"] and "RLIMIT_AS" in out["evalue"]
        assert f"In [{out['count']}], line 3" in out["evalue"]
    finally:
        kernel.ok("del chunks\nresource.setrlimit(resource.RLIMIT_AS, (soft, hard))")
    assert kernel.ok("print(len(precious))").strip() == "1"


def _memory_cgroup_of_this_process() -> Path | None:
    """The writable memory cgroup directory (v2 or v1) of this process, or None."""
    dirs = B.parse_cgroup_dirs(Path("/proc/self/cgroup").read_text(),
                               Path("/proc/self/mountinfo").read_text())
    if not dirs or os.geteuid() != 0:
        return None
    directory, version = dirs[0]
    if version == 2 and "memory" not in (Path(directory) / "cgroup.subtree_control"
                                         ).read_text():
        return None  # a v2 child would have no memory controller
    return Path(directory)


def test_kernel_in_a_memory_cgroup_is_stopped_before_the_oom_killer(tmp_path):
    # GIVEN a kernel moved into a child cgroup limited to 400 MB (as a container would be)
    parent = _memory_cgroup_of_this_process()
    if parent is None:
        pytest.skip("no memory cgroup this test may create")
    child = parent / f"mprofile-test-{os.getpid()}"
    try:
        child.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup here: {exc}")
    k = None
    try:
        v2 = (child / "memory.max").exists()
        (child / ("memory.max" if v2 else "memory.limit_in_bytes")).write_text(f"{400 * MiB}")
        k = Kernel(tmp_path)
        (child / "cgroup.procs").write_text(str(k.pid))
        k.ok(SETUP + "B.refresh_limits(); import time; time.sleep(0.2)")
        assert k.ok("print(B.read_memory().cgroup_limit)").strip() == str(400 * MiB)
        # WHEN a cell grows memory without end
        out = k.run("chunks = []\nwhile True:\n    chunks.append(bytearray(4 * 2**20))\n")
        # THEN the safety net stops it before the OOM killer, and the kernel lives on
        assert out["ename"] == "MemoryBudgetExceeded", out["text"]
        assert "cgroup usage" in out["evalue"] and "safety net" in out["evalue"]
        assert f"In [{out['count']}], line 3" in out["evalue"]
        assert int(k.ok("print(len(chunks))")) > 20
        k.ok("del chunks")
    finally:
        if k is not None:
            k.shutdown()
        for _ in range(50):
            try:
                child.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def test_kernel_over_budget_between_cells_is_not_interrupted(kernel):
    # GIVEN a kernel already over its budget when a cell ends (set past validation)
    kernel.ok("hog = bytearray(150 * 2**20)\n"
              "trips = B.status().trips\n"
              "B._watcher.session_limit = B.read_memory().rss - 50 * 2**20")
    # WHEN it sits idle, then runs cells that do not grow memory (the one that frees it)
    time.sleep(0.3)
    kernel.ok("import time; time.sleep(0.3)")
    kernel.ok("del hog")
    # THEN nothing was interrupted, in the kernel's loop or in those cells
    assert kernel.ok("print(B.status().trips - trips)").strip() == "0"
    kernel.ok("B.set_budget(None)")


# ---------------------------------------------------------------------------------------------
# The walkthrough notebook


NOTEBOOK = ROOT / "notebooks" / "kernel_guard.ipynb"


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory, execute_notebook):
    work = tmp_path_factory.mktemp("kernel-guard")
    # the kernel's records go to a state directory of its own, not the user's
    nb = execute_notebook(NOTEBOOK, work, env={"XDG_STATE_HOME": str(work / "state")})
    return [c for c in nb.cells if c.cell_type == "code"]


def test_walkthrough_stops_the_pipeline_and_names_its_line(walkthrough, text_of):
    errors = [(c, o) for c in walkthrough for o in c.outputs if o.output_type == "error"]
    assert len(errors) == 1  # only the cell tagged raises-exception
    cell, error = errors[0]
    assert "raises-exception" in cell.metadata.get("tags", [])
    assert error.ename == "MemoryBudgetExceeded"
    assert "resident memory (RSS)" in error.evalue
    line = 'parts.append(events.merge(customers, on="customer_id", how="left"))'
    # the line running when the watcher saw RSS cross: the loop's merge, or (when it read
    # between two merges) the loop's line that loads the events, or the loader itself,
    # defined in the cell before
    running = error.evalue.split("running: ")[1].splitlines()[0]
    assert running in (f"In [{cell.execution_count}], line 4: {line}",
                       f"In [{cell.execution_count}], line 3: events = load_events(day)") or (
        running.startswith(f"In [{cell.execution_count - 1}], line 14: return pd.DataFrame(")
    ), running
    top = error.evalue.split("top allocating sites")[1].splitlines()[1]
    assert top.strip().endswith(f"In [{cell.execution_count}], line 4: {line}")
    after = text_of(walkthrough[walkthrough.index(cell) + 1])
    days = int(after.split()[0])
    assert 1 <= days < 60 and "(125000, 3) customers rows still here" in after


def test_walkthrough_fix_runs_under_a_block_budget_and_cleans_up(walkthrough, text_of):
    texts = [text_of(c) for c in walkthrough]
    assert any("1,200,000 rows" in t for t in texts)
    assert texts[-1].strip() == "watching: False"


def test_walkthrough_post_mortem_names_line_and_size(walkthrough, text_of):
    pm_text = next(t for t in (text_of(c) for c in walkthrough) if t.startswith("Post-mortem"))
    assert "nightly_report.py, line 10: time.sleep(60)" in pm_text, pm_text
    site = next(x for x in pm_text.splitlines() if "line 8: rows = " in x)
    size_mib = float(site.split()[0])
    assert abs(size_mib * MiB - 150e6) < 0.1 * 150e6
