"""Dask workers: a real LocalCluster with worker processes, no mocks.

GIVEN sampling on every worker, WHEN tasks allocate a known amount each, THEN each
worker's snapshot holds its share at the task's line, the total is right within 10%, and
nothing keeps sampling on the workers after the session closes.
"""

from __future__ import annotations

import pytest

distributed = pytest.importorskip("distributed")

import mprofile_ipy as mp  # noqa: E402
from mprofile_ipy import cluster  # noqa: E402
from mprofile_ipy.model import Snapshot  # noqa: E402

BLOCK = 8192
BLOCKS = 512  # 4 MiB per task
TASKS = 6
RATE = 4096


def task_allocates(i: int) -> int:
    """Each task keeps 4 MiB alive in its result (the worker holds results)."""
    return len([bytearray(BLOCK) for _ in range(BLOCKS)])  # TASK LINE


def _task_lineno() -> int:
    with open(__file__, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if "# TASK LINE" in line and "bytearray" in line:
                return n
    raise AssertionError


def _allocated_at_task_line(snapshot) -> float:
    lineno = _task_lineno()
    return sum(s.size_estimate for s in snapshot.allocated_statistics("lineno")
               if s.traceback[0].filename == __file__ and s.traceback[0].lineno == lineno)


def _is_tracing(dask_worker=None) -> bool:
    import mprofile_ipy

    return mprofile_ipy.is_tracing()


def test_without_a_client_a_clear_error():
    mp.start(sample_rate=RATE)
    try:
        import distributed as d

        with pytest.raises(ValueError):
            d.get_client()  # runs before the module's client fixture exists
        with pytest.raises(mp.MprofileError, match="no Dask client"):
            cluster.profile_workers()
    finally:
        mp.stop()


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, host="127.0.0.1") as lc:
        with distributed.Client(lc) as c:
            yield c


def test_each_workers_share_and_the_total(client):
    mp.start(sample_rate=RATE)
    try:
        with cluster.profile_workers(client) as session:
            assert session.failed == {}
            assert all(client.run(_is_tracing).values())
            futures = client.map(task_allocates, range(TASKS))
            assert sum(client.gather(futures)) == TASKS * BLOCKS
            got = session.collect()
        assert got.failed == {} and got.lost == []
        assert len(got.snapshots) == 2
        shares = {address: _allocated_at_task_line(snap) for address, snap in got.snapshots}
        per_worker_tasks = client.run(lambda dask_worker: 0)  # both workers answered
        assert set(shares) == set(per_worker_tasks)
        assert sum(shares.values()) == pytest.approx(TASKS * BLOCK * BLOCKS, rel=0.10)
        for address, snap in got.snapshots:
            assert snap.meta["process"]["worker"] == address
            # a share is a whole number of tasks' worth of memory
            tasks = shares[address] / (BLOCK * BLOCKS)
            assert abs(tasks - round(tasks)) < 0.25, shares
        # after the session, nothing samples on the workers any more
        assert not any(client.run(_is_tracing).values())
    finally:
        mp.stop()


def test_a_worker_that_joins_during_the_session_is_profiled(client):
    mp.start(sample_rate=RATE)
    try:
        with cluster.profile_workers(client) as session:
            cluster_obj = client.cluster
            cluster_obj.scale(3)
            client.wait_for_workers(3, timeout=60)
            assert all(client.run(_is_tracing).values())
            got = session.collect()
            assert len(got.snapshots) == 3
        cluster_obj.scale(2)
    finally:
        mp.stop()


# ------------------------------------------------------------------ task labels

def alpha(i: int) -> tuple[str, int]:
    """4 MiB allocated (and freed) per task; reports the label of the thread running it."""
    kept = [bytearray(BLOCK) for _ in range(BLOCKS)]  # ALPHA LINE
    return _running_label(), len(kept)


