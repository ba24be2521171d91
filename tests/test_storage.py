"""Snapshot files: round trips and clear errors for bad files (mprofile_ipy.storage)."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import tracemalloc

import pytest

from mprofile_ipy.model import NUMPY_DOMAIN, Allocator, Snapshot
from mprofile_ipy.storage import (
    FORMAT_NAME,
    FORMAT_VERSION,
    SnapshotFormatError,
    load_snapshot,
    save_snapshot,
)

F_MAIN = ("/home/u/main.py", 10, "<module>", 1)
F_WORK = ("/home/u/work.py", 22, "Worker.run", 20)
F_CELL = ("<ipython-input-3-abc>", 2, "<module>", 1)
TB1 = (F_WORK, F_MAIN)
TB2 = (F_CELL,)
NO_STACK = (("<unknown>", 0, "<no Python frame>", 0),)


def rich_snapshot():
    traces = [
        (0, 100, TB1, 2, Allocator.OBJ, 140001),
        (0, 100, TB1, 2, Allocator.OBJ, 140001),
        (NUMPY_DOMAIN, 3 * 2**30, TB2, 1, Allocator.NUMPY, 140002),  # > 2 GiB
        (0, 0, NO_STACK, 0, Allocator.RAW, 0),
        (0, 64, (("é/ü.py", 3), ("x.py", 1, "f")), 9),  # 4-tuple, 2- and 3-tuple frames
        (0, 16, TB2, 1, Allocator.MEM),  # a 5-tuple
    ]
    allocated = [
        (TB1, 2, 1234.5, 98765.25),
        (TB2, 1, 3.0, 3 * 2**30, 3, 0.0),
        (NO_STACK, 0, 10.0, 80.0, 1, 12.5, 0),
    ]
    meta = {"python": "3.11.7", "pid": 42, "threads": {"140001": "MainThread"},
            "started_at": 1700000000.25, "flags": [1, 2.5, None, True], "nested": {"a": {}}}
    return Snapshot(traces, 64, sample_rate=4096, allocated=allocated, meta=meta)


def assert_same(a, b):
    assert a.traces._traces == b.traces._traces
    for x, y in zip(a.traces._traces, b.traces._traces, strict=True):
        assert len(x) == len(y)
        assert [len(f) for f in x[2]] == [len(f) for f in y[2]]
    assert a.traceback_limit == b.traceback_limit
    assert a.sample_rate == b.sample_rate
    assert a.allocated == b.allocated
    assert a.meta == b.meta
    for key_type in ("lineno", "filename", "traceback"):
        assert [(str(s), repr(s)) for s in a.statistics(key_type)] == [
            (str(s), repr(s)) for s in b.statistics(key_type)]
    if a.allocated is not None:
        assert [repr(s) for s in a.allocated_statistics("traceback")] == [
            repr(s) for s in b.allocated_statistics("traceback")]


def test_round_trip_preserves_everything(tmp_path):
    # GIVEN a snapshot with every kind of field WHEN saved and loaded THEN it is equal
    snap = rich_snapshot()
    path = tmp_path / "snap.mprof"
    snap.dump(path)
    loaded = Snapshot.load(path)
    assert_same(loaded, snap)
    assert loaded.meta["threads"] == {"140001": "MainThread"}
    assert loaded.traces[2].size == 3 * 2**30
    assert loaded.traces[0].allocator is Allocator.OBJ


def test_round_trip_interns_frames(tmp_path):
    path = tmp_path / "snap.mprof"
    save_snapshot(rich_snapshot(), path)
    loaded = load_snapshot(path)
    raw = loaded.traces._traces
    assert raw[0][2] is raw[1][2]  # one tuple per distinct traceback, as from the sampler
    assert loaded.allocated[0][0] is raw[0][2]


def test_round_trip_exact_tracemalloc_style(tmp_path):
    raw = [(0, 10, (("a.py", 2), ("b.py", 4)), 3), (3, 7, (("<unknown>", 0),), 1)]
    snap = Snapshot(raw, 2)
    path = tmp_path / "exact.mprof"
    snap.dump(str(path))
    loaded = Snapshot.load(str(path))
    assert_same(loaded, snap)
    assert loaded.is_exact and loaded.allocated is None and loaded.meta == {}
    doc = json.loads(gzip.decompress(path.read_bytes()))
    assert doc["format"] == FORMAT_NAME and doc["version"] == FORMAT_VERSION
    assert "allocator" not in doc["traces"]  # 4-tuples store no allocator column


def test_round_trip_of_empty_snapshot(tmp_path):
    path = tmp_path / "empty.mprof"
    Snapshot([], 1).dump(path)
    loaded = Snapshot.load(path)
    assert len(loaded.traces) == 0 and loaded.statistics("lineno") == []


def test_round_trip_file_objects_and_odd_names():
    odd = "/tmp/\udcff-bad-bytes.py"  # a surrogate-escaped file name
    snap = Snapshot([(0, 5, ((odd, 1, "naïve", 1),), 1, 1, 2**64 - 1)], 1, sample_rate=1)
    buf = io.BytesIO()
    save_snapshot(snap, buf)
    buf.seek(0)
    loaded = load_snapshot(buf)
    assert_same(loaded, snap)
    assert loaded.traces[0].thread_id == 2**64 - 1


def test_output_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    rich_snapshot().dump(a)
    rich_snapshot().dump(b)
    assert a.read_bytes() == b.read_bytes()


def test_filtered_snapshot_round_trip(tmp_path):
    from mprofile_ipy.model import Filter

    snap = rich_snapshot().filter_traces([Filter(False, "<ipython-input-*")])
    snap.dump(tmp_path / "f")
    assert_same(Snapshot.load(tmp_path / "f"), snap)


def test_large_snapshot_round_trip(tmp_path):
    tbs = [((f"m{i % 50}.py", i, f"f{i}", 1), ("main.py", 1, "<module>", 1)) for i in range(500)]
    raw = [(0, 16 + i % 1000, tbs[i % 500], 2, 1, 1) for i in range(100_000)]
    snap = Snapshot(raw, 2, sample_rate=65536)
    snap.dump(tmp_path / "big")
    assert (tmp_path / "big").stat().st_size < 1_000_000
    assert_same(Snapshot.load(tmp_path / "big"), snap)


def test_meta_must_be_json(tmp_path):
    snap = Snapshot([], 1, meta={"when": object()})
    path = tmp_path / "bad.mprof"
    with pytest.raises(TypeError, match="meta must hold only JSON values"):
        snap.dump(path)
    assert list(tmp_path.iterdir()) == []  # no half-written file left behind


def test_save_rejects_non_snapshots(tmp_path):
    with pytest.raises(TypeError, match="expected a Snapshot"):
        save_snapshot(tracemalloc.Snapshot([], 1), tmp_path / "x")


# ---------------------------------------------------------------------------------------------
# Bad files


def gz(doc) -> bytes:
    return gzip.compress(json.dumps(doc).encode())


def good_doc():
    buf = io.BytesIO()
    save_snapshot(rich_snapshot(), buf)
    return json.loads(gzip.decompress(buf.getvalue()))


def load_bytes(tmp_path, data: bytes):
    path = tmp_path / "input.mprof"
    path.write_bytes(data)
    with pytest.raises(SnapshotFormatError) as info:
        load_snapshot(path)
    message = str(info.value)
    assert "input.mprof" in message  # names the file
    assert isinstance(info.value, ValueError)
    return message


def test_empty_file(tmp_path):
    assert "empty" in load_bytes(tmp_path, b"")


def test_truncated_file(tmp_path):
    buf = io.BytesIO()
    save_snapshot(rich_snapshot(), buf)
    data = buf.getvalue()
    assert "truncated" in load_bytes(tmp_path, data[: len(data) // 2])
    assert "truncated" in load_bytes(tmp_path, data[:12])


def test_corrupt_file(tmp_path):
    buf = io.BytesIO()
    save_snapshot(rich_snapshot(), buf)
    data = bytearray(buf.getvalue())
    data[len(data) // 2] ^= 0xFF
    assert "corrupt" in load_bytes(tmp_path, bytes(data))
    data = bytearray(buf.getvalue())
    data[-6] ^= 0x01  # the CRC
    assert "corrupt" in load_bytes(tmp_path, bytes(data))


def test_foreign_files(tmp_path):
    assert "not a gzip file" in load_bytes(tmp_path, b"\x89PNG\r\n\x1a\n0000")
    assert "not a gzip file" in load_bytes(tmp_path, b"hello world")
    assert "not valid JSON" in load_bytes(tmp_path, gzip.compress(b"hello world"))
    assert "not UTF-8" in load_bytes(tmp_path, gzip.compress(b"\xff\xfe\x00garbage"))
    message = load_bytes(tmp_path, gz({"format": "something-else", "version": 1}))
    assert "not an mprofile-ipy snapshot" in message and "something-else" in message
    assert "not an mprofile-ipy snapshot" in load_bytes(tmp_path, gz([1, 2, 3]))


def test_pickle_is_refused(tmp_path):
    path = tmp_path / "tm.pickle"
    tracemalloc.Snapshot([(0, 1, (("a.py", 1),), 1)], 1).dump(str(path))
    message = load_bytes(tmp_path, path.read_bytes())
    assert "pickle" in message and "from_tracemalloc" in message
    assert "pickle" in load_bytes(tmp_path, pickle.dumps({"x": 1}))


def test_newer_version(tmp_path):
    doc = good_doc()
    doc["version"] = FORMAT_VERSION + 1
    message = load_bytes(tmp_path, gz(doc))
    assert "newer" in message and f"version {FORMAT_VERSION + 1}" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(version="1"), "invalid format version"),
        (lambda d: d.update(version=0), "invalid format version"),
        (lambda d: d.pop("strings"), "'strings' is missing"),
        (lambda d: d.pop("traceback_limit"), "'traceback_limit' is missing"),
        (lambda d: d["traces"].pop("size"), "'size' is missing"),
        (lambda d: d.update(strings=[1, 2]), "list of strings"),
        (lambda d: d["traces"]["size"].pop(), "different lengths"),
        (lambda d: d["traces"]["size"].__setitem__(0, -5), "negative size"),
        (lambda d: d["traces"]["size"].__setitem__(0, 1.5), "not integers"),
        (lambda d: d["traces"]["domain"].__setitem__(0, "x"), "not integers"),
        (lambda d: d["traces"]["traceback"].__setitem__(0, 999), "out of range"),
        (lambda d: d["traces"]["traceback"].__setitem__(0, -1), "out of range"),
        (lambda d: d["tracebacks"].__setitem__(0, [999]), "out of range"),
        (lambda d: d["frames"].__setitem__(0, [999, 1]), "out of range"),
        (lambda d: d["frames"].__setitem__(0, [0]), "invalid frame"),
        (lambda d: d["allocated"].__setitem__(0, [0, 1]), "invalid allocation total"),
        (lambda d: d["allocated"].__setitem__(0, [77, 1, 1.0, 2.0]), "out of range"),
        (lambda d: d["allocated"].__setitem__(0, [0, 1, "x", 2.0]), "invalid allocation"),
        (lambda d: d.update(traces=[1, 2]), "object of columns"),
        (lambda d: d.update(meta=[1]), "'meta' must be an object"),
        (lambda d: d.update(sample_rate=-3), "invalid content"),
        (lambda d: d.update(sample_rate="fast"), "invalid content"),
    ],
)
def test_damaged_content(tmp_path, change, expected):
    doc = good_doc()
    change(doc)
    assert expected in load_bytes(tmp_path, gz(doc))


def test_uncompressed_json_is_accepted(tmp_path):
    path = tmp_path / "plain.json"
    path.write_text(json.dumps(good_doc()))
    assert_same(load_snapshot(path), rich_snapshot())


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_snapshot(tmp_path / "nope")


def test_text_mode_file_object_is_rejected(tmp_path):
    path = tmp_path / "t"
    path.write_text("x")
    with open(path) as fp, pytest.raises(TypeError, match="binary mode"):
        load_snapshot(fp)
