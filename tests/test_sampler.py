"""The sampler's API: arguments, counters, estimates and attribution.

Runs on every CPython the project supports (the CI runs this file under 3.10-3.13); it
needs nothing but the package itself.
"""

from __future__ import annotations

import ctypes
import gc
import math
import subprocess
import sys
import threading
import tracemalloc

import pytest

import mprofile_ipy as mp
from mprofile_ipy import sampler
from mprofile_ipy.model import Allocator

HERE = __file__


@pytest.fixture(autouse=True)
def _always_stop():
    yield
    mp.stop()


def line_of(marker: str) -> int:
    """Line number in this file of the line that ends with ``# <marker>``."""
    with open(HERE) as f:
        for i, text in enumerate(f, 1):
            if text.rstrip().endswith(f"# {marker}"):
                return i
    raise AssertionError(marker)


def site_stats(snapshot: mp.Snapshot, lineno: int) -> mp.Statistic | None:
    for stat in snapshot.statistics("lineno"):
        frame = stat.traceback[0]
        if frame.filename == HERE and frame.lineno == lineno:
            return stat
    return None


# ---- arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        ({"max_frames": 0}, ValueError, "between 1 and"),
        ({"max_frames": 5000}, ValueError, "did you mean sample_rate"),
        ({"max_frames": "5"}, TypeError, "max_frames must be an int"),
        ({"max_frames": True}, TypeError, "max_frames must be an int"),
        ({"sample_rate": -1}, ValueError, "sample_rate: .*negative"),
        ({"sample_rate": 1.5}, TypeError, "sample_rate: .*float"),
        ({"sample_rate": True}, TypeError, "sample_rate: .*(bool|int)"),
        ({"sample_rate": "ten"}, ValueError, "sample_rate: .*'ten'"),
        ({"seed": "x"}, TypeError, "seed must be an int"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        mp.start(**kwargs)
    assert not mp.is_tracing()


def test_start_stop_state_and_settings():
    assert not mp.is_tracing()
    mp.start(7, sample_rate="64KiB")
    assert mp.is_tracing()
    assert mp.get_traceback_limit() == 7
    assert mp.get_sample_rate() == 65536
    # Like tracemalloc, start() while tracing only changes the traceback limit...
    mp.start(9, sample_rate=65536)
    assert mp.get_traceback_limit() == 9
    # ...and refuses to change the rate under the running estimates.
    with pytest.raises(RuntimeError, match="already tracing"):
        mp.start(9, sample_rate=1)
    mp.stop()
    assert not mp.is_tracing()
    assert mp.get_traced_memory() == (0, 0)
    with pytest.raises(RuntimeError, match="must be tracing"):
        mp.take_snapshot()


# ---- exact mode --------------------------------------------------------------------------


def test_exact_mode_counts_every_allocation_with_weight_one():
    mp.start(1, sample_rate=1)
    keep = [bytearray(100) for _ in range(2000)]  # EXACT
    snap = mp.take_snapshot()
    stat = site_stats(snap, line_of("EXACT"))
    assert stat is not None
    # 2000 bytearray objects with their buffers, plus the list itself: at least 4000 blocks.
    assert stat.count >= 4000
    assert stat.size >= 2000 * 100
    assert snap.is_exact and snap.sample_rate == 1
    assert stat.relative_error == 0.0
    del keep


def test_get_traced_memory_matches_snapshot_total_and_reset_peak():
    mp.start(1, sample_rate=1)
    big = bytearray(5_000_000)
    current, peak = mp.get_traced_memory()
    snap = mp.take_snapshot()
    assert abs(current - snap.total_size) <= 0.01 * current + 10_000
    del big
    current2, peak2 = mp.get_traced_memory()
    assert current2 < current - 4_900_000
    assert peak2 >= peak >= 5_000_000
    mp.reset_peak()
    assert mp.get_traced_memory()[1] < 1_000_000


def test_clear_traces_forgets_everything_but_keeps_tracing():
    mp.start(1, sample_rate=1)
    keep = bytearray(1_000_000)
    assert mp.get_traced_memory()[0] >= 1_000_000
    mp.clear_traces()
    assert mp.is_tracing()
    assert mp.get_traced_memory()[0] < 100_000
    assert mp.get_stats().live_samples < 100
    del keep


def test_get_object_traceback_in_exact_mode():
    n = 1000
    mp.start(5, sample_rate=1)
    obj = "x" * n  # OBJTB
    tb = mp.get_object_traceback(obj)
    assert tb is not None
    # Tracebacks are stored oldest frame first, as in tracemalloc: [-1] is the newest.
    assert tb[-1].filename == HERE and tb[-1].lineno == line_of("OBJTB")
    assert tb[-1].name == "test_get_object_traceback_in_exact_mode"

    class WithDict:
        pass

    inst = WithDict()  # OBJTB2
    tb2 = mp.get_object_traceback(inst)
    assert tb2 is not None and tb2[-1].lineno == line_of("OBJTB2")
    mp.stop()
    assert mp.get_object_traceback(obj) is None


# ---- sampling ----------------------------------------------------------------------------


def test_large_allocation_is_always_sampled_at_its_exact_size():
    mp.start(8, seed=1)
    big = bytearray(64 * 2**20)  # BIG
    snap = mp.take_snapshot()
    biggest = max(snap.traces, key=lambda t: t.size)
    assert biggest.traceback[-1].lineno == line_of("BIG")
    assert biggest.size == 64 * 2**20 + 1  # the buffer keeps a trailing NUL byte
    # p = 1 - exp(-512) == 1.0 in doubles: the estimate is the size itself.
    assert biggest.weight == 1.0
    assert biggest.estimated_size == biggest.size
    del big


def test_line_keeping_50mb_in_1kib_objects_is_estimated_within_10_percent():
    for seed in (1, 2, 3):
        mp.start(16, seed=seed)
        keep = [bytes(1000) for _ in range(50_000)]  # FIFTY
        snap = mp.take_snapshot()
        mp.stop()
        truth = 50_000 * sys.getsizeof(bytes(1000)) + sys.getsizeof(keep)
        stat = site_stats(snap, line_of("FIFTY"))
        assert stat is not None
        assert abs(stat.size - truth) / truth < 0.10, (seed, stat.size, truth)
        assert stat.samples > 200
        assert 0.0 < stat.relative_error < 0.1
        del keep


def test_seed_makes_sampling_reproducible():
    # Fresh interpreters, so both runs make the very same allocations.
    code = (
        "import mprofile_ipy as mp\n"
        "mp.start(4, sample_rate=4096, seed=42)\n"
        "keep = [bytes(500) for _ in range(20_000)]\n"
        "print(sorted(s.count for s in mp.take_snapshot().statistics('lineno'))[-1],"
        " mp.get_stats().samples)\n"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    }
    assert len(outs) == 1


def test_allocations_land_on_file_line_and_function():
    def make_strings():
        return ["x" * 5000 + str(i) for i in range(2000)]  # FUNC

    mp.start(4, sample_rate=4096, seed=3)
    keep = make_strings()
    snap = mp.take_snapshot()
    stat = site_stats(snap, line_of("FUNC"))
    assert stat is not None
    frame = stat.traceback[0]
    # 3.12 inlines comprehensions; 3.10 has no qualified names.
    assert frame.name in (
        "make_strings",
        "<listcomp>",
        "test_allocations_land_on_file_line_and_function.<locals>.make_strings",
        "test_allocations_land_on_file_line_and_function.<locals>.make_strings.<locals>"
        ".<listcomp>",
    )
    # The traceback goes on to the caller, oldest frame first as in tracemalloc.
    tb_stats = snap.statistics("traceback")
    assert any(
        len(s.traceback) >= 2
        and s.traceback[-1].lineno == line_of("FUNC")
        and any(f.name == "test_allocations_land_on_file_line_and_function" for f in s.traceback)
        for s in tb_stats
    )
    del keep


def test_max_frames_limits_depth_but_total_nframe_counts_all():
    def deep(n):
        if n == 0:
            return bytearray(1_000_000)
        return deep(n - 1)

    mp.start(3, sample_rate=1)
    keep = deep(50)
    snap = mp.take_snapshot()
    tb = [t for t in snap.traces if t.size >= 1_000_000][0].traceback
    assert len(tb) == 3
    assert tb.total_nframe >= 53
    del keep


def test_frames_from_angle_bracket_files_are_kept():
    source = "keep = [bytearray(4096) for _ in range(100)]\n"
    code = compile(source, "<ipython-input-7-abc>", "exec")
    ns: dict = {}
    mp.start(4, sample_rate=1)
    exec(code, ns)
    snap = mp.take_snapshot()
    files = {s.traceback[0].filename for s in snap.statistics("lineno")}
    assert "<ipython-input-7-abc>" in files


def test_64bit_sizes_3gib_allocation():
    # calloc of 3 GiB maps zero pages lazily: no real memory is touched.
    calloc = ctypes.pythonapi.PyMem_RawCalloc
    calloc.restype = ctypes.c_void_p
    calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
    free = ctypes.pythonapi.PyMem_RawFree
    free.argtypes = [ctypes.c_void_p]
    mp.start(4, seed=1)
    ptr = calloc(1, 3 * 2**30)  # HUGE
    if not ptr:
        pytest.skip("the machine refused a 3 GiB calloc")
    try:
        snap = mp.take_snapshot()
        stat = site_stats(snap, line_of("HUGE"))
        assert stat is not None
        assert stat.size == 3 * 2**30
        assert mp.get_traced_memory()[0] >= 3 * 2**30
        assert snap.statistics("filename")[0].size >= 3 * 2**30
    finally:
        free(ptr)
    assert mp.get_traced_memory()[0] < 2**30


# ---- realloc paths (through ctypes, with the GIL held like real callers) --------------


def _pymem(name, restype, *argtypes):
    fn = getattr(ctypes.pythonapi, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


def test_realloc_moves_record_failed_realloc_keeps_it():
    malloc = _pymem("PyMem_Malloc", ctypes.c_void_p, ctypes.c_size_t)
    realloc = _pymem("PyMem_Realloc", ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
    free = _pymem("PyMem_Free", None, ctypes.c_void_p)

    def sizes_at(marker):
        snap = mp.take_snapshot()
        return sorted(
            t.size
            for t in snap.traces
            if t.traceback[-1].lineno == line_of(marker) and t.size > 1000
        )

    mp.start(4, sample_rate=1)
    p = malloc(100_001)  # R_MALLOC
    assert sizes_at("R_MALLOC") == [100_001]
    q = realloc(p, 200_001)  # R_GROW
    assert q
    assert sizes_at("R_MALLOC") == [] and sizes_at("R_GROW") == [200_001]
    failed = realloc(q, sys.maxsize)  # R_FAIL
    assert not failed
    # A failed realloc leaves the block, and so its record, untouched.
    assert sizes_at("R_GROW") == [200_001] and sizes_at("R_FAIL") == []
    same = realloc(q, 199_001)  # R_SHRINK
    assert same
    assert sizes_at("R_GROW") == [] and sizes_at("R_SHRINK") == [199_001]
    free(same)
    assert sizes_at("R_SHRINK") == []


def test_raw_allocations_without_the_gil_are_recorded_without_a_stack():
    lib = sampler.lib
    mp.start(4, sample_rate=1)
    p = lib.mp_test_raw_malloc_nogil(3_000_000)
    q = lib.mp_test_raw_realloc_nogil(p, 4_000_000)
    snap = mp.take_snapshot()
    raw = [t for t in snap.traces if t.size == 4_000_000]
    assert len(raw) == 1
    assert raw[0].traceback[0].filename == "<unknown>"
    assert raw[0].allocator == mp.Allocator.RAW and raw[0].domain == 0
    lib.mp_test_raw_free_nogil(q)
    assert not [t for t in mp.take_snapshot().traces if t.size == 4_000_000]


def test_no_double_counting_between_obj_and_raw_domains():
    # pymalloc serves blocks > 512 bytes from PyMem_RawMalloc: both tools count them once.
    tracemalloc.start(1)
    mp.start(1, sample_rate=1)
    try:
        keep = [bytes(2000) for _ in range(100)]  # DOUBLE
        theirs = {
            (s.traceback[0].filename, s.traceback[0].lineno): (s.size, s.count)
            for s in tracemalloc.take_snapshot().statistics("lineno")
        }
        stat = site_stats(mp.take_snapshot(), line_of("DOUBLE"))
    finally:
        mp.stop()
        tracemalloc.stop()
    assert (stat.size, stat.count) == theirs[(HERE, line_of("DOUBLE"))]
    assert 100 <= stat.count <= 102
    del keep


def test_profiler_memory_is_reported_and_released():
    mp.start(16, sample_rate=1)
    keep = [object() for _ in range(50_000)]
    used = mp.get_profiler_memory()
    assert used > 50_000 * 16
    mp.stop()
    assert mp.get_profiler_memory() < used
    del keep
    gc.collect()


@pytest.mark.parametrize("size", [64, 4096, 65536, 262144])
def test_sampling_probability_matches_the_exponential_model(size):
    # N blocks of one size: each is sampled with p = 1 - exp(-size/rate), so the number of
    # samples is Binomial(N, p) and the estimated count sum(1/p) is N on average.
    malloc = _pymem("PyMem_RawMalloc", ctypes.c_void_p, ctypes.c_size_t)
    free = _pymem("PyMem_RawFree", None, ctypes.c_void_p)
    rate, n = 65536, 4000
    mp.start(1, sample_rate=rate, seed=11)
    blocks = [malloc(size) for _ in range(n)]
    snap = mp.take_snapshot()
    for block in blocks:
        free(block)
    def ours(trace: mp.Trace) -> bool:  # a block of this test (not another thread's)
        return trace.size == size and any(f.filename == __file__ for f in trace.traceback)

    sampled = [t for t in snap.traces if ours(t)]
    p = -math.expm1(-size / rate)
    expected, sd = n * p, math.sqrt(n * p * (1 - p))
    assert abs(len(sampled) - expected) <= 5 * sd + 1
    estimated_count = sum(t.weight for t in sampled)
    assert abs(estimated_count - n) <= 5 * sd / p + 1
    assert not [t for t in mp.take_snapshot().traces if ours(t)]


def _preheader(obj: object) -> int:
    """Bytes in front of ``id(obj)`` in its block (CPython's _PyType_PreHeaderSize)."""
    flags = type(obj).__flags__
    pre = 16 if flags & (1 << 14) else 0          # Py_TPFLAGS_HAVE_GC: the GC links
    if sys.version_info >= (3, 12):
        if flags & ((1 << 2) | (1 << 3)):         # MANAGED_DICT | MANAGED_WEAKREF
            pre += 16
    elif sys.version_info >= (3, 11) and flags & (1 << 4):   # 3.11 MANAGED_DICT
        pre += 16
    return pre


class _Plain:
    def __init__(self) -> None:
        self.x = 1


def test_live_blocks_give_the_address_size_and_frames_of_each_block():
    mp.start(sample_rate=1)
    payload = b"x" * 5000  # live-bytes
    items = {payload, 1}  # live-set
    inst = _Plain()  # live-inst
    blocks = sampler.live_blocks()
    by_address = {b.address: b for b in blocks}
    assert len(by_address) == len(blocks)
    for obj, marker in [(payload, "live-bytes"), (items, "live-set"), (inst, "live-inst")]:
        block = by_address.get(id(obj) - _preheader(obj))
        assert block is not None, marker
        assert block.frames[0][:2] == (HERE, line_of(marker))
        assert block.domain == 0
        assert block.thread_id == threading.get_ident()
        assert block.allocator in (Allocator.MEM, Allocator.OBJ, Allocator.RAW)
    bytes_block = by_address[id(payload)]
    assert bytes_block.size == sys.getsizeof(payload)
    assert by_address[id(items) - _preheader(items)].size >= sys.getsizeof(items) - 32
    mp.stop()
    assert sampler.live_blocks() == []


def test_live_blocks_do_not_record_their_own_allocations():
    mp.start(sample_rate=1)
    first = sampler.live_blocks()
    second = sampler.live_blocks()
    # Each call builds a list of objects; none of them is sampled, so the second call
    # sees exactly the blocks the first one saw (nothing else ran in between).
    new = {b.address for b in second} - {b.address for b in first}
    assert not new, [b for b in second if b.address in new][:5]
    assert id(first) - _preheader(first) not in {b.address for b in second}


def test_reloading_the_module_keeps_the_rate_of_the_running_sampler():
    # Issue 15: after a reload the snapshot claimed the default rate (sizes x1000).
    code = """
import importlib
import mprofile_ipy as mp
from mprofile_ipy import sampler
mp.start(sample_rate=1)
keep = [bytearray(1000) for _ in range(100)]
importlib.reload(sampler)
snap = sampler.take_snapshot()
total = sum(s.size for s in snap.statistics("filename"))
print(sampler.get_sample_rate(), snap.sample_rate, 100_000 <= total < 1_000_000)
sampler.stop()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1", "True"]


def test_start_while_tracing_changes_only_max_frames_at_any_rate():
    mp.start(10, sample_rate=1)
    mp.start(5)
    assert mp.get_traceback_limit() == 5
    assert sampler.get_sample_rate() == 1
    assert mp.get_stats().exact
    mp.start(7, sample_rate=1)
    assert mp.get_traceback_limit() == 7
    with pytest.raises(RuntimeError, match="already tracing with sample_rate=1"):
        mp.start(5, sample_rate=4096)
    mp.stop()
    mp.start(sample_rate=4096)
    mp.start(3)
    assert (sampler.get_sample_rate(), mp.get_traceback_limit()) == (4096, 3)


def _sampled_sizes() -> list[int]:
    keep = [bytearray(100 + (i * 37) % 3000) for i in range(3000)]
    sizes = sorted(b.size for b in sampler.live_blocks() if b.frames[0][0] == HERE)
    del keep
    return sizes


def test_every_start_without_a_seed_draws_new_samples():
    # Issue 9: seeded from the clock, two starts in the same second drew the same samples.
    draws = []
    for _ in range(3):
        mp.start(sample_rate=65536)
        draws.append(_sampled_sizes())
        mp.stop()
    assert all(len(d) > 20 for d in draws)
    assert draws[0] != draws[1] and draws[1] != draws[2] and draws[0] != draws[2]
    seeded = []
    for _ in range(2):
        mp.start(sample_rate=65536, seed=42)
        seeded.append(_sampled_sizes())
        mp.stop()
    assert seeded[0] == seeded[1]


def test_the_profilers_own_calls_are_not_traced_memory():
    # Issue 9: get_traced_memory()'s own ints showed up as traces, peak 72 B after a clear.
    mp.start(sample_rate=1)
    keep = [bytearray(1000) for _ in range(10)]
    assert mp.get_traced_memory()[0] >= 10_000
    mp.clear_traces()
    assert mp.get_traced_memory() == (0, 0)
    assert mp.get_traced_memory() == (0, 0)
    mp.get_stats(), mp.is_tracing(), mp.get_traceback_limit(), sampler.get_sample_rate()
    mp.get_profiler_memory()
    assert mp.get_traced_memory() == (0, 0)
    snap = mp.take_snapshot()
    assert not [t for t in snap.traces if any(f.filename == sampler.__file__ for f in t.traceback)]
    mp.stop()
    assert mp.get_traced_memory() == (0, 0)
    del keep


def test_an_unknown_python_is_refused_at_start(monkeypatch):
    monkeypatch.setattr(sampler, "SUPPORTED_PYTHONS", ((3, 10),) if
                        sys.version_info[:2] != (3, 10) else ((3, 11),))
    with pytest.raises(RuntimeError, match="supports CPython 3.10 to 3.13"):
        mp.start()
    assert not mp.is_tracing()
    monkeypatch.undo()
    assert sampler._built_for_this_python()


def test_code_objects_only_the_profiler_holds_are_let_go_and_still_named():
    # Issue 15: interned frames kept 100 k generated functions alive in exact mode.
    import weakref

    mp.start(sample_rate=1)
    refs = []
    keep = []
    for i in range(300):
        ns: dict = {}
        exec(compile(f"def gen_{i}():\n    return bytearray({1000 + i})\n",
                     f"<generated-{i}>", "exec"), ns)
        keep.append(ns[f"gen_{i}"]())
        refs.append(weakref.ref(ns[f"gen_{i}"].__code__))
        del ns
    gc.collect()
    alive_before = sum(r() is not None for r in refs)
    snap = mp.take_snapshot()
    gc.collect()
    assert sum(r() is not None for r in refs) == 0 < alive_before
    named = {}
    for stat in snap.statistics("lineno"):
        frame = stat.traceback[0]
        if frame.filename.startswith("<generated-"):
            named[frame.filename] = (frame.lineno, stat.size)
    assert len(named) == 300
    assert named["<generated-7>"][0] == 2
    assert named["<generated-7>"][1] >= 1007
    # The names survive a clear() taken after the snapshot, and later snapshots too.
    again = mp.take_snapshot()
    assert len([s for s in again.statistics("filename")
                if s.traceback[0].filename.startswith("<generated-")]) == 300
    mp.stop()
    del keep


def test_a_code_object_at_the_address_of_one_let_go_gets_its_own_name():
    """Compaction takes the frames it resolves out of the frame index (native/stacks.c):
    a code object allocated later at the same address must be interned as a new frame,
    and the frames left in the index must still be found. Six rounds of 200 generated
    functions, each round compacted by a snapshot after its code objects are dropped."""
    mp.start(sample_rate=1, seed=1)
    keep = []
    try:
        for rnd in range(6):
            for i in range(200):
                size = 2000 + 1000 * rnd + i
                ns: dict = {}
                exec(compile(f"def gen():\n    return bytearray({size})\n",
                             f"<reused-{rnd}-{i}>", "exec"), ns)
                keep.append(ns["gen"]())
                del ns
            gc.collect()
            mp.take_snapshot()
        snap = mp.take_snapshot()
    finally:
        mp.stop()
    largest: dict = {}
    for trace in snap.traces:
        frame = trace.traceback[-1]       # the most recent frame
        if frame.filename.startswith("<reused-"):
            assert frame.lineno == 2
            largest[frame.filename] = max(largest.get(frame.filename, 0), trace.size)
    expected = {f"<reused-{rnd}-{i}>": 2000 + 1000 * rnd + i + 1
                for rnd in range(6) for i in range(200)}
    assert largest == expected        # bytearray(n) allocates n + 1 bytes
    del keep


def test_file_names_that_are_not_utf8_are_kept():
    """A module file name with bytes the file system encoding cannot decode (lone
    surrogates, PEP 383) is reported as that same name, not as <unknown>, and exports."""
    import io

    name = "/tmp/mod\udcff.py"
    code = compile("kept = [bytearray(512) for _ in range(20)]\n", name, "exec")
    mp.start(sample_rate=1)
    try:
        ns: dict = {}
        exec(code, ns)
        snap = mp.take_snapshot()
    finally:
        mp.stop()
    stats = [s for s in snap.statistics("lineno") if s.traceback[-1].filename == name]
    assert stats and sum(s.count for s in stats) >= 20
    snap.to_pprof(io.BytesIO())  # the exporter escapes what protobuf cannot carry
    del ns
