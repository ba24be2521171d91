"""The aggregation pass: per-traceback records, groups, diffs and the call tree, checked
against hand-computed values and against tracemalloc at sample_rate=1."""

import math
import random
import tracemalloc

import pytest

from mprofile_ipy import aggregate, estimate
from mprofile_ipy.aggregate import Frame, Totals, Traceback
from mprofile_ipy.model import Snapshot

A = (("a.py", 3, "f", 1), ("main.py", 9, "<module>", 1))  # most recent first
A2 = (("a.py", 3, "f_renamed", 1), ("main.py", 9, "<module>", 1))  # same key as A
B = (("a.py", 7, "g", 5), ("main.py", 10, "<module>", 1))
C = (("c.py", 1, "h", 1), ("a.py", 3, "f", 1), ("c.py", 1, "h", 1))  # recursive h
RATE = 1000


def sampled():
    raw = [(0, 100, A, 2, 1, 0), (0, 100, A, 2, 1, 0), (0, 5000, A2, 2, 1, 0),
           (0, 10, B, 2, 2, 7), (0, 0, B, 2, 2, 7), (5, 64, C, 3, 0, 1)]
    allocated = [(A, 2, 50.0, 2000.0, 4, 10.0), (B, 2, 2.0, 20.0)]
    return Snapshot(raw, 3, sample_rate=RATE, allocated=allocated)


def terms(sizes, rate=RATE):
    return (sum(s * estimate.weight(s, rate) for s in sizes),
            sum(estimate.weight(s, rate) for s in sizes),
            sum(estimate.size_variance(s, rate) for s in sizes),
            sum(estimate.count_variance(s, rate) for s in sizes))


def test_totals_add_and_errors():
    a = Totals(100.0, 4.0, 4, 400.0, 2.0, False)
    b = Totals(50.0, 1.0, 1, 0.0, 0.0, True)
    s = a + b
    assert (s.size, s.count, s.samples, s.size_var, s.count_var, s.exact) == (
        150.0, 5.0, 5, 400.0, 2.0, False)
    assert s.relative_error == pytest.approx(20.0 / 150.0)
    assert s.count_relative_error == pytest.approx(math.sqrt(2.0) / 5.0)
    low, high = s.size_ci95
    assert low == pytest.approx(150 - 1.959964 * 20) and high == pytest.approx(150 + 1.959964 * 20)
    assert Totals(10, 1, 1).relative_error == 0.0  # exact
    assert Totals(0.0, 3.0, 4, exact=False).relative_error == 0.5  # 1/sqrt(samples)
    assert Totals().empty and not Totals(samples=1).empty


def test_by_traceback_merges_frames_that_differ_only_in_name():
    snap = sampled()
    records = aggregate.by_traceback(snap)
    assert [r.key for r in records] == [Traceback(A), Traceback(B), Traceback(C)]
    a, b, c = records
    size, count, svar, cvar = terms([100, 100, 5000])
    assert a.live.size == pytest.approx(size) and a.live.count == pytest.approx(count)
    assert a.live.size_var == pytest.approx(svar) and a.live.count_var == pytest.approx(cvar)
    assert a.live.samples == 3 and not a.live.exact
    assert a.traceback.total_nframe == 2 and a.members == ()
    # the zero-byte sample weighs 1, as in the C sampler
    assert b.live.count == pytest.approx(estimate.weight(10, RATE) + 1.0)
    # allocation totals: given samples/variance kept, missing ones approximated
    assert (a.allocated.size, a.allocated.count, a.allocated.samples) == (2000.0, 50.0, 4)
    assert a.allocated.size_var == 10.0
    assert b.allocated.size_var == pytest.approx(estimate.approx_variances(2.0, 20.0, RATE)[0])
    assert c.allocated.empty
    assert aggregate.by_traceback(snap) is records  # cached: one pass per snapshot


