"""Per-thread labels (sampler.set_thread_label): a label is part of a traceback's identity,
stays on its thread, is not inherited by a fork child, and leaves unlabelled snapshots as
they were (no ``trace_labels`` in meta)."""

from __future__ import annotations

import os
import threading

import pytest

import mprofile_ipy as mp
from mprofile_ipy import sampler

HERE = __file__


@pytest.fixture(autouse=True)
def _always_stop():
    sampler.set_thread_label(0)
    yield
    sampler.set_thread_label(0)
    mp.stop()


def make_blocks(n: int) -> list[bytearray]:
    return [bytearray(1000) for _ in range(n)]  # label-site


def labelled_traces(snapshot: mp.Snapshot) -> list[tuple[int, int]]:
    """(label, size) of each trace allocated at the label-site line of this file."""
    line = next(i for i, text in enumerate(open(HERE), 1)
                if text.rstrip().endswith("# label-site"))
    labels = snapshot.meta.get("trace_labels", [0] * len(snapshot.traces))
    assert len(labels) == len(snapshot.raw_traces)
    out = []
    for trace, label in zip(snapshot.raw_traces, labels, strict=True):
        frames = trace[2]
        if frames[0][0] == HERE and frames[0][1] == line and trace[1] >= 1000:
            out.append((label, trace[1]))
    return out


def test_same_stack_under_two_labels_is_two_tracebacks():
    mp.start(sample_rate=1, max_frames=8)
    kept = []
    for label, n in ((7, 10), (9, 20), (0, 5)):   # one call site: the same stack each time
        sampler.set_thread_label(label)
        assert sampler.get_thread_label() == label
        kept.append(make_blocks(n))
    snap = mp.take_snapshot()
    got = labelled_traces(snap)
    counts = {label: sum(1 for lab, _ in got if lab == label) for label in {lab for lab, _ in got}}
    assert counts == {7: 10, 9: 20, 0: 5}
    # Frames are identical across labels; the label alone separates them in the C tables.
    tb_ids = {}
    for trace, label in zip(snap.raw_traces, snap.meta["trace_labels"], strict=True):
        tb_ids.setdefault(label, set()).add(trace[2])
    assert tb_ids[7] & tb_ids[9] & tb_ids[0]
    # allocated (since start) totals are split by label too
    alloc_labels = snap.meta["allocated_labels"]
    assert len(alloc_labels) == len(snap.allocated)
    line = next(i for i, text in enumerate(open(HERE), 1)
                if text.rstrip().endswith("# label-site"))
    by_label: dict[int, float] = {}
    for entry, label in zip(snap.allocated, alloc_labels, strict=True):
        frames, _, _, size = entry[:4]
        if frames[0][:2] == (HERE, line):
            by_label[label] = by_label.get(label, 0.0) + size
    # n bytearrays: n buffers of 1001 bytes, n objects and the list (exact mode)
    assert sorted(by_label) == [0, 7, 9]
    for label, n in ((7, 10), (9, 20), (0, 5)):
        assert 1001 * n < by_label[label] < 1200 * n + 400
    del kept


def test_label_of_one_thread_does_not_leak_into_another():
    mp.start(sample_rate=1, max_frames=8)
    ready = threading.Event()
    go = threading.Event()
    kept = []

    def worker():
        sampler.set_thread_label(42)
        ready.set()
        go.wait(10)
        kept.append(make_blocks(6))

    t = threading.Thread(target=worker)
    t.start()
    ready.wait(10)
    assert sampler.get_thread_label() == 0          # ours is untouched
    go.set()
    mine = make_blocks(4)
    t.join(10)
    snap = mp.take_snapshot()
    by_thread: dict[tuple[int, int], int] = {}
    labels = snap.meta["trace_labels"]
    line = next(i for i, text in enumerate(open(HERE), 1)
                if text.rstrip().endswith("# label-site"))
    for trace, label in zip(snap.raw_traces, labels, strict=True):
        if trace[2][0][:2] == (HERE, line) and trace[1] >= 1000:
            key = (trace[5], label)
            by_thread[key] = by_thread.get(key, 0) + 1
    assert by_thread == {(t.ident, 42): 6, (threading.get_ident(), 0): 4}
    del mine
    kept.clear()


def test_no_label_leaves_the_snapshot_as_it_was():
    mp.start(sample_rate=1, max_frames=8)
    blocks = make_blocks(3)
    snap = mp.take_snapshot()
    assert "trace_labels" not in snap.meta and "allocated_labels" not in snap.meta
    assert all(len(t) == 6 for t in snap.raw_traces)
    del blocks


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_starts_unlabelled():
    mp.start(sample_rate=1, max_frames=8)
    sampler.set_thread_label(5)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its label and whether its new blocks carry one
        code = 1
        try:
            label = sampler.get_thread_label()
            blocks = make_blocks(3)
            snap = mp.take_snapshot()
            got = labelled_traces(snap)
            child_labels = sorted({lab for lab, _ in got[-3:]})
            os.write(w, f"{label} {child_labels}".encode())
            del blocks
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        answer = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert answer == "0 [0]"
    assert sampler.get_thread_label() == 5          # the parent keeps its own


def test_labels_survive_without_a_stack():
    """A RAW block sampled without the GIL has no frames but keeps its thread's label."""
    mp.start(sample_rate=1, max_frames=8)
    sampler.set_thread_label(3)
    ptr = sampler.lib.mp_test_raw_malloc_nogil(12345)
    try:
        snap = mp.take_snapshot()
        hits = [label for trace, label in zip(snap.raw_traces, snap.meta["trace_labels"],
                                               strict=True)
                if trace[1] == 12345 and trace[3] == 0]
        assert hits == [3]
    finally:
        sampler.lib.mp_test_raw_free_nogil(ptr)


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (2**32, ValueError),
                                      ("x", TypeError), (True, TypeError)])
def test_bad_labels_are_refused(bad, exc):
    with pytest.raises(exc, match="label"):
        sampler.set_thread_label(bad)
