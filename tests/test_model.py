"""The snapshot model, built from hand-written raw traces (no sampler running).

The compatibility tests feed the same raw traces to ``tracemalloc.Snapshot`` and to ours with
``sample_rate=1`` and require the same statistics, diffs, filtering and text; the estimate
tests check sampled snapshots against hand-computed values and a seeded simulation.
"""

from __future__ import annotations

import math
import pickle
import random
import tracemalloc
from unittest import mock

import pytest

from mprofile_ipy import estimate
from mprofile_ipy.model import (
    NATIVE_DOMAIN,
    NUMPY_DOMAIN,
    Allocator,
    BaseFilter,
    DomainFilter,
    Filter,
    Frame,
    Snapshot,
    Statistic,
    StatisticDiff,
    Trace,
    Traceback,
)

# The raw traces of CPython's own test_tracemalloc, plus deeper and recursive ones.
RAW1 = [
    (0, 10, (("a.py", 2), ("b.py", 4)), 3),
    (0, 10, (("a.py", 2), ("b.py", 4)), 3),
    (0, 10, (("a.py", 2), ("b.py", 4)), 3),
    (1, 2, (("a.py", 5), ("b.py", 4)), 3),
    (2, 66, (("b.py", 1),), 1),
    (3, 7, (("<unknown>", 0),), 1),
]
RAW2 = [
    (0, 10, (("a.py", 2), ("b.py", 4)), 3),
    (0, 10, (("a.py", 2), ("b.py", 4)), 3),
    (0, 10, (("a.py", 2), ("b.py", 4)), 3),
    (2, 2, (("a.py", 5), ("b.py", 4)), 3),
    (2, 5000, (("a.py", 5), ("b.py", 4)), 3),
    (4, 400, (("c.py", 578),), 1),
]
RECURSIVE = [
    # the same frame twice and the same file three times in one traceback
    (0, 100, (("r.py", 3), ("r.py", 3), ("r.py", 9), ("main.py", 1)), 7),
    (0, 40, (("r.py", 9), ("main.py", 1)), 2),
    (0, 3 * 2**30, (("big.py", 1),), 1),  # > 2 GiB: sizes are 64-bit
]

KEY_MODES = [("lineno", False), ("filename", False), ("traceback", False),
             ("lineno", True), ("filename", True)]


def strip_names(raw):
    """The same traces as tracemalloc would have them: 4-tuples with 2-tuple frames."""
    return [(t[0], t[1], tuple(f[:2] for f in t[2]), t[3]) for t in raw]


def add_names(raw):
    """Our richer form: 6-tuples with 4-tuple frames (name, firstlineno)."""
    return [
        (t[0], t[1], tuple((f[0], f[1], f"fn{f[1]}", max(1, f[1] - 1)) for f in t[2]), t[3],
         Allocator.MEM, 7)
        for t in raw
    ]


def random_raw(seed, n=400):
    rng = random.Random(seed)
    files = ["a.py", "b.py", "pkg/c.py", "<ipython-input-3-abc>", "<unknown>"]
    shared = []
    for _ in range(30):
        depth = rng.randint(1, 6)
        frames = tuple((rng.choice(files), rng.randint(0, 8)) for _ in range(depth))
        shared.append(frames)
    raw = []
    for _ in range(n):
        frames = rng.choice(shared)
        if rng.random() < 0.3:
            frames = tuple(frames)  # an equal tuple that is a distinct object
            frames = tuple(list(frames))
        raw.append((rng.choice([0, 0, 0, 1, NUMPY_DOMAIN]), rng.randint(0, 5000), frames,
                    len(frames) + rng.randint(0, 3)))
    return raw


def stat_view(stats):
    """What a user sees of statistics: order, text, repr and numbers."""
    return [(str(s), repr(s), s.size, s.count, str(s.traceback), s.traceback.format())
            for s in stats]


def diff_view(stats):
    return [(str(s), repr(s), s.size, s.size_diff, s.count, s.count_diff) for s in stats]


@pytest.fixture
def fake_source():
    def getline(filename, lineno):
        return f"  <{filename}, {lineno}>  "

    with mock.patch("linecache.getline", side_effect=getline):
        yield


# ---------------------------------------------------------------------------------------------
# tracemalloc compatibility


@pytest.mark.parametrize("raw", [RAW1, RAW2, RECURSIVE, random_raw(1), random_raw(2)],
                         ids=["raw1", "raw2", "recursive", "random1", "random2"])
@pytest.mark.parametrize("named", [False, True], ids=["plain", "named"])
@pytest.mark.parametrize(("key_type", "cumulative"), KEY_MODES)
def test_statistics_match_tracemalloc(raw, named, key_type, cumulative, fake_source):
    # GIVEN the same raw traces in tracemalloc's and in our snapshot (ours maybe with names)
    theirs = tracemalloc.Snapshot(strip_names(raw), 5)
    ours = Snapshot(add_names(raw) if named else raw, 5, sample_rate=1)
    # WHEN grouped THEN the statistics are the same, in the same order, with the same text
    expected = stat_view(theirs.statistics(key_type, cumulative))
    got = stat_view(ours.statistics(key_type, cumulative))
    if named:  # our Frame repr shows the function name when one was recorded
        got = [(s, _drop_names(r), *rest) for s, r, *rest in got]
    assert got == expected


