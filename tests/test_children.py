"""Child processes: every start method, pools, loss, and the inert start-up hook.

GIVEN the parent samples and follows its children, WHEN a child allocates a known amount,
THEN the collection holds that child's snapshot with the amount at the child's own line.
Real processes, no mocks. Each child allocates ~8 MB in 8 KiB blocks at sample_rate 4 KiB,
so an estimate has about 2,000 samples (about 2% standard error): the checks allow 10%.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

import mprofile_ipy as mp
from mprofile_ipy import children

BLOCK = 8192
BLOCKS = 1024  # 8 MiB
RATE = 4096


def allocate_known(blocks: int = BLOCKS) -> int:
    """The child's work: allocate blocks * 8 KiB at one line, keep them briefly, return."""
    kept = [bytearray(BLOCK) for _ in range(blocks)]  # WORK LINE
    return len(kept)


def _work_lineno() -> int:
    with open(__file__, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if "# WORK LINE" in line and "bytearray" in line:
                return i
    raise AssertionError("work line not found")


def _allocated_at_work_line(snapshot: mp.Snapshot) -> float:
    lineno = _work_lineno()
    total = 0.0
    for stat in snapshot.allocated_statistics("lineno"):
        frame = stat.traceback[0]
        if frame.filename == __file__ and frame.lineno == lineno:
            total += stat.size_estimate
    return total


@pytest.fixture
def session():
    mp.start(sample_rate=RATE)
    sess = children.follow()
    try:
        yield sess
    finally:
        sess.close()
        mp.stop()


def _run_process(method: str) -> int:
    ctx = multiprocessing.get_context(method)
    proc = ctx.Process(target=allocate_known, name=f"worker-{method}")
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    return proc.pid


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_each_start_method_delivers_the_childs_allocations(session, method):
    pid = _run_process(method)
    got = session.collect(timeout=10)
    by_pid = {proc.pid: (proc, snap) for proc, snap in got.snapshots}
    assert pid in by_pid, (got.snapshots, got.lost)
    proc, snap = by_pid[pid]
    assert proc.name == f"worker-{method}"
    assert proc.start_method == method
    if method != "forkserver":  # forkserver children are the server's children
        assert proc.ppid == os.getpid()
    assert snap.meta["process"]["pid"] == pid
    expected = BLOCK * BLOCKS
    assert _allocated_at_work_line(snap) == pytest.approx(expected, rel=0.10)
    assert got.lost == []


def test_fork_child_does_not_report_the_parents_memory(session):
    parent_data = [bytearray(BLOCK) for _ in range(2048)]  # 16 MiB alive in the parent
    pid = _run_process("fork")
    got = session.collect(timeout=10)
    snap = {p.pid: s for p, s in got.snapshots}[pid]
    inherited = sum(s.size_estimate for s in snap.statistics("lineno"))
    assert inherited < 2 * 1024 * 1024
    del parent_data


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_workers_alive_at_collection_answer_a_request(session, method):
    ctx = multiprocessing.get_context(method)
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        assert sum(pool.map(allocate_known, [BLOCKS // 2] * 4)) == 2 * BLOCKS
        got = session.collect(timeout=20)  # the workers are still alive here
        assert got.lost == []
        total = sum(_allocated_at_work_line(snap) for _, snap in got.snapshots)
        assert total == pytest.approx(2 * BLOCK * BLOCKS, rel=0.10)
        assert all(not snap.meta["process"]["final"] for _, snap in got.snapshots
                   if _allocated_at_work_line(snap) > 0)


def test_a_killed_child_is_reported_lost_and_others_still_count(session):
    ctx = multiprocessing.get_context("spawn")
    victim = ctx.Process(target=time.sleep, args=(60,), name="victim")
    victim.start()
    deadline = time.time() + 30
    announce = os.path.join(session.directory, f"{victim.pid}.json")
    def announced_name() -> str | None:
        try:
            with open(announce, encoding="utf-8") as fh:
                return json.load(fh)["name"]
        except (OSError, ValueError):
            return None

    while announced_name() != "victim" and time.time() < deadline:
        time.sleep(0.05)
    assert announced_name() == "victim", "the child never started its profiler"
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    survivor = _run_process("fork")
    got = session.collect(timeout=5)
    assert [p.name for p in got.lost] == ["victim"], got.lost
    assert survivor in {p.pid for p, _ in got.snapshots}
    assert any("victim" in note and "killed or crashed" in note for note in got.notes())


def test_plain_python_subprocess_is_followed(session):
    if session.startup_hook is None:
        pytest.skip("site-packages is read-only here: only multiprocessing is followed")
    code = "x = [bytearray(8192) for _ in range(1024)]\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    got = session.collect(timeout=5)
    [(proc, snap)] = got.snapshots
    total = sum(s.size_estimate for s in snap.allocated_statistics("filename")
                if s.traceback[0].filename == "<string>")
    assert total == pytest.approx(BLOCK * BLOCKS, rel=0.10)


def test_joblib_loky_workers(session):
    joblib = pytest.importorskip("joblib")
    if session.startup_hook is None:
        pytest.skip("loky children need the start-up hook")
    with joblib.parallel_config(backend="loky", n_jobs=2):
        results = joblib.Parallel()(joblib.delayed(allocate_known)(BLOCKS // 2)
                                    for _ in range(4))
    assert sum(results) == 2 * BLOCKS
    got = session.collect(timeout=20)
    total = sum(_allocated_at_work_line(snap) for _, snap in got.snapshots)
    assert total == pytest.approx(2 * BLOCK * BLOCKS, rel=0.10)
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True, kill_workers=True)


def test_outside_a_session_children_are_not_profiled():
    mp.start(sample_rate=RATE)
    try:
        sess = children.follow()
        sess.close()
        assert children.ENV_VAR not in os.environ
        code = "import mprofile_ipy as m; print(m.is_tracing())"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60)
        assert out.stdout.strip() == "False", out.stderr
        assert not os.path.exists(sess.directory)
    finally:
        mp.stop()


def test_follow_needs_a_running_sampler():
    assert not mp.is_tracing()
    with pytest.raises(mp.MprofileError, match="start the sampler"):
        children.follow()


def test_merge_kernel_and_children_into_one_profile(session):
    from mprofile_ipy import processes

    kept = [bytearray(BLOCK) for _ in range(256)]  # 2 MiB alive in the kernel
    pids = [_run_process("fork"), _run_process("spawn")]
    got = session.collect(timeout=10)
    kernel = processes.ProcessPart("kernel", "kernel", os.getpid(), mp.take_snapshot())
    parts = [kernel] + [processes.ProcessPart(p.label, "child", p.pid, s)
                        for p, s in got.snapshots if p.pid in pids]
    profile = processes.merge(parts, got.notes())
    # allocations at the work line add up over the two children, sample by sample
    assert _allocated_at_work_line(profile.merged) == pytest.approx(
        sum(_allocated_at_work_line(s) for _, s in got.snapshots if _.pid in pids), rel=1e-9)
    assert _allocated_at_work_line(profile.merged) == pytest.approx(2 * BLOCK * BLOCKS,
                                                                    rel=0.10)
    assert [p["kind"] for p in profile.merged.meta["processes"]] == ["kernel", "child", "child"]
    shares = profile.shares("allocated")
    assert {part.pid for part, _ in shares} == {os.getpid(), *pids}
    child = next(part for part in profile.parts if part.pid == pids[0])
    # a child's live memory at exit may be empty: compare with its own snapshot
    assert profile.statistics("lineno", process=str(pids[0])) == \
        child.snapshot.statistics("lineno")
    assert profile.statistics("lineno", process=child.label) == \
        child.snapshot.statistics("lineno")
    with pytest.raises(KeyError, match="no process"):
        profile.statistics("lineno", process="nobody")
    del kept


def test_merge_refuses_different_rates():
    from mprofile_ipy import processes

    a = mp.Snapshot([(0, 10, (("a.py", 1),), 1)], 1, sample_rate=4096)
    b = mp.Snapshot([(0, 10, (("a.py", 1),), 1)], 1, sample_rate=8192)
    with pytest.raises(mp.MprofileError, match="different sample rates"):
        processes.merge([processes.ProcessPart("a", "child", 1, a),
                         processes.ProcessPart("b", "child", 2, b)])


# ------------------------------------------------------------------ the start-up hook's life

PTH = os.path.join(children._purelib(), children.PTH_NAME)

# A second "kernel" of the same environment: opens a session, says so, waits for a line on
# stdin, then closes it (or, with "exit", leaves without closing: atexit must clean up).
_OTHER_KERNEL = """
import sys, mprofile_ipy as mp
from mprofile_ipy import children
mp.start(sample_rate=4096)
session = children.follow()
print("open" if session.startup_hook else "no-hook", flush=True)
if sys.stdin.readline().strip() == "close":
    session.close()
print("done", flush=True)
"""


def _other_kernel() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _OTHER_KERNEL], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
    return proc


def _finish(proc: subprocess.Popen, how: str) -> None:
    out, _ = proc.communicate(how + "\n", timeout=60)
    assert proc.returncode == 0 and "done" in out


@pytest.fixture
def sampling():
    children.remove_startup_hook()
    mp.start(sample_rate=RATE)
    try:
        yield
    finally:
        mp.stop()


def test_the_last_session_to_close_removes_the_startup_hook(sampling):
    first = children.follow()
    if first.startup_hook is None:
        first.close()
        pytest.skip("site-packages is read-only here: no start-up hook to remove")
    second = children.follow()  # nested sessions share the line
    first.close()
    assert os.path.exists(PTH)
    second.close()
    assert not os.path.exists(PTH)
    assert not os.path.exists(os.path.join(children._registry(), str(os.getpid())))


def test_a_session_of_another_process_keeps_the_hook_until_it_closes(sampling):
    other = _other_kernel()
    try:
        mine = children.follow()
        mine.close()
        assert os.path.exists(PTH), "another kernel still follows its children"
    finally:
        _finish(other, "close")
    assert not os.path.exists(PTH)


def test_interpreter_exit_removes_the_hook_of_a_session_left_open(sampling):
    other = _other_kernel()
    assert os.path.exists(PTH)
    _finish(other, "exit")  # the session is never closed: atexit removes the line
    assert not os.path.exists(PTH)


def test_a_killed_kernel_leaves_a_marker_the_next_session_sweeps(sampling):
    other = _other_kernel()
    other.kill()
    other.communicate(timeout=60)
    assert os.path.exists(PTH)  # SIGKILL: nothing ran, the line stays (inert)
    session = children.follow()
    session.close()
    assert not os.path.exists(PTH)
    assert not os.path.exists(os.path.join(children._registry(), str(other.pid)))


def test_a_forked_child_never_removes_its_parents_hook(sampling):
    session = children.follow()
    try:
        pid = os.fork()
        if pid == 0:  # the child inherits the count and the atexit handler
            code = 1
            try:
                code = 0 if children._release_startup_hook(everything=True) is False else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert os.path.exists(PTH)
    finally:
        session.close()
    assert not os.path.exists(PTH)


def test_children_starting_while_the_hook_goes_away_run_normally(sampling):
    session = children.follow()
    code = "import sys; x = [bytearray(4096) for _ in range(100)]; sys.exit(7)"
    starting = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(4)]
    session.close()  # the line disappears while they start up
    assert not os.path.exists(PTH)
    assert [p.wait(60) for p in starting] == [7, 7, 7, 7]
