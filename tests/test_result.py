"""ProfileResult on hand-written snapshots: grouping, hiding, estimates and their errors,
warnings, DataFrames, diffs, pprof export. No sampler runs here."""

from __future__ import annotations

import io
import linecache
import math

import IPython.core.interactiveshell
import pandas as pd
import pytest

import mprofile_ipy.ipython.runner as runner_module
import mprofile_ipy.result as result_module
from mprofile_ipy.attribution import Attributor
from mprofile_ipy.export.pprof import load_pprof
from mprofile_ipy.model import Snapshot
from mprofile_ipy.report import CallerStack
from mprofile_ipy.result import DiffResult, ProfileResult, normalize_group_by, suggest_rate

CELL = "<ipython-input-3-0123456789ab>"
CELL_SOURCE = [
    "import json\n",
    "def build(n):\n",
    "    return [str(i) for i in range(n)]\n",
    "data = build(1000)\n",
    "text = json.dumps(data)\n",
]
linecache.cache[CELL] = (1, None, CELL_SOURCE, CELL)
LIB = "/venv/lib/python3.11/site-packages/somelib/core.py"
IPY = IPython.core.interactiveshell.__file__
RUNNER = runner_module.__file__
RESULT = result_module.__file__
JSON = __import__("json").encoder.__file__


def f(filename, lineno, name="<module>", first=1):
    return (filename, lineno, name, first)


# Stacks, most recent frame first (as raw traces have them).
KERNEL = (f(IPY, 3500, "InteractiveShell.run_code"), f(IPY, 3400, "InteractiveShell.run_cell"))
BUILD = (f(CELL, 3, "build.<locals>.<listcomp>", 3), f(CELL, 3, "build", 2), f(CELL, 4)) + KERNEL
DUMPS = (f(JSON, 258, "JSONEncoder.iterencode"), f(CELL, 5)) + KERNEL
LIBCALL = (f(LIB, 10, "helper", 9), f(CELL, 4)) + KERNEL
ONLY_IPYTHON = KERNEL
# The profiler's own objects, made by its API called from a cell.
PROFILER_OWN = (f(RESULT, 100, "ProfileResult.__init__"), f(CELL, 4)) + KERNEL


def trace(size, frames, domain=0):
    return (domain, size, frames, len(frames), 2, 1)


def exact_snapshot(**kwargs):
    traces = (
        [trace(100, BUILD)] * 10  # 1000 B at the list comprehension
        + [trace(5000, DUMPS)]  # 5000 B in json, called from line 5
        + [trace(300, LIBCALL)] * 2  # 600 B in a library, called from line 4
        + [trace(7000, ONLY_IPYTHON)]  # IPython's own
        + [trace(4000, PROFILER_OWN)]  # the profiler's own objects
    )
    return Snapshot(traces, 128, sample_rate=1, **kwargs)


@pytest.fixture
def result():
    return ProfileResult(exact_snapshot(), label="In [3]", attributor=Attributor(shell=None))


def sizes(sites):
    return {s.label: s.size for s in sites}


def test_group_by_cell_folds_library_frames_into_the_cell_line(result):
    sites = result.sites("cell")
    assert sizes(sites) == {"In [3], line 5": 5000, "In [3], line 3": 1000,
                            "In [3], line 4": 600}
    top = sites[0]
    assert top.frame.source == "text = json.dumps(data)" and top.frame.cell == 3
    assert top.percent == pytest.approx(100 * 5000 / 17600)
    assert top.count == 1 and top.samples == 1 and top.std_error == 0.0


def test_group_by_line_is_the_innermost_visible_frame(result):
    assert sizes(result.sites("line")) == {
        "json/encoder.py:258": 5000, "In [3], line 3": 1000, "somelib/core.py:10": 600}
    assert normalize_group_by("lineno") == "line" and normalize_group_by("filename") == "file"


