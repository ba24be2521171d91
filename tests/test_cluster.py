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
