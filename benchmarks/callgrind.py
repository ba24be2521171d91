"""Instruction counts of each profiler under valgrind's callgrind: exact, machine-load free.

Each (workload, configuration) runs in two child processes under
``valgrind --tool=callgrind``: one runs the workload 3 times, the other once. Both import
the same modules and start the profiler the same way, so the difference of their totals,
halved, is the instruction count of one steady-state run of the workload under that
configuration: start-up, imports and the profiler's start and stop cancel. With a fixed
``PYTHONHASHSEED``, a seeded sampler and no bytecode written, the counts repeat exactly
from run to run, whatever else the machine is doing.

Configurations: ``none`` (no profiler, the baseline); ``floor`` (a tiny C extension,
benchmarks/floor/floor.c, built here with cffi, whose RAW/MEM/OBJ hooks only forward to the
allocator they replaced: the price of the ``PyMem_SetAllocator`` design itself); ``import``
(``import mprofile_ipy``, nothing started: what the package's modules cost a process in
steady state) and ``floor+import`` (the floor in such a process, the baseline of the
sampler's own work);
``mprofile_ipy`` (default rate, 128 KiB, seeded); ``native`` (``start(native=True)``);
``exact`` (``sample_rate=1``); ``tracemalloc-1``; and, when importable,
``mprofile-0.0.15`` and ``memray`` (``trace_python_allocators=True``).

The floor's counting hooks, in a separate run outside valgrind, count the allocator calls
of one workload run: allocations (malloc, calloc, realloc) and frees per domain. With them
the harness prints the instructions each configuration adds per allocation and per free,
and, from the per-function costs in callgrind's output, where mprofile_ipy's added
instructions go (``--breakdown``).

Run: ``python benchmarks/callgrind.py`` (see benchmarks/README.md, "callgrind.py").
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CHILD = HERE / "callgrind_child.py"
FLOOR_SOURCE = HERE / "floor" / "floor.c"
RESULTS = HERE / "results"

sys.path.insert(0, str(HERE))
from callgrind_child import (  # noqa: E402  (the workloads and configurations, one place)
    CONFIGS,
    SEED,
    WORKLOAD_NEEDS,
    WORKLOADS,
    floor_build_dir,
)

sys.path.pop(0)
DEFAULT_CONFIGS = CONFIGS
ENV_FIXED = {"PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
             "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# ---------------------------------------------------------------------------------------
# The floor, built here for the children (benchmarks/callgrind_child.py) to import.


def build_floor() -> Path:
    """Compile benchmarks/floor/floor.c with cffi for this interpreter (once per source
    change); returns the folder to put on ``sys.path`` to import ``_mprofile_floor``."""
    from cffi import FFI

    out = Path(floor_build_dir())
    stamp = out / "floor.c.stamp"
    source = FLOOR_SOURCE.read_text(encoding="utf-8")
    if stamp.exists() and stamp.read_text(encoding="utf-8") == source and \
            list(out.glob("_mprofile_floor*.so")):
        return out
    out.mkdir(parents=True, exist_ok=True)
    ffi = FFI()
    ffi.cdef("int floor_install(int counting); void floor_uninstall(void);"
             "void floor_reset(void); void floor_counts(unsigned long long *out);")
    # floor.c is compiled as its own unit: cffi's module prologue selects the limited API,
    # which has no PyMem_SetAllocator.
    ffi.set_source("_mprofile_floor",
                   "int floor_install(int counting); void floor_uninstall(void);"
                   "void floor_reset(void); void floor_counts(unsigned long long *out);",
                   sources=[str(FLOOR_SOURCE)],
                   extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
                   py_limited_api=False)
    ffi.compile(tmpdir=str(out), verbose=False)
    stamp.write_text(source, encoding="utf-8")
    return out


def precompile() -> list[str]:
    """Write the bytecode of the ``mprofile_ipy`` package and of the child module, as an
    install does (pip compiles what it installs); returns the folders compiled.

    The children run with ``PYTHONDONTWRITEBYTECODE=1``: without ``.pyc`` files each one
    would compile the package from source under valgrind, and the first ``compile()`` of
    a process creates the ``ast`` module's ~120 node types (about 600 GC-tracked objects)
    plus the compiler's garbage, all charged to the package's import (a copy of the
    sources, as ``run_callgrind.sh`` makes, has no ``__pycache__``)."""
    import compileall

    done = []
    spec = importlib.util.find_spec("mprofile_ipy")  # finds the package, does not import it
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        compileall.compile_dir(folder, quiet=1)
        done.append(folder)
    compileall.compile_file(str(CHILD), quiet=1)
    return done


# ---------------------------------------------------------------------------------------
# callgrind output


def parse_callgrind(path: Path) -> tuple[int, dict[tuple[str, str], int]]:
    """(total instructions, self instructions per (object basename, function)).

    Reads callgrind's format directly: name compression (``fn=(12) name`` then ``fn=(12)``),
    and the cost line after a ``calls=`` line, which is the callee's inclusive cost and so
    not the caller's own."""
    names: dict[str, dict[str, str]] = {"ob": {}, "fn": {}}
    total = None
    current = {"ob": "?", "fn": "?"}
    self_cost: dict[tuple[str, str], int] = defaultdict(int)
    skip_next_cost = False

    def resolve(kind: str, value: str) -> str:
        match = re.match(r"\((\d+)\)(?:\s+(.*))?$", value)
        if not match:
            return value
        if match.group(2) is not None:
            names[kind][match.group(1)] = match.group(2)
        return names[kind].get(match.group(1), value)

    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            first = line[:1]
            if first.isdigit() or first in "+-*":
                if skip_next_cost:
                    skip_next_cost = False
                    continue
                parts = line.split()
                if len(parts) >= 2:
                    self_cost[(current["ob"], current["fn"])] += int(parts[1])
                continue
            key, _, value = line.rstrip("\n").partition("=")
            if key == "ob":
                current["ob"] = os.path.basename(resolve("ob", value))
            elif key == "cob":
                resolve("ob", value)
            elif key == "fn":
                current["fn"] = resolve("fn", value)
            elif key == "cfn":
                resolve("fn", value)
            elif key == "calls":
                skip_next_cost = True
            elif line.startswith(("summary:", "totals:")) and total is None:
                total = int(line.split(":", 1)[1].split()[0])
    if total is None:
        raise ValueError(f"{path}: no summary line (did the child crash?)")
    return total, dict(self_cost)


