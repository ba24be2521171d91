"""The flight recorder and the post-mortem: atomic records, liveness, ranking, cleanup, and
a kernel killed with SIGKILL whose record the next kernel reads."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import mprofile_ipy as mp
from mprofile_ipy import budget as B
from mprofile_ipy import postmortem as P
from mprofile_ipy import recorder as R
from mprofile_ipy.errors import SnapshotFormatError
from mprofile_ipy.model import Snapshot
from mprofile_ipy.storage import load_snapshot, save_snapshot

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="process identity and RSS come from /proc")


@pytest.fixture(autouse=True)
def _clean():
    R.stop_recording()
    B.shutdown()
    if mp.is_tracing():
        mp.stop()
    yield
    R.stop_recording()
    B.shutdown()
    if mp.is_tracing():
        mp.stop()


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def fake_record(directory: Path, *, pid: int, ticks: int = 1, notebook=None, cwd="/x",
                written_at: float | None = None, mtime: float | None = None) -> Path:
    """A record file of a (dead) process, as the recorder writes it."""
    written_at = time.time() if written_at is None else written_at
    record = {"format": R.RECORD_FORMAT, "version": R.RECORD_VERSION, "pid": pid,
              "start_ticks": ticks, "boot_id": "", "host": None, "cwd": cwd,
              "notebook": notebook, "connection_file": None, "started_at": written_at - 10,
              "written_at": written_at, "executing": True,
              "running": {"filename": "/tmp/ipykernel_1/2.py", "lineno": 3, "file": "In [7]",
                          "line": 3, "source": "x = f()", "cell": 7},
              "cell": None, "rss": 300 * MiB, "peak_rss": 310 * MiB, "traced": 250 * MiB,
              "peak_traced": 260 * MiB, "budget": None, "timeline": [[written_at, 1, 2]]}
    traces = [(0, 4 * MiB, (("/tmp/ipykernel_1/2.py", 2, "<module>", 1),), 1, 1, 0)]
    snap = Snapshot(traces, 1, sample_rate=1, meta={"record": record})
    path = directory / f"{pid}-{ticks}{R.RECORD_SUFFIX}"
    save_snapshot(snap, path)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


# ---------------------------------------------------------------------------------------------
# The recorder


def test_record_is_a_snapshot_file_with_the_running_line(tmp_path):
    mp.start(sample_rate=64 * 1024, seed=5)
    keep = [bytearray(MiB) for _ in range(40)]  # noqa: F841 - alive in the record
    rec = R.start_recording(tmp_path, interval=0.2)
    assert rec.path.parent == tmp_path and rec.path.name.startswith(f"{os.getpid()}-")
    snap = load_snapshot(rec.path)  # any snapshot reader reads a record
    meta = snap.meta["record"]
    assert meta["format"] == R.RECORD_FORMAT and meta["pid"] == os.getpid()
    assert meta["running"]["file"].endswith("test_postmortem.py")
    assert "R.start_recording(tmp_path, interval=0.2)" in meta["running"]["source"]
    assert abs(snap.total_size - 40 * MiB) < 8 * MiB
    assert meta["rss"] > 40 * MiB and meta["cwd"] == os.getcwd()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture
def no_gc():
    """No collection mid-test: freeing an earlier test's garbage (a failed attempt's frame
    holding 64 MiB, say) would move RSS by as much as the test does."""
    import gc

    gc.collect()
    gc.disable()
    yield
    gc.enable()


def test_record_written_only_when_something_changed(tmp_path, no_gc):
    rec = R.start_recording(tmp_path, interval=100)  # the watcher will not write again
    first = rec.path.stat().st_mtime_ns
    assert rec.writes == 1
    # from the same line twice: the second time nothing changed (the line is part of it)
    assert [rec.write() for _ in range(2)][1] is False
    assert rec.write(force=True) is True
    writes = rec.writes
    results, seen = [], []
    for size in (0, 0, 64 * MiB):
        blob = b"\x01" * size  # every page touched: RSS changes the last time, a write
        results.append(rec.write())
        seen.append((B.read_memory().rss, rec._fingerprint))
    assert results[1:] == [False, True], (results, rec.last_error, rec.skipped, seen)
    assert rec.writes == writes + 1 + results[0]
    del blob
    assert rec.path.stat().st_mtime_ns >= first


def test_recorder_rewrites_at_most_every_interval(tmp_path, no_gc, monkeypatch):
    # only the interval spaces writes here (slow writes: test_slow_writes_are_spaced_out)
    monkeypatch.setattr(R, "COST_FACTOR", 0)
    rec = R.start_recording(tmp_path, interval=0.3)
    blocks = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.25:
        blocks.append(bytearray(2 * MiB))  # memory changes all the time
        time.sleep(0.01)
    writes = rec.writes
    assert 3 <= writes <= 1 + 1.25 / 0.3 + 1


def test_slow_writes_are_spaced_out(tmp_path):
    rec = R.start_recording(tmp_path, interval=100)
    B.remove_listener(rec.on_tick)  # drive it by hand
    rec.interval = 0.01
    rec._last_write = 0.0
    blob = bytearray(8 * MiB)  # something changed
    now = time.time()
    rec._cost_gap = 0.0
    rec.on_tick(B.Reading(now, rss=len(blob) + 10**9))
    assert 0 <= rec._cost_gap <= R.COST_FACTOR * rec.write_seconds + 0.01
    writes = rec.writes
    rec._cost_gap = 5.0  # as if the last write had taken 50 ms
    rec.on_tick(B.Reading(now + 1.0, rss=2 * 10**9))
    assert rec.writes == writes  # too soon for such a slow writer
    rec.on_tick(B.Reading(now + 6.0, rss=3 * 10**9))
    assert rec.writes == writes + 1


def test_stop_recording_removes_the_record_or_keeps_it(tmp_path):
    rec = R.start_recording(tmp_path)
    assert rec.path.exists() and R.is_recording() and B.status().watching
    R.stop_recording()
    assert not rec.path.exists() and not R.is_recording() and not B.status().watching
    rec = R.start_recording(tmp_path)
    R.stop_recording(keep=True)
    assert rec.path.exists()


def test_bad_interval_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="interval"):
        R.start_recording(tmp_path, interval=0)


def test_state_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert R.state_dir() == tmp_path / "mprofile-ipy"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert R.state_dir() == Path.home() / ".local" / "state" / "mprofile-ipy"


def test_process_alive_tells_pid_reuse_from_the_same_process():
    me = R.process_identity()
    assert R.process_alive(me)
    assert not R.process_alive({**me, "start_ticks": me["start_ticks"] + 1})  # pid reused
    assert not R.process_alive({**me, "boot_id": "another-boot"})
    assert not R.process_alive({"pid": _dead_pid()})
    assert not R.process_alive({"pid": "1"})


# ---------------------------------------------------------------------------------------------
# Finding and loading records


def test_load_prefers_same_notebook_then_same_cwd_then_newest(tmp_path):
    now = time.time()
    dead = [_dead_pid() for _ in range(3)]
    fake_record(tmp_path, pid=dead[0], cwd="/elsewhere", written_at=now)
    fake_record(tmp_path, pid=dead[1], cwd="/work/here", written_at=now - 60)
    fake_record(tmp_path, pid=dead[2], notebook="nb.ipynb", cwd="/other", written_at=now - 120)
    assert P.load_postmortem(tmp_path, notebook="nb.ipynb", cwd="/work/here").pid == dead[2]
    assert P.load_postmortem(tmp_path, notebook="x.ipynb", cwd="/work/here").pid == dead[1]
    assert P.load_postmortem(tmp_path, notebook="x.ipynb", cwd="/nowhere").pid == dead[0]


def test_live_processes_are_not_post_mortems(tmp_path):
    me = R.process_identity()
    fake_record(tmp_path, pid=os.getpid(), ticks=me["start_ticks"])
    with pytest.raises(P.NoPostMortem, match="no record of a dead process"):
        P.load_postmortem(tmp_path)
    assert [r.alive for r in P.find_records(tmp_path)] == [True]


def test_post_mortem_fields_summary_and_result(tmp_path):
    path = fake_record(tmp_path, pid=_dead_pid(), notebook="pipeline.ipynb")
    pm = P.load_postmortem(path)  # a file named explicitly
    assert (pm.running.file, pm.running.line, pm.running.source) == ("In [7]", 3, "x = f()")
    assert pm.cell == pm.running and pm.executing
    assert (pm.rss, pm.peak_rss, pm.traced) == (300 * MiB, 310 * MiB, 250 * MiB)
    assert pm.traced_total == 4 * MiB and pm.timeline and pm.notebook == "pipeline.ipynb"
    text = str(pm)
    assert "pipeline.ipynb" in text and "running: In [7], line 3: x = f()" in text
    assert "peak RSS 310.0 MiB" in text and "4.0 MiB" in text
    assert "<b>Post-mortem" in pm._repr_html_()
    result = pm.to_result()
    assert result.snapshot is pm.snapshot
    assert "post-mortem of In [7]" in repr(result)


def test_damaged_and_foreign_files(tmp_path):
    dead = _dead_pid()
    good = fake_record(tmp_path, pid=dead, written_at=time.time() - 100)
    bad = tmp_path / f"{_dead_pid()}-5{R.RECORD_SUFFIX}"
    bad.write_bytes(gzip.compress(b"{not json"))
    assert P.load_postmortem(tmp_path).path == good  # a damaged record hides nothing
    with pytest.raises(SnapshotFormatError):
        P.load_postmortem(bad)
    plain = tmp_path / "plain.snapshot"
    save_snapshot(Snapshot([], 1), plain)
    with pytest.raises(P.NoPostMortem, match="not a flight record"):
        P.load_postmortem(plain)
    with pytest.raises(P.NoPostMortem):
        P.load_postmortem(tmp_path / "missing")
    with pytest.raises(P.NoPostMortem):
        P.load_postmortem(tmp_path / "empty-dir-that-does-not-exist" / "x")


def test_newer_record_version_is_refused(tmp_path):
    path = fake_record(tmp_path, pid=_dead_pid())
    snap = load_snapshot(path)
    snap.meta["record"]["version"] = R.RECORD_VERSION + 1
    save_snapshot(snap, path)
    with pytest.raises(P.NoPostMortem, match="newer version"):
        P.load_postmortem(path)


def test_cleanup_keeps_live_and_recent_records(tmp_path):
    now = time.time()
    me = R.process_identity()
    live = fake_record(tmp_path, pid=os.getpid(), ticks=me["start_ticks"], mtime=now - 30 * 86400)
    old = fake_record(tmp_path, pid=_dead_pid(), mtime=now - 8 * 86400)
    recent = [fake_record(tmp_path, pid=_dead_pid(), mtime=now - i) for i in range(4)]
    stale_tmp = tmp_path / f".x{R.RECORD_SUFFIX}.{_dead_pid()}.tmp"
    stale_tmp.write_bytes(b"partial")
    removed = set(P.cleanup_records(tmp_path, keep=3))
    assert removed == {old, recent[3], stale_tmp}
    assert live.exists() and all(p.exists() for p in recent[:3])


# ---------------------------------------------------------------------------------------------
# SIGKILL: a plain process, then a real kernel


CHILD = textwrap.dedent("""
    import sys, time
    import mprofile_ipy as mp
    from mprofile_ipy import recorder
    mp.start(seed=11)
    recorder.start_recording(sys.argv[1], interval=0.2)
    def work():
        blocks = [b"z" * 1_000_000 for _ in range(200)]
        print("ready", flush=True)
        time.sleep(60)
    work()
