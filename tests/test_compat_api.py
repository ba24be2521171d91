"""tracemalloc's smaller contracts: its private raw-trace functions, the snapshot attributes
a saved file keeps, the not-tracing message, and the default rate from the environment."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

import mprofile_ipy as mp
from mprofile_ipy import sampler


@pytest.fixture
def exact() -> object:
    mp.start(1, sample_rate=1)
    try:
        yield
    finally:
        mp.stop()


def _alloc() -> bytes:
    return b"y" * 50_000


def test_get_traces_has_tracemalloc_raw_format_and_shares_tracebacks(exact: object) -> None:
    blocks = [_alloc() for _ in range(2)]
    line = _alloc.__code__.co_firstlineno + 1
    traces = mp._get_traces()
    mine = [t for t in traces if t[2] == ((__file__, line),)]
    assert len(mine) == 2
    for domain, size, _frames, total in mine:
        assert domain == 0
        assert total > 1  # the whole stack's depth; one frame kept
        assert size == sys.getsizeof(blocks[0])
    assert mine[0][2] is mine[1][2]  # one tuple per distinct traceback, as tracemalloc
    assert mp._get_object_traceback(blocks[0]) == ((__file__, line),)
    mp.stop()
    assert mp._get_traces() == []
    assert mp._get_object_traceback(blocks[0]) is None


def test_not_tracing_message_is_tracemalloc_s() -> None:
    with pytest.raises(RuntimeError) as info:
        mp.take_snapshot()
    assert str(info.value) == ("the tracemalloc module must be tracing memory allocations "
                               "to take a snapshot")


def test_take_snapshot_asks_the_module_s_own_functions() -> None:
    raw = [(0, 5, (("a.py", 2),), 1)]
    with mock.patch.object(mp, "is_tracing", return_value=True), \
            mock.patch.object(mp, "get_traceback_limit", return_value=5), \
            mock.patch.object(mp, "_get_traces", return_value=raw):
        snapshot = mp.take_snapshot()
    assert snapshot.traceback_limit == 5
    assert [(t.size, t.traceback[0].filename, t.traceback[0].lineno)
            for t in snapshot.traces] == [(5, "a.py", 2)]


def test_attributes_set_on_a_snapshot_are_saved(tmp_path: Path) -> None:
    snapshot = mp.Snapshot([(0, 10, (("a.py", 1),), 1)], 1)
    snapshot.note = {"run": 3, "tags": ["x"]}
    path = tmp_path / "s.mprof"
    snapshot.dump(path)
    loaded = mp.Snapshot.load(path)
    assert loaded.note == {"run": 3, "tags": ["x"]}
    assert loaded.traces == snapshot.traces

    snapshot.bad = object()
    with pytest.raises(TypeError, match="attributes set on the snapshot"):
        snapshot.dump(tmp_path / "t.mprof")


@pytest.mark.parametrize("attributes", [{"statistics": 1}, {"traces": []}, {"_x": 1},
                                        {"not a name": 1}, [1]])
def test_a_file_cannot_replace_a_snapshot_s_own_attributes(tmp_path: Path,
                                                           attributes: object) -> None:
    path = tmp_path / "s.mprof"
    mp.Snapshot([(0, 10, (("a.py", 1),), 1)], 1).dump(path)
    doc = json.loads(gzip.decompress(path.read_bytes()))
    doc["attributes"] = attributes
    path.write_bytes(gzip.compress(json.dumps(doc).encode()))
    with pytest.raises(mp.SnapshotFormatError, match="attributes"):
        mp.load_snapshot(path)


def _rate_in_child(value: str) -> subprocess.CompletedProcess:
    code = ("import mprofile_ipy as mp; mp.start(); print(mp.get_sample_rate()); mp.stop()")
    env = {**os.environ, sampler.RATE_ENV_VAR: value}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)


def test_default_rate_comes_from_the_environment() -> None:
    assert _rate_in_child("1").stdout.split() == ["1"]
    assert _rate_in_child("64KiB").stdout.split() == [str(64 * 1024)]
    assert _rate_in_child("").stdout.split() == [str(mp.DEFAULT_SAMPLE_RATE)]
    bad = _rate_in_child("lots")
    assert bad.returncode != 0
    assert "ValueError: MPROFILE_IPY_SAMPLE_RATE='lots'" in bad.stderr
