"""Issue 14 wired: ``%%mprofile --children`` and ``%%mprofile --dask`` in a real
InteractiveShell with real processes (a ProcessPoolExecutor, a killed child, a Dask
LocalCluster with worker processes): the merged report holds each process's part (kind,
pid, size and count with their uncertainty), the known allocations are found within 10%,
lost children are noted, nothing keeps sampling afterwards, bad use is a UsageError."""

from __future__ import annotations

import sys
import textwrap

import pytest
from IPython.core.error import UsageError

import mprofile_ipy

MiB = 2**20

WORK = textwrap.dedent("""
    import os
    import signal


    def work(n):
        keep = [bytearray(2**20) for _ in range(n)]  # WORK LINE
        return len(keep)


    def hold(n):
        return [bytearray(2**20) for _ in range(n)]  # HOLD LINE


    def crash():
        os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.fixture(scope="module")
def work_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wire_work")
    (folder / "wire_procs_work.py").write_text(WORK)
    sys.path.insert(0, str(folder))
    yield folder / "wire_procs_work.py"
    sys.path.remove(str(folder))


@pytest.fixture(scope="module")
def ip(ipython_shell, work_module):
    ipython_shell.run_line_magic("load_ext", "mprofile_ipy")
    yield ipython_shell
    ipython_shell.run_line_magic("unload_ext", "mprofile_ipy")
    assert not mprofile_ipy.is_tracing()


def _line(marker: str) -> int:
    return next(n for n, text in enumerate(WORK.splitlines(), 1) if text.endswith(marker))


def _allocated_at(res, path, line: int) -> float:
    return sum(s.allocated for s in res.sites("line", by="allocated")
               if s.frame.filename == str(path) and s.frame.lineno == line)


def test_children_of_a_process_pool_are_merged_with_a_table_per_process(ip, run_cell,
                                                                         work_module):
    number, result, out = run_cell(ip, "%%mprofile --children -o res --seed 1\n"
                                       "from concurrent.futures import ProcessPoolExecutor\n"
                                       "from wire_procs_work import work\n"
                                       "with ProcessPoolExecutor(2) as pool:\n"
                                       "    done = list(pool.map(work, [8, 8, 8, 8]))\n")
    assert result.success, result.error_in_exec
    assert ip.user_ns["done"] == [8, 8, 8, 8]
    res = ip.user_ns["res"]
    kinds = [p.kind for p in res.processes]
    assert kinds.count("kernel") == 1 and kinds.count("child") == 2
    children = [p for p in res.processes if p.kind == "child"]
    assert all(p.pid > 0 and p.label.endswith(f"(pid {p.pid})") for p in children)
    # THEN the 4 x 8 MiB the tasks allocated are found at their line, within 10%
    found = _allocated_at(res, work_module, _line("# WORK LINE"))
    assert abs(found - 32 * MiB) < 0.1 * 32 * MiB, found / MiB
    assert sum(p.allocated for p in children) >= 0.9 * 32 * MiB
    total = sum(p.size for p in res.processes)  # what is still alive (the pool has exited)
    assert total == pytest.approx(res.report.summary.total, rel=1e-9, abs=1e-6)
    assert sum(p.share for p in res.processes) == pytest.approx(1.0 if total > 0 else 0.0)
    # and every view shows the per-process part
    text = out.outputs[0].data["text/plain"]
    assert "Per process (3)" in text and "[child]" in text and "[kernel]" in text
    assert "Per process (3)" in res.to_html()
    assert "'process'" not in text
    data = res.report.to_dict()
    assert [r["label"] for r in data["groupings"]["process"]["rows"]] == [
        p.label for p in res.processes]
    assert not mprofile_ipy.is_tracing()


def test_a_child_that_dies_is_noted_and_loses_only_its_part(ip, run_cell, work_module):
    _, result, out = run_cell(ip, "%%mprofile --children -v text -o res\n"
                                  "import multiprocessing as mproc\n"
                                  "from wire_procs_work import crash, work\n"
                                  "ctx = mproc.get_context('fork')\n"
                                  "ok = ctx.Process(target=work, args=(4,)); ok.start()\n"
                                  "bad = ctx.Process(target=crash); bad.start()\n"
                                  "ok.join(); bad.join()\n")
    assert result.success, result.error_in_exec
    res = ip.user_ns["res"]
    notes = res.warnings()
    assert any("left no snapshot (killed or crashed)" in n for n in notes), notes
    assert "left no snapshot (killed or crashed)" in out.stdout
    assert len([p for p in res.processes if p.kind == "child"]) == 1
    assert _allocated_at(res, work_module, _line("# WORK LINE")) >= 0.9 * 4 * MiB


def test_no_child_started_says_so(ip, run_cell):
    _, result, _ = run_cell(ip, "%mprofile --children -v none -o res x = 1")
    assert result.success
    assert any("started no child process" in n for n in ip.user_ns["res"].warnings())


def test_dask_without_a_client_is_a_usage_error(ip):
    pytest.importorskip("distributed")
    with pytest.raises(UsageError, match="--dask: no Dask client"):
        ip.run_cell_magic("mprofile", "--dask", "x = 1\n")
    assert not mprofile_ipy.is_tracing()


@pytest.fixture
def client(ip):
    """A real 2-worker LocalCluster's client, as ``client`` in the shell's namespace."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    ip.user_ns["client"] = client
    yield client
    client.close()
    cluster.close()
    ip.user_ns.pop("client", None)


def test_dask_workers_are_merged_with_their_share(ip, run_cell, work_module, client):
    try:
        _, result, out = run_cell(ip, "%%mprofile --dask -o res --seed 2\n"
                                      "from wire_procs_work import hold\n"
                                      "futures = client.map(hold, [4] * 6, pure=False)\n"
                                      "sizes = [len(x) for x in client.gather(futures)]\n")
        assert result.success, result.error_in_exec
        res = ip.user_ns["res"]
        workers = [p for p in res.processes if p.kind == "worker"]
        assert len(workers) == 2
        assert {p.address for p in workers} == set(client.scheduler_info()["workers"])
        assert all(p.pid > 0 for p in workers)
        # the 6 x 4 MiB held in the workers' results are found, within 10%, at their line
        line = _line("# HOLD LINE")
        held = sum(s.size for s in res.sites("line")
                   if s.frame.filename == str(work_module) and s.frame.lineno == line)
        assert abs(held - 24 * MiB) < 0.1 * 24 * MiB, held / MiB
        assert abs(sum(p.size for p in workers) - 24 * MiB) < 0.15 * 24 * MiB
        assert "worker tcp://" in out.outputs[0].data["text/plain"]
        # nothing keeps sampling on the workers after the cell
        assert set(client.run(lambda: __import__("mprofile_ipy").is_tracing()).values()) == {
            False}
    finally:
        ip.user_ns.pop("futures", None)


def test_cell_code_shipped_to_dask_workers_shows_as_its_cell(ip, run_cell, client):
    # cloudpickle ships a function defined in a cell by value (renaming its file to
    # <dynamic-code>): the workers' samples still name the cell, as `In [N], line k`
    try:
        number, result, _ = run_cell(ip, "def make(n):\n"
                                         "    import os\n"
                                         "    return os.urandom(n * 2**20)\n")
        assert result.success, result.error_in_exec
        _, result, _ = run_cell(ip, "%%mprofile --dask -o res --seed 3\n"
                                    "futures = client.map(make, [3] * 4, pure=False)\n"
                                    "kept = client.gather(futures)\n")
        assert result.success, result.error_in_exec
        res = ip.user_ns["res"]
        where = {(s.frame.where, s.frame.source) for s in res.sites("line")
                 if s.size > 2 * MiB}
        assert (f"In [{number}], line 3", "return os.urandom(n * 2**20)") in where, where
    finally:
        for name in ("futures", "kept", "res", "make"):
            ip.user_ns.pop(name, None)
