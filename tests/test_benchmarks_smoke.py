"""Smoke test of the benchmark scripts: their --quick runs finish and print complete tables;
the callgrind harness runs a tiny workload under valgrind (skipped without valgrind).

No timing is asserted (the machine is shared and noisy); only that every workload and
configuration, and every accuracy site, shows up with numbers, and that the JSON is written.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"

pytestmark = pytest.mark.timeout(120)


def run_script(name: str, *args: str) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(BENCH / name), *args], capture_output=True,
                          text=True, env=env, timeout=110)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def table_rows(text: str, header_start: str) -> list[list[str]]:
    """The body rows of the markdown table whose header line starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_overhead_quick(tmp_path: Path) -> None:
    # GIVEN the quick settings, one round and two workloads to stay fast
    out = tmp_path / "overhead.json"
    # WHEN the overhead benchmark runs
    text = run_script("overhead.py", "--quick", "--rounds", "1", "--workloads",
                      "churn,churn_live0", "--python-label", "smoke", "--output", str(out))
    # THEN the ratio matrix has a row per workload and a column per configuration
    header = next(line for line in text.splitlines() if line.startswith("| workload | none"))
    configs = [c.strip() for c in header.strip("|").split("|")][1:]
    for expected in ("none", "tracemalloc-1", "tracemalloc-25", "mprofile_ipy",
                     "mprofile_ipy-exact"):
        assert expected in configs
    matrix = table_rows(text, "| workload | none")
    assert [row[0] for row in matrix] == ["churn", "churn_live0"]
    assert all(row[1] == "x1.000" for row in matrix)   # the baseline is its own reference
    # AND the long table has one row per (workload, configuration) with numbers in it
    long_rows = table_rows(text, "| workload | config | median s")
    assert len(long_rows) == 2 * len(configs)
    for row in long_rows:
        assert float(row[2]) > 0
        assert row[3].startswith("x")
        assert float(row[6]) > 0   # peak RSS in MiB, from the child process
    # AND the JSON holds the same rows and the raw samples
    data = json.loads(out.read_text())
    assert data["label"] == "smoke"
    assert {(r["workload"], r["config"]) for r in data["rows"]} == {
        (w, c) for w in ("churn", "churn_live0") for c in configs}
    assert all(len(r["walls"]) == 1 for r in data["rows"])
    exact = [r for r in data["rows"] if r["config"] == "mprofile_ipy-exact"]
    assert all(r["allocations"] > 1000 for r in exact)


def test_accuracy_quick(tmp_path: Path) -> None:
    out = tmp_path / "accuracy.json"
    text = run_script("accuracy.py", "--quick", "--python-label", "smoke", "--output",
                      str(out))
    rows = table_rows(text, "| site | exact MiB")
    sites = [row[0] for row in rows]
    assert sites[0].startswith("list(range(")
    assert any("1 KiB objects" in s for s in sites)
    assert sites[-1].startswith("TOTAL")
    assert len(rows) == 12
    for row in rows:
        assert float(row[1]) > 0                     # exact MiB from tracemalloc
        assert row[4].endswith("%") and row[10].endswith("%")   # bias and shortcut bias
    counts = table_rows(text, "| site | exact count")
    assert len(counts) == len(rows)
    data = json.loads(out.read_text())
    assert data["rate"] == 128 * 1024 and data["seeds"] == [1, 2]
    # The shortcut under-counts list(range(...)): its samples average far above an int's size.
    first = data["rows"][0]
    assert first["shortcut_count"]["mean"] < 0.5 * first["exact_count"]
    assert "mprofile_ipy with sample_rate=1 vs tracemalloc" in text


def test_bench_native_quick(tmp_path: Path) -> None:
    pytest.importorskip("numpy")
    pytest.importorskip("pandas")
    from mprofile_ipy import native_capture

    if not native_capture.status()["native"]["supported"]:
        pytest.skip("native mode needs Linux/glibc on x86-64 or aarch64")
    out = tmp_path / "native.json"
    text = run_script("bench_native.py", "--quick", "--workloads", "churn,numpy,pandas",
                      "--output", str(out))
    rows = table_rows(text, "| workload | none s")
    assert [row[0] for row in rows] == ["churn", "numpy", "pandas"]
    for row in rows:
        assert float(row[1]) > 0 and row[3].startswith("x") and row[5].startswith("x")
    assert "native mode install:" in text and "import slots patched" in text
    assert out.exists() and json.loads(out.read_text())


# ---- callgrind.py: instruction counts under valgrind --------------------------------------

