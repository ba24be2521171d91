"""NumPy array data in the default mode: seen on every NumPy, once, at the right line.

Runs on every CPython the project supports; NumPy 2.4 and older (all that 3.11 gets)
allocate array data with malloc, NumPy 2.5 (3.12+) with PyMem_RawMalloc, and both must
give the same answer. The arrays are large (10-200 MB), so at the default sample rate each
one is sampled with probability 1 - exp(-size/128 KiB) ~ 1 and the estimates are exact to
a fraction of a percent; the +/-10% bounds are the issue's, not statistical slack.
Without NumPy (or pandas) the tests that need it skip and say why; the rest still run.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import threading

import pytest

import mprofile_ipy as mp
from mprofile_ipy import native_capture as nc
from mprofile_ipy.model import NUMPY_DOMAIN, Allocator

np = pytest.importorskip("numpy", reason="NumPy is not installed: NumPy capture not tested")

HERE = __file__
MB = 1_000_000


def here() -> int:
    """The line number of the caller: ``x, line = make(), here()`` names x's line."""
    return sys._getframe(1).f_lineno


def live_at(snapshot: mp.Snapshot, lineno: int, *, domain: int | None = None,
            innermost: bool = False) -> float:
    """Estimated live bytes whose traceback passes through this file's ``lineno``
    (only as the most recent frame when ``innermost``)."""
    total = 0.0
    for trace in snapshot.traces:
        if domain is not None and trace.domain != domain:
            continue
        frames = list(trace.traceback)  # oldest first
        if innermost:
            frames = frames[-1:]
        if any(f.filename == HERE and f.lineno == lineno for f in frames):
            total += trace.estimated_size
    return total


def allocated_at(snapshot: mp.Snapshot, lineno: int) -> float:
    """Estimated bytes allocated at ``lineno`` (innermost frame) since start, freed included."""
    return sum(
        s.size_estimate
        for s in snapshot.allocated_statistics("lineno")
        if s.traceback[0].filename == HERE and s.traceback[0].lineno == lineno
    )


def assert_close(value: float, expected: float, rel: float = 0.10) -> None:
    assert abs(value - expected) <= rel * expected, f"{value / MB:.1f} MB, expected " \
        f"{expected / MB:.1f} MB +/- {rel:.0%}"


@pytest.fixture
def profiler():
    """The sampler at its default rate; start() wires the NumPy capture in."""
    gc.collect()
    mp.start(seed=12345)
    yield
    mp.stop()


def test_status_reports_wrapped_default_handler(profiler):
    st = nc.status()
    assert st["installed"] is True
    assert st["numpy"]["installed"] is True
    assert st["numpy"]["handler"] == "default_allocator"
    assert st["numpy"]["version"] == np.__version__
    assert st["numpy"]["api_feature_version"] >= 0xF  # NumPy >= 1.22
    assert st["native"]["enabled"] is False
    # NumPy's own view of its handler is unchanged: we wrap it, we do not replace it.
    core = sys.modules.get("numpy._core.multiarray") or sys.modules["numpy.core.multiarray"]
    assert core.get_handler_name() == "default_allocator"


def test_200mb_array_is_attributed_to_its_line(profiler):
    a, line = np.zeros(25_000_000), here()  # 200 MB, a C function: this line is innermost
    snap = mp.take_snapshot()
    assert_close(live_at(snap, line, innermost=True), a.nbytes)
    traces = [t for t in snap.traces if t.traceback[-1].lineno == line
              and t.traceback[-1].filename == HERE]
    assert {t.domain for t in traces} == {NUMPY_DOMAIN}
    assert {t.allocator for t in traces} == {Allocator.NUMPY}
    current, _ = mp.get_traced_memory()
    assert current >= 0.9 * a.nbytes