def _drop_names(text):
    import re

    return re.sub(r" name='fn\d+'", "", text)


@pytest.mark.parametrize(("key_type", "cumulative"), KEY_MODES)
@pytest.mark.parametrize("pair", [(RAW2, RAW1), (RAW1, RAW2), (random_raw(3), random_raw(4)),
                                  (RECURSIVE, RAW1), ([], RAW1), (RAW1, [])])
def test_compare_to_matches_tracemalloc(pair, key_type, cumulative):
    new_raw, old_raw = pair
    theirs = tracemalloc.Snapshot(new_raw, 5).compare_to(
        tracemalloc.Snapshot(old_raw, 5), key_type, cumulative)
    ours = Snapshot(new_raw, 5).compare_to(Snapshot(old_raw, 5), key_type, cumulative)
    assert diff_view(ours) == diff_view(theirs)
    assert [(s.traceback.total_nframe, len(s.traceback)) for s in ours] == [
        (s.traceback.total_nframe, len(s.traceback)) for s in theirs]


FILTER_SETS = [
    [],
    [Filter(False, "b.py")],
    [Filter(True, "a.py", 2), Filter(True, "a.py", 5)],
    [Filter(False, "a.py", domain=1)],
    [Filter(True, "a.py", domain=1)],
    [Filter(True, "b.py", all_frames=True)],
    [Filter(False, "b.py", all_frames=True)],
    [Filter(False, "<unknown>")],
    [Filter(True, "*.py"), Filter(False, "a.py", 2)],
    [Filter(True, "a.py", 0)],
    [Filter(True, "a.pyc")],
    [Filter(False, "pkg/*", all_frames=True, domain=NUMPY_DOMAIN)],
    [DomainFilter(False, 3)],
    [DomainFilter(True, 3)],
    [DomainFilter(True, NUMPY_DOMAIN), Filter(True, "<ipython-input-*")],
]


def as_tracemalloc(filters):
    out = []
    for f in filters:
        if isinstance(f, DomainFilter):
            out.append(tracemalloc.DomainFilter(f.inclusive, f.domain))
        else:
            out.append(tracemalloc.Filter(f.inclusive, f.filename_pattern, f.lineno,
                                          f.all_frames, f.domain))
    return out


@pytest.mark.parametrize("filters", FILTER_SETS, ids=repr)
@pytest.mark.parametrize("raw", [RAW1, RAW2, random_raw(5)], ids=["raw1", "raw2", "random"])
def test_filter_traces_matches_tracemalloc(raw, filters):
    theirs = tracemalloc.Snapshot(raw, 5).filter_traces(as_tracemalloc(filters))
    ours = Snapshot(raw, 5).filter_traces(filters)
    assert ours.traces._traces == theirs.traces._traces
    assert ours.traceback_limit == theirs.traceback_limit
    assert stat_view(ours.statistics("traceback")) == stat_view(theirs.statistics("traceback"))


@pytest.mark.parametrize("filters", FILTER_SETS, ids=repr)
def test_filter_traces_on_named_frames_keeps_the_same_traces(filters):
    raw = random_raw(6)
    theirs = tracemalloc.Snapshot(raw, 5).filter_traces(as_tracemalloc(filters))
    ours = Snapshot(add_names(raw), 5).filter_traces(filters)
    assert strip_names(ours.traces._traces) == theirs.traces._traces


def test_filter_matching_matches_tracemalloc():
    t1 = (("a.py", 2), ("b.py", 3))
    t2 = (("b.py", 4), ("b.py", 5))
    t3 = (("c.py", 5), ("<unknown>", 0))
    unknown = (("<unknown>", 0),)
    for inclusive in (True, False):
        for pattern in ("b.py", "<unknown>", "*", "", "a*", "b.pyc"):
            for all_frames in (True, False):
                for lineno in (None, 0, 4, 5):
                    ours = Filter(inclusive, pattern, lineno, all_frames)
                    theirs = tracemalloc.Filter(inclusive, pattern, lineno, all_frames)
                    for tb in (t1, t2, t3, unknown):
                        assert ours._match_traceback(tb) == theirs._match_traceback(tb)
                    for filename in ("abc", "b.py", "b.pyc", "", "<unknown>"):
                        for n in (0, 4, 5):
                            assert ours._match_frame(filename, n) == theirs._match_frame(
                                filename, n)