# ---------------------------------------------------------------------------------------
# The parent: build, count, measure, report.


@dataclass
class Measure:
    workload: str
    config: str
    runs: int
    total: int
    functions: dict[tuple[str, str], int]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({k: v for k, v in ENV_FIXED.items() if v})
    env.pop("PYTHONMALLOC", None)
    return env


def run_valgrind(workload: str, config: str, runs: int, scale: float, outdir: Path) -> Measure:
    out = outdir / f"callgrind.{workload}.{config}.{runs}.out"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
           sys.executable, str(CHILD), "run", workload, config, str(runs), repr(scale)]
    env = child_env()
    env["MPROFILE_CG_TMP"] = str(outdir)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=outdir)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"{workload}/{config} x{runs} failed under valgrind "
                           f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    total, functions = parse_callgrind(out)
    return Measure(workload, config, runs, total, functions)


def count_allocations(workload: str, scale: float) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(CHILD), "count", workload, repr(scale)],
                          capture_output=True, text=True, env=child_env())
    if proc.returncode != 0:
        raise RuntimeError(f"counting {workload} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def available_configs(wanted: list[str]) -> tuple[list[str], dict[str, str]]:
    """The configurations that can run here, and a note for each one that cannot."""
    ok, notes = [], {}
    for name in wanted:
        if name == "mprofile-0.0.15" and importlib.util.find_spec("mprofile") is None:
            notes[name] = "not installed (pip install mprofile==0.0.15)"
        elif name == "memray" and importlib.util.find_spec("memray") is None:
            notes[name] = "not installed (pip install memray)"
        elif name == "native":
            from mprofile_ipy import native_capture

            if not native_capture.status()["native"]["supported"]:
                notes[name] = "native mode is not supported on this platform"
            else:
                ok.append(name)
        else:
            ok.append(name)
    return ok, notes


def per_run(pair: dict[int, Measure], repeat: int) -> float:
    return (pair[repeat].total - pair[1].total) / (repeat - 1)


def per_run_functions(pair: dict[int, Measure], repeat: int) -> dict[tuple[str, str], float]:
    keys = set(pair[repeat].functions) | set(pair[1].functions)
    return {k: (pair[repeat].functions.get(k, 0) - pair[1].functions.get(k, 0)) / (repeat - 1)
            for k in keys}


FREE_PATH = re.compile(r"free|take", re.I)


def is_mprofile_object(obj: str) -> bool:
    return obj.startswith("_native.") or obj.startswith("_native")


def summarize(measures: dict[tuple[str, str], dict[int, Measure]],
              counts: dict[str, dict[str, Any]], workloads: list[str], configs: list[str],
              repeat: int, breakdown: int) -> dict[str, Any]:
    rows = []
    for w in workloads:
        base = per_run(measures[(w, "none")], repeat)
        base_fn = per_run_functions(measures[(w, "none")], repeat)
        allocs, frees = counts[w]["allocs"], counts[w]["frees"]
        row: dict[str, Any] = {"workload": w, "none_per_run": base, "allocs": allocs,
                               "frees": frees, "configs": {}}
        for c in configs:
            if (w, c) not in measures:
                continue
            value = per_run(measures[(w, c)], repeat)
            entry: dict[str, Any] = {"per_run": value, "ratio": value / base,
                                     "added_per_event": (value - base) / max(1, allocs + frees)}
            if c in ("mprofile_ipy", "native", "exact", "floor", "floor+import"):
                fn = per_run_functions(measures[(w, c)], repeat)
                diff = {k: fn.get(k, 0) - base_fn.get(k, 0) for k in set(fn) | set(base_fn)}
                own = {k: v for k, v in fn.items() if is_mprofile_object(k[0]) or
                       (c == "floor" and k[0].startswith("_mprofile_floor"))}
                free_path = sum(v for k, v in own.items() if FREE_PATH.search(k[1]))
                entry["free_path"] = free_path
                entry["per_free"] = free_path / max(1, frees)
                entry["per_alloc"] = (value - base - free_path) / max(1, allocs)
                entry["in_module"] = sum(own.values())
                top = sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:breakdown]
                entry["breakdown"] = [{"object": k[0], "function": k[1], "added": v}
                                      for k, v in top]
            row["configs"][c] = entry
        rows.append(row)
    return {"rows": rows}


