"""pprof export and import: layout, values, labels, round trip, bad files, and pprof's own tool.

Snapshots are built from hand-written raw traces (frames most recent first), so no sampler
runs. The ``go tool pprof`` tests read the files with an independent implementation; they
skip, saying why, where Go is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from mprofile_ipy import estimate
from mprofile_ipy.export import pprof, profile_pb2
from mprofile_ipy.export.pprof import PprofFormatError, load_pprof, to_profile, write_pprof
from mprofile_ipy.model import NUMPY_DOMAIN, Snapshot

EXPORT_DIR = Path(pprof.__file__).parent

# Stacks, most recent frame first (raw trace order). Line numbers and names are distinct so
# that a reversed stack or a swapped field shows up.
LEAF = ("a.py", 10, "Builder.leaf", 8)
MID = ("a.py", 20, "mid", 18)
MAIN5 = ("main.py", 5, "<module>", 1)
OTHER = ("b.py", 3, "other", 1)
MAIN6 = ("main.py", 6, "<module>", 1)
CELL = ("/tmp/ipykernel_77/123456.py", 2, "<module>", 1)
GONE = ("c.py", 7, "freed_all", 5)
STACK_A = (LEAF, MID, MAIN5)
STACK_B = (OTHER, MAIN6)
STACK_CELL = (CELL,)
STACK_GONE = (GONE, MAIN5)
MAIN_THREAD = 140_000_000_001
WORKER = 2**64 - 5  # thread ids are unsigned 64-bit; pprof labels are int64

RAW_TRACES = [
    (0, 100, STACK_A, 3, 1, MAIN_THREAD),
    (0, 100, STACK_A, 3, 1, MAIN_THREAD),
    (0, 50, STACK_A, 3, 2, MAIN_THREAD),
    (0, 1000, STACK_B, 7, 0, WORKER),  # stack cut at 2 of 7 frames
    (NUMPY_DOMAIN, 40_000, STACK_B, 7, 3, WORKER),
    (0, 300, STACK_CELL, 1, 2, MAIN_THREAD),
]
META = {
    "python": "3.11.7",
    "implementation": "cpython",
    "seed": 42,
    "started_at": 1_700_000_000.0,
    "taken_at": 1_700_000_002.5,
    "threads": {str(MAIN_THREAD): "MainThread", str(WORKER): "worker-1"},
}


def make_snapshot(rate: int = 1, allocated: list | None = None, traces=RAW_TRACES) -> Snapshot:
    return Snapshot(list(traces), 10, sample_rate=rate, allocated=allocated, meta=dict(META))


# Allocation totals since start: (frames, total_nframe, count, bytes); STACK_GONE has no
# live trace left, so it appears in alloc_* only.
ALLOCATED = [
    (STACK_A, 3, 12.0, 1250.0),
    (STACK_B, 7, 4.0, 81_000.0),
    (STACK_CELL, 1, 1.0, 300.0),
    (STACK_GONE, 2, 3.5, 700.25),
]


def strings(profile) -> list[str]:
    return list(profile.string_table)


def function_names(profile, sample) -> list[str]:
    """Function names of a sample's stack, in the sample's order (leaf first)."""
    table = strings(profile)
    functions = {f.id: f for f in profile.function}
    locations = {loc.id: loc for loc in profile.location}
    return [
        table[functions[line.function_id].name]
        for lid in sample.location_id
        for line in locations[lid].line
    ]


def labels(profile, sample) -> dict[str, object]:
    table = strings(profile)
    out: dict[str, object] = {}
    for label in sample.label:
        key = table[label.key]
        out[key] = table[label.str] if label.str else (label.num, table[label.num_unit])
    return out


def column(profile, name: str) -> list[int]:
    table = strings(profile)
    index = [table[t.type] for t in profile.sample_type].index(name)
    return [s.value[index] for s in profile.sample]


# --------------------------------------------------------------------- the generated module


_PROTO_SCALARS = {
    "int64": "TYPE_INT64",
    "uint64": "TYPE_UINT64",
    "string": "TYPE_STRING",
    "bool": "TYPE_BOOL",
}


def _descriptor_from_proto_text(text: str):
    """A FileDescriptorProto parsed from profile.proto's text (the subset that file uses)."""
    from google.protobuf import descriptor_pb2

    text = re.sub(r"//[^\n]*", "", text)
    fdp = descriptor_pb2.FileDescriptorProto(name="profile.proto")
    fdp.package = re.search(r"\bpackage\s+([\w.]+)\s*;", text).group(1)
    fdp.syntax = re.search(r'\bsyntax\s*=\s*"(\w+)"\s*;', text).group(1)
    for key, value in re.findall(r'\boption\s+(\w+)\s*=\s*"([^"]*)"\s*;', text):
        setattr(fdp.options, key, value)
    F = descriptor_pb2.FieldDescriptorProto
    for name, body in re.findall(r"\bmessage\s+(\w+)\s*\{([^{}]*)\}", text):
        message = fdp.message_type.add(name=name)
        for repeated, ftype, fname, number in re.findall(
            r"(repeated\s+)?([\w.]+)\s+(\w+)\s*=\s*(\d+)\s*;", body
        ):
            field = message.field.add(name=fname, number=int(number))
            field.label = F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
            if ftype in _PROTO_SCALARS:
                field.type = getattr(F, _PROTO_SCALARS[ftype])
            else:
                field.type = F.TYPE_MESSAGE
                field.type_name = f".{fdp.package}.{ftype}"
    return fdp


