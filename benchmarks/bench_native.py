"""Overhead of native mode against the default mode and no profiler.

Three configurations: ``none`` (no profiler), ``default`` (``mprofile_ipy.start()``, which
includes the NumPy capture) and ``native`` (``start(native=True)``: the
malloc/mmap family of every extension library sampled too). Workloads: two of the core
benchmarks of ``overhead.py`` (small-object churn, mixed Python work) and NumPy, pandas and,
when pyarrow is installed, Arrow-backed pandas work. Configurations alternate round by round
in one process, so a noisy machine's drift hits all of them alike; the tables show median
seconds (CPU time of the process, then wall time) and ratios to ``none``, and the cost of
installing and removing native mode.

Run: ``python benchmarks/bench_native.py [--rounds 9] [--quick] [--workloads a,b]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))          # overhead.py's core workloads
sys.path.insert(1, str(HERE.parent))   # mprofile_ipy from the source tree if not installed

import overhead  # noqa: E402

import mprofile_ipy as mp  # noqa: E402
from mprofile_ipy import native_capture  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Workloads: each takes a scale factor (1.0: about 0.2-0.5 s without a profiler).


def work_numpy(scale: float) -> None:
    """Array arithmetic, reductions, sorting and concatenation on 0.8 MB arrays."""
    import numpy as np

    rng = np.random.default_rng(0)
    for _ in range(max(1, int(120 * scale))):
        a = rng.random(100_000)
        b = a * 2.0 + 1.0
        c = np.sort(b)
        d = np.concatenate([a, c])
        e = np.cumsum(d)[::2].copy()
        float(e.sum() + np.median(a))


def work_pandas(scale: float) -> None:
    """A small analysis: build a frame, derive columns, group, merge, sort, strings."""
    import numpy as np
    import pandas as pd

    n = max(1000, int(200_000 * scale))
    rng = np.random.default_rng(1)
    for _ in range(3):
        df = pd.DataFrame({
            "key": rng.integers(0, 1000, n),
            "x": rng.random(n),
            "y": rng.random(n),
        })
        df["z"] = df["x"] * df["y"] + 1
        g = df.groupby("key").agg(x=("x", "mean"), z=("z", "sum")).reset_index()
        m = df.merge(g, on="key", suffixes=("", "_g"))
        m = m.sort_values("z")
        m["label"] = m["key"].astype(str) + "-k"
        m["label"].str.len().sum()
        del df, g, m


def work_arrow(scale: float) -> None:
    """Arrow-backed pandas columns: arithmetic, filters, group-by through pyarrow."""
    import numpy as np
    import pandas as pd

    n = max(1000, int(400_000 * scale))
    rng = np.random.default_rng(2)
    for _ in range(3):
        s = pd.Series(rng.integers(0, 1000, n), dtype="int64[pyarrow]")
        f = pd.Series(rng.random(n), dtype="double[pyarrow]")
        t = (s * 3 + 1)[f > 0.5]
        df = pd.DataFrame({"k": s // 10, "v": f})
        df.groupby("k")["v"].sum()
        float(t.sum())
        del s, f, t, df


def work_arrow_system(scale: float) -> None:
    """The Arrow workload with pyarrow's pool set to the system allocator, as native mode
    does: comparing it with ``arrow`` separates the pool's cost from the hooks'."""
    import pyarrow as pa

    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        work_arrow(scale)
    finally:
        pa.set_memory_pool(previous)


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    run: Callable[[float], None]
    needs: tuple[str, ...] = ()


WORKLOADS = [
    Workload("churn", "core (a): small-object churn", overhead.work_churn),
    Workload("mixed", "core (b): json, comprehensions, classes, strings", overhead.work_mixed),
    Workload("numpy", "NumPy arithmetic/sort/concatenate on 0.8 MB arrays", work_numpy,
             ("numpy",)),
    Workload("pandas", "pandas frame: derive, group-by, merge, sort, strings", work_pandas,
             ("numpy", "pandas")),
    Workload("arrow", "Arrow-backed pandas columns (pyarrow)", work_arrow,
             ("numpy", "pandas", "pyarrow")),
    Workload("arrow_system", "the same with pyarrow's system pool in every configuration",
             work_arrow_system, ("numpy", "pandas", "pyarrow")),
]
WORKLOAD_BY_NAME = {w.name: w for w in WORKLOADS}


def missing(workload: Workload) -> list[str]:
    out = []
    for module in workload.needs:
        try:
            __import__(module)
        except ImportError:
            out.append(module)
    return out


# ---------------------------------------------------------------------------------------------
# Configurations


def start_default() -> None:
    mp.start()  # the NumPy capture is part of the default mode


def start_native() -> None:
    mp.start(native=True)


def stop_profiler() -> None:
    mp.stop()  # uninstalls the captures too


CONFIGS: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
    "none": (lambda: None, lambda: None),
    "default": (start_default, stop_profiler),
    "native": (start_native, stop_profiler),
}


def measure(config: str, workload: Workload, scale: float) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process) of one run of the workload."""
    start, stop = CONFIGS[config]
    gc.collect()
    start()
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        workload.run(scale)
        return time.perf_counter() - t0, time.process_time() - c0
    finally:
        stop()