def test_group_by_function_file_and_traceback(result):
    functions = {s.label: s.size for s in result.sites("function")}
    assert functions["JSONEncoder.iterencode (json/encoder.py)"] == 5000
    assert functions["build.<locals>.<listcomp> (In [3])"] == 1000
    assert sizes(result.sites("file"))["In [3]"] == 1000
    tracebacks = result.sites("traceback")
    assert len(tracebacks) == 3
    listcomp = next(s for s in tracebacks if s.size == 1000)
    # Oldest first, IPython's frames gone, the cell's frames kept; a comprehension and the
    # line that runs it are one frame (Python <= 3.11 gives it two; issue 9).
    assert [(fr.file, fr.line, fr.name) for fr in listcomp.traceback] == [
        ("In [3]", 4, "<module>"), ("In [3]", 3, "build.<locals>.<listcomp>")]


def test_machinery_and_profiler_allocations_are_hidden_unless_show_all(result):
    assert result.hidden == 7000 + 4000
    assert result.shown == 6600 and result.total == 17600
    everything = result.filtered(show_all=True)
    assert everything.hidden == 0 and everything.shown == 17600
    ipython_site = [s for s in everything.sites("line") if s.frame.filename == IPY]
    assert ipython_site and ipython_site[0].size == 7000


def test_profiled_code_starts_below_its_callers_by_position():
    # GIVEN the stack a magic's runner recorded (outermost first, the runner's frame last)
    callers = tuple((fr[0], fr[1]) for fr in reversed((f(RUNNER, 380, "run"),
                                                        f(IPY, 2500, "run_cell_magic"),
                                                        f(CELL, 1)) + KERNEL))
    base = CallerStack(callers, strict=True)
    inside = (f(CELL, 3, "build", 2), f(RUNNER, 381, "run"), f(IPY, 2500, "run_cell_magic"),
              f(CELL, 1)) + KERNEL
    # the runner's own float, made at another line of its frame, and IPython's own
    # allocation made while the cell ran: neither is inside the profiled code
    runner_own = (f(RUNNER, 390, "run"), f(IPY, 2500, "run_cell_magic"), f(CELL, 1)) + KERNEL
    ipython_own = (f(IPY, 2600, "other"), f(CELL, 1)) + KERNEL
    snap = Snapshot([trace(64, inside), trace(32, runner_own), trace(16, ipython_own)], 128)
    # WHEN the report cuts by position THEN only the profiled code's frames are shown
    res = ProfileResult(snap, attributor=Attributor(None), caller_stack=base)
    [site] = res.sites("traceback")
    assert [(fr.file, fr.line) for fr in site.traceback] == [("In [3]", 3)]
    assert res.shown == 64 and res.hidden == 48
    # even when every frame is shown: the callers and the profiler never are
    everything = res.filtered(show_all=True)
    shown = [(fr.filename, fr.lineno) for s in everything.sites("traceback")
             for fr in s.traceback]
    assert shown == [(CELL, 3)]


def test_a_session_hides_what_ran_its_cells_and_the_machinerys_own_work():
    # GIVEN a session whose cells run from KERNEL (a terminal IPython: bin/ipython at the
    # bottom, not a package IPython's file list knows)
    launcher = f("/venv/bin/ipython", 8, "<module>")
    runs_cells = KERNEL + (launcher,)
    base = CallerStack(tuple((fr[0], fr[1]) for fr in reversed(runs_cells)), strict=False)
    in_cell = (f(CELL, 5),) + runs_cells
    compiling = (f(IPY.replace("interactiveshell", "compilerop"), 90, "compile"),
                 f("/usr/lib/python3.11/contextlib.py", 137, "__enter__"),
                 f(IPY, 3300, "InteractiveShell.run_cell")) + (launcher,)
    snap = Snapshot([trace(1000, in_cell), trace(500, compiling), trace(70, (launcher,))], 128)
    res = ProfileResult(snap, attributor=Attributor(None), caller_stack=base)
    # THEN the cell's line is the only site; IPython's compile and bin/ipython are hidden
    assert [s.label for s in res.sites("line")] == ["In [3], line 5"]
    assert res.hidden == 570


