"""Overhead of mprofile_ipy against no profiler, tracemalloc and mprofile 0.0.15.

Runs allocation-heavy workloads under each profiler configuration, alternating the
configurations round by round in one process (so drift of a noisy machine hits all of them
alike), and reports median seconds, the ratio to the no-profiler median of the same run,
the profiler's added cost per allocation, and the peak RSS of a separate short process per
configuration. Prints markdown tables and writes every raw sample as JSON.

Run: ``python benchmarks/overhead.py`` (see benchmarks/README.md for the options).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RATE_128K = 128 * 1024
MPROFILE_MAX_FRAMES = 128   # the same depth as mprofile_ipy's default, for a fair comparison

# ---------------------------------------------------------------------------------------------
# Workloads. Each takes a scale factor (1.0 for a full run) and allocates and frees a lot.
# Sizes are chosen so that one run takes about 0.2-0.3 s without a profiler.


def work_churn(scale: float) -> None:
    """(a) Small-object churn: dicts, tuples, lists and ints created and dropped."""
    n = max(1, int(60_000 * scale))
    for _ in range(3):
        dicts = [{"key": i, "value": i} for i in range(n)]
        tuples = [(i, i + 1, None) for i in range(n)]
        lists = [[i, i] for i in range(n)]
        del dicts, tuples, lists


class _Point:
    def __init__(self, x: int, y: float) -> None:
        self.x = x
        self.y = y
        self.label = None


def work_mixed(scale: float) -> None:
    """(b) Mixed: json round trips, comprehensions, objects with attributes, strings."""
    n = max(1, int(7_000 * scale))
    for _ in range(4):
        records = [
            {"id": i, "name": f"item-{i}", "tags": [str(i % 7), "x"], "score": i * 0.5}
            for i in range(n)
        ]
        text = json.dumps(records)
        back = json.loads(text)
        points = [_Point(r["id"], r["score"]) for r in back]
        for p in points:
            p.label = "p" + str(p.x)
        buckets: dict[int, list[float]] = {}
        for p in points:
            buckets.setdefault(p.x % 13, []).append(p.y)
        parts = [f"{p.label}:{p.y:.1f}" for p in points]
        joined = ",".join(parts)
        words = [w.upper() for w in joined.split(",") if w]
        del records, text, back, points, buckets, parts, joined, words


def work_buffers(scale: float) -> None:
    """(c) Large buffers: bytearrays of 1-64 MiB filled, copied to bytes and freed."""
    reps = max(1, round(scale))
    for _ in range(reps):
        for mib in (1, 2, 4, 8, 16, 32, 64):
            buf = bytearray(mib << 20)
            frozen = bytes(buf)
            del buf, frozen


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    run: Callable[[float], None]
    live: int = -1   # >= 0: keep this many small objects alive (times scale) during the run


WORKLOADS = [
    Workload("churn", "(a) small-object churn: 540k dicts/tuples/lists", work_churn),
    Workload("mixed", "(b) json, comprehensions, classes, strings", work_mixed),
    Workload("buffers", "(c) 1-64 MiB bytearray/bytes created and freed", work_buffers),
    Workload("churn_live0", "(d) churn (a), 0 small objects kept alive", work_churn, 0),
    Workload("churn_live1M", "(d) churn (a), 1M small objects kept alive", work_churn,
             1_000_000),
]
WORKLOAD_BY_NAME = {w.name: w for w in WORKLOADS}


def make_live(count: int) -> list[str]:
    """``count`` small strings (not tracked by the GC), allocated under the profiler."""
    return [f"live-{i}" for i in range(count)]


# ---------------------------------------------------------------------------------------------
# Profiler configurations


@dataclass
class Config:
    name: str
    description: str
    start: Callable[[], None]
    stop: Callable[[], None]
    problem: str | None = None                        # why it is unavailable
    # Run in a worker process of its own: for a profiler that may crash the interpreter
    # (mprofile 0.0.15 creates frame objects inside its allocator hook; on 3.11 that can run
    # the GC in the middle of an allocation and segfault).
    isolated: bool = False


def _noop() -> None:
    pass


def _tracemalloc(nframe: int) -> Config:
    return Config(f"tracemalloc-{nframe}", f"tracemalloc, {nframe} frame(s)",
                  lambda: tracemalloc.start(nframe), tracemalloc.stop)


def _mprofile_ipy(rate: int, name: str, description: str) -> Config:
    try:
        import mprofile_ipy
    except Exception as exc:  # noqa: BLE001 - report any import failure as unavailable
        return Config(name, description, _noop, _noop, problem=f"import failed: {exc}")

    return Config(name, description, lambda: mprofile_ipy.start(sample_rate=rate),
                  mprofile_ipy.stop)


def _mprofile_0015() -> Config:
    name, description = "mprofile-0.0.15", "mprofile 0.0.15 (PyPI), 128 KiB, 128 frames"
    try:
        import mprofile
    except Exception as exc:  # noqa: BLE001
        return Config(name, description, _noop, _noop, problem=f"not importable: {exc}")
    return Config(
        name, description,
        lambda: mprofile.start(max_frames=MPROFILE_MAX_FRAMES, sample_rate=RATE_128K),
        mprofile.stop,
        isolated=True,
    )


def all_configs() -> list[Config]:
    return [
        Config("none", "no profiler", _noop, _noop),
        _tracemalloc(1),
        _tracemalloc(25),
        _mprofile_ipy(RATE_128K, "mprofile_ipy", "mprofile_ipy, default rate 128 KiB, "
                      "128 frames"),
        _mprofile_ipy(1, "mprofile_ipy-exact", "mprofile_ipy, sample_rate=1 (every "
                      "allocation), 128 frames"),
        _mprofile_0015(),
    ]


# ---------------------------------------------------------------------------------------------
# Measuring


@dataclass
class Sample:
    wall: float
    cpu: float


def measure(config: Config, workload: Workload, scale: float) -> Sample:
    """One timed run of ``workload`` under ``config``; start/stop and setup are not timed."""
    gc.collect()
    config.start()
    try:
        live = make_live(int(workload.live * scale)) if workload.live >= 0 else None
        gc.collect()
        if live is not None:
            gc.freeze()   # keep full collections from walking the live set
        c0, t0 = time.process_time(), time.perf_counter()
        workload.run(scale)
        t1, c1 = time.perf_counter(), time.process_time()
    finally:
        config.stop()
    if live is not None:
        gc.unfreeze()
        del live
    return Sample(t1 - t0, c1 - c0)


def count_allocations(workload: Workload, scale: float) -> float | None:
    """How many allocations (all three PyMem domains) one run of ``workload`` makes.

    Counted with mprofile_ipy in exact mode, whose allocation counter is then exact;
    None when mprofile_ipy is not importable.
    """
    try:
        import mprofile_ipy
    except Exception:  # noqa: BLE001
        return None
    gc.collect()
    mprofile_ipy.start(sample_rate=1)
    try:
        live = make_live(int(workload.live * scale)) if workload.live >= 0 else None
        gc.collect()
        before = mprofile_ipy.get_stats().allocated_count
        workload.run(scale)
        count = mprofile_ipy.get_stats().allocated_count - before
    finally:
        mprofile_ipy.stop()
    del live
    return count


def peak_rss_kib() -> int:
    """Peak resident set size of this process in KiB (VmHWM, else ru_maxrss)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def rss_child(config_name: str, workload_name: str, scale: float) -> None:
    """Child mode: run one workload once under one configuration, print the peak RSS."""
    configs = {c.name: c for c in all_configs()}   # imports every profiler: same baseline
    config, workload = configs[config_name], WORKLOAD_BY_NAME[workload_name]
    sample = measure(config, workload, scale)
    print(json.dumps({"peak_rss_kib": peak_rss_kib(), "wall": sample.wall}))