def test_formats_match_tracemalloc(fake_source):
    theirs, ours = tracemalloc.Snapshot(RAW2, 2), Snapshot(RAW2, 2)
    for i in range(len(RAW2)):
        a, b = theirs.traces[i], ours.traces[i]
        assert (str(b), repr(b)) == (str(a), repr(a))
        assert (str(b.traceback), repr(b.traceback)) == (str(a.traceback), repr(a.traceback))
        for frame_a, frame_b in zip(a.traceback, b.traceback, strict=True):
            assert (str(frame_b), repr(frame_b)) == (str(frame_a), repr(frame_a))
        for limit in (None, 0, 1, -1, 2, -2, 5):
            for most_recent_first in (False, True):
                assert b.traceback.format(limit, most_recent_first) == a.traceback.format(
                    limit, most_recent_first)
    assert str(ours.statistics("lineno")[0]) == "a.py:5: size=5002 B, count=2, average=2501 B"
    assert str(ours.compare_to(Snapshot(RAW1, 2), "lineno")[0]) == (
        "a.py:5: size=5002 B (+5000 B), count=2 (+1), average=2501 B")
    for size, count in [(10240, 2), (10 * 2**20, 3), (5, 0), (3 * 2**30, 1)]:
        tb = (("x.py", 1),)
        assert str(Statistic(Traceback(tb), size, count)) == str(
            tracemalloc.Statistic(tracemalloc.Traceback(tb), size, count))
    assert str(Statistic(Traceback((("x.py", 1),)), 10240, 2)) == (
        "x.py:1: size=10.0 KiB, count=2, average=5120 B")
    assert repr(ours.traces) == repr(theirs.traces) == "<Traces len=6>"


def test_traceback_repr_matches_tracemalloc():
    for args in [((),), ((), 0), ((("f1", 1), ("f2", 2)),), ((("f1", 1), ("f2", 2)), 2)]:
        assert repr(Traceback(*args)) == repr(tracemalloc.Traceback(*args))
    assert repr(Traceback((("f1", 1),), 2)) == (
        "<Traceback (<Frame filename='f1' lineno=1>,) total_nframe=2>")


def test_empty_snapshots_match_tracemalloc():
    for key_type, cumulative in KEY_MODES:
        assert Snapshot([], 1).statistics(key_type, cumulative) == []
        assert Snapshot([], 1).compare_to(Snapshot([], 1), key_type, cumulative) == []
    assert Snapshot([], 1).total_size == 0
    assert Snapshot([], 1).total_count == 0


def test_cumulative_counts_each_frame_occurrence_like_tracemalloc():
    # tracemalloc adds a trace once per frame: a recursive frame counts twice.
    stats = {str(s.traceback): (s.size, s.count)
             for s in Snapshot(RECURSIVE, 5).statistics("lineno", cumulative=True)}
    assert stats["r.py:3"] == (200, 2)
    assert stats["r.py:9"] == (140, 2)
    assert stats["main.py:1"] == (140, 2)
    files = {str(s.traceback): (s.size, s.count)
             for s in Snapshot(RECURSIVE, 5).statistics("filename", cumulative=True)}
    assert files["r.py:0"] == (340, 4)


def test_snapshot_from_tracemalloc():
    theirs = tracemalloc.Snapshot(RAW1, 3)
    ours = Snapshot.from_tracemalloc(theirs)
    assert ours.is_exact and ours.traceback_limit == 3
    assert stat_view(ours.statistics("lineno")) == stat_view(theirs.statistics("lineno"))


# ---------------------------------------------------------------------------------------------
# Frame, Traceback, Trace


def test_frame_attributes_and_equality():
    plain = Frame(("a.py", 5))
    named = Frame(("a.py", 5, "f.<locals>.<listcomp>", 3))
    other = Frame(("a.py", 5, "g", 1))
    assert (plain.filename, plain.lineno, plain.name, plain.firstlineno) == ("a.py", 5, None,
                                                                              None)
    assert (named.name, named.firstlineno) == ("f.<locals>.<listcomp>", 3)
    assert Frame(("a.py", 5, "f")).firstlineno is None
    # equality, hash and order on (filename, lineno) only
    assert plain == named == other
    assert len({plain, named, other}) == 1
    assert Frame(("a.py", 4, "z")) < plain < Frame(("a.py", 6)) < Frame(("b.py", 1))
    assert sorted([Frame(("b.py", 1)), other, Frame(("a.py", 1))]) == [
        Frame(("a.py", 1)), plain, Frame(("b.py", 1))]
    assert str(named) == "a.py:5"
    assert repr(named) == "<Frame filename='a.py' lineno=5 name='f.<locals>.<listcomp>'>"
    assert repr(plain) == "<Frame filename='a.py' lineno=5>"
    assert plain != ("a.py", 5)
    assert Frame(["a.py", 5]) == plain


@pytest.mark.parametrize("bad", [("a.py",), ("a.py", 1, "f", 1, 9), "a.py", None, 5])
def test_frame_rejects_bad_raw_frames(bad):
    with pytest.raises(TypeError, match="raw frame"):
        Frame(bad)