def test_generated_module_matches_proto_file():
    """GIVEN profile.proto WHEN its text is parsed THEN profile_pb2 embeds the same schema."""
    from google.protobuf import descriptor_pb2

    parsed = _descriptor_from_proto_text((EXPORT_DIR / "profile.proto").read_text())
    embedded = descriptor_pb2.FileDescriptorProto.FromString(profile_pb2.DESCRIPTOR.serialized_pb)
    assert [m.name for m in parsed.message_type] == [
        "Profile", "ValueType", "Sample", "Label", "Mapping", "Location", "Line", "Function",
    ]
    assert len(parsed.message_type[0].field) == 14
    # Field by field first, for a readable failure; then the whole descriptor, byte for byte.
    for ours, theirs in zip(parsed.message_type, embedded.message_type, strict=True):
        assert ours.name == theirs.name
        assert [(f.name, f.number, f.label, f.type, f.type_name) for f in ours.field] == [
            (f.name, f.number, f.label, f.type, f.type_name) for f in theirs.field
        ]
    assert parsed == embedded
    assert parsed.SerializeToString(deterministic=True) == profile_pb2.DESCRIPTOR.serialized_pb


def test_proto_file_keeps_its_license_header():
    text = (EXPORT_DIR / "profile.proto").read_text()
    assert text.startswith("// Copyright 2016 Google Inc. All Rights Reserved.")
    assert "http://www.apache.org/licenses/LICENSE-2.0" in text


def test_generated_module_uses_a_private_descriptor_pool():
    """Another package defining perftools.profiles.* in the default pool cannot clash."""
    from google.protobuf import descriptor_pool

    assert profile_pb2.DESCRIPTOR.pool is not descriptor_pool.Default()
    source = (EXPORT_DIR / "profile_pb2.py").read_text()
    assert "ValidateProtobufRuntimeVersion" not in source  # would break protobuf 4.x


# --------------------------------------------------------------------------------- layout


def test_header_sample_types_period_and_string_table():
    """GIVEN a sampled snapshot WHEN exported THEN the header is that of a Go heap profile."""
    profile = to_profile(make_snapshot(rate=4096))
    table = strings(profile)
    assert [(table[t.type], table[t.unit]) for t in profile.sample_type] == [
        ("alloc_objects", "count"),
        ("alloc_space", "bytes"),
        ("inuse_objects", "count"),
        ("inuse_space", "bytes"),
    ]
    assert (table[profile.period_type.type], table[profile.period_type.unit]) == (
        "space",
        "bytes",
    )
    assert profile.period == 4096
    assert table[profile.default_sample_type] == "inuse_space"
    assert table[0] == ""
    assert len(table) == len(set(table)), "string table has duplicates"
    assert profile.time_nanos == 1_700_000_000 * 10**9
    assert profile.duration_nanos == 2_500_000_000
    comments = [table[c] for c in profile.comment]
    assert "Python 3.11.7 (cpython)" in comments
    assert any("sample_rate=4096" in c for c in comments)
    assert any("max_frames=10" in c and "seed=42" in c for c in comments)


def test_exact_snapshot_has_period_one():
    profile = to_profile(make_snapshot(rate=1))
    assert profile.period == 1
    assert any("exact" in strings(profile)[c] for c in profile.comment)


def test_stacks_are_leaf_first():
    """location_id[0] is the innermost frame (the mprofile fork wrote them backwards)."""
    profile = to_profile(make_snapshot())
    stacks = {tuple(function_names(profile, s)) for s in profile.sample}
    assert stacks == {
        ("Builder.leaf", "mid", "<module>"),
        ("other", "<module>"),
        ("<module>",),
    }
    lines = {
        tuple(
            line.line
            for lid in s.location_id
            for line in next(loc for loc in profile.location if loc.id == lid).line
        )
        for s in profile.sample
    }
    assert (10, 20, 5) in lines and (3, 6) in lines