def test_group_lineno_filename_function_and_cumulative():
    snap = sampled()
    records = aggregate.by_traceback(snap)
    by_line = {str(r.key): r for r in aggregate.group(records, "lineno")}
    assert set(by_line) == {"a.py:3", "a.py:7", "c.py:1"}
    assert by_line["a.py:3"].live.size == pytest.approx(terms([100, 100, 5000])[0])
    by_file = {r.key: r for r in aggregate.group(records, "filename")}
    assert by_file["a.py"].live.samples == 5 and by_file["c.py"].live.samples == 1
    assert len(by_file["a.py"].members) == 2
    # cumulative: the recursive frame counts twice, its record appears once
    cum = {str(r.key): r for r in aggregate.group(records, "lineno", cumulative=True)}
    assert cum["c.py:1"].live.samples == 2 and len(cum["c.py:1"].members) == 1
    assert cum["a.py:3"].live.samples == 4 and cum["main.py:9"].live.samples == 3
    funcs = {(r.key.filename, r.key.name): r for r in aggregate.group(records, "function")}
    assert funcs[("a.py", "f")].key.lineno == 1  # named by the function's first line
    assert funcs[("a.py", "g")].live.samples == 2
    # the representative traceback of a group is its heaviest member's
    main = {r.key: r for r in aggregate.group(records, "filename", cumulative=True)}["main.py"]
    assert main.traceback == Traceback(A)
    with pytest.raises(ValueError, match="unknown key_type"):
        aggregate.group(records, "line")
    with pytest.raises(ValueError, match="cumulative mode"):
        aggregate.group(records, "traceback", cumulative=True)


@pytest.mark.parametrize("key_type", ["lineno", "filename", "traceback"])
@pytest.mark.parametrize("cumulative", [False, True])
def test_groups_equal_tracemalloc_at_rate_one(key_type, cumulative):
    if cumulative and key_type == "traceback":
        return
    rng = random.Random(7)
    files = ["a.py", "b.py", "c.py"]
    raw = []
    for _ in range(500):
        frames = tuple((rng.choice(files), rng.randint(1, 4)) for _ in range(rng.randint(1, 3)))
        raw.append((rng.choice([0, 1]), rng.randint(0, 300), frames, len(frames)))
    theirs = tracemalloc.Snapshot(raw, 3).statistics(key_type, cumulative)
    ours = aggregate.group(aggregate.by_traceback(Snapshot(raw, 3)), key_type, cumulative)
    want = {str(s.traceback) if key_type != "traceback" else s.traceback._frames[::-1]:
            (s.size, s.count) for s in theirs}
    got = {}
    for r in ours:
        if key_type == "filename":
            name = f"{r.key}:0"
        elif key_type == "lineno":
            name = str(r.key)
        else:
            name = tuple(f[:2] for f in r.key.raw_frames)
        got[name] = (r.live.size, r.live.count)
        assert type(r.live.size) is int and r.live.exact
    assert got == want


def test_diff_cancels_shared_samples_and_keeps_the_others():
    old = Snapshot([(0, 100, A, 2, 1, 0), (0, 300, B, 2, 1, 0)], 2, sample_rate=RATE)
    new = Snapshot([(0, 100, A, 2, 1, 0), (0, 100, A, 2, 1, 0), (0, 50, C, 3, 1, 0)], 2,
                   sample_rate=RATE)
    diffs = {str(d.key): d for d in aggregate.diff(new, old, "lineno")}
    a, b, c = diffs["a.py:3"], diffs["a.py:7"], diffs["c.py:1"]
    w100 = estimate.weight(100, RATE)
    assert a.size_diff == pytest.approx(100 * w100) and a.count_diff == pytest.approx(w100)
    assert a.size_diff_var == pytest.approx(estimate.size_variance(100, RATE))  # one extra
    assert b.new.empty and b.size_diff == pytest.approx(-300 * estimate.weight(300, RATE))
    assert b.size_diff_var == pytest.approx(estimate.size_variance(300, RATE))
    assert c.old.empty and c.count_diff_var == pytest.approx(estimate.count_variance(50, RATE))
    order = [str(d.key) for d in aggregate.diff(new, old, "lineno")]
    assert order == sorted(order, key=lambda k: -abs(diffs[k].size_diff))
    quick = {str(d.key): d for d in aggregate.diff(new, old, "lineno", variances=False)}
    assert quick["a.py:3"].size_diff == a.size_diff and quick["a.py:3"].size_diff_var == 0.0
    same = aggregate.diff(new, new, "traceback")
    assert all(d.size_diff == 0 and d.size_diff_var == 0 for d in same)


