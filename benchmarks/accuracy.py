"""Accuracy of mprofile_ipy's sampled estimates against tracemalloc's exact answers.

Runs one scenario (allocation sites of known shape, each on its own line) under tracemalloc
for the truth, then under mprofile_ipy at a sampling rate with several seeds, and reports
per site the estimated bytes and counts, their bias and spread, the uncertainty the
snapshot itself reports, and what the group-average shortcut of mprofile 0.0.15 would have
estimated from the very same samples. Prints markdown tables and writes JSON.

Run: ``python benchmarks/accuracy.py`` (see benchmarks/README.md for the options).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mprofile_ipy

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
FILENAME = "<accuracy-scenario>"
BYTES_HEADER = sys.getsizeof(b"")   # a bytes object of n bytes takes n + this


@dataclass(frozen=True)
class Site:
    label: str
    expression: str   # a Python expression with {scale}-dependent counts already filled in


def sized_site(object_size: int, count: int) -> Site:
    """A line keeping ``count`` bytes objects of ``object_size`` bytes each alive."""
    payload = object_size - BYTES_HEADER
    return Site(f"{_size(object_size)} objects x {count:,}",
                f"[bytes({payload}) for _ in range({count})]")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def make_sites(scale: float) -> list[Site]:
    def n(count: int) -> int:
        return max(1, int(count * scale))

    kib_count = n(50_000)
    mixed = n(20_000)
    sites = [
        Site(f"list(range({n(10**6):,}))", f"list(range({n(10**6)}))"),
        Site(f"~{kib_count * 1024 / 1e6:.0f} MB in 1 KiB objects",
             f"[bytes({1024 - BYTES_HEADER}) for _ in range({kib_count})]"),
        Site(f"mixed: {mixed:,} objects, 1% of 100 KB, 99% of 64 B",
             f"[bytes(100_000) if i % 100 == 0 else bytes({64 - BYTES_HEADER}) "
             f"for i in range({mixed})]"),
    ]
    # (object size, count): totals of 1-8 MiB, sizes from far below to far above the rate.
    for object_size, count in [(64, 16_384), (256, 32_768), (1024, 2_048), (4096, 2_048),
                               (16_384, 128), (65_536, 128), (262_144, 8), (1 << 20, 8)]:
        sites.append(sized_site(object_size, n(count)))
    return sites


def compile_scenario(sites: list[Site]) -> tuple[Any, dict[int, str]]:
    """A function ``scenario(keep)`` with one line per site; and line number -> label."""
    lines = ["def scenario(keep):"]
    line_of: dict[int, str] = {}
    for i, site in enumerate(sites):
        lines.append(f"    keep[{i}] = {site.expression}")
        line_of[len(lines)] = site.label
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(lines) + "\n", FILENAME, "exec"), namespace)
    return namespace["scenario"], line_of


def run_scenario(scenario: Any, nsites: int, start: Any, stop: Any, snapshot: Any) -> Any:
    keep: list[Any] = [None] * nsites   # preallocated: the scenario's lines allocate alone
    gc.collect()
    start()
    try:
        scenario(keep)
        snap = snapshot()
    finally:
        stop()
    del keep
    gc.collect()
    return snap


def exact_by_line(snapshot: Any, line_of: dict[int, str]) -> dict[int, tuple[int, int]]:
    """line -> (bytes, count) of the scenario's lines in a tracemalloc-like snapshot."""
    out = {}
    for stat in snapshot.statistics("lineno"):
        frame = stat.traceback[0]
        if frame.filename == FILENAME and frame.lineno in line_of:
            out[frame.lineno] = (stat.size, stat.count)
    return out


def shortcut(sizes: list[int], rate: int) -> tuple[float, float]:
    """mprofile 0.0.15's group-average estimate: scale the group by its average size."""
    if not sizes:
        return 0.0, 0.0
    if rate <= 1:
        return float(sum(sizes)), float(len(sizes))
    p = -math.expm1(-(sum(sizes) / len(sizes)) / rate)
    return sum(sizes) / p, len(sizes) / p