def test_functions_and_locations():
    profile = to_profile(make_snapshot())
    table = strings(profile)
    functions = {
        (table[f.name], table[f.filename]): (table[f.system_name], f.start_line)
        for f in profile.function
    }
    assert functions[("Builder.leaf", "a.py")] == ("a.py:Builder.leaf", 8)
    assert functions[("mid", "a.py")] == ("a.py:mid", 18)
    assert functions[("<module>", "main.py")] == ("main.py:<module>", 1)
    # One location per distinct (file, line, function); ids are unique and nonzero.
    ids = [loc.id for loc in profile.location]
    assert len(ids) == len(set(ids)) == 6 and 0 not in ids
    assert all(len(loc.line) == 1 and loc.mapping_id == 1 for loc in profile.location)
    assert len(profile.mapping) == 1 and profile.mapping[0].has_functions


def test_snapshots_without_raw_traces_go_through_the_public_api():
    """A snapshot-like object whose traces are plain Trace objects gives the same profile."""
    snap = make_snapshot(rate=4096, allocated=ALLOCATED)

    class View:
        traces = list(snap.traces)
        sample_rate, is_exact, traceback_limit = snap.sample_rate, snap.is_exact, 10
        allocated, meta = snap.allocated, snap.meta

    assert to_profile(View()) == to_profile(snap)


def test_frames_without_name_or_first_line():
    """Raw frames may be bare (filename, lineno): the function is "<unknown>"."""
    snap = make_snapshot(traces=[(0, 64, (("x.py", 3),), 1)])
    profile = to_profile(snap)
    table = strings(profile)
    (function,) = profile.function
    assert table[function.name] == "<unknown>"
    assert table[function.filename] == "x.py"
    assert function.start_line == 0


# --------------------------------------------------------------------------------- values


def test_exact_values_and_alloc_equal_to_inuse_without_totals():
    snap = make_snapshot(rate=1)
    profile = to_profile(snap)
    assert sum(column(profile, "inuse_space")) == snap.total_size == 41_550
    assert sum(column(profile, "inuse_objects")) == snap.total_count == 6
    assert column(profile, "alloc_space") == column(profile, "inuse_space")
    assert column(profile, "alloc_objects") == column(profile, "inuse_objects")
    by_stack = {}
    for s in profile.sample:
        key = tuple(function_names(profile, s))
        by_stack[key] = by_stack.get(key, 0) + s.value[3]
    assert by_stack[("Builder.leaf", "mid", "<module>")] == 250
    assert by_stack[("other", "<module>")] == 41_000
    comments = [strings(profile)[c] for c in profile.comment]
    assert any("not tracked" in c for c in comments)


def test_sampled_values_are_the_snapshot_estimates():
    rate = 4096
    snap = make_snapshot(rate=rate)
    profile = to_profile(snap)
    want_space = sum(s * estimate.weight(s, rate) for _, s, *_ in RAW_TRACES)
    want_count = sum(estimate.weight(s, rate) for _, s, *_ in RAW_TRACES)
    assert sum(column(profile, "inuse_space")) == round(want_space)
    assert abs(sum(column(profile, "inuse_space")) - snap.total_size) <= 1
    assert sum(column(profile, "inuse_objects")) == round(want_count)
    assert abs(sum(column(profile, "inuse_objects")) - snap.total_count) <= 1
    # Each sample is within one unit of its unrounded estimate.
    for s in profile.sample:
        lab = labels(profile, s)
        size, n = lab["bytes"][0], lab["samples"][0]
        assert abs(s.value[3] - n * size * estimate.weight(size, rate)) <= 1
        assert abs(s.value[2] - n * estimate.weight(size, rate)) <= 1


def test_alloc_values_from_allocation_totals():
    snap = make_snapshot(rate=4096, allocated=ALLOCATED)
    profile = to_profile(snap)
    assert sum(column(profile, "alloc_space")) == round(sum(a[3] for a in ALLOCATED))
    assert sum(column(profile, "alloc_objects")) == round(sum(a[2] for a in ALLOCATED))
    gone = [s for s in profile.sample if function_names(profile, s)[0] == "freed_all"]
    assert len(gone) == 1
    assert list(gone[0].value)[2:] == [0, 0]
    assert abs(gone[0].value[0] - 3.5) <= 1 and abs(gone[0].value[1] - 700.25) <= 1
    assert "bytes" not in labels(profile, gone[0])
    comments = [strings(profile)[c] for c in profile.comment]
    assert any("freed allocations included" in c for c in comments)