def test_array_made_in_python_level_numpy_function(profiler):
    # np.ones is Python code in NumPy: the data is allocated a few frames deeper, and the
    # line that called np.ones is in the traceback.
    a, line = np.ones((5000, 2500)), here()  # 100 MB
    snap = mp.take_snapshot()
    assert_close(live_at(snap, line, domain=NUMPY_DOMAIN), a.nbytes)


def test_freed_array_is_no_longer_reported(profiler):
    a, line = np.empty(25_000_000), here()
    a.fill(1.0)
    assert_close(live_at(mp.take_snapshot(), line), a.nbytes)
    del a
    gc.collect()
    assert live_at(mp.take_snapshot(), line) < 1 * MB
    current, peak = mp.get_traced_memory()
    assert current < 50 * MB <= 190 * MB < peak


def test_no_double_counting_with_pymem(profiler):
    # NumPy 2.5 allocates array data through PyMem_RawMalloc: the RAW hook would see it too.
    # It must be recorded once, as NUMPY, and nothing in domain 0 at this line.
    a, line = np.zeros(12_500_000), here()  # 100 MB
    snap = mp.take_snapshot()
    assert_close(live_at(snap, line), a.nbytes)                   # all domains together
    assert_close(live_at(snap, line, domain=NUMPY_DOMAIN), a.nbytes)
    assert live_at(snap, line, domain=0) < 1 * MB
    stats = mp.get_stats()
    assert stats.current_bytes < 1.5 * a.nbytes


def test_resize_moves_the_record(profiler):
    a, first = np.zeros(6_250_000), here()  # 50 MB
    a.resize((12_500_000,), refcheck=False)  # the handler's realloc: 100 MB
    line = here() - 1
    snap = mp.take_snapshot()
    assert live_at(snap, first) < 1 * MB
    assert_close(live_at(snap, line), a.nbytes)


def test_arithmetic_temporaries_appear_where_made_and_vanish(profiler):
    a = np.ones(12_500_000)  # 100 MB
    b, line = a * 2.0, here()
    total, line_tmp = (a * 3.0).sum(), here()  # a 100 MB temporary, freed at once
    snap = mp.take_snapshot()
    assert_close(live_at(snap, line), b.nbytes)
    assert live_at(snap, line_tmp) < 1 * MB
    # ... but it was allocated there: allocated_statistics counts freed blocks too.
    assert_close(allocated_at(snap, line_tmp), a.nbytes)
    del b
    assert live_at(mp.take_snapshot(), line) < 1 * MB
    assert total == 3.0 * a.size


def test_arrays_made_in_other_threads_are_seen(profiler):
    # PyDataMem_SetHandler would only cover the calling context; the wrapped default
    # handler covers threads, which start with a fresh context.
    out = []

    def work():
        out.append(np.zeros(6_250_000))  # 50 MB

    t = threading.Thread(target=work)
    t.start()
    t.join()
    line = work.__code__.co_firstlineno + 1
    snap = mp.take_snapshot()
    assert_close(live_at(snap, line, domain=NUMPY_DOMAIN), out[0].nbytes)
    threads = {tr.thread_id for tr in snap.traces if tr.domain == NUMPY_DOMAIN}
    assert threading.get_ident() not in threads


def test_uninstall_puts_numpy_back_and_drops_records(profiler):
    a, line = np.zeros(12_500_000), here()
    nc.uninstall()
    assert nc.status()["numpy"]["installed"] is False
    snap = mp.take_snapshot()
    assert live_at(snap, line, domain=NUMPY_DOMAIN) == 0.0
    b, line_b = np.zeros(12_500_000), here()
    snap = mp.take_snapshot()
    assert live_at(snap, line_b, domain=NUMPY_DOMAIN) == 0.0
    del a, b
    nc.install(False)  # and back: arrays are seen again
    c, line_c = np.zeros(12_500_000), here()
    assert_close(live_at(mp.take_snapshot(), line_c, domain=NUMPY_DOMAIN), c.nbytes)


