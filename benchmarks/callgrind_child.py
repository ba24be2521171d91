"""The measured side of benchmarks/callgrind.py: workloads, profiler configurations, and
the two child modes (a measured run under valgrind; an allocator-call count).

Kept apart from the harness, with only ``os`` and ``sys`` imported at the top, so that the
processes callgrind measures start in about 40 million instructions instead of 180 (the
harness's argparse, json, concurrent.futures ... cancel in the 3-vs-1 difference anyway,
but cost minutes of valgrind time).

    python benchmarks/callgrind_child.py run WORKLOAD CONFIG RUNS SCALE
    python benchmarks/callgrind_child.py count WORKLOAD SCALE
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 1
RATE_128K = 128 * 1024

# ---------------------------------------------------------------------------------------
# Workloads: deterministic, allocation-heavy, about 30-80 million instructions per run at
# scale 1 without a profiler (a few hundredths of a second natively).


class _Item:
    """A small class with attributes, as user code makes them."""

    def __init__(self, key: int, name: str) -> None:
        self.key = key
        self.name = name
        self.tags = (key % 3, key % 5)


def work_churn(scale: float) -> None:
    """Small-object churn: dicts, tuples, lists, str and instances of a small class."""
    n = max(1, int(4_000 * scale))
    for _ in range(3):
        dicts = [{"key": i, "value": i + 1} for i in range(n)]
        tuples = [(i, str(i), None) for i in range(n)]
        lists = [[i, i * 2, i * 3] for i in range(n)]
        items = [_Item(i, "n" + str(i)) for i in range(n)]
        del dicts, tuples, lists, items


def work_mixed(scale: float) -> None:
    """json dumps/loads, sorting, comprehensions and string building."""
    import json

    n = max(1, int(1_500 * scale))
    for _ in range(2):
        records = [{"id": i, "name": f"item-{i}", "tags": [str(i % 7), "x"], "score": i * 0.5}
                   for i in range(n)]
        back = json.loads(json.dumps(records))
        back.sort(key=lambda r: (r["tags"][0], -r["score"]))
        names = sorted(r["name"] for r in back)
        index = {r["id"]: r for r in back if r["id"] % 2}
        words = ",".join(f"{r['name']}:{r['score']:.1f}" for r in back).split(",")
        upper = [w.upper() for w in words if w]
        del records, back, names, index, words, upper


def work_numpy(scale: float) -> None:
    """NumPy: many small arrays and their temporaries, a few large ones, reductions."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    n = max(1, int(300 * scale))
    total = 0.0
    for i in range(n):
        a = np.arange(64 + i % 64, dtype=np.float64)
        b = a * 2.0 + 1.0
        c = np.concatenate([a, b])
        total += float(c.sum())
        if i % 50 == 0:
            big = rng.random(100_000)
            total += float((big - big.mean()).std())
            del big
    assert total > 0


def work_pandas(scale: float) -> None:
    """pandas: build a frame, string and numeric columns, groupby, merge, sort."""
    import numpy as np
    import pandas as pd

    n = max(10, int(5_000 * scale))
    keys = np.arange(n)
    df = pd.DataFrame({"key": keys, "city": [f"city-{i % 50}" for i in range(n)],
                       "amount": (keys % 97).astype("float64")})
    df["upper"] = df["city"].str.upper()
    grouped = df.groupby("city", sort=True)["amount"].agg(["sum", "mean", "count"])
    merged = df.merge(grouped, left_on="city", right_index=True)
    merged = merged.sort_values(["city", "key"])
    assert len(merged) == n


WORKLOADS = {"churn": work_churn, "mixed": work_mixed, "numpy": work_numpy,
             "pandas": work_pandas}
WORKLOAD_NEEDS = {"numpy": ("numpy",), "pandas": ("numpy", "pandas")}

# ---------------------------------------------------------------------------------------
# Configurations: how each one starts and stops, inside the child.

# "import" only imports mprofile_ipy (no hooks): what having the package's modules in the
# process costs in steady state (more objects for each full GC to traverse, another heap
# layout, so glibc extends fewer blocks in place). "floor+import" is the floor in that
# same process: mprofile_ipy over it is the sampler's own work alone.
CONFIGS = ("none", "floor", "import", "floor+import", "mprofile_ipy", "native", "exact",
           "tracemalloc-1", "mprofile-0.0.15", "memray")