def test_traceback_order_and_sequence():
    raw = (("new.py", 3, "inner", 1), ("mid.py", 2, "middle", 1), ("old.py", 1, "<module>", 1))
    tb = Traceback(raw, 10)
    assert [str(f) for f in tb] == ["old.py:1", "mid.py:2", "new.py:3"]  # oldest first
    assert tb[0].name == "<module>" and tb[-1].name == "inner"
    assert tb[:2] == (Frame(("old.py", 1)), Frame(("mid.py", 2)))
    assert len(tb) == 3 and tb.total_nframe == 10
    assert Frame(("mid.py", 2)) in tb and Frame(("mid.py", 3)) not in tb
    assert ("mid.py", 2) not in tb
    assert str(tb) == "old.py:1"
    # equality ignores names and total_nframe, like tracemalloc
    same = Traceback((("new.py", 3), ("mid.py", 2), ("old.py", 1)))
    assert tb == same and hash(tb) == hash(same)
    assert Traceback((("a.py", 1),)) < Traceback((("b.py", 1),))
    assert Traceback((Frame(("a.py", 1, "f")),)) == Traceback((("a.py", 1),))
    assert str(Traceback(())) == "<no frames>"


def test_traceback_format_reads_linecache(tmp_path):
    path = tmp_path / "src.py"
    path.write_text("x = 1\n    y = [0] * 10   \n")
    tb = Traceback(((str(path), 2), (str(path), 1), (str(path), 99)))
    assert tb.format() == [
        f'  File "{path}", line 99',
        f'  File "{path}", line 1',
        "    x = 1",
        f'  File "{path}", line 2',
        "    y = [0] * 10",
    ]
    assert tb.format(limit=1, most_recent_first=True) == [f'  File "{path}", line 2',
                                                           "    y = [0] * 10"]


def test_trace_fields():
    six = Trace((NUMPY_DOMAIN, 800, (("a.py", 1),), 4, Allocator.NUMPY, 1234))
    four = Trace((0, 16, (("a.py", 1),), 1))
    assert (six.domain, six.size, six.total_nframe, six.thread_id) == (NUMPY_DOMAIN, 800, 4,
                                                                       1234)
    assert six.allocator is Allocator.NUMPY
    assert four.allocator is Allocator.MEM and four.thread_id == 0
    assert Trace((0, 1, (("a.py", 1),), 1, 42, 0)).allocator == 42  # unknown code stays int
    assert six.traceback == Traceback((("a.py", 1),)) and six.traceback.total_nframe == 4
    assert (four.weight, four.estimated_size, four.estimated_count) == (1.0, 16.0, 1.0)
    # equality: a 4-tuple equals the 6-tuple with the defaults, names do not matter
    assert four == Trace((0, 16, (("a.py", 1, "f", 1),), 1, 1, 0))
    assert hash(four) == hash(Trace((0, 16, (("a.py", 1, "f", 1),), 1, 1, 0)))
    assert four != Trace((0, 16, (("a.py", 1),), 1, 2, 0))
    assert four != Trace((0, 16, (("a.py", 1),), 1), sample_rate=100)


def test_trace_weights_when_sampled():
    rate = 1000
    trace = Trace((0, 100, (("a.py", 1),), 1), sample_rate=rate)
    w = 1 / (1 - math.exp(-100 / rate))
    assert trace.weight == pytest.approx(w)
    assert trace.estimated_size == pytest.approx(100 * w)
    assert trace.estimated_count == pytest.approx(w)
    assert trace.sample_rate == rate
    assert str(trace) == "a.py:1: 100 B (weight 10.51)"
    assert repr(trace) == ("<Trace domain=0 size=100 B, weight=10.5083, "
                           "traceback=<Traceback (<Frame filename='a.py' lineno=1>,) "
                           "total_nframe=1>>")


def test_constants():
    assert NUMPY_DOMAIN == 389047
    assert NATIVE_DOMAIN == 0x6E6174
    assert [(a.name, int(a)) for a in Allocator] == [
        ("RAW", 0), ("MEM", 1), ("OBJ", 2), ("NUMPY", 3), ("NATIVE", 4)]


# ---------------------------------------------------------------------------------------------
# Snapshot basics


def test_snapshot_traces_sequence_is_lazy_and_read_only():
    snap = Snapshot(RAW1, 2)
    assert len(snap.traces) == 6
    assert isinstance(snap.traces[0], Trace)
    assert snap.traces[:2] == (snap.traces[0], snap.traces[1])
    assert snap.traces[0] in snap.traces
    assert Trace((0, 10, (("a.py", 2, "f", 1), ("b.py", 4)), 3)) in snap.traces
    assert Trace((9, 9, (("z.py", 2),), 1)) not in snap.traces
    assert "x" not in snap.traces
    assert [t.size for t in snap.traces] == [10, 10, 10, 2, 66, 7]
    assert snap.samples == 6 and snap.total_size == 105 and snap.total_count == 6
    assert snap.is_exact and snap.sample_rate == 1 and snap.meta == {}
    assert snap.allocated is None
    assert repr(snap) == "<Snapshot traces=6 exact traceback_limit=2>"