def table(title: str, medians: dict[str, dict[str, float]], configs: list[str]) -> None:
    print(f"\n{title}\n")
    head = "| workload | none s |" + "".join(f" {c} s | {c} / none |" for c in configs[1:])
    if "native" in configs:
        head += " native / default |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for name, med in medians.items():
        line = f"| {name} | {med['none']:.3f} |"
        for c in configs[1:]:
            line += f" {med[c]:.3f} | x{med[c] / med['none']:.3f} |"
        if "native" in configs:
            line += f" x{med['native'] / med['default']:.3f} |"
        print(line)


def install_cost(rounds: int) -> tuple[float, float, int]:
    """Median milliseconds of install(True) and of uninstall(), and the slots patched."""
    installs, removals, slots = [], [], 0
    mp.start()
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            native_capture.install(True)
            t1 = time.perf_counter()
            slots = native_capture.status()["native"]["slots"]
            native_capture.uninstall()
            t2 = time.perf_counter()
            installs.append((t1 - t0) * 1e3)
            removals.append((t2 - t1) * 1e3)
    finally:
        mp.stop()
    return statistics.median(installs), statistics.median(removals), slots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed rounds per configuration (default 9; 2 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: small workloads, 2 rounds, no warm-up")
    parser.add_argument("--scale", type=float, default=None,
                        help="workload size factor (default 1.0; 0.05 with --quick)")
    parser.add_argument("--workloads", default=",".join(WORKLOAD_BY_NAME),
                        help="comma-separated workloads: " + ", ".join(WORKLOAD_BY_NAME))
    parser.add_argument("--output", type=Path, default=None, help="JSON file for raw samples")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 9)
    scale = args.scale or (0.05 if args.quick else 1.0)
    if rounds < 1 or scale <= 0:
        parser.error("--rounds must be >= 1 and --scale > 0")
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOAD_BY_NAME]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; choose from {list(WORKLOAD_BY_NAME)}")
    workloads = []
    for name in names:
        lacking = missing(WORKLOAD_BY_NAME[name])
        if lacking:
            print(f"skipping {name}: {', '.join(lacking)} not installed", file=sys.stderr)
        else:
            workloads.append(WORKLOAD_BY_NAME[name])
    configs = list(CONFIGS)
    if not native_capture.status()["native"]["supported"]:
        print("native mode is not supported here: measuring none and default only",
              file=sys.stderr)
        configs.remove("native")

    samples: dict[tuple[str, str], list[tuple[float, float]]] = {
        (w.name, c): [] for w in workloads for c in configs}
    for w in workloads:                  # warm-up: imports, caches, first-touch of pages
        if not args.quick:
            for c in configs:
                measure(c, w, scale)
    for r in range(rounds):
        for w in workloads:
            order = configs[r % len(configs):] + configs[:r % len(configs)]
            for c in order:
                samples[(w.name, c)].append(measure(c, w, scale))
        print(f"round {r + 1}/{rounds} done", file=sys.stderr, flush=True)

    label = f"cpython-{platform.python_version()}"
    wall = {w.name: {c: statistics.median(x[0] for x in samples[(w.name, c)]) for c in configs}
            for w in workloads}
    cpu = {w.name: {c: statistics.median(x[1] for x in samples[(w.name, c)]) for c in configs}
           for w in workloads}
    print(f"\n## native mode overhead ({label}, {rounds} rounds, scale {scale}, medians of "
          "alternating runs)")
    table("CPU time of the process (less sensitive to other processes on the machine):",
          cpu, configs)
    table("Wall time:", wall, configs)
    rows = [{"workload": w.name, "description": w.description, "wall_medians": wall[w.name],
             "cpu_medians": cpu[w.name]} for w in workloads]
    cost = None
    if "native" in configs:
        install_ms, uninstall_ms, slots = install_cost(max(3, rounds))
        cost = {"install_ms": install_ms, "uninstall_ms": uninstall_ms, "slots": slots}
        print(f"\nnative mode install: {install_ms:.1f} ms, uninstall: {uninstall_ms:.1f} ms "
              f"({slots} import slots patched in the loaded libraries)")
    if args.output:
        args.output.write_text(json.dumps({
            "benchmark": "bench_native", "label": label, "python": sys.version,
            "platform": platform.platform(), "rounds": rounds, "scale": scale,
            "rows": rows, "install": cost,
            "samples_wall_cpu": {f"{k[0]}/{k[1]}": v for k, v in samples.items()},
        }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