def test_include_and_exclude_patterns_match_paths_and_cell_labels():
    snap = exact_snapshot()
    only_lib = ProfileResult(snap, include=["*/somelib/*"], attributor=Attributor(None))
    assert only_lib.shown == 600 and only_lib.filtered_out == 6000
    no_json = ProfileResult(snap, exclude=["*/json/*"], attributor=Attributor(None))
    assert no_json.shown == 1600
    cells = ProfileResult(snap, include=["In [[]3]"], attributor=Attributor(None))
    assert cells.shown == 6600


def test_sampled_estimates_and_their_uncertainty():
    rate = 4096
    size = 64
    n = 400
    snap = Snapshot([trace(size, BUILD)] * n, 128, sample_rate=rate)
    res = ProfileResult(snap, attributor=Attributor(None))
    site = res.sites()[0]
    w = 1 / -math.expm1(-size / rate)
    assert site.size == pytest.approx(n * size * w)
    assert site.count == pytest.approx(n * w)
    assert site.samples == n
    # Horvitz-Thompson: var = sum s^2 w (w - 1); about 1/sqrt(n) for small allocations.
    assert site.std_error == pytest.approx(math.sqrt(n * size * size * w * (w - 1)), rel=1e-6)
    assert site.rel_error == pytest.approx(1 / math.sqrt(n), rel=0.02)
    # An allocation far above the rate is known exactly.
    big = ProfileResult(Snapshot([trace(10 * 2**20, BUILD)], 128, sample_rate=rate),
                        attributor=Attributor(None))
    assert big.sites()[0].rel_error < 1e-9


def test_warnings_tell_when_and_how_to_lower_the_rate():
    empty = ProfileResult(Snapshot([], 128, sample_rate=131072), samples=0, allocated=0,
                          attributor=Attributor(None))
    notes = empty.warnings()
    assert len(notes) == 1 and "No allocation was sampled" in notes[0] and "--rate" in notes[0]
    rough = ProfileResult(Snapshot([trace(64, BUILD)] * 4, 128, sample_rate=131072),
                          attributor=Attributor(None))
    [note] = rough.warnings()
    assert "rough" in note and "4 sampled allocations" in note and "--rate " in note
    assert ProfileResult(exact_snapshot(), attributor=Attributor(None)).warnings() == []
    freed = ProfileResult(Snapshot([], 128, sample_rate=4096), samples=30, allocated=1e6,
                          attributor=Attributor(None))
    assert "Nothing sampled is still alive" in freed.warnings()[0]


def test_suggested_rates():
    assert suggest_rate(100 * 2**20, 131072) == 65536  # capped at half the current rate
    assert suggest_rate(2**20, 131072) == 4096
    assert suggest_rate(1000, 131072) == 1  # tiny work: trace everything
    assert suggest_rate(0, 131072) == 2048


def test_sites_dataframe_is_tidy_and_numeric(result):
    df = result.to_dataframe()
    assert list(df.columns[:8]) == ["file", "line", "function", "source", "size", "count",
                                    "percent", "samples"]
    assert df["size"].dtype == "float64" and df["samples"].dtype == "int64"
    assert str(df["line"].dtype) == "Int64" and str(df["cell"].dtype) == "Int64"
    first = df.iloc[0]
    assert (first["file"], first["line"], first["size"]) == ("In [3]", 5, 5000.0)
    line_258 = linecache.getline(JSON, 258).strip()  # this Python's json/encoder.py
    assert first["traceback"].splitlines() == [
        "In [3], line 5: text = json.dumps(data)",
        "json/encoder.py:258 in JSONEncoder.iterencode" + (f": {line_258}" if line_258 else ""),
    ]
    assert df["percent"].sum() == pytest.approx(100 * 6600 / 17600)
    by_file = result.to_dataframe(group_by="file")
    assert by_file["line"].isna().all()


def test_traces_dataframe_has_one_row_per_shown_sample(result):
    df = result.to_traces_dataframe()
    assert len(df) == 13  # 10 + 1 + 2; IPython's and the profiler's are hidden
    assert df["size"].dtype == "int64" and (df["weight"] == 1.0).all()
    assert df["estimated_size"].sum() == 6600
    assert set(df["allocator"]) == {"OBJ"}