def measure_rss(config: Config, workload: Workload, scale: float) -> int | None:
    """Peak RSS (KiB) of a fresh process that runs ``workload`` once under ``config``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--rss-child", config.name,
           workload.name, "--scale", repr(scale)]
    for _ in range(3):   # a crashing profiler gets three chances
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if proc.returncode == 0:
            return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_kib"])
        print(f"  peak RSS child for {config.name}/{workload.name} failed "
              f"(exit {proc.returncode}): {proc.stderr.strip()[-200:]}", file=sys.stderr)
    return None


class Worker:
    """A child process that runs one isolated configuration on request.

    For each workload name sent on its stdin it times the workload without a profiler and
    under the configuration (alternating which goes first) and answers one JSON line. If
    the profiler crashes the child, the measurement is recorded as a crash and the next
    request starts a new child.
    """

    def __init__(self, config: Config, scale: float) -> None:
        self.config, self.scale = config, scale
        self.proc: subprocess.Popen[str] | None = None

    def measure(self, workload: Workload) -> tuple[Sample, Sample] | int:
        """(sample under the configuration, baseline sample), or the crash's exit code."""
        if self.proc is None:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", self.config.name,
                   "--scale", repr(self.scale)]
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(workload.name + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            code = self.proc.wait()
            self.proc = None
            print(f"  {self.config.name} crashed on {workload.name} (exit {code})",
                  file=sys.stderr, flush=True)
            return code
        answer = json.loads(line)
        return Sample(*answer["config"]), Sample(*answer["none"])

    def close(self) -> None:
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait()
            self.proc = None


def worker_main(config_name: str, scale: float) -> None:
    """Child mode of :class:`Worker`."""
    configs = {c.name: c for c in all_configs()}
    config, none = configs[config_name], configs["none"]
    flip = False
    for line in sys.stdin:
        workload = WORKLOAD_BY_NAME[line.strip()]
        flip = not flip
        if flip:
            base, sample = measure(none, workload, scale), measure(config, workload, scale)
        else:
            sample, base = measure(config, workload, scale), measure(none, workload, scale)
        print(json.dumps({"config": [sample.wall, sample.cpu], "none": [base.wall, base.cpu]}),
              flush=True)


# ---------------------------------------------------------------------------------------------
# Running and reporting


@dataclass
class Cell:
    """All measurements of one (workload, configuration) pair."""

    samples: list[Sample] = field(default_factory=list)
    peak_rss_kib: int | None = None
    allocations: float | None = None
    # Isolated configurations: the no-profiler baseline timed in the same worker process,
    # and the exit codes of the runs that crashed.
    base_samples: list[Sample] = field(default_factory=list)
    crashes: list[int] = field(default_factory=list)
    elapsed: float = 0.0   # seconds spent on this cell, setup and stop included

    def median(self) -> float | None:
        return statistics.median(s.wall for s in self.samples) if self.samples else None

    def median_cpu(self) -> float | None:
        return statistics.median(s.cpu for s in self.samples) if self.samples else None


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def run(configs: list[Config], workloads: list[Workload], rounds: int, warmup: int,
        scale: float, rss: bool) -> dict[tuple[str, str], Cell]:
    cells = {(w.name, c.name): Cell() for w in workloads for c in configs}
    workers = {c.name: Worker(c, scale) for c in configs if c.isolated}
    for workload in workloads:
        count = count_allocations(workload, scale)
        for config in configs:
            cells[workload.name, config.name].allocations = count
    for r in range(warmup + rounds):
        # Rotate the order every round so no configuration always runs first or after the
        # most expensive one.
        shift = r % len(configs)
        order = configs[shift:] + configs[:shift]
        tag = "warm-up" if r < warmup else f"round {r - warmup + 1}/{rounds}"
        t0 = time.perf_counter()
        for workload in workloads:
            for config in order:
                cell = cells[workload.name, config.name]
                t1 = time.perf_counter()
                if config.isolated:
                    answer = workers[config.name].measure(workload)
                    if isinstance(answer, int):
                        cell.crashes.append(answer)
                    elif r >= warmup:
                        cell.samples.append(answer[0])
                        cell.base_samples.append(answer[1])
                else:
                    sample = measure(config, workload, scale)
                    if r >= warmup:
                        cell.samples.append(sample)
                cell.elapsed += time.perf_counter() - t1
        print(f"  {tag} done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    for worker in workers.values():
        worker.close()
    if rss:
        for workload in workloads:
            for config in configs:
                cells[workload.name, config.name].peak_rss_kib = measure_rss(
                    config, workload, scale)
    return cells


def summarize(cells: dict[tuple[str, str], Cell], configs: list[Config],
              workloads: list[Workload]) -> list[dict[str, Any]]:
    """One row per (workload, configuration) with medians, ratios, cost and RSS.

    An isolated configuration is compared with the baseline timed in its own worker
    process, every other one with the baseline of the main process.
    """
    rows = []
    for w in workloads:
        main_base = cells[w.name, "none"]
        allocations = main_base.allocations
        base_rss = main_base.peak_rss_kib
        for c in configs:
            cell = cells[w.name, c.name]
            base_samples = cell.base_samples if c.isolated else main_base.samples
            median = cell.median()
            base_median = statistics.median(b.wall for b in base_samples) if base_samples \
                else None
            ratio = q1 = q3 = added_ns = None
            if median is not None and base_median:
                ratio = median / base_median
                paired = [s.wall / b.wall
                          for s, b in zip(cell.samples, base_samples, strict=True)]
                q1, q3 = quartiles(paired)
                if allocations:
                    added_ns = (median - base_median) / allocations * 1e9
            rss = cell.peak_rss_kib
            rows.append({
                "workload": w.name,
                "config": c.name,
                "isolated": c.isolated,
                "median_s": median,
                "median_cpu_s": cell.median_cpu(),
                "baseline_median_s": base_median,
                "ratio": ratio,
                "paired_ratio_q1": q1,
                "paired_ratio_q3": q3,
                "allocations": allocations,
                "added_ns_per_allocation": added_ns,
                "peak_rss_mib": rss / 1024 if rss is not None else None,
                "peak_rss_delta_mib": ((rss - base_rss) / 1024
                                       if rss is not None and base_rss is not None else None),
                "runs": len(cell.samples),
                "crashes": cell.crashes,
                "elapsed_s": cell.elapsed,
                "walls": [x.wall for x in cell.samples],
                "cpus": [x.cpu for x in cell.samples],
                "baseline_walls": [x.wall for x in cell.base_samples],
            })
    return rows


def _fmt(value: float | None, spec: str, prefix: str = "") -> str:
    return "n/a" if value is None else prefix + format(value, spec)


def markdown(rows: list[dict[str, Any]], configs: list[Config], workloads: list[Workload],
             label: str) -> str:
    out = [f"### Overhead, {label}", ""]
    by_key = {(r["workload"], r["config"]): r for r in rows}

    def ratio(r: dict[str, Any]) -> str:
        text = _fmt(r["ratio"], ".3f", "x")
        if r["crashes"]:
            text += f" ({len(r['crashes'])} crashed)"
        return text

    # Compact matrix of ratios.
    out.append("| workload | " + " | ".join(c.name for c in configs) + " |")
    out.append("|---|" + "---:|" * len(configs))
    for w in workloads:
        out.append(f"| {w.name} | " + " | ".join(ratio(by_key[w.name, c.name])
                                                for c in configs) + " |")
    out.append("")
    # Long table.
    out.append("| workload | config | median s | ratio | per-round ratio IQR | "
               "added ns/alloc | peak RSS MiB | RSS vs none MiB |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        iqr = "n/a"
        if r["paired_ratio_q1"] is not None:
            iqr = f"{r['paired_ratio_q1']:.3f}-{r['paired_ratio_q3']:.3f}"
        out.append(
            f"| {r['workload']} | {r['config']} | {_fmt(r['median_s'], '.4f')} | {ratio(r)} | "
            f"{iqr} | {_fmt(r['added_ns_per_allocation'], '.1f')} | "
            f"{_fmt(r['peak_rss_mib'], '.1f')} | {_fmt(r['peak_rss_delta_mib'], '+.1f')} |"
        )
    live = [w for w in ("churn_live0", "churn_live1M") if w in {x.name for x in workloads}]
    if len(live) == 2:
        out += ["", "Cost per allocation with 0 vs 1M live objects (added ns per allocation "
                "of the churn, over no profiler):", "",
                "| config | 0 live | 1M live | growth |", "|---|---:|---:|---:|"]
        for c in configs:
            if c.name == "none":
                continue
            a = by_key[live[0], c.name]["added_ns_per_allocation"]
            b = by_key[live[1], c.name]["added_ns_per_allocation"]
            growth = f"x{b / a:.2f}" if a and b is not None and a > 0 else "n/a"
            out.append(f"| {c.name} | {_fmt(a, '.1f')} | {_fmt(b, '.1f')} | {growth} |")
    out.append("")
    out.append("Workloads: " + "; ".join(f"{w.name} = {w.description}" for w in workloads)
               + ".")
    out.append("Configurations: " + "; ".join(f"{c.name} = {c.description}" for c in configs)
               + ".")
    isolated = [c.name for c in configs if c.isolated]
    if isolated:
        out.append(f"{', '.join(isolated)} ran in a worker process of its own (it can crash "
                   "the interpreter); its ratios are to a no-profiler baseline timed in that "
                   "worker, alternating with it.")
    crashed = [r for r in rows if r["crashes"]]
    for r in crashed:
        out.append(f"- {r['config']} crashed {len(r['crashes'])} time(s) on {r['workload']} "
                   f"(exit codes {sorted(set(r['crashes']))}; -11 is SIGSEGV)")
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed rounds per configuration (default 7; 2 with --quick)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed warm-up rounds (default 1; 0 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny workloads, 2 rounds, no warm-up")
    parser.add_argument("--scale", type=float, default=None,
                        help="workload size factor (default 1.0; 0.02 with --quick)")
    parser.add_argument("--workloads", default=",".join(WORKLOAD_BY_NAME),
                        help="comma-separated workloads (default: all): "
                        + ", ".join(WORKLOAD_BY_NAME))
    parser.add_argument("--configs", default=None,
                        help="comma-separated configurations (default: all available); "
                        "'none' is always included")
    parser.add_argument("--python-label", default=None,
                        help="label for the tables and the JSON file name "
                        "(default: cpython-X.Y.Z)")
    parser.add_argument("--no-rss", action="store_true",
                        help="skip the peak-RSS subprocesses")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON output file (default: benchmarks/results/"
                        "overhead-<label>-<time>.json)")
    parser.add_argument("--rss-child", nargs=2, metavar=("CONFIG", "WORKLOAD"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--worker", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 2 if args.quick else 7
    if args.warmup is None:
        args.warmup = 0 if args.quick else 1
    if args.scale is None:
        args.scale = 0.02 if args.quick else 1.0
    if args.rounds < 1 or args.warmup < 0 or args.scale <= 0:
        parser.error("--rounds must be >= 1, --warmup >= 0 and --scale > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rss_child:
        rss_child(args.rss_child[0], args.rss_child[1], args.scale)
        return 0
    if args.worker:
        worker_main(args.worker, args.scale)
        return 0
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOAD_BY_NAME]
    if unknown:
        raise SystemExit(f"unknown workload(s) {unknown}; choose from {list(WORKLOAD_BY_NAME)}")
    workloads = [WORKLOAD_BY_NAME[n] for n in names]

    configs = all_configs()
    for c in configs:
        if c.problem:
            print(f"skipping {c.name}: {c.problem}", file=sys.stderr)
    available = [c for c in configs if not c.problem]
    if args.configs:
        wanted = {n.strip() for n in args.configs.split(",")} | {"none"}
        unknown = wanted - {c.name for c in configs}
        if unknown:
            raise SystemExit(f"unknown configuration(s) {sorted(unknown)}; choose from "
                             f"{[c.name for c in configs]}")
        available = [c for c in available if c.name in wanted]

    label = args.python_label or f"cpython-{platform.python_version()}"
    print(f"{label}: {len(workloads)} workloads x {len(available)} configurations, "
          f"{args.rounds} rounds (+{args.warmup} warm-up), scale {args.scale}",
          file=sys.stderr, flush=True)
    cells = run(available, workloads, args.rounds, args.warmup, args.scale, not args.no_rss)
    rows = summarize(cells, available, workloads)
    print(markdown(rows, available, workloads, label))

    result = {
        "benchmark": "overhead",
        "label": label,
        "python": sys.version,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "rounds": args.rounds,
        "warmup": args.warmup,
        "scale": args.scale,
        "configs": {c.name: c.description for c in available},
        "skipped": {c.name: c.problem for c in configs if c.problem},
        "workloads": {w.name: w.description for w in workloads},
        "rows": rows,
    }
    output = args.output or RESULTS / f"overhead-{label}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1))
    print(f"\nraw results: {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