def test_snapshot_copies_its_inputs():
    raw, meta = list(RAW1), {"python": "3.11"}
    snap = Snapshot(raw, 2, meta=meta)
    raw.append(RAW2[-1])
    meta["x"] = 1
    assert len(snap.traces) == 6 and snap.meta == {"python": "3.11"}


def test_snapshot_validates_arguments():
    with pytest.raises(TypeError, match="raw trace tuples"):
        Snapshot([Trace(RAW1[0])], 1)
    with pytest.raises(TypeError, match="raw trace tuples"):
        Snapshot([(0, 1, ())], 1)
    with pytest.raises(TypeError, match="size must be"):
        Snapshot(RAW1, 1, sample_rate=True)
    with pytest.raises(ValueError, match="negative"):
        Snapshot(RAW1, 1, sample_rate=-5)
    with pytest.raises(TypeError, match="meta must be a dict"):
        Snapshot(RAW1, 1, meta=[1])
    with pytest.raises(TypeError, match="allocated must hold tuples"):
        Snapshot(RAW1, 1, allocated=[(1, 2)])
    assert Snapshot(RAW1, 1, sample_rate="64KiB").sample_rate == 65536
    assert Snapshot(RAW1, 1, sample_rate=0).is_exact


def test_statistics_rejects_bad_key_types():
    snap = Snapshot(RAW1, 2)
    with pytest.raises(ValueError, match="unknown key_type: 'line'"):
        snap.statistics("line")
    with pytest.raises(ValueError, match="cumulative mode cannot be used"):
        snap.statistics("traceback", cumulative=True)


def test_filter_traces_rejects_bad_filters():
    snap = Snapshot(RAW1, 2)
    with pytest.raises(TypeError, match="filters must be a list of filters, not Filter"):
        snap.filter_traces(Filter(True, "a.py"))
    with pytest.raises(TypeError, match="must be Filter or DomainFilter instances, not str"):
        snap.filter_traces(["a.py"])
    copy = snap.filter_traces([])
    assert copy is not snap and copy.traces == snap.traces
    assert copy.traces._traces is not snap.traces._traces


def test_filter_attributes():
    f = Filter(False, "test.pyc", 123, True, domain=5)
    assert (f.inclusive, f.filename_pattern, f.lineno, f.all_frames, f.domain) == (
        False, "test.py", 123, True, 5)
    with pytest.raises(AttributeError):
        f.filename_pattern = "x"
    d = DomainFilter(True, NUMPY_DOMAIN)
    assert d.inclusive and d.domain == NUMPY_DOMAIN
    with pytest.raises(AttributeError):
        d.domain = 1
    with pytest.raises(TypeError, match="filename_pattern must be a str"):
        Filter(True, 5)
    assert repr(d) == "DomainFilter(True, 389047)"
    assert repr(Filter(True, "a.py")) == (
        "Filter(True, 'a.py', lineno=None, all_frames=False, domain=None)")


def test_custom_base_filter_subclass():
    class BigOnly(BaseFilter):
        def _match(self, trace):
            return trace[1] >= 60

    snap = Snapshot(RAW1, 2).filter_traces([BigOnly(True)])
    assert [t.size for t in snap.traces] == [66]


def test_compare_to_rejects_a_tracemalloc_snapshot():
    with pytest.raises(TypeError, match="from_tracemalloc"):
        Snapshot(RAW1, 2).compare_to(tracemalloc.Snapshot(RAW1, 2), "lineno")


def test_statistics_of_empty_and_unknown_frames():
    snap = Snapshot([(0, 5, (), 0), (0, 7, (("<unknown>", 0, "<no Python frame>", 0),), 0)], 1)
    stats = snap.statistics("lineno")
    assert [(str(s.traceback), s.size, s.count) for s in stats] == [("<unknown>:0", 12, 2)]


def test_frames_differing_only_by_name_are_grouped():
    raw = [(0, 10, (("a.py", 1, "f.<locals>.<listcomp>", 1), ("a.py", 9, "main", 8)), 2),
           (0, 20, (("a.py", 1, "f", 1), ("a.py", 9, "main", 8)), 2)]
    for key_type, cumulative in KEY_MODES:
        top = Snapshot(raw, 2).statistics(key_type, cumulative)[0]
        # cumulative by file counts each trace once per a.py frame, as tracemalloc does
        expected = (60, 4) if (key_type, cumulative) == ("filename", True) else (30, 2)
        assert (top.size, top.count) == expected
    assert len(Snapshot(raw, 2).statistics("traceback")) == 1