def test_alloc_values_sit_on_the_first_sample_of_their_stack():
    # GIVEN totals for stacks of several frames WHEN exported THEN each live stack carries
    # its totals on its first sample, and only the freed stack gets a sample of its own.
    snap = make_snapshot(rate=4096, allocated=ALLOCATED)
    profile = to_profile(snap)
    live_groups = len({(t[2], t[0], t[1], t[4], t[5]) for t in RAW_TRACES})
    assert len(profile.sample) == live_groups + 1
    first = {}
    for sample in profile.sample:
        first.setdefault(tuple(function_names(profile, sample)), list(sample.value))
    by_leaf = {names[0]: values for names, values in first.items()}
    want = {frames[0][2]: (count, size) for frames, _, count, size in ALLOCATED}
    for leaf, (count, size) in want.items():
        assert abs(by_leaf[leaf][0] - count) <= 1 and abs(by_leaf[leaf][1] - size) <= 1


def test_labels():
    profile = to_profile(make_snapshot(rate=1))
    by_alloc = {labels(profile, s)["allocator"]: labels(profile, s) for s in profile.sample}
    assert set(by_alloc) == {"mem", "obj", "raw", "numpy"}
    mem = by_alloc["mem"]
    assert mem["bytes"] == (100, "bytes")
    assert mem["samples"] == (2, "count")
    assert mem["thread_id"] == (MAIN_THREAD, "")
    assert mem["thread_name"] == "MainThread"
    assert mem["domain"] == (0, "")
    assert "total_nframe" not in mem
    numpy = by_alloc["numpy"]
    assert numpy["domain"] == (NUMPY_DOMAIN, "")
    assert numpy["thread_id"] == (WORKER - 2**64, "")  # int64 two's complement
    assert numpy["thread_name"] == "worker-1"
    assert numpy["total_nframe"] == (7, "")


def test_frame_namer_gives_cells_readable_names():
    def namer(frame):
        if frame.filename.startswith("/tmp/ipykernel_"):
            return "In [12]", "In [12]"
        return frame.filename, frame.name

    profile = to_profile(make_snapshot(), frame_namer=namer)
    table = strings(profile)
    cell = [f for f in profile.function if table[f.filename] == "In [12]"]
    assert len(cell) == 1
    assert table[cell[0].name] == "In [12]"
    assert table[cell[0].system_name] == "/tmp/ipykernel_77/123456.py:<module>"
    assert not any("ipykernel" in table[f.filename] for f in profile.function)


def test_frame_namer_may_renumber_lines():
    def namer(frame):
        return frame.filename, frame.name or "?", frame.lineno + 100

    profile = to_profile(make_snapshot(), frame_namer=namer)
    assert sorted(line.line for loc in profile.location for line in loc.line) == [
        102, 103, 105, 106, 110, 120,
    ]
    table = strings(profile)
    leaf = next(f for f in profile.function if table[f.name] == "Builder.leaf")
    assert leaf.start_line == 108


@pytest.mark.parametrize("bad", [None, "name", ("a",), ("a", 1), ("a", "b", "c")])
def test_frame_namer_with_a_bad_result_is_rejected(bad):
    with pytest.raises(TypeError, match="frame_namer must return"):
        to_profile(make_snapshot(), frame_namer=lambda frame: bad)


def test_empty_snapshot():
    profile = to_profile(make_snapshot(traces=[]))
    assert len(profile.sample) == 0 and strings(profile)[0] == ""
    loaded = load_pprof(io.BytesIO(profile.SerializeToString()))
    assert loaded.statistics("lineno") == []


# ----------------------------------------------------------------------------- round trip


def _stats(snapshot: Snapshot, key: str, allocated: bool = False):
    stats = (snapshot.allocated_statistics if allocated else snapshot.statistics)(key)
    return sorted(
        (tuple((f.filename, f.lineno) for f in s.traceback), s.size, s.count, s.samples)
        for s in stats
    )


@pytest.mark.parametrize("rate", [1, 4096])
@pytest.mark.parametrize("key", ["lineno", "filename", "traceback"])
def test_round_trip_statistics(tmp_path, rate, key):
    """GIVEN a snapshot WHEN written and loaded THEN its statistics come back unchanged."""
    snap = make_snapshot(rate=rate, allocated=ALLOCATED)
    path = tmp_path / "heap.pb.gz"
    write_pprof(snap, path)
    loaded = load_pprof(path)
    assert loaded.sample_rate == rate
    assert loaded.is_exact == (rate == 1)
    assert _stats(loaded, key) == _stats(snap, key)
    for ours, theirs in zip(
        sorted(snap.allocated_statistics(key), key=lambda s: tuple(s.traceback)),
        sorted(loaded.allocated_statistics(key), key=lambda s: tuple(s.traceback)),
        strict=True,
    ):
        assert ours.traceback == theirs.traceback
        assert abs(ours.size_estimate - theirs.size_estimate) <= 1
        assert abs(ours.count_estimate - theirs.count_estimate) <= 1
    assert loaded.total_size == snap.total_size