def beta(i: int) -> tuple[str, int]:
    """2 MiB per task."""
    kept = [bytearray(BLOCK) for _ in range(BLOCKS // 2)]  # BETA LINE
    return _running_label(), len(kept)


def failing(i: int) -> None:
    raise RuntimeError("task failed on purpose")


def _running_label() -> str:
    """The prefix this worker's task-label hook set on the calling thread ('' if none)."""
    import threading

    from mprofile_ipy import cluster as c

    label = c._labels.current.get(threading.get_ident(), 0)
    return c._labels.table().get(str(label), "") if label else ""


def test_each_task_labels_the_thread_that_runs_it(client):
    """GIVEN the plugin on every worker WHEN tasks of two prefixes run THEN each runs with
    its prefix's label in its own thread, and no thread keeps a label afterwards."""
    mp.start(sample_rate=RATE)
    try:
        with cluster.profile_workers(client) as session:
            futures = client.map(alpha, range(4), pure=False) + client.map(beta, range(4),
                                                                           pure=False)
            seen = [label for label, _ in client.gather(futures)]
            assert seen == ["alpha"] * 4 + ["beta"] * 4
            bad = client.map(failing, range(2), pure=False)
            distributed.wait(bad)
            assert all(f.status == "error" for f in bad)
            states = client.run(cluster._task_label_state)
            assert all(state["hooked"] for state in states.values())
            assert all(state["current"] == {} for state in states.values()), states
            assert {p for s in states.values() for p in s["labels"].values()} >= {
                "alpha", "beta", "failing"}
            got = session.collect()
            shipped = {p for _, snap in got.snapshots for p in snap.meta["labels"].values()}
            assert shipped >= {"alpha", "beta", "failing"}  # ids last the worker's life
            for _, snap in got.snapshots:
                assert snap.meta["task_labels"] == ("recorded" if cluster.labels_supported()
                                                    else "not recorded: this sampler has "
                                                    "no thread labels")
        # the plugin's teardown put distributed's own function back
        assert not any(s["hooked"] for s in client.run(cluster._task_label_state).values())
        assert [label for label, _ in client.gather(client.map(alpha, [9], pure=False))] == [""]
    finally:
        mp.stop()


@pytest.mark.skipif(not cluster.labels_supported(),
                    reason="the sampler records no thread labels yet (sampler.set_thread_label)")
def test_each_task_prefix_share_of_the_merged_profile(client, tmp_path):
    """Two prefixes allocating known amounts: each prefix's share of the merged profile,
    from the snapshot, from a saved file and from go tool pprof, within 10%."""
    from mprofile_ipy import processes

    mp.start(sample_rate=RATE)
    try:
        with cluster.profile_workers(client) as session:
            futures = client.map(alpha, range(TASKS), pure=False) + client.map(
                beta, range(TASKS), pure=False)
            client.gather(futures)
            got = session.collect()
        parts = [processes.ProcessPart(f"worker {a}", "worker", s.meta["process"]["pid"], s,
                                       address=a) for a, s in got.snapshots]
        merged = processes.merge(parts).merged
    finally:
        mp.stop()
    want = {"alpha": TASKS * BLOCK * BLOCKS, "beta": TASKS * BLOCK * BLOCKS // 2}
    path = tmp_path / "merged.mprof"
    merged.dump(path)
    for snap in (merged, mp.Snapshot.load(path)):
        by_task = {g.name: g.allocated.size for g in processes.group_totals(snap, "task")}
        for prefix, size in want.items():
            assert by_task[prefix] == pytest.approx(size, rel=0.10), by_task
        total = sum(by_task[p] for p in want)
        assert by_task["alpha"] / total == pytest.approx(2 / 3, rel=0.10)


def test_notes_say_why_task_labels_are_missing():
    class Snap:
        def __init__(self, labels):
            self.meta = {"task_labels": labels}

    got = cluster.WorkerCollection(
        snapshots=[("tcp://a", Snap("recorded")),
                   ("tcp://b", Snap("not recorded: this sampler has no thread labels")),
                   ("tcp://c", Snap("not recorded: this sampler has no thread labels"))],
        failed={"tcp://d": "mprofile-ipy is not installed"}, lost=["tcp://e"])
    assert got.notes() == [
        "worker tcp://d: not profiled (mprofile-ipy is not installed)",
        "worker tcp://e left the cluster: its memory is not counted",
        "Dask task labels not recorded (this sampler has no thread labels): group by task "
        "shows no tasks"]
    assert cluster.WorkerCollection(snapshots=[("tcp://a", Snap("recorded"))]).notes() == []


def test_shipped_code_gets_its_cells_file_back():
    ns: dict = {"__name__": "__main__"}
    exec(compile("class C:\n    def m(self):\n        return [x for x in ()]\n\n"
                 "def f():\n    def g():\n        pass\n", "<ipython-input-7-ab>", "exec"), ns)
    files = cluster.shipped_code_files(ns)
    assert files[("m", 2)] == files[("C.m", 2)] == files[("f.<locals>.g", 6)] == (
        "<ipython-input-7-ab>")
    frames = (("<dynamic-code>", 7, "f.<locals>.g", 6), ("<dynamic-code>", 3, "other", 1),
              ("lib.py", 2, "h", 1))
    snap = Snapshot([(0, 100, frames, 3)], 10, sample_rate=1,
                    allocated=[(frames, 3, 1.0, 100.0)])
    fixed = cluster.restore_code_files(snap, files)
    want = (("<ipython-input-7-ab>", 7, "f.<locals>.g", 6), frames[1], frames[2])
    assert fixed.trace_records[0][2] == want and fixed.allocated[0][0] == want
    plain = Snapshot([(0, 100, frames[2:], 1)], 10)
    assert cluster.restore_code_files(plain, files) is plain