def test_statistic_and_diff_defaults():
    tb = Traceback((("a.py", 1),))
    stat = Statistic(tb, 100, 4)
    assert (stat.samples, stat.size_estimate, stat.count_estimate, stat.relative_error,
            stat.is_exact) == (4, 100.0, 4.0, 0.0, True)
    assert stat == Statistic(tb, 100, 4) and hash(stat) == hash(Statistic(tb, 100, 4))
    assert stat != Statistic(tb, 100, 5)
    assert stat != Statistic(tb, 100, 4, samples=1, exact=False)
    sampled = Statistic(tb, 100, 4, samples=4, exact=False)
    assert sampled.relative_error == pytest.approx(0.5)
    assert str(sampled) == "a.py:1: size=100 B, count=4, average=25 B, samples=4 (±50%)"
    assert repr(sampled) == ("<Statistic traceback=<Traceback (<Frame filename='a.py' "
                             "lineno=1>,)> size=100 count=4 samples=4>")
    diff = StatisticDiff(tb, 100, 40, 4, -1)
    assert (diff.samples, diff.size_diff_estimate, diff.count_diff_estimate) == (4, 40.0, -1.0)
    assert diff == StatisticDiff(tb, 100, 40, 4, -1)
    assert hash(diff) == hash(StatisticDiff(tb, 100, 40, 4, -1))
    assert str(diff) == "a.py:1: size=100 B (+40 B), count=4 (-1), average=25 B"
    assert str(StatisticDiff(tb, 0, -40, 0, -1)) == "a.py:1: size=0 B (-40 B), count=0 (-1)"


def test_pickle_round_trip():
    snap = Snapshot(add_names(RAW2), 3, sample_rate=4096, meta={"a": 1})
    snap.statistics("lineno")  # fills the cache, which is not pickled
    copy = pickle.loads(pickle.dumps(snap))
    assert copy.traces._traces == snap.traces._traces
    assert copy.sample_rate == 4096 and copy.meta == {"a": 1}
    assert stat_view(copy.statistics("lineno")) == stat_view(snap.statistics("lineno"))


def test_to_pprof_delegates(monkeypatch, tmp_path):
    from mprofile_ipy.export import pprof

    calls = []
    monkeypatch.setattr(pprof, "write_pprof", lambda *a, **kw: calls.append((a, kw)) or 7)
    snap = Snapshot(RAW1, 2)
    assert snap.to_pprof(tmp_path / "x.pb.gz", comment="hi") == 7
    assert calls == [((snap, tmp_path / "x.pb.gz"), {"comment": "hi"})]


# ---------------------------------------------------------------------------------------------
# Sampled snapshots: estimates


def w(size, rate):
    # A sampled zero-byte allocation weighs 1, as in the C sampler (mp_weight).
    return 1.0 if size == 0 else 1 / -math.expm1(-size / rate)


def test_sampled_statistics_hand_computed():
    rate = 1000
    raw = [
        (0, 100, (("a.py", 1),), 1),
        (0, 100, (("a.py", 1),), 1),
        (0, 5000, (("a.py", 1),), 1),
        (0, 10, (("b.py", 2),), 1),
        (0, 0, (("b.py", 2),), 1),  # size 0 weighs 1 (as in C), adds no bytes
    ]
    snap = Snapshot(raw, 1, sample_rate=rate)
    assert not snap.is_exact
    a_size = 2 * 100 * w(100, rate) + 5000 * w(5000, rate)
    a_count = 2 * w(100, rate) + w(5000, rate)
    a_var = sum(s * s * w(s, rate) * (w(s, rate) - 1) for s in (100, 100, 5000))
    b_size = 10 * w(10, rate)
    b_count = w(10, rate) + w(0, rate)
    stats = snap.statistics("lineno")
    assert [str(s.traceback) for s in stats] == ["a.py:1", "b.py:2"]
    a, b = stats
    assert a.size_estimate == pytest.approx(a_size, rel=1e-12)
    assert a.count_estimate == pytest.approx(a_count, rel=1e-12)
    assert (a.size, a.count, a.samples) == (round(a_size), round(a_count), 3)
    assert a.relative_error == pytest.approx(math.sqrt(a_var) / a_size, rel=1e-9)
    assert not a.is_exact
    assert b.size_estimate == pytest.approx(b_size) and b.count_estimate == pytest.approx(b_count)
    assert b.samples == 2
    assert snap.total_size == round(a_size + b_size)
    assert snap.total_count == round(a_count + b_count)
    assert snap.samples == 5
    assert str(a) == (f"a.py:1: size={tracemalloc._format_size(round(a_size), False)}, "
                      f"count={round(a_count)}, "
                      f"average={tracemalloc._format_size(a_size / a_count, False)}, "
                      f"samples=3 (±{a.relative_error * 100:.0f}%)")


def test_estimates_sum_per_sample_weights_not_the_group_average():
    rate = 4096
    raw = [(0, 16, (("a.py", 1),), 1), (0, 1_000_000, (("a.py", 1),), 1)]
    stat = Snapshot(raw, 1, sample_rate=rate).statistics("filename")[0]
    per_sample = 16 * w(16, rate) + 1_000_000 * w(1_000_000, rate)
    average = (16 + 1_000_000) / 2
    by_average = 2 * average * w(average, rate)
    assert stat.size_estimate == pytest.approx(per_sample, rel=1e-12)
    assert abs(stat.size_estimate - by_average) > 1000