def test_call_tree_is_root_first_with_inclusive_and_own_totals():
    snap = Snapshot([(0, 10, A, 2), (0, 20, B, 2), (0, 5, (("main.py", 9),), 1)], 2)
    tree = aggregate.call_tree(aggregate.by_traceback(snap))
    assert tree.frame is None and tree.total.size == 35 and tree.own.empty
    (main10, main9) = tree.children  # largest first: 20 B under main.py:10, 15 B under 9
    assert (str(main9.frame), main9.total.size, main9.own.size) == ("main.py:9", 15, 5)
    assert (str(main10.frame), main10.total.size) == ("main.py:10", 20)
    (leaf,) = main9.children
    assert (str(leaf.frame), leaf.total.size, leaf.own.size, leaf.children) == (
        "a.py:3", 10, 10, ())
    assert [(d, str(n.frame)) for d, n in tree.walk()] == [
        (0, "None"), (1, "main.py:10"), (2, "a.py:7"), (1, "main.py:9"), (2, "a.py:3")]
    alloc = aggregate.call_tree(aggregate.by_traceback(sampled()), which="allocated")
    assert alloc.total.size == pytest.approx(2020.0)
    with pytest.raises(ValueError, match="which"):
        aggregate.call_tree([], which="peak")


def test_call_tree_of_deep_tracebacks_needs_no_recursion():
    deep = tuple(("r.py", i % 7 + 1) for i in range(3000))
    tree = aggregate.call_tree(aggregate.by_traceback(Snapshot([(0, 8, deep, 3000)], 3000)))
    depth = max(d for d, _ in tree.walk())
    assert depth == 3000


def test_sample_groups_count_identical_samples_once():
    groups = aggregate.sample_groups(sampled())
    first = groups[0]
    assert (first.size, first.n, first.allocator, first.thread_id) == (100, 2, 1, 0)
    assert first.live.size == pytest.approx(2 * 100 * estimate.weight(100, RATE))
    assert sum(g.n for g in groups) == 6
    exact = aggregate.sample_groups(Snapshot([(0, 8, A, 2)] * 3, 2))
    assert [(g.n, g.live.size, g.live.count) for g in exact] == [(3, 24, 3)]


def test_frame_and_traceback_keep_their_public_home():
    assert Frame.__module__ == "mprofile_ipy.model" and Traceback.__module__ == "mprofile_ipy.model"
    import pickle

    tb = Traceback(A, 2)
    assert pickle.loads(pickle.dumps(tb)) == tb
    assert tb.raw_frames == A and list(tb)[0] == Frame(("main.py", 9))


def test_source_lines_never_read_devices_or_fifos(tmp_path):
    # GIVEN frames naming /dev/zero and a FIFO (a snapshot from elsewhere may) WHEN
    # formatted THEN no source is read (linecache would read /dev/zero forever).
    import os

    fifo = tmp_path / "pipe.py"
    os.mkfifo(fifo)
    src = tmp_path / "ok.py"
    src.write_text("x = 1\ny = [0] * 10\n")
    tb = Traceback([("/dev/zero", 1), (str(fifo), 1), (str(src), 2), ("bad\0name", 1)])
    assert tb.format() == ['  File "bad\x00name", line 1', f'  File "{src}", line 2',
                           "    y = [0] * 10", f'  File "{fifo}", line 1',
                           '  File "/dev/zero", line 1']
