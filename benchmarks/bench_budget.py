"""Cost of the budget watcher and of the flight recorder, and how fast a budget stops code.

0. Unit costs: one watcher reading and one record write, in CPU time.
1. Overhead: a small-object churn workload (as in overhead.py, scaled to ~2.5 s per run so
   that the recorder's once-a-second write falls inside each run) under four settings,
   alternated round by round in one process: nothing; the watcher (a budget and the safety
   net); the sampler alone; the sampler plus the flight recorder. Medians and ratios.
2. Latency: a loop growing memory by touched 1 MB blocks, reading its own RSS after each
   block, under a budget of RSS + 200 MB. Reports the time from the first block that put
   RSS over the budget to the exception, and how far past the budget memory got, at two
   growth rates, with the sampler off and on.
3. Untouched memory: a loop of ``bytes(10**6)`` (calloc'ed, no page touched: RSS does not
   move) with the sampler on, under a budget of RSS + 200 MB. Reports how many blocks past
   the crossing block the loop ran and the time from the crossing to the exception, with
   the sample path (the sampler's watermark, docs/budget.md) and by polling alone
   (``--poll-only``, or the section's second row: the watermark never armed).

Run: ``python benchmarks/bench_budget.py [--rounds N] [--quick] [--only untouched]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # overhead.py's workloads

from overhead import work_churn  # noqa: E402

import mprofile_ipy as mp  # noqa: E402
from mprofile_ipy import budget as B  # noqa: E402
from mprofile_ipy import recorder as R  # noqa: E402

MiB = 1024 * 1024


def overhead(rounds: int, scale: float) -> None:
    tmp = tempfile.mkdtemp(prefix="bench-budget-")
    settings = {
        "nothing": (lambda: None, lambda: None),
        "watcher (budget + safety net)": (lambda: B.set_budget("+8GB"),
                                          lambda: B.set_budget(None, safety_net=False)),
        "sampler": (mp.start, mp.stop),
        "sampler + recorder": (lambda: (mp.start(), R.start_recording(tmp, interval=1.0)),
                               lambda: (R.stop_recording(), mp.stop())),
    }
    names = list(settings)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    main: dict[str, list[float]] = {name: [] for name in names}
    writes = []
    work_churn(scale / 4)  # warm up
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            on, off = settings[name]
            on()
            time.sleep(0.05)  # let the watcher settle into its rhythm
            c0, m0, t0 = time.process_time(), time.thread_time(), time.perf_counter()
            work_churn(scale)
            elapsed, used = time.perf_counter() - t0, time.process_time() - c0
            main[name].append(time.thread_time() - m0)
            rec = R.get_recorder()
            if rec is not None:
                writes.append((rec.writes - 1, rec.write_seconds))
            off()
            wall[name].append(elapsed)
            cpu[name].append(used)  # all threads of the process: the watcher's work counts

    def paired(series: dict[str, list[float]], name: str, ref: str) -> float:
        return statistics.median(a / b for a, b in zip(series[name], series[ref], strict=True))

    print(f"\n## Overhead: churn x{scale}, {rounds} alternating rounds\n")
    print("Ratios are medians of per-round ratios (each round runs every setting once).\n")
    print("CPU counts every thread of the process (the watcher's work included); main is the "
          "CPU time of the thread running the workload.\n")
    print("| setting | median wall s | wall vs nothing | CPU vs nothing | main vs nothing "
          "| wall vs sampler | CPU vs sampler | main vs sampler |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        print(f"| {name} | {statistics.median(wall[name]):.3f} | "
              f"{paired(wall, name, 'nothing'):.3f} | {paired(cpu, name, 'nothing'):.3f} | "
              f"{paired(main, name, 'nothing'):.3f} | "
              f"{paired(wall, name, 'sampler'):.3f} | {paired(cpu, name, 'sampler'):.3f} | "
              f"{paired(main, name, 'sampler'):.3f} |")
    n_writes = sum(w for w, _ in writes)
    if n_writes:
        spent = sum(s for _, s in writes)
        per_write = spent / (n_writes + len(writes))  # the first write is in write_seconds too
        print(f"\nrecorder: {n_writes} writes inside {len(writes)} timed runs, "
              f"{per_write * 1e3:.2f} ms wall per write (snapshot, gzip, rename; the "
              f"rename and compression run without the GIL)")


def unit_costs() -> None:
    """The watcher's tick and the recorder's write, timed alone (CPU of this thread)."""
    probe = B._get_probe()
    n = 2000
    c0 = time.thread_time()
    for _ in range(n):
        probe.read()
    tick = (time.thread_time() - c0) / n
    mp.start()
    keep = [{"k": i} for i in range(200_000)]  # noqa: F841 - a live table to record
    rec = R.start_recording(tempfile.mkdtemp(prefix="bench-budget-"), interval=1000)
    c0 = time.thread_time()
    for _ in range(50):
        rec.write(force=True)
    write = (time.thread_time() - c0) / 50
    samples = mp.get_stats().live_samples
    R.stop_recording()
    mp.stop()
    print("\n## Unit costs (CPU time of the calling thread)\n")
    print(f"- one watcher reading (statm, meminfo, cgroup, sampler counters): "
          f"{tick * 1e6:.1f} us; at 20 ticks/s that is {tick * 20 * 100:.3f}% of a core")
    print(f"- one record write ({samples} live samples): {write * 1e3:.2f} ms; "
          f"at most once a second: {write * 100:.2f}% of a core")


def latency(runs: int, budget_mb: int = 200) -> None:
    print(f"\n## Budget RSS + {budget_mb} MB: crossing to exception, {runs} runs each\n")
    print("| growth | sampler | median ms | max ms | median overshoot MB | MB/s |")
    print("|---|---|---|---|---|---|")
    statm = os.open("/proc/self/statm", os.O_RDONLY)
    page = os.sysconf("SC_PAGE_SIZE")
    for pause, label in ((0.0, "fast"), (0.002, "slow")):
        for sampler_on in (False, True):
            delays, overshoots, rates = [], [], []
            for _ in range(runs):
                if sampler_on:
                    mp.start()
                blocks: list = []
                stamps: list = []
                t_start = time.perf_counter()
                try:
                    with B.budget(f"+{budget_mb}MB"):
                        limit = B.get_budget()
                        while True:
                            blocks.append(bytearray(MiB))
                            rss = int(os.pread(statm, 64, 0).split()[1]) * page
                            stamps.append((time.perf_counter(), rss))
                            if pause:
                                time.sleep(pause)
                except MemoryError:
                    t_exc = time.perf_counter()
                crossed = next((t for t, rss in stamps if rss > limit), None)
                if crossed is not None:
                    delays.append(t_exc - crossed)
                    overshoots.append((stamps[-1][1] - limit) / MiB)
                    rates.append(len(blocks) / (stamps[-1][0] - t_start))
                else:  # the traced estimate tripped first (sampler on): zero overshoot in RSS
                    delays.append(0.0)
                    overshoots.append(0.0)
                    rates.append(len(blocks) / (t_exc - t_start))
                del blocks, stamps
                if sampler_on:
                    mp.stop()
                time.sleep(0.1)
            print(f"| {label} | {'on' if sampler_on else 'off'} | "
                  f"{statistics.median(delays) * 1e3:.1f} | {max(delays) * 1e3:.1f} | "
                  f"{statistics.median(overshoots):.0f} | {statistics.median(rates):.0f} |")
    os.close(statm)


def _untouched_run(budget_mb: int, sample_rate: int | None) -> tuple[int, float] | None:
    """One loop of untouched 1 MB blocks under RSS + budget_mb: (blocks allocated past the
    one that crossed the budget, seconds from the end of the last block under the budget to
    the exception), or None if it never tripped."""
    mp.start(**({} if sample_rate is None else {"sample_rate": sample_rate}))
    blocks: list = []
    stamps: list[float] = []
    try:
        with B.budget(f"+{budget_mb}MB"):
            limit = B.get_budget()
            start = mp.get_traced_memory()[0]
            for _ in range(30_000):  # 30 GB of address space
                blocks.append(bytes(10**6))
                stamps.append(time.perf_counter())
        return None
    except MemoryError:
        t_exc = time.perf_counter()
        # the block that takes traced past the budget (1-based); the block being allocated
        # when the exception came was allocated but not appended: it counts
        crossing = -(-(limit - start) // 10**6)
        allocated = len(stamps) + 1
        # from the end of the last block under the budget (an upper bound: it includes
        # allocating the crossing block); tripped before it (the estimate's jitter at the
        # default rate): from the last block
        before = stamps[min(crossing - 1, len(stamps)) - 1] if stamps else t_exc
        return allocated - crossing, t_exc - before
    finally:
        blocks.clear()
        stamps.clear()
        mp.stop()
        time.sleep(0.05)


def untouched(runs: int, budget_mb: int = 200, poll_only: bool = False) -> None:
    from mprofile_ipy import sampler

    print(f"\n## Untouched memory (bytes(10**6) in a loop), budget RSS + {budget_mb} MB, "
          f"{runs} runs each\n")
    print("| path | sample rate | median blocks past | max blocks past | median ms | max ms "
          "| no trip |")
    print("|---|---|---|---|---|---|---|")
    real = getattr(sampler, "set_watermark", None)
    modes = [("sample path", False), ("polling only", True)]
    if poll_only or real is None:  # asked, or a build without the sample path
        modes = modes[1:]
    for label, off in modes:
        for rate in (None, 65536):
            if off and real is not None:  # never armed: what the budget did before it
                sampler.set_watermark = lambda *a, **k: None  # type: ignore[assignment]
            try:
                results = [_untouched_run(budget_mb, rate) for _ in range(runs)]
            finally:
                if real is not None:
                    sampler.set_watermark = real
            tripped = [r for r in results if r is not None]
            if not tripped:
                print(f"| {label} | {rate or 'default'} | - | - | - | - | {runs} |")
                continue
            past = [b for b, _ in tripped]
            delay = [d * 1e3 for _, d in tripped]
            print(f"| {label} | {rate or 'default'} | {statistics.median(past):.0f} | "
                  f"{max(past)} | {statistics.median(delay):.2f} | {max(delay):.2f} | "
                  f"{runs - len(tripped)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["units", "overhead", "latency", "untouched"])
    parser.add_argument("--poll-only", action="store_true",
                        help="untouched: only the polling row (for a build without the "
                             "sample path, run that build's own copy of this script)")
    args = parser.parse_args()
    rounds = 3 if args.quick else args.rounds
    if args.only in (None, "units"):
        unit_costs()
    if args.only in (None, "overhead"):
        overhead(rounds, 1.0 if args.quick else 4.0)
    if args.only in (None, "latency"):
        latency(3 if args.quick else 11)
    if args.only in (None, "untouched"):
        untouched(5 if args.quick else 15, poll_only=args.poll_only)


if __name__ == "__main__":
    main()