def test_counted_traces_stay_one_row_each_with_their_count():
    # A pprof profile's counted traces: 2 million identical allocations are one record.
    snap = Snapshot([(0, 64, BUILD, len(BUILD)), (0, 4096, DUMPS, len(DUMPS))], 10,
                    sample_rate=1, counts=[2_000_000, 3])
    res = ProfileResult(snap, attributor=Attributor(None))
    df = res.to_traces_dataframe()
    assert len(df) == 2 and df["count"].dtype == "int64"
    assert list(df["count"]) == [2_000_000, 3]
    assert list(df["estimated_count"]) == [2_000_000.0, 3.0]
    assert df["estimated_size"].sum() == 64 * 2_000_000 + 4096 * 3 == res.total
    # the view's snapshot keeps the counts too (its pprof export writes them as numbers)
    view = res.view_snapshot()
    assert view.trace_counts == [2_000_000, 3] and view.samples == 2_000_003


def test_allocation_totals_per_site():
    # (frames, total_nframe, count_estimate, size_estimate)
    allocated = [(BUILD, len(BUILD), 80.0, 8000.0), (DUMPS, len(DUMPS), 1.0, 5000.0),
                 (LIBCALL, len(LIBCALL), 2.0, 600.0), (KERNEL, len(KERNEL), 3.0, 900.0)]
    snap = exact_snapshot(allocated=allocated)
    res = ProfileResult(snap, attributor=Attributor(None))
    assert res.has_allocated
    by_alloc = res.sites("cell", by="allocated")
    assert [(s.label, s.allocated) for s in by_alloc][:2] == [
        ("In [3], line 3", 8000.0), ("In [3], line 5", 5000.0)]
    df = res.to_dataframe()
    assert df.set_index("line").loc[3, "allocated"] == 8000.0


def test_diff_counts_only_the_changed_samples():
    rate = 4096
    old = Snapshot([trace(64, BUILD)] * 100, 128, sample_rate=rate)
    new = Snapshot([trace(64, BUILD)] * 100 + [trace(64, DUMPS)] * 25, 128, sample_rate=rate)
    a = ProfileResult(old, label="a", attributor=Attributor(None))
    b = ProfileResult(new, label="b", attributor=Attributor(None))
    diff = b.compare_to(a)
    assert isinstance(diff, DiffResult) and diff.label == "b vs a"
    rows = {r.label: r for r in diff.diffs()}
    w = 1 / -math.expm1(-64 / rate)
    grew = rows["In [3], line 5"]
    assert grew.size_diff == pytest.approx(25 * 64 * w)
    assert grew.std_error == pytest.approx(math.sqrt(25 * 64 * 64 * w * (w - 1)))
    same = rows["In [3], line 3"]
    assert same.size_diff == 0 and same.std_error == 0.0  # shared samples cancel exactly
    df = diff.to_dataframe()
    assert list(df["size_diff"])[0] == pytest.approx(25 * 64 * w)
    assert diff.size_diff == pytest.approx(25 * 64 * w)


def test_pprof_export_names_cells_like_the_views(result):
    buffer = io.BytesIO()
    result.to_pprof(buffer)
    buffer.seek(0)
    loaded = load_pprof(buffer)
    stats = {(s.traceback[-1].filename, s.traceback[-1].lineno): s.size
             for s in loaded.statistics("lineno")}
    assert stats[("In [3]", 3)] == 1000
    assert stats[(JSON, 258)] == 5000
    assert sum(stats.values()) == 6600  # what the views show; hidden ones left out
    assert result.view_snapshot().total_size == 6600


def test_frame_namer_gives_cell_label_function_and_line(result):
    namer = result.frame_namer()
    module_frame = exact_snapshot().traces[0].traceback[0]  # oldest: IPython
    assert namer(module_frame)[0] == IPY
    cell_frame = next(fr for fr in exact_snapshot().traces[0].traceback if fr.filename == CELL)
    assert namer(cell_frame) == ("In [3]", "In [3]", 4)