""")


def test_sigkilled_process_leaves_a_record_and_a_clean_exit_does_not(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "rec")],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready"
    _wait_for_record(tmp_path / "rec", lambda pm: "time.sleep(60)" in pm.running.source)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    pm = P.load_postmortem(tmp_path / "rec")
    assert pm.pid == proc.pid and pm.running.source == "time.sleep(60)"
    where, size = pm.top_sites(1)[0]
    assert "blocks = [b\"z\" * 1_000_000 for _ in range(200)]" in where
    assert abs(size - 200e6) < 0.1 * 200e6
    # a process that exits normally removes its record
    clean = subprocess.run([sys.executable, "-c", "import sys; from mprofile_ipy import "
                            "recorder; recorder.start_recording(sys.argv[1])",
                            str(tmp_path / "clean")], env=env, timeout=60)
    assert clean.returncode == 0
    assert not list((tmp_path / "clean").glob(f"*{R.RECORD_SUFFIX}"))


def _wait_for_record(directory: Path, ready, timeout: float = 20.0) -> P.PostMortem:
    """Poll the (single) live record in ``directory`` until ``ready(post_mortem)``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in directory.glob(f"*{R.RECORD_SUFFIX}"):
            try:
                pm = P.PostMortem(path, load_snapshot(path))
            except Exception:  # noqa: BLE001 - a file being replaced: try again
                continue
            if pm.running is not None and ready(pm):
                return pm
        time.sleep(0.1)
    raise AssertionError(f"no record in {directory} became ready")


