"""Snapshot files: round trips and clear errors for bad files (mprofile_ipy.storage)."""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import pickle
import tracemalloc
import zlib

import pytest

from mprofile_ipy import storage
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
    # no labels: version 2, readable by older versions
    assert doc["format"] == FORMAT_NAME and doc["version"] == 2
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


# ---------------------------------------------------------------------------------------------
# Hostile files (issue 15): bounded work, complete validation at load time


def test_gzip_bomb_stops_at_the_cap_with_a_format_error(tmp_path):
    # GIVEN 64 MiB of JSON whitespace compressed to ~64 KiB WHEN loaded with a 1 MiB cap
    # THEN the inflating stops at the cap: a format error naming the file and the cap,
    # and memory stays near the cap, not the inflated size.
    path = tmp_path / "bomb.mprof"
    chunk = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [chunk.compress(b"{" + b" " * (1 << 20)) for _ in range(1)]
    parts += [chunk.compress(b" " * (1 << 20)) for _ in range(63)]
    path.write_bytes(b"".join(parts) + chunk.flush())
    assert path.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(SnapshotFormatError) as info:
            load_snapshot(path, max_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "bomb.mprof" in message and "1,048,576 bytes" in message and "max_bytes=" in message
    assert peak < 8 << 20
    assert storage.MAX_INFLATED_BYTES == 256 << 20  # the documented default


def test_plain_files_are_capped_too(tmp_path):
    path = tmp_path / "big.json"
    path.write_bytes(b"{" + b" " * 5000 + b"}")
    with pytest.raises(SnapshotFormatError, match="more than 4,096 bytes"):
        load_snapshot(path, max_bytes=4096)


def test_concatenated_gzip_members_and_trailing_garbage(tmp_path):
    buf = io.BytesIO()
    save_snapshot(rich_snapshot(), buf)
    text = gzip.decompress(buf.getvalue())
    half = len(text) // 2
    path = tmp_path / "members.mprof"
    path.write_bytes(gzip.compress(text[:half]) + gzip.compress(text[half:]))
    assert_same(load_snapshot(path), rich_snapshot())
    path.write_bytes(buf.getvalue() + b"garbage")
    with pytest.raises(SnapshotFormatError, match="trailing data"):
        load_snapshot(path)


def test_declared_traces_are_capped(tmp_path):
    doc = good_doc()
    path = tmp_path / "many.mprof"
    path.write_bytes(gz(doc))
    assert len(load_snapshot(path, max_traces=6).traces) == 6
    with pytest.raises(SnapshotFormatError, match=r"declares 6 traces, more than the cap of 5"):
        load_snapshot(path, max_traces=5)
    assert storage.MAX_TRACES == 10_000_000


def _set_column(name, value):
    return lambda d: d["traces"][name].__setitem__(0, value)


def _set_frame(index, value):
    def change(d):
        d["frames"][0] = list(d["frames"][0]) + [None] * (4 - len(d["frames"][0]))
        d["frames"][0][index] = value
    return change


HOSTILE = {
    # the cases of issue 15 that loaded and failed later, each with the field it names
    "sample_rate 10**400": (lambda d: d.update(sample_rate=10**400), "sample_rate"),
    "size 10**400": (_set_column("size", 10**400), "'size'"),
    "size Infinity": (lambda d: d.update(x=math.inf), "Infinity"),
    "size NaN": (lambda d: d.update(x=math.nan), "NaN"),
    "allocated samples 1.5": (lambda d: d["allocated"][1].__setitem__(4, 1.5), "samples"),
    "lineno [1]": (_set_frame(1, [1]), "line number"),
    "lineno 'x'": (_set_frame(1, "x"), "line number"),
    "lineno {}": (_set_frame(1, {}), "line number"),
    "null filename": (_set_frame(0, None), "file name"),
    "meta.threads a list": (lambda d: d["meta"].update(threads=[1]), "meta.threads"),
    "started_at 1e300": (lambda d: d["meta"].update(started_at=1e300), "meta.started_at"),
    "domain 2**64": (_set_column("domain", 2**64), "'domain'"),
    "thread 2**64": (_set_column("thread_id", 2**64), "'thread_id'"),
    "negative lineno": (_set_frame(1, -1), "line number"),
    "first line 'x'": (_set_frame(3, "x"), "first line"),
    "traceback_limit 'x'": (lambda d: d.update(traceback_limit="x"), "traceback_limit"),
    "bool size": (_set_column("size", True), "not integers"),
    "allocated size NaN-like": (lambda d: d["allocated"][0].__setitem__(3, -1.0), "size"),
    "allocated variance": (lambda d: d["allocated"][1].__setitem__(5, "big"), "variance"),
    "meta.peak_bytes 10**400": (lambda d: d["meta"].update(peak_bytes=10**400), "peak_bytes"),
    "meta.python 3": (lambda d: d["meta"].update(python=3), "meta.python"),
    "thread names": (lambda d: d["meta"].update(threads={"1": 5}), "meta.threads"),
    "estimates too large": (
        lambda d: d.update(sample_rate=2**62)
        or d["traces"]["size"].__setitem__(0, 1) or d["traces"]["size"].__setitem__(1, 1)
        or d["traces"]["size"].__setitem__(2, 1), "64 bits"),
    "counts zero": (lambda d: d["traces"].update(count=[0] * 6), "'count'"),
    "counts short": (lambda d: d["traces"].update(count=[1]), "different lengths"),
}


def _encode_hostile(doc) -> bytes:
    text = json.dumps(doc)  # writes NaN/Infinity for the float cases
    if "x" in doc:
        text = text.replace('"size": [100,', f'"size": [{json.dumps(doc["x"])},', 1)
        assert "Infinity" in text or "NaN" in text
    return gzip.compress(text.encode())


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_values_are_refused_at_load_time_naming_the_field(tmp_path, case):
    change, field = HOSTILE[case]
    doc = good_doc()
    change(doc)
    message = load_bytes(tmp_path, _encode_hostile(doc))
    assert field in message, message


def test_every_loaded_snapshot_works_in_every_view(tmp_path):
    # GIVEN the rich snapshot with counts and extreme but valid values WHEN dumped and
    # loaded THEN statistics, compare_to, pprof, dump and str all work.
    traces = [(2**32 - 1, 2**40, TB1, 2**31 - 1, 2**31 - 1, 2**64 - 1), (0, 0, (), 0, 0, 0)]
    snap = Snapshot(traces, 2**31 - 1, sample_rate=2**20, counts=[3, 2**40],
                    meta={"started_at": 9e9, "threads": {}})
    path = tmp_path / "edge.mprof"
    snap.dump(path)
    loaded = load_snapshot(path)
    assert loaded.trace_counts == [3, 2**40] and loaded.samples == 3 + 2**40
    for key_type in ("lineno", "filename", "traceback"):
        assert [str(s) for s in loaded.statistics(key_type)]
        loaded.compare_to(snap, key_type)
    loaded.to_pprof(tmp_path / "edge.pb.gz")
    loaded.dump(tmp_path / "again.mprof")
    assert repr(load_snapshot(tmp_path / "again.mprof")) == repr(loaded)


def test_file_names_that_are_not_utf8_round_trip(tmp_path):
    # GIVEN a module file name with a byte that is not UTF-8 (os.fsdecode keeps it as a
    # lone surrogate) WHEN dumped, loaded and exported THEN nothing raises and the name
    # comes back unchanged from the snapshot file.
    name = os.fsdecode(b"/tmp/mod\xff.py")
    snap = Snapshot([(0, 64, ((name, 3, "f", 1),), 1, 1, 0)], 1)
    path = tmp_path / "names.mprof"
    snap.dump(path)
    loaded = load_snapshot(path)
    assert loaded.statistics("lineno")[0].traceback[0].filename == name
    loaded.to_pprof(tmp_path / "names.pb.gz")
    from mprofile_ipy.export.pprof import load_pprof

    again = load_pprof(tmp_path / "names.pb.gz")
    assert again.statistics("lineno")[0].traceback[0].filename == "/tmp/mod\\xff.py"


def test_a_snapshot_taken_by_the_sampler_round_trips(tmp_path):
    """The sampler's own meta (booleans such as foreign_hooks and native) loads back."""
    import mprofile_ipy as mp

    mp.start(sample_rate=1)
    try:
        data = [bytearray(1000) for _ in range(10)]
        snap = mp.take_snapshot()
    finally:
        mp.stop()
    path = tmp_path / "real.snap"
    snap.dump(path)
    loaded = mp.Snapshot.load(path)
    assert loaded.meta["foreign_hooks"] is False
    assert loaded.meta["native"] is False
    assert loaded.statistics("lineno") == snap.statistics("lineno")
    del data


def test_write_atomically_replaces_whole_files_and_cleans_up_after_a_failure(tmp_path):
    """GIVEN a file WHEN a write fails half-way THEN the old content stays and no temporary
    file is left; a write that succeeds replaces it whole, with the mode asked for."""
    path = tmp_path / "out.bin"
    storage.write_atomically(path, b"old")

    class Failing:  # not a buffer: the write fails after the temporary file exists
        def __buffer__(self, flags):
            raise OSError(28, "No space left on device")

    with pytest.raises((OSError, TypeError)):
        storage.write_atomically(path, Failing())  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    storage.write_atomically(path, memoryview(b"new content"), mode=0o600, fsync=True)
    assert path.read_bytes() == b"new content"
    assert path.stat().st_mode & 0o777 == 0o600 & ~_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    with pytest.raises(FileNotFoundError):
        storage.write_atomically(tmp_path / "missing" / "x", b"")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