def test_reprs(result):
    bundle = result._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}
    assert "In [3], line 5" in bundle["text/plain"]
    assert "&lt;" not in bundle["text/plain"]
    # the rich output is the self-contained interactive report: tracebacks unfold, the data
    # travels along, and the static HTML stays available
    assert bundle["text/html"].startswith("<div class='mprofile-ir'")
    assert "<details class='mpr-tbs'>" in bundle["text/html"]
    assert "In [3], line 5" in bundle["text/html"]
    assert result._repr_html_().startswith("<div class='mprofile-ir'")
    assert "<details>" in result.to_html()
    assert repr(result).startswith("<ProfileResult In [3]:")
    assert isinstance(result.to_dataframe(), pd.DataFrame)


def test_source_text_is_escaped_in_html():
    name = "<ipython-input-9-0123456789ab>"
    linecache.cache[name] = (1, None, ["x = '<script>alert(1)</script>'\n"], name)
    res = ProfileResult(Snapshot([trace(100, (f(name, 1),))], 128), attributor=Attributor(None))
    html = res.to_html()
    assert "<script>" not in html and "&lt;script&gt;" in html
    rich = res._repr_mimebundle_()["text/html"]  # the interactive report: escaped too
    assert "<script>alert(1)" not in rich and "&lt;script&gt;alert(1)" in rich


def test_bad_arguments_say_what_is_allowed(result):
    with pytest.raises(ValueError, match="group_by must be one of cell, line"):
        result.sites("nope")
    with pytest.raises(ValueError, match="top must be a positive int"):
        ProfileResult(exact_snapshot(), top=0)
    with pytest.raises(ValueError, match="by must be"):
        result.sites(by="weight")
    with pytest.raises(ValueError, match="kind must be one of"):
        result.plot("pie")


# -- the report: built once, rendered many ways ---------------------------------------------------


def test_views_read_the_report_and_never_re_sum_the_traces(result, monkeypatch):
    import mprofile_ipy.aggregate as aggregate

    # GIVEN a result whose report is built
    calls = []
    real = aggregate.by_traceback
    monkeypatch.setattr(aggregate, "by_traceback", lambda s: calls.append(s) or real(s))
    text_sites = [s.label for s in result.sites("line")]
    # WHEN every view renders it
    result.to_text()
    result.to_html()
    result.to_dataframe(group_by="line")
    result.plot("bar")
    result.plot("flame")
    result.widget()
    # THEN none went back to the traces, and they all show the same sites
    assert calls == []
    assert list(result.to_dataframe(group_by="line")["file"]) == [
        "json/encoder.py", "In [3]", "somelib/core.py"]
    assert text_sites == ["json/encoder.py:258", "In [3], line 3", "somelib/core.py:10"]


def test_filtered_replaces_view_options_and_keeps_the_figures(result):
    narrowed = result.filtered(top=1, group_by="line")
    assert (narrowed.top, narrowed.group_by, narrowed.label) == (1, "line", "In [3]")
    assert narrowed.current == result.current and narrowed.snapshot is result.snapshot
    assert result.filtered() is result


def test_counts_carry_their_uncertainty():
    rate, size, n = 4096, 64, 400
    res = ProfileResult(Snapshot([trace(size, BUILD)] * n, 128, sample_rate=rate),
                        attributor=Attributor(None))
    site = res.sites()[0]
    w = 1 / -math.expm1(-size / rate)
    assert site.count_std_error == pytest.approx(math.sqrt(n * w * (w - 1)))
    assert site.count_rel_error == pytest.approx(math.sqrt((w - 1) / (n * w)))