def test_huge_allocations_are_known_exactly_when_sampled():
    stat = Snapshot([(0, 10 * 2**20, (("a.py", 1),), 1)], 1, sample_rate=4096).statistics(
        "lineno")[0]
    assert stat.size == 10 * 2**20 and stat.count == 1 and stat.relative_error == 0.0


def test_sampled_cumulative_and_traceback_grouping():
    rate = 512
    raw = [(0, 64, (("a.py", 1), ("main.py", 9)), 2), (0, 128, (("b.py", 2), ("main.py", 9)), 2)]
    snap = Snapshot(raw, 2, sample_rate=rate)
    main = [s for s in snap.statistics("lineno", cumulative=True)
            if str(s.traceback) == "main.py:9"][0]
    assert main.size_estimate == pytest.approx(64 * w(64, rate) + 128 * w(128, rate))
    assert main.samples == 2
    assert len(snap.statistics("traceback")) == 2


def test_sampled_compare_to():
    rate = 1000
    old = Snapshot([(0, 100, (("a.py", 1),), 1)], 1, sample_rate=rate)
    new = Snapshot([(0, 100, (("a.py", 1),), 1)] * 3 + [(0, 50, (("b.py", 1),), 1)], 1,
                   sample_rate=rate)
    diffs = new.compare_to(old, "lineno")
    a = [d for d in diffs if str(d.traceback) == "a.py:1"][0]
    assert a.size_diff_estimate == pytest.approx(200 * w(100, rate))
    assert a.size == round(300 * w(100, rate))
    assert a.size_diff == a.size - round(100 * w(100, rate))
    assert a.count_diff_estimate == pytest.approx(2 * w(100, rate))
    assert a.samples == 3 and not a.is_exact
    assert a.relative_error == pytest.approx(1 / math.sqrt(3) * math.sqrt(1 - 1 / w(100, rate)))
    gone = Snapshot([], 1, sample_rate=rate).compare_to(new, "lineno")
    assert all(d.size == 0 and d.size_diff < 0 and d.samples == 0 for d in gone)
    assert "samples=3" in str(a)
    # across rates: an exact old snapshot against a sampled new one
    mixed = new.compare_to(Snapshot([(0, 100, (("a.py", 1),), 1)], 1), "lineno")
    a = [d for d in mixed if str(d.traceback) == "a.py:1"][0]
    assert a.size_diff_estimate == pytest.approx(300 * w(100, rate) - 100)


def test_unbiased_estimates_from_a_simulated_sampler():
    # GIVEN many allocations of mixed sizes, each sampled with p = 1 - exp(-s/rate)
    rng = random.Random(20240601)
    rate = 2048
    files = [(("small.py", 1),), (("medium.py", 2),), (("large.py", 3),)]
    truth = {name: [0, 0] for name in ("small.py", "medium.py", "large.py")}
    sampled = []
    for _ in range(300_000):
        kind = rng.random()
        if kind < 0.9:
            size, frames = rng.randint(16, 256), files[0]
        elif kind < 0.995:
            size, frames = rng.randint(1024, 16384), files[1]
        else:
            size, frames = rng.randint(100_000, 1_000_000), files[2]
        truth[frames[0][0]][0] += size
        truth[frames[0][0]][1] += 1
        if rng.random() < -math.expm1(-size / rate):
            sampled.append((0, size, frames, 1))
    # WHEN the samples are read as a snapshot
    snap = Snapshot(sampled, 1, sample_rate=rate)
    # THEN the estimates are within a few % of the truth, and within 4 standard errors
    total_bytes = sum(v[0] for v in truth.values())
    total_count = sum(v[1] for v in truth.values())
    assert snap.total_size == pytest.approx(total_bytes, rel=0.02)
    assert snap.total_count == pytest.approx(total_count, rel=0.03)
    assert snap.samples == len(sampled) < total_count / 5
    for stat in snap.statistics("filename"):
        true_size, true_count = truth[stat.traceback[0].filename]
        assert stat.size == pytest.approx(true_size, rel=0.05)
        assert stat.count == pytest.approx(true_count, rel=0.05)
        error = abs(stat.size_estimate - true_size)
        assert error <= 4 * stat.relative_error * stat.size_estimate + 1


# ---------------------------------------------------------------------------------------------
# Allocation totals since start


ALLOC_A = (("a.py", 1, "f", 1), ("main.py", 9, "<module>", 1))
ALLOC_B = (("b.py", 2, "g", 2),)


def test_allocated_statistics_exact():
    raw = [(0, 10, ALLOC_A, 2, 1, 0)]
    allocated = [(ALLOC_A, 2, 5.0, 50.0), (ALLOC_B, 1, 2.0, 4000.0)]
    snap = Snapshot(raw, 4, allocated=allocated)
    assert snap.allocated == tuple(allocated)
    stats = snap.allocated_statistics("lineno")
    assert [(str(s.traceback), s.size, s.count, s.samples, s.relative_error) for s in stats] == [
        ("b.py:2", 4000, 2, 2, 0.0), ("a.py:1", 50, 5, 5, 0.0)]
    cumulative = {str(s.traceback): s.size
                  for s in snap.allocated_statistics("filename", cumulative=True)}
    assert cumulative == {"b.py:0": 4000, "a.py:0": 50, "main.py:0": 50}