def test_kernel_killed_mid_cell_is_named_by_the_next_kernel(tmp_path):
    from test_budget import SETUP, Kernel

    first = Kernel(tmp_path)
    try:
        first.ok(SETUP + "mp.start(seed=7)\nimport time")
        first.kc.execute("keep = []\nfor i in range(300):\n    keep.append(b'k' * 1_000_000)\n"
                         "time.sleep(120)\n")
        state = tmp_path / "mprofile-ipy"
        _wait_for_record(state, lambda pm: pm.running.source == "time.sleep(120)")
        os.kill(first.pid, signal.SIGKILL)  # what the OOM killer does
        first.km.provisioner.process.wait()
    finally:
        first.shutdown()
    second = Kernel(tmp_path)
    try:
        text = second.ok(
            "from mprofile_ipy.postmortem import load_postmortem\n"
            "pm = load_postmortem()\n"
            "where, size = pm.top_sites(1)[0]\n"
            "print(pm.running.file, '|', pm.running.line, '|', pm.running.source)\n"
            "print(where)\nprint(size)\n")
    finally:
        second.shutdown()
    running, where, size = text.strip().splitlines()
    label, line, source = (x.strip() for x in running.split("|"))
    assert label.startswith("In [") and line == "4" and source == "time.sleep(120)"
    assert where.startswith(label) and "line 3: keep.append(b'k' * 1_000_000)" in where
    assert abs(float(size) - 300e6) < 0.1 * 300e6