def test_round_trip_traces_and_labels(tmp_path):
    snap = make_snapshot(rate=4096, allocated=ALLOCATED)
    path = tmp_path / "heap.pb.gz"
    snap.to_pprof(path)
    loaded = load_pprof(path)

    def key(t):
        return (t.domain, t.size, tuple(t.traceback), t.total_nframe, t.allocator, t.thread_id)

    assert sorted(map(key, loaded.traces)) == sorted(map(key, snap.traces))
    assert loaded.meta["threads"] == META["threads"]
    assert loaded.meta["started_at"] == META["started_at"]
    assert loaded.meta["taken_at"] == META["taken_at"]
    assert "Python 3.11.7 (cpython)" in loaded.meta["comments"]
    leaf = next(t for t in loaded.traces if t.size == 100)
    frame = leaf.traceback[-1]  # Traceback is stored oldest first
    assert (frame.filename, frame.lineno, frame.name, frame.firstlineno) == LEAF


def test_round_trip_uncompressed_and_file_objects():
    snap = make_snapshot(rate=1)
    raw = to_profile(snap).SerializeToString()
    assert _stats(load_pprof(io.BytesIO(raw)), "lineno") == _stats(snap, "lineno")
    buffer = io.BytesIO()
    write_pprof(snap, buffer)
    assert buffer.getvalue()[:2] == b"\x1f\x8b"
    buffer.seek(0)
    assert _stats(load_pprof(buffer), "lineno") == _stats(snap, "lineno")


def test_merged_samples_fall_back_to_the_values(tmp_path):
    """A tool that merged samples (values summed, labels kept) is read by its values."""
    profile = to_profile(make_snapshot(rate=1))
    doubled = profile_pb2.Profile()
    doubled.CopyFrom(profile)
    for sample in doubled.sample:
        sample.value[:] = [2 * v for v in sample.value]
    loaded = load_pprof(io.BytesIO(doubled.SerializeToString()))
    assert loaded.total_size == 2 * 41_550
    assert loaded.total_count == 12


def go_like_profile() -> profile_pb2.Profile:
    """A heap profile as Go writes one: no mprofile labels, period 512 KiB."""
    p = profile_pb2.Profile()
    p.string_table.extend(
        ["", "alloc_objects", "count", "alloc_space", "bytes", "inuse_objects",
         "inuse_space", "space", "main.alloc", "main.go", "runtime.main"]
    )
    for t, u in [(1, 2), (3, 4), (5, 2), (6, 4)]:
        p.sample_type.add(type=t, unit=u)
    p.function.add(id=1, name=8, system_name=8, filename=9, start_line=3)
    p.function.add(id=2, name=10, system_name=10, filename=9, start_line=1)
    p.location.add(id=1).line.add(function_id=1, line=5)
    p.location.add(id=2).line.add(function_id=2, line=9)
    p.sample.add(location_id=[1, 2], value=[30, 3000, 7, 1001])
    p.sample.add(location_id=[2], value=[1, 64, 0, 0])
    p.period_type.type, p.period_type.unit, p.period = 7, 4, 524288
    return p


def test_load_a_go_heap_profile():
    loaded = load_pprof(io.BytesIO(gzip.compress(go_like_profile().SerializeToString())))
    assert loaded.sample_rate == 1  # values are taken as they are
    (stat,) = loaded.statistics("traceback")
    assert (stat.size, stat.count) == (1001, 7)
    frames = [(f.filename, f.lineno, f.name) for f in stat.traceback]
    assert frames == [("main.go", 9, "runtime.main"), ("main.go", 5, "main.alloc")]
    allocated = {s.traceback[-1].name: (s.size, s.count)
                 for s in loaded.allocated_statistics("traceback")}
    assert allocated == {"main.alloc": (3000, 30), "runtime.main": (64, 1)}


# ---------------------------------------------------------------------------- bad input


def _cpu_profile() -> bytes:
    p = profile_pb2.Profile(string_table=["", "samples", "count", "cpu", "nanoseconds"])
    p.sample_type.add(type=1, unit=2)
    p.sample_type.add(type=3, unit=4)
    return gzip.compress(p.SerializeToString())


def _valid() -> bytes:
    buffer = io.BytesIO()
    write_pprof(make_snapshot(rate=4096), buffer)
    return buffer.getvalue()


def _missing_location() -> bytes:
    p = to_profile(make_snapshot())
    p.sample[0].location_id.append(999)
    return p.SerializeToString()


def _bad_string_index() -> bytes:
    p = to_profile(make_snapshot())
    p.function[0].name = 10_000
    return p.SerializeToString()