def test_allocated_statistics_sampled():
    rate = 1000
    allocated = [
        (ALLOC_A, 2, 1000.0, 8000.0),  # no sample count: estimated from the average size
        (ALLOC_B, 1, 20.0, 9000.0, 7, 810000.0),  # with samples and variance
    ]
    snap = Snapshot([], 4, sample_rate=rate, allocated=allocated)
    b, a = snap.allocated_statistics("lineno")
    assert (str(b.traceback), b.size, b.count, b.samples) == ("b.py:2", 9000, 20, 7)
    assert b.relative_error == pytest.approx(math.sqrt(810000.0) / 9000.0)
    assert a.samples == round(1000 * estimate.sampling_probability(8, rate))
    assert a.relative_error == pytest.approx(estimate.group_relative_error(1000, 8000, rate))
    assert not a.is_exact


def test_allocated_statistics_needs_totals():
    with pytest.raises(ValueError, match="no allocation totals"):
        Snapshot(RAW1, 2).allocated_statistics("lineno")


def test_filter_traces_keeps_rate_meta_and_filters_allocated():
    raw = [(0, 10, ALLOC_A, 2, 1, 0), (0, 30, ALLOC_B, 1, 1, 0)]
    allocated = [(ALLOC_A, 2, 5.0, 50.0), (ALLOC_B, 1, 2.0, 4000.0),
                 (ALLOC_B, 1, 1.0, 8.0, 1, 0.0, NUMPY_DOMAIN)]
    snap = Snapshot(raw, 4, sample_rate=512, allocated=allocated, meta={"k": "v"})
    kept = snap.filter_traces([Filter(False, "b.py")])
    assert kept.sample_rate == 512 and kept.meta == {"k": "v"} and kept.traceback_limit == 4
    assert [t.size for t in kept.traces] == [10]
    assert kept.allocated == ((ALLOC_A, 2, 5.0, 50.0),)
    main = snap.filter_traces([Filter(True, "main.py", all_frames=True)])
    assert main.allocated == ((ALLOC_A, 2, 5.0, 50.0),)
    # totals carry no domain unless given one: inclusive domain filters drop them,
    # exclusive ones keep them
    numpy_only = snap.filter_traces([DomainFilter(True, NUMPY_DOMAIN)])
    assert numpy_only.allocated == ((ALLOC_B, 1, 1.0, 8.0, 1, 0.0, NUMPY_DOMAIN),)
    no_numpy = snap.filter_traces([DomainFilter(False, NUMPY_DOMAIN)])
    assert no_numpy.allocated == tuple(allocated[:2])
    assert snap.filter_traces([]).allocated == snap.allocated
    assert Snapshot(raw, 4).filter_traces([Filter(True, "*")]).allocated is None


def test_statistics_share_one_pass_over_the_traces():
    snap = Snapshot(RAW1 * 1000, 2)
    first = stat_view(snap.statistics("lineno"))
    with mock.patch("mprofile_ipy.aggregate._live_sums", side_effect=AssertionError("again")):
        assert stat_view(snap.statistics("lineno")) == first
        snap.statistics("filename", cumulative=True)
        snap.compare_to(snap, "traceback")
        assert snap.total_size == 105_000


def test_counted_traces_equal_the_same_traces_repeated():
    # GIVEN traces with multiplicities WHEN viewed THEN every figure equals the snapshot
    # holding each trace that many times, without building that list.
    a, b = (0, 100, ALLOC_A, 2, 1, 0), (0, 8, ALLOC_B, 1, 2, 5)
    counted = Snapshot([a, b], 4, sample_rate=512, counts=[3, 2])
    repeated = Snapshot([a, a, a, b, b], 4, sample_rate=512)
    assert len(counted.traces) == 5 and counted.samples == 5
    assert list(counted.traces) == list(repeated.traces)
    assert counted.traces[3] == repeated.traces[3] and counted.traces[-1].size == 8
    assert list(counted.raw_traces) == list(repeated.raw_traces)
    for key_type in ("lineno", "filename", "traceback"):
        assert stat_view(counted.statistics(key_type)) == stat_view(repeated.statistics(key_type))
    assert [str(d) for d in counted.compare_to(repeated, "lineno")] == [
        str(d) for d in repeated.compare_to(repeated, "lineno")]
    kept = counted.filter_traces([Filter(True, "b.py")])
    assert kept.trace_counts == [2] and len(kept.traces) == 2
    assert Snapshot([a], 1, counts=[1]).trace_counts is None
    with pytest.raises(ValueError, match="one number per trace"):
        Snapshot([a], 1, counts=[1, 2])
    with pytest.raises(ValueError, match="positive ints"):
        Snapshot([a], 1, counts=[0])
