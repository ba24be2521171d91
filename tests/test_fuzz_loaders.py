"""The loaders under fuzzing: a short seeded run of the structure-aware fuzzer and the
inputs fuzzing found (tests/data/fuzz/), replayed. The long runs are ``fuzz/run.sh``."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import pytest

from mprofile_ipy.errors import PprofFormatError, SnapshotFormatError
from mprofile_ipy.export.pprof import load_pprof, to_profile
from mprofile_ipy.storage import load_snapshot

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "fuzz"


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("fuzz_loaders",
                                                  ROOT / "fuzz" / "fuzz_loaders.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_loaders"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("fuzz_loaders", None)


def test_structure_aware_fuzzing_finds_no_crash(fuzz):
    # GIVEN 250 hostile inputs derived from files the project writes (seed 7) WHEN each is
    # loaded THEN it raises the format error or loads into a snapshot every view accepts.
    fuzz.KNOWN.clear()
    stats = fuzz.run_structured(1e9, seed=7, max_inputs=250)
    assert stats["inputs"] == 250 and not stats["crashes"]
    # the run exercised both outcomes: some inputs load, most are refused
    assert 10 < stats["loaded"] < 240


def test_every_file_the_project_writes_loads_back(fuzz):
    # the seeds include a snapshot taken by the sampler itself: its meta must pass the
    # loaders' checks (a bool where an int was expected once refused real snapshots)
    seeds = fuzz.seed_files(sampler=True)
    assert len(seeds) == 10
    for kind, data in seeds:
        assert fuzz.load(kind, data) is not None, kind


def test_the_stream_of_inputs_is_reproducible(fuzz):
    first = [data for _, data in zip(range(40), fuzz.structured_inputs(3), strict=False)]
    again = [data for _, data in zip(range(40), fuzz.structured_inputs(3), strict=False)]
    assert first == again
    kinds = {kind for _, (kind, _d) in zip(range(200), fuzz.structured_inputs(3), strict=False)}
    assert kinds == {"snapshot", "pprof"}


def test_a_crash_is_reported_with_its_input(fuzz, monkeypatch):
    # GIVEN a view that breaks WHEN a loadable input is checked THEN Crash carries it.
    kind, data = fuzz.seed_files()[0]
    monkeypatch.setattr(fuzz, "_views", lambda snapshot: 1 / 0)
    with pytest.raises(fuzz.Crash) as info:
        fuzz.check(kind, data)
    assert info.value.data == data and info.value.stage == "views and exports"
    assert isinstance(info.value.exc, ZeroDivisionError)


@pytest.mark.parametrize("path", sorted(DATA.glob("*.bin")), ids=lambda p: p.name)
def test_inputs_found_by_fuzzing_no_longer_crash(fuzz, path):
    assert fuzz.replay([path]) == []


def test_nul_in_file_names_is_refused_at_load():
    # found by fuzzing: the report's attribution called os.stat() on the name and raised
    # ValueError; a file name cannot hold NUL, so the loaders refuse it.
    with pytest.raises(SnapshotFormatError, match="NUL"):
        load_snapshot(DATA / "snapshot-nul-in-file-name.bin")
    with pytest.raises(PprofFormatError, match="NUL"):
        load_pprof(DATA / "pprof-nul-in-file-name.bin")


def test_a_thread_id_without_an_allocator_is_refused_at_load():
    # found by fuzzing in CI: a null allocator beside a thread id loaded as a 6-tuple with
    # allocator None, and the pprof exporter failed on it
    with pytest.raises(SnapshotFormatError, match=r"traces.allocator\[0\] is null"):
        load_snapshot(DATA / "snapshot-thread-without-allocator.bin")


def test_names_that_are_not_utf8_load_and_export():
    snap = load_snapshot(DATA / "snapshot-file-name-not-utf8.bin")
    assert snap.statistics("lineno")[0].traceback[0].filename == "/tmp/mod\udcff.py"
    snap.to_pprof(io.BytesIO())


def test_dataframe_views_of_names_that_are_not_utf8(fuzz):
    pytest.importorskip("pandas")
    from mprofile_ipy.result import ProfileResult

    snap = load_snapshot(DATA / "snapshot-file-name-not-utf8.bin")
    df = ProfileResult(snap, show_all=True).to_dataframe()
    assert any("\\x" in name for name in df["filename"])  # escaped, as in pprof files


def test_exact_int64_totals_survive_a_float_placeholder_in_their_column():
    # found by fuzzing (seed 21): a live sample with no allocation totals put 0.0 in the
    # alloc_space column, the running total became a float and 2**63 - 1 rounded to 2**63
    snap = load_pprof(DATA / "pprof-float-estimates-round-past-int64.bin")
    assert snap.allocated[0][3] == 2**63 - 1
    profile = to_profile(snap)
    assert max(s.value[1] for s in profile.sample) == 2**63 - 1


def test_a_variance_too_large_for_a_float_is_refused():
    # found by fuzzing (seed 21): an integer variance of 400 digits loaded, then adding it
    # to a float raised OverflowError in the aggregation
    with pytest.raises(SnapshotFormatError, match="variance"):
        load_snapshot(DATA / "snapshot-huge-int-variance.bin")


def test_null_meta_figures_load_and_show():
    # found by fuzzing (seed 1): meta.allocated_count null loaded, then the report's
    # summary called float(None)
    from mprofile_ipy.result import ProfileResult

    snap = load_snapshot(DATA / "snapshot-null-meta-figures.bin")
    assert ProfileResult(snap, show_all=True).to_text()