def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def markdown(summary: dict[str, Any], configs: list[str], notes: dict[str, str],
             label: str, breakdown: int) -> str:
    lines = [f"### callgrind instruction counts, {label}", "",
             "Instructions per workload run, (3 runs - 1 run) / 2, as a ratio to no profiler.",
             ""]
    shown = [c for c in configs if c != "none"]
    lines.append("| workload | none (instr/run) | " + " | ".join(shown) + " |")
    lines.append("|---|---:|" + "---:|" * len(shown))
    for row in summary["rows"]:
        cells = []
        for c in shown:
            e = row["configs"].get(c)
            cells.append(f"x{e['ratio']:.3f}" if e else "-")
        lines.append(f"| {row['workload']} | {fmt_int(row['none_per_run'])} | "
                     + " | ".join(cells) + " |")
    for c, note in notes.items():
        lines.append(f"\n{c}: skipped, {note}")
    lines += ["", "Floor and mprofile_ipy (default rate) in percentage points over no "
              "profiler; added instructions per allocator call (floor counters):", "",
              "| workload | allocs/run | frees/run | floor | import | floor+import | "
              "mprofile_ipy | above floor | above floor+import | "
              "mprofile_ipy +instr/alloc | +instr/free | floor +instr/call |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def points(entry: dict[str, Any] | None) -> float | None:
        return None if entry is None else (entry["ratio"] - 1) * 100

    def cell(value: float | None, sign: str = "+") -> str:
        return "-" if value is None else f"{value:{sign}.2f}"

    for row in summary["rows"]:
        floor = row["configs"].get("floor")
        mp = row["configs"].get("mprofile_ipy")
        if not (floor and mp):
            continue
        fp, mpp = points(floor), points(mp)
        imp, fip = points(row["configs"].get("import")), points(row["configs"].get("floor+import"))
        lines.append(f"| {row['workload']} | {fmt_int(row['allocs'])} | {fmt_int(row['frees'])} "
                     f"| {cell(fp)} | {cell(imp)} | {cell(fip)} | {cell(mpp)} | "
                     f"{cell(mpp - fp)} | {cell(None if fip is None else mpp - fip)} | "
                     f"{mp['per_alloc']:.1f} | {mp['per_free']:.1f} | "
                     f"{floor['added_per_event']:.1f} |")
    if breakdown:
        for row in summary["rows"]:
            mp = row["configs"].get("mprofile_ipy")
            if not mp:
                continue
            events = max(1, row["allocs"] + row["frees"])
            lines += ["", f"Where mprofile_ipy's added instructions go, {row['workload']} "
                      f"(per run, vs no profiler; {fmt_int(row['allocs'])} allocs, "
                      f"{fmt_int(row['frees'])} frees):", "",
                      "| object | function | added instr/run | per alloc+free |",
                      "|---|---|---:|---:|"]
            for b in mp["breakdown"]:
                lines.append(f"| {b['object']} | `{b['function']}` | {fmt_int(b['added'])} | "
                             f"{b['added'] / events:.2f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help="comma-separated, from: " + ", ".join(WORKLOADS))
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                   help="comma-separated, from: " + ", ".join(CONFIGS) + " (none is implied)")
    p.add_argument("--scale", type=float, default=1.0, help="workload size factor")
    p.add_argument("--repeat", type=int, default=3, help="runs in the long process (>= 2)")
    p.add_argument("--jobs", type=int, default=1, help="valgrind processes at once")
    p.add_argument("--breakdown", type=int, default=8,
                   help="functions listed per workload in the breakdown (0: none)")
    p.add_argument("--python-label", default=None)
    p.add_argument("--output", default=None, help="JSON file (default: benchmarks/results/)")
    p.add_argument("--keep", default=None, help="keep the callgrind.out files in this folder")
    args = p.parse_args(argv)
    if args.repeat < 2:
        p.error("--repeat must be at least 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    workloads = [w for w in args.workloads.split(",") if w]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        print(f"unknown workloads {unknown}; known: {list(WORKLOADS)}", file=sys.stderr)
        return 2
    skipped_workloads = {w: m for w in workloads for m in WORKLOAD_NEEDS.get(w, ())
                         if importlib.util.find_spec(m) is None}
    workloads = [w for w in workloads if w not in skipped_workloads]
    wanted = ["none"] + [c for c in args.configs.split(",") if c and c != "none"]
    bad = [c for c in wanted if c not in CONFIGS]
    if bad:
        print(f"unknown configurations {bad}; known: {list(CONFIGS)}", file=sys.stderr)
        return 2
    configs, notes = available_configs(wanted)
    label = args.python_label or f"CPython {platform.python_version()}"

    started = time.monotonic()
    build_floor()
    precompile()
    counts = {w: count_allocations(w, args.scale) for w in workloads}
    outdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mprofile-cg-"))
    outdir.mkdir(parents=True, exist_ok=True)
    jobs = [(w, c, runs) for w in workloads for c in configs for runs in (1, args.repeat)]
    measures: dict[tuple[str, str], dict[int, Measure]] = defaultdict(dict)
    try:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = {pool.submit(run_valgrind, w, c, r, args.scale, outdir): (w, c, r)
                       for w, c, r in jobs}
            for future, (w, c, r) in futures.items():
                measures[(w, c)][r] = future.result()
                print(f"  {w:8} {c:16} x{r}: {measures[(w, c)][r].total:>15,} instructions",
                      file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(outdir, ignore_errors=True)
    summary = summarize(measures, counts, workloads, configs, args.repeat, args.breakdown)
    for w, module in skipped_workloads.items():
        notes[f"workload {w}"] = f"{module} is not installed"
    text = markdown(summary, configs, notes, label, args.breakdown)
    print(text)
    result = {"label": label, "python": sys.version, "scale": args.scale, "repeat": args.repeat,
              "seed": SEED, "env": ENV_FIXED, "counts": counts, "notes": notes,
              "workloads": workloads, "configs": configs,
              "totals": {f"{w}/{c}/{r}": m.total for (w, c), pair in measures.items()
                         for r, m in pair.items()},
              "elapsed_s": round(time.monotonic() - started, 1), **summary}
    out = Path(args.output) if args.output else \
        RESULTS / f"callgrind-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    print(f"JSON: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
