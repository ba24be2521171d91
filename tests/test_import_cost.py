"""What ``import mprofile_ipy; mprofile_ipy.start()`` costs a process, and the lazy names.

In a script every module the package loads stays for the life of the process, and each
full collection of the cyclic GC traverses the objects it created: importing the whole
package (dataclasses + inspect, typing, statistics, fractions, gzip, json ...) cost 0.6-2
points of CPU instructions in steady state, as much as the sampler's own hooks
(benchmarks/README.md, issue 10). The start path loads the sampler, the native module and
threading only; everything else loads on first use (docs/architecture.md, "Import cost").
Each check runs in a fresh interpreter, where nothing of the test session is loaded.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import mprofile_ipy

ROOT = Path(__file__).resolve().parents[1]

#: Modules the start path must not load (unless the interpreter had loaded them before).
HEAVY = ("dataclasses", "inspect", "typing", "statistics", "fractions", "decimal", "gzip",
         "zlib", "json", "ast", "dis", "tokenize", "linecache", "random", "hashlib",
         "numpy", "pandas", "IPython", "matplotlib", "ipywidgets", "google.protobuf",
         "mprofile_ipy.model", "mprofile_ipy.aggregate", "mprofile_ipy.estimate",
         "mprofile_ipy.storage", "mprofile_ipy.report", "mprofile_ipy.result",
         "mprofile_ipy.renderers", "mprofile_ipy.budget", "mprofile_ipy.ipython",
         "mprofile_ipy.export", "mprofile_ipy.sampler_records")

#: GC-tracked objects the start path may add to a process that has imported threading and
#: compiled something: measured 440-450 on CPython 3.10 to 3.13 (4,890-5,190 when the
#: package imported everything). threading is allowed on the start path; it comes first
#: in the probe because its own imports (collections, functools ...: about 1,200 objects in
#: a bare interpreter, none in a venv whose start-up loaded them) depend on the
#: environment. So does the first compile() of a process (no .pyc files): it creates the
#: ast module's ~120 node types (about 600 objects), so the probe compiles first.
MAX_NEW_OBJECTS = 800

PROBE = """
import gc, sys, threading
compile("", "<probe>", "exec")  # the ast types a first compile() creates (no .pyc files)
gc.collect()
before_modules = set(sys.modules)
before_objects = len(gc.get_objects())
import mprofile_ipy
mprofile_ipy.start(seed=1)
data = [bytes(100) for _ in range(1000)]
mprofile_ipy.stop()
del data
gc.collect()
new_objects = len(gc.get_objects()) - before_objects
new_modules = sorted(set(sys.modules) - before_modules)
threads = threading.active_count()
import json
print(json.dumps({"objects": new_objects, "modules": new_modules, "threads": threads}))
"""


def _run(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_start_path_loads_only_the_sampler():
    # GIVEN a fresh interpreter WHEN it imports the package, starts and stops the profiler
    out = _run(PROBE)
    # THEN none of the heavy modules (nor any of their submodules) was loaded by it
    loaded = [m for m in out["modules"]
              if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert loaded == [], f"the start path loaded {loaded}"
    ours = sorted(m for m in out["modules"] if m.startswith("mprofile_ipy"))
    assert ours == ["mprofile_ipy", "mprofile_ipy._native", "mprofile_ipy._native.lib",
                    "mprofile_ipy.errors", "mprofile_ipy.native_capture",
                    "mprofile_ipy.sampler", "mprofile_ipy.units"]
    # AND it keeps few GC-tracked objects and no thread alive
    assert out["objects"] < MAX_NEW_OBJECTS, out
    assert out["threads"] == 1


def test_what_is_lazy_loads_on_first_use():
    # GIVEN a fresh interpreter that started the profiler WHEN it takes a snapshot, reads
    # the counters and loads a file THEN the modules come then, and work
    code = """