def test_install_is_idempotent(profiler):
    for _ in range(3):
        nc.install(False)
    a, line = np.zeros(12_500_000), here()
    assert_close(live_at(mp.take_snapshot(), line), a.nbytes)


# ---- pandas (NumPy-backed) -------------------------------------------------------------


@pytest.fixture
def pd():
    return pytest.importorskip("pandas", reason="pandas is not installed: not tested")


def test_pandas_dataframe_attributed_to_its_line(profiler, pd):
    n = 1_250_000
    df, line = pd.DataFrame({f"c{i}": np.full(n, float(i)) for i in range(10)}), here()
    gc.collect()
    expected = df.memory_usage(index=False).sum()  # 100 MB of float64 columns
    assert_close(expected, 100 * MB, rel=0.01)
    assert_close(live_at(mp.take_snapshot(), line, domain=NUMPY_DOMAIN), expected)


def test_dataframe_copy_appears_where_made_and_vanishes(profiler, pd):
    df = pd.DataFrame(np.ones((1_250_000, 10)), columns=[f"c{i}" for i in range(10)])
    df2, line = df.copy(), here()
    snap = mp.take_snapshot()
    assert_close(live_at(snap, line, domain=NUMPY_DOMAIN), 100 * MB)
    del df2
    gc.collect()
    assert live_at(mp.take_snapshot(), line) < 1 * MB


def test_dataframe_arithmetic_temporaries(profiler, pd):
    df = pd.DataFrame({"a": np.ones(12_500_000)})
    s, line = (df["a"] * 3 + 1), here()  # 100 MB temporary, 100 MB result
    gc.collect()
    snap = mp.take_snapshot()
    assert_close(live_at(snap, line, domain=NUMPY_DOMAIN), 100 * MB)
    del s
    gc.collect()
    assert live_at(mp.take_snapshot(), line) < 1 * MB


# ---- NumPy imported after start, and no NumPy at all (fresh interpreters) -------------


def run_python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_numpy_imported_after_start_is_covered():
    out = run_python("""
        import sys
        import mprofile_ipy as mp
        from mprofile_ipy import native_capture as nc
        assert "numpy" not in sys.modules
        mp.start(seed=1)
        assert nc.status()["numpy"]["waiting_for_import"]
        import numpy as np
        a, line = np.zeros(25_000_000), sys._getframe().f_lineno
        st = nc.status()["numpy"]
        snap = mp.take_snapshot()
        size = sum(t.estimated_size for t in snap.traces
                   if t.domain == mp.NUMPY_DOMAIN and t.traceback[-1].lineno == line)
        print(st["installed"], st["waiting_for_import"], round(size / a.nbytes, 2))
        mp.stop()
    """)
    installed, waiting, ratio = out.split()
    assert installed == "True" and waiting == "False"
    assert 0.9 <= float(ratio) <= 1.1


def test_everything_works_without_numpy():
    out = run_python("""
        import sys
        sys.modules["numpy"] = None  # `import numpy` now fails, as if it were not installed
        import mprofile_ipy as mp
        from mprofile_ipy import native_capture as nc
        mp.start(seed=1)
        data = [bytes(1000) for _ in range(20000)]
        st = nc.status()
        snap = mp.take_snapshot()
        mp.stop()
        print(st["numpy"]["installed"], st["numpy"]["imported"], len(snap.traces) > 0)
    """)
    assert out.split() == ["False", "False", "True"]


def test_live_blocks_find_an_arrays_data_pointer():
    from mprofile_ipy import sampler

    mp.start(sample_rate=1)
    try:
        arr = np.ones(300_000)
        blocks = {b.address: b for b in sampler.live_blocks()}
        block = blocks.get(arr.ctypes.data)
        assert block is not None
        assert block.allocator == Allocator.NUMPY
        assert block.domain == NUMPY_DOMAIN
        assert block.size == arr.nbytes
        assert HERE in [f[0] for f in block.frames]
    finally:
        mp.stop()