def sampled_by_line(snapshot: Any, line_of: dict[int, str], rate: int) -> dict[int, dict]:
    """line -> estimates (per-sample weights), samples, reported error and the shortcut."""
    out: dict[int, dict] = {}
    for stat in snapshot.statistics("lineno"):
        frame = stat.traceback[0]
        if frame.filename == FILENAME and frame.lineno in line_of:
            out[frame.lineno] = {"size": stat.size_estimate, "count": stat.count_estimate,
                                 "samples": stat.samples,
                                 "reported_error": stat.relative_error}
    sizes: dict[int, list[int]] = {}
    for trace in snapshot.traces:
        frame = trace.traceback[-1]   # oldest first: the last frame is the allocating line
        if frame.filename == FILENAME and frame.lineno in line_of:
            sizes.setdefault(frame.lineno, []).append(trace.size)
    for line in line_of:
        entry = out.setdefault(line, {"size": 0.0, "count": 0.0, "samples": 0,
                                      "reported_error": float("inf")})
        entry["shortcut_size"], entry["shortcut_count"] = shortcut(sizes.get(line, []), rate)
    # The whole scenario as one group, as a 'filename' grouping would make it.
    every = [s for line_sizes in sizes.values() for s in line_sizes]
    total_size, total_count = shortcut(every, rate)
    out[0] = {
        "size": sum(e["size"] for e in out.values()),
        "count": sum(e["count"] for e in out.values()),
        "samples": len(every),
        "reported_error": 1 / math.sqrt(len(every)) if every else float("inf"),
        "shortcut_size": total_size,
        "shortcut_count": total_count,
    }
    return out


def rel_stats(estimates: list[float], exact: float) -> dict[str, float]:
    errors = [(e - exact) / exact for e in estimates]
    return {
        "mean": statistics.fmean(estimates),
        "bias": statistics.fmean(errors),
        "rms": math.sqrt(statistics.fmean(x * x for x in errors)),
        "max_abs": max(abs(x) for x in errors),
        "within_10pct": sum(abs(x) <= 0.10 for x in errors) / len(errors),
    }