import json, sys, tempfile, os
import mprofile_ipy
mprofile_ipy.start(seed=1)
keep = [bytearray(4096) for _ in range(200)]
stats_before = "mprofile_ipy.sampler_records" in sys.modules
stats = mprofile_ipy.get_stats()
model_before = "mprofile_ipy.model" in sys.modules
snap = mprofile_ipy.take_snapshot()
top = snap.statistics("lineno")[0]
mprofile_ipy.stop()
path = os.path.join(tempfile.mkdtemp(), "s.mprof")
storage_before = "mprofile_ipy.storage" in sys.modules
snap.dump(path)
back = mprofile_ipy.load_snapshot(path)
print(json.dumps({
    "stats_before": stats_before, "model_before": model_before,
    "storage_before": storage_before, "stats_type": type(stats).__name__,
    "samples": stats.samples, "is_snapshot": isinstance(snap, mprofile_ipy.Snapshot),
    "line": top.traceback[0].lineno, "same": back.statistics("lineno")[0].size == top.size,
    "rate": mprofile_ipy.get_sample_rate(),
    "sized": mprofile_ipy.units.parse_size("1.5KiB"),
}))
"""
    out = _run(code)
    assert out["stats_before"] is False and out["model_before"] is False
    assert out["storage_before"] is False
    assert out["stats_type"] == "SamplerStats" and out["samples"] > 0
    assert out["is_snapshot"] is True and out["line"] == 5 and out["same"] is True
    assert out["rate"] == 128 * 1024 and out["sized"] == 1536


def test_every_public_name_resolves_in_a_fresh_interpreter():
    # GIVEN a fresh interpreter WHEN each name of __all__ is imported with `from ... import`
    code = """
import json, mprofile_ipy
names = list(mprofile_ipy.__all__)
got = {}
for name in names:
    ns = {}
    exec(f"from mprofile_ipy import {name}", ns)
    got[name] = getattr(ns[name], "__module__", None) or type(ns[name]).__name__
listed = [n for n in names if n not in dir(mprofile_ipy)]
print(json.dumps({"names": names, "got": got, "not_in_dir": listed}))
"""
    out = _run(code)
    # THEN every one resolves and dir() lists them all
    assert sorted(out["got"]) == sorted(out["names"]) == sorted(mprofile_ipy.__all__)
    assert out["not_in_dir"] == []
    assert out["got"]["Snapshot"] == "mprofile_ipy.model"
    assert out["got"]["SamplerStats"] == "mprofile_ipy.sampler_records"


def test_lazy_names_are_the_modules_own_objects():
    # GIVEN the package in this process WHEN lazy names are looked up THEN each is the very
    # object of the module that defines it, unknown names raise AttributeError, and the
    # submodules the package used to import eagerly are still reachable as attributes
    from mprofile_ipy import model, sampler, sampler_records, storage

    assert mprofile_ipy.Snapshot is model.Snapshot
    assert mprofile_ipy.NATIVE_DOMAIN == model.NATIVE_DOMAIN == 0x6E6174
    assert mprofile_ipy.load_snapshot is storage.load_snapshot
    assert mprofile_ipy.SamplerStats is sampler.SamplerStats is sampler_records.SamplerStats
    assert sampler.LiveBlock is sampler_records.LiveBlock
    assert "LiveBlock" in dir(sampler)
    assert mprofile_ipy.aggregate.Record is not None
    for module, name in ((mprofile_ipy, "no_such_name"), (sampler, "no_such_name")):
        try:
            getattr(module, name)
        except AttributeError as exc:
            assert name in str(exc)
        else:
            raise AssertionError(f"{module.__name__}.{name} resolved")


def test_type_checkers_see_every_lazy_name():
    # GIVEN __init__.py's source WHEN read as a type checker does (TYPE_CHECKING true)
    tree = ast.parse((ROOT / "mprofile_ipy" / "__init__.py").read_text(encoding="utf-8"))
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            bound.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.FunctionDef):
            bound.add(node.name)
        elif isinstance(node, ast.Assign):
            bound.update(t.id for t in node.targets if isinstance(t, ast.Name))
    # THEN every name of __all__ is bound by an import or a definition of the module
    assert sorted(set(mprofile_ipy.__all__) - bound) == []
    # AND every lazy name is imported under `if TYPE_CHECKING:` from the module _LAZY names
    checked = [node for node in tree.body
               if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"]
    assert len(checked) == 1
    typed = {alias.name: "." * node.level + (node.module or "")
             for node in ast.walk(checked[0]) if isinstance(node, ast.ImportFrom)
             for alias in node.names}
    for name, module in mprofile_ipy._LAZY.items():
        assert typed.get(name) == module, name