DEFAULT_CONFIGS = CONFIGS


def floor_build_dir() -> str:
    """Where the floor extension of this interpreter is built (not committed)."""
    tag = f"{sys.implementation.cache_tag}-{os.uname().machine}"
    default = os.path.join(HERE, "floor", "build")
    return os.path.join(os.environ.get("MPROFILE_FLOOR_BUILD", default), tag)


def _import_floor():
    sys.path.insert(0, floor_build_dir())
    try:
        import _mprofile_floor
    finally:
        sys.path.pop(0)
    return _mprofile_floor


class Profiler:
    """Start and stop one configuration in this process."""

    def __init__(self, name: str, tmpdir: str) -> None:
        self.name = name
        self.tmpdir = tmpdir
        self._stop = lambda: None

    def start(self) -> None:
        name = self.name
        if name == "none":
            return
        if name in ("import", "floor+import"):
            import mprofile_ipy  # noqa: F401  (imported, never started)
        if name == "import":
            return
        if name in ("floor", "floor+import"):
            lib = _import_floor().lib
            if lib.floor_install(0) != 0:
                raise RuntimeError("the floor hooks are already installed")
            self._stop = lib.floor_uninstall
        elif name in ("mprofile_ipy", "native", "exact"):
            import mprofile_ipy

            kwargs: dict[str, object] = {"seed": SEED}
            if name == "native":
                kwargs["native"] = True
            if name == "exact":
                kwargs["sample_rate"] = 1
            mprofile_ipy.start(**kwargs)
            self._stop = mprofile_ipy.stop
        elif name == "tracemalloc-1":
            import tracemalloc

            tracemalloc.start(1)
            self._stop = tracemalloc.stop
        elif name == "mprofile-0.0.15":
            import mprofile

            mprofile.start(max_frames=128, sample_rate=RATE_128K)
            self._stop = mprofile.stop
        elif name == "memray":
            import memray

            tracker = memray.Tracker(os.path.join(self.tmpdir, f"memray-{os.getpid()}.bin"),
                                     trace_python_allocators=True)
            tracker.__enter__()
            self._stop = lambda: tracker.__exit__(None, None, None)
        else:
            raise ValueError(f"unknown configuration {name!r}")

    def stop(self) -> None:
        self._stop()


def child_main(workload: str, config: str, runs: int, scale: float) -> None:
    """One measured process: imports, start, ``runs`` workload runs, stop."""
    func = WORKLOADS[workload]
    for module in WORKLOAD_NEEDS.get(workload, ()):
        __import__(module)
    tmpdir = os.environ.get("MPROFILE_CG_TMP", ".")      # memray's file goes there
    profiler = Profiler(config, tmpdir)
    profiler.start()
    for _ in range(runs):
        func(scale)
    profiler.stop()


def count_main(workload: str, scale: float) -> None:
    """Allocator calls of one steady-state run (after a warm-up run), as JSON on stdout."""
    func = WORKLOADS[workload]
    for module in WORKLOAD_NEEDS.get(workload, ()):
        __import__(module)
    floor = _import_floor()
    func(scale)                                    # warm-up, as run 1 of the measured pair
    counts = floor.ffi.new("unsigned long long[12]")
    if floor.lib.floor_install(1) != 0:
        raise RuntimeError("the floor hooks are already installed")
    floor.lib.floor_reset()
    func(scale)
    floor.lib.floor_counts(counts)
    floor.lib.floor_uninstall()
    values = list(counts)
    per_domain = {dom: dict(zip(("malloc", "calloc", "realloc", "free"),
                                values[4 * d:4 * d + 4], strict=True))
                  for d, dom in enumerate(("raw", "mem", "obj"))}
    allocs = sum(v["malloc"] + v["calloc"] + v["realloc"] for v in per_domain.values())
    frees = sum(v["free"] for v in per_domain.values())
    import json

    print(json.dumps({"allocs": allocs, "frees": frees, "domains": per_domain}))



def main(argv: list[str]) -> int:
    if len(argv) == 6 and argv[1] == "run":
        child_main(argv[2], argv[3], int(argv[4]), float(argv[5]))
        return 0
    if len(argv) == 4 and argv[1] == "count":
        count_main(argv[2], float(argv[3]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