def test_diffs_show_only_changes_outside_their_interval():
    rate = 131072
    # GIVEN two snapshots of one run: line 3 unchanged (+0 B), line 5 grown by one 5-byte
    # sample (worth ~131 KB +- ~350 KB: noise), line 4 grown by 3 MiB (always sampled)
    base = [trace(64, BUILD)] * 30
    old = Snapshot(base, 128, sample_rate=rate)
    new = Snapshot(base + [trace(5, DUMPS)] + [trace(3 * 2**20, LIBCALL)], 128,
                   sample_rate=rate)
    diff = ProfileResult(new, label="b", attributor=Attributor(None)).compare_to(
        ProfileResult(old, label="a", attributor=Attributor(None)))
    rows = {r.label: r for r in diff.diffs()}
    assert rows["In [3], line 3"].size_diff == 0 and not rows["In [3], line 3"].significant
    noisy = rows["In [3], line 5"]
    assert noisy.size_diff > 0 and abs(noisy.size_diff) < 1.96 * noisy.std_error
    assert not noisy.significant
    assert [r.label for r in diff.changes()] == ["In [3], line 4"]
    # THEN the views list the supported change and say how many they left out
    text = diff.to_text()
    assert "+3.0 MiB" in text and "In [3], line 4" in text
    assert "In [3], line 5" not in text and "+0 B" not in text
    assert "2 sites left out: no change, or a change within its 95% interval." in text
    html = diff.to_html()
    assert "In [3], line 5" not in html and "2 sites left out" in html
    df = diff.to_dataframe()  # the data keeps every row, marked
    assert list(df["significant"]) == [True, False, False]  # largest change first


def test_truncated_and_foreign_stacks_are_kept_by_position():
    base = CallerStack(tuple((fr[0], fr[1]) for fr in reversed(KERNEL)), strict=True)
    # a deep stack whose oldest frames were cut by max_frames: every kept frame is deeper
    # than the callers, so all are the user's
    deep = (f(CELL, 3, "build", 2), f(CELL, 4))
    deep_trace = (0, 64, deep, 50, 2, 1)  # total_nframe 50 > 2 kept
    # a thread's stack: nothing in common with the callers: decided by its own frames
    thread = (f(CELL, 3, "build", 2), f(__import__("threading").__file__, 1012, "run"))
    res = ProfileResult(Snapshot([deep_trace, trace(32, thread)], 128),
                        attributor=Attributor(None), caller_stack=base)
    shown = sorted(tuple((fr.file, fr.line) for fr in s.traceback)
                   for s in res.sites("traceback"))
    assert shown == [(("In [3]", 3),), (("In [3]", 4), ("In [3]", 3))]
    assert res.hidden == 0


def test_a_lean_install_reports_as_text_and_html(without_modules):
    # GIVEN no IPython, pandas, matplotlib, ipywidgets or protobuf (a service's install)
    result = without_modules(["IPython", "pandas", "matplotlib", "ipywidgets", "google.protobuf"],
                             """
        import mprofile_ipy as mp
        mp.start(seed=1)
        kept = bytearray(4 * 2**20)
        snapshot = mp.take_snapshot()
        mp.stop()
        res = mp.ProfileResult(snapshot, label="service")
        print(res.to_text().splitlines()[0])
        print("<table" in res.to_html(), res.sites("line")[0].frame.source)
    """)
    # THEN the API and the text and HTML reports work
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()[:2]
    assert first.startswith("mprofile service: 4.0 MiB still alive")
    assert second == "True kept = bytearray(4 * 2**20)"


def test_the_public_surface_exports_results_loaders_and_errors():
    import mprofile_ipy
    import mprofile_ipy.export.pprof as pprof
    import mprofile_ipy.storage as storage

    assert mprofile_ipy.ProfileResult is ProfileResult and mprofile_ipy.DiffResult is DiffResult
    assert mprofile_ipy.load_pprof is pprof.load_pprof
    assert mprofile_ipy.load_snapshot is storage.load_snapshot
    assert issubclass(mprofile_ipy.SnapshotFormatError, mprofile_ipy.MprofileError)
    from mprofile_ipy import budget, postmortem

    assert mprofile_ipy.set_budget is budget.set_budget
    assert mprofile_ipy.memory_budget is budget.budget
    assert mprofile_ipy.load_postmortem is postmortem.load_postmortem
    missing = [name for name in mprofile_ipy.__all__ if not hasattr(mprofile_ipy, name)]
    assert missing == []
    assert set(mprofile_ipy.__all__) <= set(dir(mprofile_ipy))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mprofile_ipy.nope  # noqa: B018