def load_callgrind_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_callgrind", BENCH / "callgrind.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_callgrind"] = module     # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_floor_counts_the_allocator_calls_of_a_workload(tmp_path: Path) -> None:
    # GIVEN the floor extension, built for this interpreter in a scratch folder
    pytest.importorskip("cffi")
    env = dict(os.environ, MPROFILE_FLOOR_BUILD=str(tmp_path / "floor"))
    # WHEN its counting hooks watch one run of the churn workload at scale 0.05 (n = 200)
    cg = load_callgrind_module()
    os.environ["MPROFILE_FLOOR_BUILD"] = env["MPROFILE_FLOOR_BUILD"]
    try:
        cg.build_floor()
    finally:
        del os.environ["MPROFILE_FLOOR_BUILD"]
    proc = subprocess.run([sys.executable, str(BENCH / "callgrind_child.py"), "count", "churn",
                           "0.05"], env=env, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    # THEN every object the workload makes is an allocation: 3 rounds x 200 x (dict, tuple
    # and its str, list, instance and its str, tuple and __dict__), plus the four lists
    assert counts["allocs"] >= 3 * 200 * 7
    assert counts["allocs"] < 3 * 200 * 20
    # AND nearly everything allocated is freed again (the workload keeps nothing)
    assert abs(counts["frees"] - counts["allocs"]) < 0.05 * counts["allocs"]
    assert counts["domains"]["obj"]["malloc"] > counts["domains"]["raw"]["malloc"]


def test_callgrind_children_load_bytecode_not_source() -> None:
    # GIVEN the harness WHEN it prepares the children (which never write bytecode)
    import mprofile_ipy

    cg = load_callgrind_module()
    folders = cg.precompile()
    # THEN the package it finds (the one the children import) has a current .pyc for every
    # module, so no child compiles source (which would create the ast module's types)
    package = Path(mprofile_ipy.__file__).parent
    assert [Path(f).resolve() for f in folders] == [package.resolve()]
    for module in ("__init__", "sampler", "model", "renderers/text"):
        source = package / f"{module}.py"
        cached = Path(importlib.util.cache_from_source(str(source)))
        assert cached.exists() and cached.stat().st_mtime >= source.stat().st_mtime, module


@pytest.mark.timeout(600)
def test_callgrind_harness_tiny_run(tmp_path: Path) -> None:
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed (apt-get install valgrind)")
    cg = load_callgrind_module()
    out = tmp_path / "cg.json"
    keep = tmp_path / "outs"
    env = dict(os.environ, MPROFILE_FLOOR_BUILD=str(tmp_path / "floor"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # WHEN the harness runs a tiny churn under no profiler, the floor and mprofile_ipy
    proc = subprocess.run([sys.executable, str(BENCH / "callgrind.py"), "--workloads", "churn",
                           "--configs", "floor,mprofile_ipy", "--scale", "0.05", "--jobs", "2",
                           "--breakdown", "3", "--keep", str(keep), "--output", str(out)],
                          env=env, capture_output=True, text=True, timeout=590)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # THEN the ratio table has the churn row with a count and a ratio per configuration
    rows = table_rows(proc.stdout, "| workload | none (instr/run)")
    assert [r[0] for r in rows] == ["churn"]
    assert int(rows[0][1].replace(",", "")) > 1_000_000
    assert all(re.fullmatch(r"x\d\.\d{3}", cell) for cell in rows[0][2:])
    # AND the floor table has the allocator counts and the per-call figures
    floor_rows = table_rows(proc.stdout, "| workload | allocs/run")
    assert floor_rows[0][0] == "churn" and int(floor_rows[0][1].replace(",", "")) > 4000
    assert "Where mprofile_ipy's added instructions go, churn" in proc.stdout
    data = json.loads(out.read_text())
    churn = data["rows"][0]
    assert {"floor", "mprofile_ipy"} <= set(churn["configs"])
    for entry in churn["configs"].values():
        assert 0.9 < entry["ratio"] < 3
    # AND the parser's per-function self costs add up to callgrind's own total
    for path in keep.glob("callgrind.*.out"):
        total, functions = cg.parse_callgrind(path)
        assert total > 10_000_000
        assert sum(functions.values()) == total
    hooks = [f for (obj, f) in cg.parse_callgrind(
        keep / "callgrind.churn.mprofile_ipy.3.out")[1] if obj.startswith("_native")]
    assert any("malloc" in f for f in hooks) and any("free" in f for f in hooks)
