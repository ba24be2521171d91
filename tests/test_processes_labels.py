"""The process and task dimensions of a snapshot: model, merge, files, pprof labels.

GIVEN per-process snapshots (one with Dask-style thread labels) WHEN they are merged,
saved, loaded, exported to pprof and read back THEN every step keeps which process and
which task allocated what, and ``go tool pprof -tagfocus`` filters on it.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess

import pytest

from mprofile_ipy import estimate
from mprofile_ipy.errors import SnapshotFormatError
from mprofile_ipy.export.pprof import load_pprof, to_profile, write_pprof
from mprofile_ipy.model import Filter, Snapshot
from mprofile_ipy.processes import ProcessPart, group_totals, merge
from mprofile_ipy.storage import load_snapshot

READ = (("/w/tasks.py", 3, "read_chunk", 1), ("/w/dask.py", 10, "execute", 5))
SUM = (("/w/tasks.py", 8, "sum_chunk", 6), ("/w/dask.py", 10, "execute", 5))
CELL = (("/tmp/ipykernel_1/4.py", 2, "<module>", 1),)


def worker_a(rate: int = 1) -> Snapshot:
    """A worker that ran read_parquet (label 1) and sum (label 2) tasks."""
    traces = [(0, 1000, READ, 2, 1, 11, 1)] * 3 + [(0, 500, SUM, 2, 1, 12, 2)]
    traces.append((0, 64, SUM, 2, 1, 11))  # outside any task: no label
    allocated = [(READ, 2, 5, 5000, 5, 0.0, 0, 1), (SUM, 2, 2, 1000, 2, 0.0, 0, 2)]
    return Snapshot(traces, 8, sample_rate=rate, allocated=allocated,
                    meta={"labels": {"1": "read_parquet", "2": "sum"}})


def worker_b(rate: int = 1) -> Snapshot:
    """Another worker whose label 1 is "sum": merging must renumber it."""
    traces = [(0, 700, SUM, 2, 1, 21, 1)] * 2
    allocated = [(SUM, 2, 4, 2800, 4, 0.0, 0, 1)]
    return Snapshot(traces, 8, sample_rate=rate, allocated=allocated,
                    meta={"labels": {"1": "sum"}})


def kernel(rate: int = 1) -> Snapshot:
    traces = [(0, 2000, CELL, 1, 1, 1)]
    return Snapshot(traces, 8, sample_rate=rate, allocated=[(CELL, 1, 1, 2000)],
                    meta={"python": "3.11.0"})


def merged(rate: int = 1) -> Snapshot:
    parts = [ProcessPart("kernel (pid 10)", "kernel", 10, kernel(rate)),
             ProcessPart("worker tcp://127.0.0.1:4001", "worker", 41, worker_a(rate),
                         address="tcp://127.0.0.1:4001"),
             ProcessPart("worker tcp://127.0.0.1:4002", "worker", 42, worker_b(rate),
                         address="tcp://127.0.0.1:4002")]
    return merge(parts, ["worker tcp://127.0.0.1:4003 left the cluster"]).merged


def sizes(snapshot: Snapshot, by: str, which: str = "live") -> dict[str, float]:
    return {g.name: (g.live if which == "live" else g.allocated).size
            for g in group_totals(snapshot, by)}


# ------------------------------------------------------------------------------ the model


def test_traces_carry_label_and_process_and_statistics_ignore_them():
    snap = merged()
    assert len(snap.traces) == 1 + 5 + 2
    assert {(t.label, t.process) for t in snap.traces} == {(0, 0), (1, 1), (2, 1), (0, 1),
                                                           (2, 2)}
    # "sum" is one label whichever worker ran it; labels are named by the merged table
    assert snap.labels == {1: "read_parquet", 2: "sum"}
    assert snap.label_name(0) == "" and snap.label_name(9) == "label 9"
    assert snap.process_info(2) == {"label": "worker tcp://127.0.0.1:4002", "kind": "worker",
                                    "pid": 42, "address": "tcp://127.0.0.1:4002"}
    # statistics merge the dimensions, as tracemalloc would: one line, every process
    by_line = {(s.traceback[0].filename, s.traceback[0].lineno): s.size
               for s in snap.statistics("lineno")}
    assert by_line[("/w/tasks.py", 8)] == 500 + 64 + 1400
    assert snap.total_size == 2000 + 3000 + 564 + 1400


def test_split_by_task_and_by_process_adds_up_to_the_whole():
    snap = merged()
    assert sizes(snap, "task") == {"read_parquet": 3000, "": 2064, "sum": 1900}
    assert sizes(snap, "task", "allocated") == {"read_parquet": 5000, "sum": 3800, "": 2000}
    assert sizes(snap, "process") == {"worker tcp://127.0.0.1:4001": 3564,
                                      "kernel (pid 10)": 2000,
                                      "worker tcp://127.0.0.1:4002": 1400}
    parts = snap.partition("label", "process")
    assert sorted(parts) == [(0, 0), (0, 1), (1, 1), (2, 1), (2, 2)]
    assert sum(p.total_size for p in parts.values()) == snap.total_size
    with pytest.raises(ValueError, match="'process' or 'task'"):
        snap.split("thread")


def test_filters_and_trace_equality_keep_the_dimensions():
    snap = merged()
    kept = snap.filter_traces([Filter(True, "/w/tasks.py")])
    assert sizes(kept, "task") == {"read_parquet": 3000, "sum": 1900, "": 64}
    assert kept.meta["labels"] == snap.meta["labels"]
    a, b = Snapshot([(0, 8, CELL, 1, 1, 0, 1, 0)], 1), Snapshot([(0, 8, CELL, 1, 1, 0, 2, 0)], 1)
    assert a.traces[0] != b.traces[0]
    plain = Snapshot([(0, 8, CELL, 1, 1, 0)], 1)
    assert plain.traces[0] == Snapshot([(0, 8, CELL, 1, 1, 0, 0, 0)], 1).traces[0]
    assert not plain.has_dimensions and merged().has_dimensions
    with pytest.raises(TypeError, match="label"):
        Snapshot([(0, 8, CELL, 1, 1, 0, 1, 0, 9)], 1)


def test_merge_of_sampled_snapshots_keeps_estimates_per_task():
    rate = 512
    snap = merged(rate)
    w = estimate.weight
    by_task = sizes(snap, "task")
    assert by_task["read_parquet"] == pytest.approx(3 * 1000 * w(1000, rate))
    assert by_task["sum"] == pytest.approx(500 * w(500, rate) + 2 * 700 * w(700, rate))


# ------------------------------------------------------------------------------ files


def test_a_saved_merged_snapshot_keeps_process_and_task(tmp_path):
    snap = merged(256)
    path = tmp_path / "merged.mprof"
    snap.dump(path)
    doc = json.loads(gzip.decompress(path.read_bytes()))
    assert doc["version"] == 3 and "label" in doc["traces"] and "process" in doc["traces"]
    loaded = load_snapshot(path)
    assert [t._trace[6:] for t in loaded.traces] == [t._trace[6:] for t in snap.traces]
    assert loaded.allocated_records == snap.allocated_records
    assert sizes(loaded, "task") == pytest.approx(sizes(snap, "task"))
    assert sizes(loaded, "process", "allocated") == pytest.approx(
        sizes(snap, "process", "allocated"))
    assert loaded.meta["processes"] == snap.meta["processes"]


def test_files_with_bad_labels_are_refused(tmp_path):
    path = tmp_path / "bad.mprof"
    merged().dump(path)
    doc = json.loads(gzip.decompress(path.read_bytes()))
    for change, message in [
        (lambda d: d["traces"]["label"].__setitem__(0, -1), "'label' holds a value out of"),
        (lambda d: d["traces"]["process"].__setitem__(0, "x"), "not integers"),
        (lambda d: d["meta"].__setitem__("labels", {"one": "sum"}), "meta.labels"),
        (lambda d: d["meta"].__setitem__("processes", [{"label": 3}]), "meta.processes"),
        (lambda d: d.__setitem__("allocated", [[0, 1, 1, 1, 1, 0, 0, 1, -2]]), "process"),
    ]:
        bad = json.loads(json.dumps(doc))
        change(bad)
        target = tmp_path / "changed.mprof"
        target.write_bytes(gzip.compress(json.dumps(bad).encode()))
        with pytest.raises(SnapshotFormatError, match=re.escape(message)):
            load_snapshot(target)


# ------------------------------------------------------------------------------ pprof


def _labels(profile) -> list[dict[str, object]]:
    table = profile.string_table
    out = []
    for sample in profile.sample:
        out.append({table[lab.key]: (table[lab.str] if lab.str else lab.num)
                    for lab in sample.label})
    return out


def test_pprof_samples_carry_task_process_worker_and_pid_labels():
    profile = to_profile(merged())
    labels = _labels(profile)
    tasks = {lab.get("task") for lab in labels}
    assert tasks == {None, "read_parquet", "sum"}
    workers = {(lab["process"], lab.get("worker"), lab["pid"], lab["process_kind"])
               for lab in labels}
    assert workers == {("kernel (pid 10)", None, 10, "kernel"),
                       ("worker tcp://127.0.0.1:4001", "tcp://127.0.0.1:4001", 41, "worker"),
                       ("worker tcp://127.0.0.1:4002", "tcp://127.0.0.1:4002", 42, "worker")}
    # a snapshot of one process keeps the plain labels it always had
    assert not {"task", "process", "pid"} & {k for lab in _labels(to_profile(kernel()))
                                                for k in lab}


def test_save_load_to_pprof_and_back_keeps_the_dimensions(tmp_path):
    snap = merged(1024)
    path = tmp_path / "merged.mprof"
    snap.dump(path)
    out = tmp_path / "merged.pb.gz"
    load_snapshot(path).to_pprof(out)
    back = load_pprof(out)
    assert back.labels == {1: "read_parquet", 2: "sum"} or set(back.labels.values()) == {
        "read_parquet", "sum"}
    for by in ("task", "process"):
        assert sizes(back, by) == pytest.approx(sizes(snap, by), abs=1)
        assert sizes(back, by, "allocated") == pytest.approx(sizes(snap, by, "allocated"),
                                                             abs=1)
    assert {p["label"]: (p["kind"], p["pid"], p["address"]) for p in back.processes} == {
        p["label"]: (p["kind"], p["pid"], p["address"]) for p in snap.processes}


GO = shutil.which("go")


def go_pprof(*args: str) -> str:
    env = dict(os.environ, PPROF_TMPDIR=os.environ.get("TMPDIR", "/tmp"))
    done = subprocess.run([GO, "tool", "pprof", "-symbolize=none", *args],  # type: ignore[list-item]
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def top_total(text: str) -> int:
    """What the shown nodes hold, from `pprof -top -unit=B` ("accounting for 3000B")."""
    m = re.search(r"accounting for (\d+)B, \S+ of (\d+)B total", text)
    assert m, text
    return int(m.group(1))


@pytest.mark.skipif(GO is None, reason="`go` not installed (scripts/test.sh installs it)")
def test_go_tool_pprof_filters_on_task_and_process(tmp_path):
    path = tmp_path / "merged.pb.gz"
    write_pprof(merged(), path)
    tags = go_pprof("-tags", str(path))
    assert re.search(r"task: Total \S+\s+\S+ \(\s*[\d.]+%\): read_parquet", tags), tags
    assert "worker tcp://127.0.0.1:4001" in tags and "process_kind" in tags
    read = go_pprof("-top", "-unit=B", "-tagfocus=task=read_parquet", str(path))
    assert top_total(read) == 3000 and "read_chunk" in read and "sum_chunk" not in read
    summed = go_pprof("-top", "-unit=B", "-tagfocus=task=sum", str(path))
    assert top_total(summed) == 1900
    one = go_pprof("-top", "-unit=B", "-tagfocus=worker=tcp://127.0.0.1:4002", str(path))
    assert top_total(one) == 1400
    kern = go_pprof("-top", "-unit=B", "-tagfocus=process_kind=kernel", str(path))
    assert top_total(kern) == 2000 and "<module>" in kern
    alloc = go_pprof("-top", "-unit=B", "-sample_index=alloc_space", "-tagfocus=task=sum",
                     str(path))
    assert top_total(alloc) == 3800


def test_the_samplers_label_lists_are_folded_into_the_traces():
    """The sampler hands labels over as lists parallel to the traces and the totals
    (meta['trace_labels'], meta['allocated_labels']); the model keeps them per trace."""
    traces = [(0, 100, READ, 2, 1, 11), (0, 50, SUM, 2, 1, 11)]
    allocated = [(READ, 2, 1.0, 100.0, 1, 0.0), (SUM, 2, 1.0, 50.0, 1, 0.0)]
    snap = Snapshot(traces, 8, allocated=allocated,
                    meta={"trace_labels": [4, 0], "allocated_labels": [4, 0],
                          "labels": {"4": "read_parquet"}})
    assert [t.label for t in snap.traces] == [4, 0]
    assert sizes(snap, "task") == {"read_parquet": 100, "": 50}
    assert sizes(snap, "task", "allocated") == {"read_parquet": 100, "": 50}
    # the lists stay, as copies of the traces' labels: a filtered snapshot has its own
    assert snap.meta["trace_labels"] == [4, 0] and snap.meta["allocated_labels"] == [4, 0]
    only_read = snap.filter_traces([Filter(True, "/w/tasks.py", 3)])
    assert only_read.meta["trace_labels"] == [4] and only_read.meta["allocated_labels"] == [4]
    unlabelled = snap.split("task")[""]
    assert "trace_labels" not in unlabelled.meta  # no label left: the lists go
    assert "trace_labels" not in merged().meta or len(merged().meta["trace_labels"]) == 8
    with pytest.raises(ValueError, match="one label per trace"):
        Snapshot(traces, 8, meta={"trace_labels": [1]})


def test_a_real_thread_label_reaches_the_task_split():
    import threading

    import mprofile_ipy as mp
    from mprofile_ipy import sampler

    if not hasattr(sampler, "set_thread_label"):
        pytest.skip("this sampler records no thread labels")
    kept: list = []

    def labelled() -> None:
        sampler.set_thread_label(7)
        kept.extend(bytearray(1000) for _ in range(20))
        sampler.set_thread_label(0)

    mp.start(sample_rate=1)
    try:
        worker = threading.Thread(target=labelled)
        worker.start()
        worker.join()
        snap = mp.take_snapshot()
    finally:
        mp.stop()
    snap.meta["labels"] = {"7": "load"}
    parts = snap.split("task")
    at_line = [s for s in parts["load"].statistics("lineno")
               if s.traceback[0].filename == __file__]
    assert sum(s.size for s in at_line) >= 20 * 1000
    kept.clear()