def evaluate(rate: int, seeds: list[int], scale: float) -> dict[str, Any]:
    sites = make_sites(scale)
    scenario, line_of = compile_scenario(sites)
    nsites = len(sites)

    truth_snap = run_scenario(scenario, nsites, lambda: tracemalloc.start(1), tracemalloc.stop,
                              tracemalloc.take_snapshot)
    truth = exact_by_line(truth_snap, line_of)
    truth[0] = (sum(s for s, _ in truth.values()), sum(c for _, c in truth.values()))
    del truth_snap

    exact_snap = run_scenario(scenario, nsites, lambda: mprofile_ipy.start(1, sample_rate=1),
                              mprofile_ipy.stop, mprofile_ipy.take_snapshot)
    exact_mode = exact_by_line(exact_snap, line_of)
    mismatches = [
        {"site": line_of[line], "tracemalloc": truth.get(line),
         "mprofile_ipy": exact_mode.get(line)}
        for line in line_of
        if exact_mode.get(line) != truth.get(line)
    ]
    del exact_snap

    runs = []
    for seed in seeds:
        snap = run_scenario(scenario, nsites,
                            lambda seed=seed: mprofile_ipy.start(sample_rate=rate, seed=seed),
                            mprofile_ipy.stop, mprofile_ipy.take_snapshot)
        runs.append(sampled_by_line(snap, line_of, rate))
        del snap

    labels = dict(line_of)
    labels[0] = "TOTAL (all lines as one group)"
    rows = []
    for line in [*line_of, 0]:
        exact_size, exact_count = truth.get(line, (0, 0))
        if exact_size == 0:
            continue
        per_seed = [run[line] for run in runs]
        rows.append({
            "site": labels[line],
            "line": line,
            "exact_size": exact_size,
            "exact_count": exact_count,
            "exact_average": exact_size / exact_count,
            "samples_mean": statistics.fmean(r["samples"] for r in per_seed),
            "reported_error_mean": statistics.fmean(min(r["reported_error"], 10.0)
                                                    for r in per_seed),
            "size": rel_stats([r["size"] for r in per_seed], exact_size),
            "count": rel_stats([r["count"] for r in per_seed], exact_count),
            "shortcut_size": rel_stats([r["shortcut_size"] for r in per_seed], exact_size),
            "shortcut_count": rel_stats([r["shortcut_count"] for r in per_seed], exact_count),
            "per_seed": per_seed,
        })
    return {"rate": rate, "seeds": seeds, "scale": scale, "rows": rows,
            "exact_mode_mismatches": mismatches, "sites": [s.expression for s in sites]}


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def markdown(result: dict[str, Any], label: str) -> str:
    rate, seeds = result["rate"], result["seeds"]
    out = [f"### Accuracy, {label}: sample_rate={rate} bytes, {len(seeds)} seeds", "",
           "Bytes alive per site (estimate = sum of per-sample weights; shortcut = "
           "mprofile 0.0.15's group-average scaling of the same samples):", "",
           "| site | exact MiB | samples | estimate MiB | bias | rms error | reported error | "
           "max error | within 10% | shortcut MiB | shortcut bias |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        s, c = r["size"], r["shortcut_size"]
        out.append(
            f"| {r['site']} | {r['exact_size'] / 2**20:.2f} | {r['samples_mean']:.0f} | "
            f"{s['mean'] / 2**20:.2f} | {_pct(s['bias'])} | {s['rms'] * 100:.1f}% | "
            f"{r['reported_error_mean'] * 100:.1f}% | {s['max_abs'] * 100:.1f}% | "
            f"{s['within_10pct'] * 100:.0f}% | {c['mean'] / 2**20:.2f} | {_pct(c['bias'])} |"
        )
    out += ["", "Allocation counts per site:", "",
            "| site | exact count | estimate | bias | rms error | shortcut | shortcut bias |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        s, c = r["count"], r["shortcut_count"]
        out.append(
            f"| {r['site']} | {r['exact_count']:,} | {s['mean']:,.0f} | {_pct(s['bias'])} | "
            f"{s['rms'] * 100:.1f}% | {c['mean']:,.0f} | {_pct(c['bias'])} |"
        )
    mismatches = result["exact_mode_mismatches"]
    out += ["", "mprofile_ipy with sample_rate=1 vs tracemalloc (bytes, count), same scenario: "
            + ("identical on every site" if not mismatches else "")]
    for m in mismatches:
        out.append(f"- {m['site']}: tracemalloc {m['tracemalloc']}, mprofile_ipy "
                   f"{m['mprofile_ipy']}")
    if mismatches:
        out.append("  (tracemalloc moves an object reused from a free list to the line that "
                   "reused it; mprofile_ipy keeps the line that allocated the memory block)")
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=None,
                        help="number of seeds (default 10; 2 with --quick)")
    parser.add_argument("--rate", default="128KiB",
                        help="sample rate, bytes or a size such as 64KiB (default 128KiB)")
    parser.add_argument("--scale", type=float, default=None,
                        help="scenario size factor (default 1.0; 0.05 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: small and 2 seeds")
    parser.add_argument("--python-label", default=None,
                        help="label for the tables and the JSON file name")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON output file (default: benchmarks/results/"
                        "accuracy-<label>-<time>.json)")
    args = parser.parse_args(argv)
    if args.seeds is None:
        args.seeds = 2 if args.quick else 10
    if args.scale is None:
        args.scale = 0.05 if args.quick else 1.0
    if args.seeds < 1 or args.scale <= 0:
        parser.error("--seeds must be >= 1 and --scale > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    from mprofile_ipy.units import parse_size

    args = parse_args(argv)
    rate = parse_size(args.rate)
    label = args.python_label or f"cpython-{platform.python_version()}"
    result = evaluate(rate, list(range(1, args.seeds + 1)), args.scale)
    print(markdown(result, label))
    result.update(benchmark="accuracy", label=label, python=sys.version,
                  time=time.strftime("%Y-%m-%dT%H:%M:%S"))
    output = args.output or RESULTS / f"accuracy-{label}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1, default=str))
    print(f"\nraw results: {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