BAD_FILES = {
    "empty": (lambda: b"", "empty"),
    "empty gzip": (lambda: gzip.compress(b""), "empty"),
    "truncated gzip": (lambda: _valid()[: len(_valid()) // 2], "truncated"),
    "corrupt gzip": (lambda: _valid()[:12] + b"\xff" * 40 + _valid()[52:], "gzip"),
    "truncated protobuf": (
        lambda: to_profile(make_snapshot()).SerializeToString()[:-7],
        "not a pprof profile",
    ),
    "text": (lambda: b"hello, this is not a profile\n", "not a pprof profile"),
    "json": (lambda: b'{"traces": []}', "not a pprof profile"),
    "png": (lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * 32, "pprof"),
    "cpu profile": (_cpu_profile, "no inuse_space sample type .*cpu/nanoseconds"),
    "missing location": (_missing_location, "missing location id 999"),
    "bad string index": (_bad_string_index, "string index 10000 out of range"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_raise_a_clear_error(tmp_path, case):
    make, message = BAD_FILES[case]
    path = tmp_path / "bad.pb.gz"
    path.write_bytes(make())
    with pytest.raises(PprofFormatError, match=message) as info:
        load_pprof(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_load_refuses_to_rebuild_absurd_counts(monkeypatch):
    monkeypatch.setattr(pprof, "MAX_LOADED_TRACES", 5)
    with pytest.raises(PprofFormatError, match="too many allocations"):
        load_pprof(io.BytesIO(go_like_profile().SerializeToString()))


def test_allocations_without_a_python_stack_round_trip():
    no_stack = (("<unknown>", 0, "<no Python frame>", 0),)
    snap = make_snapshot(traces=[(0, 4096, no_stack, 0, 0, 0), (0, 64, STACK_B, 2, 1, 0)])
    loaded = load_pprof(io.BytesIO(to_profile(snap).SerializeToString()))
    assert sorted((t.size, t.total_nframe, len(t.traceback)) for t in loaded.traces) == [
        (64, 2, 2), (4096, 0, 1),
    ]


def test_load_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_pprof(tmp_path / "nope.pb.gz")


def test_load_rejects_text_streams():
    with pytest.raises(TypeError, match="binary"):
        load_pprof(io.StringIO("abc"))


def test_write_to_a_missing_folder_names_the_path(tmp_path):
    path = tmp_path / "no" / "such" / "dir" / "heap.pb.gz"
    with pytest.raises(OSError, match="cannot write pprof profile to .*heap.pb.gz") as info:
        write_pprof(make_snapshot(), path)
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.filename == str(path)


def test_write_to_a_directory_fails_and_leaves_nothing(tmp_path):
    target = tmp_path / "adir"
    target.mkdir()
    with pytest.raises(OSError, match="adir"):
        write_pprof(make_snapshot(), target)
    assert os.listdir(tmp_path) == ["adir"] and os.listdir(target) == []


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "heap.pb.gz"
    path.write_bytes(b"old content")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pprof.os, "replace", fail)
    with pytest.raises(OSError, match="No space left on device"):
        write_pprof(make_snapshot(), path)
    assert os.listdir(tmp_path) == ["heap.pb.gz"]
    assert path.read_bytes() == b"old content"


def test_written_file_has_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_pprof(make_snapshot(), tmp_path / "heap.pb.gz")
    finally:
        os.umask(old)
    assert (tmp_path / "heap.pb.gz").stat().st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path) == ["heap.pb.gz"]


def test_write_rejects_other_targets():
    with pytest.raises(TypeError, match="path .* or a binary file object"):
        write_pprof(make_snapshot(), 42)


# ------------------------------------------------------------------ go tool pprof (independent)

GO = shutil.which("go")
needs_go = pytest.mark.skipif(
    GO is None, reason="`go` not installed (apt-get install golang-go); .ci/run installs it"
)


def go_pprof(*args: str) -> str:
    env = dict(os.environ, PPROF_TMPDIR=os.environ.get("TMPDIR", "/tmp"))
    done = subprocess.run(
        [GO, "tool", "pprof", "-symbolize=none", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def parse_top(text: str) -> dict[str, tuple[int, int]]:
    """{function: (flat, cum)} from `pprof -top -unit=B` (or a count sample type)."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^\s*(\d+)B?\s+\S+%\s+\S+%\s+(\d+)B?\s+\S+%\s+(.+?)\s*$", line)
        if m:
            rows[m.group(3)] = (int(m.group(1)), int(m.group(2)))
    return rows


def parse_raw(text: str) -> list[tuple[list[int], list[str]]]:
    """[(values, function names leaf first)] from `pprof -raw`."""
    names = {}
    for m in re.finditer(r"^\s+(\d+): 0x0 M=1 (.+?) \S+:\d+ s=\d+", text, re.M):
        names[m.group(1)] = m.group(2)
    samples = []
    section = text.split("Samples:", 1)[1].split("Locations", 1)[0]
    for m in re.finditer(r"^\s*((?:\d+\s+){3}\d+):((?: \d+)+)\s*$", section, re.M):
        values = [int(v) for v in m.group(1).split()]
        samples.append((values, [names[i] for i in m.group(2).split()]))
    return samples


@needs_go
def test_go_pprof_raw_lists_leaf_first_stacks_and_values(tmp_path):
    path = tmp_path / "heap.pb.gz"
    write_pprof(make_snapshot(rate=1), path)
    text = go_pprof("-raw", str(path))
    assert "PeriodType: space bytes" in text
    assert "alloc_objects/count alloc_space/bytes inuse_objects/count inuse_space/bytes" in text
    samples = sorted(parse_raw(text))
    assert samples == sorted(
        [
            ([1, 50, 1, 50], ["Builder.leaf", "mid", "<module>"]),
            ([2, 200, 2, 200], ["Builder.leaf", "mid", "<module>"]),
            ([1, 300, 1, 300], ["<module>"]),
            ([1, 1000, 1, 1000], ["other", "<module>"]),
            ([1, 40000, 1, 40000], ["other", "<module>"]),
        ]
    )
    assert "thread_name:[MainThread]" in text
    assert "bytes:[100 bytes]" in text


@needs_go
def test_go_pprof_top_shows_the_estimates(tmp_path):
    rate = 4096
    path = tmp_path / "heap.pb.gz"
    write_pprof(make_snapshot(rate=rate, allocated=ALLOCATED), path)
    rows = parse_top(go_pprof("-top", "-unit=B", str(path)))

    def est(*sizes):
        return sum(s * estimate.weight(s, rate) for s in sizes)

    assert abs(rows["other"][0] - est(1000, 40_000)) <= 2
    assert abs(rows["Builder.leaf"][0] - est(100, 100, 50)) <= 2
    assert rows["mid"][0] == 0 and rows["mid"][1] == rows["Builder.leaf"][0]
    total = round(est(*(t[1] for t in RAW_TRACES)))
    assert rows["<module>"][1] == total
    assert "freed_all" not in rows or rows["freed_all"][0] == 0


@needs_go
def test_go_pprof_sample_index_alloc_space(tmp_path):
    path = tmp_path / "heap.pb.gz"
    write_pprof(make_snapshot(rate=4096, allocated=ALLOCATED), path)
    rows = parse_top(go_pprof("-top", "-unit=B", "-sample_index=alloc_space", str(path)))
    assert abs(rows["freed_all"][0] - 700.25) <= 1
    assert abs(rows["Builder.leaf"][0] - 1250) <= 1
    assert abs(rows["other"][0] - 81_000) <= 1
    objects = parse_top(go_pprof("-top", "-sample_index=alloc_objects", str(path)))
    assert abs(objects["Builder.leaf"][0] - 12) <= 1


@needs_go
def test_go_pprof_shows_cell_names(tmp_path):
    def namer(frame):
        if frame.filename.startswith("/tmp/ipykernel_"):
            return "In [12]", "In [12]"
        return frame.filename, frame.name

    path = tmp_path / "heap.pb.gz"
    write_pprof(make_snapshot(rate=1), path, frame_namer=namer)
    rows = parse_top(go_pprof("-top", "-unit=B", str(path)))
    assert rows["In [12]"] == (300, 300)
    assert "In [12]:2" in go_pprof("-top", "-lines", str(path))


def test_without_protobuf_one_clear_error_says_what_to_install(tmp_path):
    # GIVEN a Python where protobuf cannot be imported WHEN exporting or loading THEN the
    # package still imports, and both raise one error naming the package to install.
    profile = tmp_path / "x.pb"
    profile.write_bytes(b"\x0a\x00")
    code = f"""
import sys
for name in ("google", "google.protobuf", "mprofile_ipy.export.profile_pb2"):
    sys.modules[name] = None
import mprofile_ipy
from mprofile_ipy.errors import MissingDependencyError
from mprofile_ipy.export import pprof
snap = mprofile_ipy.Snapshot([(0, 8, (("a.py", 1),), 1)], 1)
for call in (lambda: snap.to_pprof({str(tmp_path / "out.pb.gz")!r}),
             lambda: pprof.load_pprof({str(profile)!r})):
    try:
        call()
    except MissingDependencyError as exc:
        assert isinstance(exc, ImportError)
        print(exc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2
    assert all("pip install 'protobuf>=4.21'" in line for line in lines)


# ------------------------------------------------------------------ hostile input (issue 15)


def _foreign(values, *, period=0, line=5, labels=(), n_types=4):
    """A one-sample foreign heap profile (Go-like, no mprofile labels)."""
    p = profile_pb2.Profile()
    p.string_table.extend(["", "alloc_objects", "count", "alloc_space", "bytes",
                           "inuse_objects", "inuse_space", "f", "f.go", "domain"])
    for t, u in [(1, 2), (3, 4), (5, 2), (6, 4)][4 - n_types:]:
        p.sample_type.add(type=t, unit=u)
    p.function.add(id=1, name=7, filename=8)
    p.location.add(id=1).line.add(function_id=1, line=line)
    sample = p.sample.add(location_id=[1], value=values)
    for key, num in labels:
        sample.label.add(key=key, num=num)
    p.period = period
    return p.SerializeToString()


def test_a_tiny_file_asking_for_millions_of_allocations_stays_tiny():
    # GIVEN a 2-type profile of ~130 bytes whose one sample stands for 19,999,999 objects
    # WHEN loaded THEN it is one trace with a count: right totals, little memory.
    data = _foreign([19_999_999, 19_999_999 * 16], n_types=2)
    assert len(data) < 200
    tracemalloc.start()
    try:
        loaded = load_pprof(io.BytesIO(data))
        (stat,) = loaded.statistics("lineno")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (stat.count, stat.size, stat.samples) == (19_999_999, 19_999_999 * 16, 19_999_999)
    assert len(loaded.trace_records) == 1 and loaded.trace_counts == [19_999_999]
    assert len(loaded.traces) == 19_999_999 and loaded.traces[-1].size == 16
    assert peak < 2 << 20


def test_int64_values_stay_exact_through_load_and_export():
    big = 2**63 - 1
    loaded = load_pprof(io.BytesIO(_foreign([1, big, 1, big])))
    (stat,) = loaded.allocated_statistics("lineno")
    assert stat.size == big and type(loaded.allocated[0][3]) is int
    profile = to_profile(loaded)
    assert [list(s.value) for s in profile.sample] == [[1, big, 1, big]]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_foreign([1, -5, 1, 8]), "negative alloc_space"),
        (_foreign([1, 8, -1, 8]), "negative inuse_objects"),
        (_foreign([1, 8, 1, 8], line=-1), r"location.line.line -1 is out of range"),
        (_foreign([1, 8, 1, 8], line=2**40), "out of range"),
        (_foreign([1, 8, 1, 8], labels=[(9, 2**40)]), "label 'domain' = 1099511627776"),
        (_foreign([1, 8, 1, 8], labels=[(9, -1)]), "label 'domain' = -1"),
        (_foreign([1, 8, 1, 8], period=2**63 - 1), "period .* out of range"),
    ],
    ids=["negative alloc", "negative count", "negative line", "huge line", "domain 2**40",
         "negative domain", "period"],
)
def test_out_of_range_values_are_refused_at_load(tmp_path, data, message):
    path = tmp_path / "hostile.pb"
    path.write_bytes(data)
    with pytest.raises(PprofFormatError, match=message) as info:
        load_pprof(path)
    assert "hostile.pb" in str(info.value)


def test_frame_references_are_bounded_by_the_file_size():
    # GIVEN a location with 2,000 (inlined) lines named 2,000 times by each of 50 samples
    # (200 million frame references from ~100 KB) WHEN loaded THEN a format error.
    p = profile_pb2.Profile(string_table=["", "inuse_space", "bytes", "f", "f.go"])
    p.sample_type.add(type=1, unit=2)
    p.function.add(id=1, name=3, filename=4)
    location = p.location.add(id=1)
    for line in range(2000):
        location.line.add(function_id=1, line=line)
    for i in range(50):
        p.sample.add(location_id=[1] * (2000 - i), value=[8])
    with pytest.raises(PprofFormatError, match="frames in all"):
        load_pprof(io.BytesIO(p.SerializeToString()))


def test_pprof_gzip_bomb_stops_at_the_cap(tmp_path):
    path = tmp_path / "bomb.pb.gz"
    path.write_bytes(gzip.compress(b"\x00" * (8 << 20), compresslevel=9))
    with pytest.raises(PprofFormatError, match=r"bomb.pb.gz: .*more than 1,048,576 bytes"):
        load_pprof(path, max_bytes=1 << 20)


def test_names_that_are_not_utf8_are_escaped_not_fatal():
    name = "mod\udcff.py"
    profile = to_profile(make_snapshot(traces=[(0, 64, ((name, 3, "f\udcfe", 1),), 1, 1, 0)]))
    table = strings(profile)
    assert "mod\\xff.py" in table and "f\\xfe" in table


def test_odd_meta_does_not_break_the_writer():
    snap = make_snapshot()
    snap.meta.update(threads=[1, 2], started_at=1e300, taken_at=float("nan"))
    profile = to_profile(snap)
    assert profile.time_nanos > 0 and profile.duration_nanos == 0
