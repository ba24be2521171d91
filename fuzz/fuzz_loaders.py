"""Fuzz the two file loaders: snapshot files (``Snapshot.load``) and pprof (``load_pprof``).

The property, for every input: either the loader raises the package's format error
(``SnapshotFormatError`` / ``PprofFormatError``), or it returns a snapshot on which
``statistics()`` (every key type, cumulative too), ``str()``, ``compare_to()``,
``to_pprof()``, ``dump()`` (and loading the dump again), the aggregation's call tree,
``Traceback.format()`` and the report's DataFrame views all work. Anything else is a crash.

Two fuzzers share that property:

- ``structured``: structure-aware. It starts from files the project writes itself (seeds
  built by :func:`seed_files`) and mutates them as documents: JSON fields and protobuf
  fields set to hostile values (huge, negative, fractional, NaN/Infinity, wrong types,
  lone surrogates, out-of-range ids), keys dropped, lists grown or cut, then written
  gzipped or plain, sometimes with a few bytes flipped. Deterministic for a seed.
- ``atheris``: coverage-guided (libFuzzer through atheris) over raw bytes, the first byte
  choosing the loader, seeded with the same files.

Both run under a memory limit (``resource.setrlimit(RLIMIT_AS)``) and for a bounded time::

    python fuzz/fuzz_loaders.py structured --seconds 60 [--seed 1] [--crashes DIR]
    python fuzz/fuzz_loaders.py atheris --seconds 60 --corpus DIR [--crashes DIR]
    python fuzz/fuzz_loaders.py seeds DIR        # write the seed files
    python fuzz/fuzz_loaders.py replay FILE...   # check saved inputs (regressions)

``fuzz/run.sh SECONDS`` runs both. A crashing input is saved (``--crashes``) under a name
holding its loader (``snapshot-`` or ``pprof-``); failures found so far live in
``tests/data/fuzz/`` and are replayed by ``tests/test_fuzz_loaders.py``.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import hashlib
import io
import json
import os
import random
import resource
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mprofile_ipy import aggregate
from mprofile_ipy.errors import PprofFormatError, SnapshotFormatError
from mprofile_ipy.export import pprof
from mprofile_ipy.model import Snapshot
from mprofile_ipy.storage import load_snapshot

# Caps for fuzzing: small enough that a hostile but valid input stays cheap.
MAX_BYTES = 4 << 20
MAX_TRACES = 100_000
MEMORY_LIMIT = 3 << 30  # address space (RLIMIT_AS), bytes
KINDS = ("snapshot", "pprof")
#: Open findings in code outside the loaders, reported to their owners: inputs that hit
#: them are counted here instead of failing, unless STRICT is set (``--strict``).
#: (None open: "dataframe-surrogates", file names that are not UTF-8 in the DataFrame
#: views, is fixed; the views escape them as pprof does.)
KNOWN: Counter[str] = Counter()
STRICT = False


class Crash(Exception):
    """An input broke the property; ``kind`` and ``data`` reproduce it."""

    def __init__(self, kind: str, data: bytes, stage: str, exc: BaseException) -> None:
        self.kind, self.data, self.stage, self.exc = kind, data, stage, exc
        super().__init__(f"{kind} input, {stage}: {type(exc).__name__}: {exc}"[:2000])


# ---------------------------------------------------------------------------------------------
# The property


def load(kind: str, data: bytes) -> Snapshot | None:
    """The loaded snapshot, or None when the loader refused the input with its format
    error. Any other exception propagates."""
    try:
        if kind == "snapshot":
            return load_snapshot(io.BytesIO(data), max_bytes=MAX_BYTES, max_traces=MAX_TRACES)
        return pprof.load_pprof(io.BytesIO(data), max_bytes=MAX_BYTES)
    except (SnapshotFormatError, PprofFormatError):
        return None


def exercise(snapshot: Snapshot, views: bool = True) -> None:
    """Every view and export a loaded snapshot must support."""
    empty = Snapshot([], 1)
    for key_type in ("lineno", "filename", "traceback"):
        for stat in snapshot.statistics(key_type):
            str(stat), repr(stat)
            stat.traceback.format()
        for diff in snapshot.compare_to(empty, key_type):
            str(diff)
        empty.compare_to(snapshot, key_type)
        if key_type != "traceback":
            snapshot.statistics(key_type, cumulative=True)
        if snapshot.allocated is not None:
            [str(s) for s in snapshot.allocated_statistics(key_type)]
    records = aggregate.by_traceback(snapshot)
    aggregate.group(records, "function", cumulative=True)
    aggregate.call_tree(records)
    aggregate.diff(snapshot, snapshot, "lineno")
    str(snapshot.total_size), repr(snapshot)
    snapshot.to_pprof(io.BytesIO())
    buf = io.BytesIO()
    snapshot.dump(buf)
    again = load_snapshot(io.BytesIO(buf.getvalue()), max_bytes=64 * MAX_BYTES,
                          max_traces=max(MAX_TRACES, len(snapshot.trace_records)))
    if again.total_size != snapshot.total_size:
        raise AssertionError(f"dump/load changed total_size: {snapshot.total_size} -> "
                             f"{again.total_size}")
    if views:
        _views(snapshot)


def _views(snapshot: Snapshot) -> None:
    try:
        import pandas  # noqa: F401
    except ImportError:
        return
    from mprofile_ipy.result import ProfileResult

    result = ProfileResult(snapshot, show_all=True)
    result.to_text()
    result.to_html()
    result.to_dataframe()
    if snapshot.samples <= 10_000:  # one row per allocation
        result.to_traces_dataframe()


def check(kind: str, data: bytes, views: bool = True) -> bool:
    """Apply the property; True if the input loaded. Raises :class:`Crash`."""
    stage = "load"
    try:
        snapshot = load(kind, data)
        if snapshot is None:
            return False
        stage = "views and exports"
        exercise(snapshot, views)
        return True
    except MemoryError as exc:  # the loaders' caps must keep us under the limit
        raise Crash(kind, data, stage, exc) from exc
    except Exception as exc:
        raise Crash(kind, data, stage, exc) from exc


# ---------------------------------------------------------------------------------------------
# Seeds: files the project writes itself


def seed_snapshots(sampler: bool = True) -> list[Snapshot]:
    """Snapshots of the shapes the project produces: sampled with allocation totals,
    exact tracemalloc-style, empty, counted (from pprof), and (``sampler``) one taken by
    the sampler itself, whose content differs from run to run."""
    main = ("/home/u/main.py", 10, "<module>", 1)
    work = ("/home/u/work.py", 22, "Worker.run", 20)
    cell = ("<ipython-input-3-abc>", 2, "<module>", 1)
    odd = (os.fsdecode(b"/tmp/mod\xff.py"), 3, "f", 1)
    no_stack = (("<unknown>", 0, "<no Python frame>", 0),)
    traces = [(0, 100, (work, main), 2, 2, 140001), (0, 100, (work, main), 2, 2, 140001),
              (389047, 3 * 2**30, (cell,), 1, 3, 140002), (0, 0, no_stack, 0, 0, 0),
              (0, 64, (odd, main), 9, 1, 7)]
    allocated = [((work, main), 2, 1234.5, 98765.25, 3, 12.5),
                 ((cell,), 1, 3.0, 3 * 2**30, 3, 0.0, 389047)]
    meta = {"python": "3.11.7", "threads": {"140001": "MainThread"},
            "started_at": 1700000000.25, "taken_at": 1700000001.0, "samples_total": 9}
    out = [
        Snapshot(traces, 64, sample_rate=4096, allocated=allocated, meta=meta),
        Snapshot([(0, 10, (("a.py", 2), ("b.py", 4)), 3), (3, 7, (("<unknown>", 0),), 1)], 2,
                 meta={"taken_at": 1.7e9}),  # a time, so that the pprof seed is the same
        Snapshot([], 1, meta={"taken_at": 1.7e9}),
        Snapshot(traces[:2], 8, sample_rate=512, counts=[5, 1_000], meta={"taken_at": 1.7e9}),
    ]
    if not sampler:
        return out
    try:
        import mprofile_ipy as mp

        mp.start(sample_rate=1024, seed=3)
        try:
            keep = [bytearray(100) for _ in range(300)]
            out.append(mp.take_snapshot())
            del keep
        finally:
            mp.stop()
    except Exception:  # noqa: BLE001 - no sampler (not built): the other seeds remain
        pass
    return out


def seed_files(sampler: bool = True) -> list[tuple[str, bytes]]:
    """``(kind, bytes)`` seeds: each seed snapshot dumped and written as pprof."""
    files = []
    for snap in seed_snapshots(sampler):
        buf = io.BytesIO()
        snap.dump(buf)
        files.append(("snapshot", buf.getvalue()))
        buf = io.BytesIO()
        snap.to_pprof(buf)
        files.append(("pprof", buf.getvalue()))
    return files


# ---------------------------------------------------------------------------------------------
# Structure-aware mutations

_HOSTILE_INTS = [0, 1, -1, 2, 7, 255, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1,
                 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**400, -(2**63), -10**400]
_HOSTILE_FLOATS = [0.5, 1.5, -0.0, -2.5, 1e300, -1e300, 5e-324, float("nan"), float("inf"),
                   float("-inf")]
_HOSTILE_STRINGS = ["", "x", "\udcff", "mod\udcff.py", "\x00", "/dev/zero", "é/ü.py",
                    "a" * 5000, "<module>", "12"]


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def hostile_value(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.4:
        return rng.choice(_HOSTILE_INTS)
    if roll < 0.55:
        return rng.choice(_HOSTILE_FLOATS)
    if roll < 0.7:
        return rng.choice(_HOSTILE_STRINGS)
    return rng.choice([None, True, False, [], {}, [1], {"a": 1}, [None], _deep(40),
                       _DEEP, {"1": "x"}, [[1, 2]], "[]"])


_DEEP = "__deeply_nested__"  # replaced in the JSON text by 100,000 nested lists


def _containers(doc: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """Every (path, container) in a JSON document."""
    if isinstance(doc, (dict, list)):
        yield path, doc
        items = doc.items() if isinstance(doc, dict) else enumerate(doc)
        for key, value in items:
            if isinstance(value, (dict, list)) and len(path) < 8:
                yield from _containers(value, (*path, key))


def mutate_json(doc: Any, rng: random.Random) -> Any:
    doc = copy.deepcopy(doc)
    containers = list(_containers(doc))
    for _ in range(rng.choice([1, 1, 2, 3, 5])):
        _path, box = rng.choice(containers)
        keys = list(box.keys()) if isinstance(box, dict) else list(range(len(box)))
        action = rng.random()
        if not keys or action < 0.08:
            if isinstance(box, dict):
                box[rng.choice(["x", "count", "allocator", "thread_id", "threads"])] = (
                    hostile_value(rng))
            else:
                box.append(hostile_value(rng))
            continue
        key = rng.choice(keys)
        if action < 0.7:
            box[key] = hostile_value(rng)
        elif action < 0.8:
            del box[key]
        elif action < 0.9 and isinstance(box, list):
            box.extend(copy.deepcopy(box[: rng.randint(1, 4)]) * rng.randint(1, 50))
        elif isinstance(box, list):
            del box[rng.randint(0, len(box)) :]
        else:
            box[key] = copy.deepcopy(box[rng.choice(keys)])
    return doc


def _int64(rng: random.Random) -> int:
    value = rng.choice(_HOSTILE_INTS + [rng.randint(-100, 100)])
    return max(-(2**63), min(2**63 - 1, value))


def _uint64(rng: random.Random) -> int:
    return max(0, min(2**64 - 1, rng.choice(_HOSTILE_INTS + [rng.randint(0, 20)])))


def mutate_profile(message: Any, rng: random.Random) -> Any:
    p = copy.deepcopy(message)
    table = len(p.string_table)
    for _ in range(rng.choice([1, 1, 2, 3, 5])):
        roll = rng.randrange(15)
        if roll == 0 and p.sample:
            s = rng.choice(p.sample)
            if s.value:
                s.value[rng.randrange(len(s.value))] = _int64(rng)
        elif roll == 1 and p.sample:
            s = rng.choice(p.sample)
            if s.label:
                label = rng.choice(s.label)
                label.num = _int64(rng)
            else:
                s.label.add(key=rng.randrange(table + 2), num=_int64(rng))
        elif roll == 2 and p.sample:
            label = rng.choice(p.sample).label.add()
            label.key = rng.randrange(table + 2)
            label.str = rng.randrange(table + 2)
        elif roll == 3 and p.location:
            loc = rng.choice(p.location)
            if loc.line:
                rng.choice(loc.line).line = _int64(rng)
            loc.line.add(function_id=_uint64(rng), line=_int64(rng))
        elif roll == 4 and p.function:
            f = rng.choice(p.function)
            setattr(f, rng.choice(["name", "system_name", "filename"]), _int64(rng))
            f.start_line = _int64(rng)
        elif roll == 5:
            p.period = _int64(rng)
        elif roll == 6:
            p.time_nanos, p.duration_nanos = _int64(rng), _int64(rng)
        elif roll == 7 and p.sample:
            s = rng.choice(p.sample)
            s.location_id.extend([_uint64(rng) if rng.random() < 0.3 else
                                  rng.choice([loc.id for loc in p.location] or [1])
                                  for _ in range(rng.randint(1, 40))])
        elif roll == 8 and p.sample:
            for _ in range(rng.randint(1, 30)):
                p.sample.append(copy.deepcopy(rng.choice(p.sample)))
        elif roll == 9 and p.sample_type:
            t = rng.choice(p.sample_type)
            t.type = rng.randrange(table + 1)
        elif roll == 10 and table:
            p.string_table[rng.randrange(table)] = rng.choice(
                [s for s in _HOSTILE_STRINGS if "\udcff" not in s] + ["inuse_space", "samples"])
        elif roll == 11 and p.sample:
            del p.sample[rng.randrange(len(p.sample))]
        elif roll == 12 and p.sample and p.sample[0].value:
            p.sample.add(location_id=[], value=[_int64(rng) for _ in p.sample[0].value])
        elif roll == 13:
            p.location.add(id=_uint64(rng), address=_uint64(rng))
        elif roll == 14 and p.sample:
            s = rng.choice(p.sample)
            del s.value[rng.randrange(len(s.value) + 1):]
    return p


def _flip(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if data:
            data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def structured_inputs(seed: int, sampler: bool = False) -> Iterator[tuple[str, bytes]]:
    """An endless stream of hostile ``(kind, bytes)`` inputs, reproducible for a seed
    unless ``sampler`` adds a seed taken by the running sampler."""
    rng = random.Random(seed)
    seeds = seed_files(sampler)
    docs = [json.loads(gzip.decompress(d)) for k, d in seeds if k == "snapshot"]
    pb2 = pprof._pb2()
    messages = [pb2.Profile.FromString(gzip.decompress(d)) for k, d in seeds if k == "pprof"]
    yield from seeds
    while True:
        if rng.random() < 0.5:
            try:  # deeply nested hostile values are fine to load, not to copy or dump
                doc = mutate_json(rng.choice(docs), rng)
                text = json.dumps(doc, allow_nan=True).encode()
                text = text.replace(f'"{_DEEP}"'.encode(), b"[" * 100_000 + b"]" * 100_000)
            except (ValueError, RecursionError):
                continue
            data = gzip.compress(text, mtime=0) if rng.random() < 0.8 else text
            kind = "snapshot"
        else:
            data = mutate_profile(rng.choice(messages), rng).SerializeToString()
            if rng.random() < 0.7:
                data = gzip.compress(data, mtime=0)
            kind = "pprof"
        if rng.random() < 0.1:
            data = _flip(data, rng)
        yield kind, data


def run_structured(seconds: float, seed: int, *, max_inputs: int | None = None,
                   crashes: Path | None = None, views: bool = True,
                   stop_on_crash: bool = True, sampler: bool = False) -> dict[str, Any]:
    """Run the structure-aware fuzzer for ``seconds`` (or ``max_inputs`` inputs)."""
    stats: dict[str, Any] = {"inputs": 0, "loaded": 0, "crashes": []}
    deadline = time.monotonic() + seconds
    for kind, data in seed_files(sampler):  # files the project writes must load back
        if load(kind, data) is None:
            crash = Crash(kind, data, "load of a file the project wrote",
                          ValueError("refused with the format error"))
            stats["crashes"].append(crash)
            if stop_on_crash:
                raise crash
    for kind, data in structured_inputs(seed, sampler):
        if time.monotonic() > deadline or (max_inputs and stats["inputs"] >= max_inputs):
            break
        stats["inputs"] += 1
        try:
            stats["loaded"] += check(kind, data, views)
        except Crash as crash:
            stats["crashes"].append(crash)
            if crashes is not None:
                save_crash(crash, crashes)
            if stop_on_crash:
                raise
    return stats


def save_crash(crash: Crash, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(crash.data).hexdigest()[:16]
    path = folder / f"{crash.kind}-{digest}.bin"
    path.write_bytes(crash.data)
    (folder / f"{crash.kind}-{digest}.txt").write_text(
        "".join(traceback.format_exception(crash.exc)))
    return path


# ---------------------------------------------------------------------------------------------
# Coverage-guided fuzzing (atheris)


def _instrument_package(atheris: Any) -> int:
    import inspect

    names = ["mprofile_ipy.aggregate", "mprofile_ipy.model", "mprofile_ipy.storage",
             "mprofile_ipy.export.pprof", "mprofile_ipy.estimate", "mprofile_ipy.units",
             "mprofile_ipy.result", "mprofile_ipy.attribution"]
    seen: set[int] = set()
    for name in names:
        module = sys.modules.get(name)
        if module is None:
            continue
        stack = [module]
        while stack:
            owner = stack.pop()
            for value in list(vars(owner).values()):
                if isinstance(value, (staticmethod, classmethod)):
                    value = value.__func__
                if isinstance(value, property):
                    funcs = [f for f in (value.fget, value.fset) if f is not None]
                elif inspect.isfunction(value):
                    funcs = [value]
                elif inspect.isclass(value) and value.__module__ == module.__name__:
                    stack.append(value)
                    continue
                else:
                    continue
                for func in funcs:
                    if func.__module__ == module.__name__ and id(func) not in seen:
                        seen.add(id(func))
                        atheris.instrument_func(func)
    return len(seen)


def run_atheris(seconds: int, corpus: Path, crashes: Path, extra: list[str]) -> None:
    import atheris

    # The package is imported already (this module uses it): instrument its functions in
    # place (instrument_all() would take minutes over the whole standard library).
    count = _instrument_package(atheris)
    print(f"instrumented {count} functions of mprofile_ipy", file=sys.stderr)

    def one_input(data: bytes) -> None:
        if not data:
            return
        kind = KINDS[data[0] % 2]
        check(kind, data[1:], views=False)

    corpus.mkdir(parents=True, exist_ok=True)
    for kind, data in seed_files():
        # Both loaders read uncompressed input too: byte-level mutations of gzip data
        # mostly fail its CRC, so the plain forms are where coverage grows.
        for form in (data, gzip.decompress(data)):
            name = hashlib.sha1(form).hexdigest()[:16]
            (corpus / f"seed-{kind}-{name}").write_bytes(bytes([KINDS.index(kind)]) + form)
    crashes.mkdir(parents=True, exist_ok=True)
    argv = [sys.argv[0], str(corpus), f"-max_total_time={seconds}",
            f"-rss_limit_mb={MEMORY_LIMIT >> 20}", f"-artifact_prefix={crashes}/",
            "-max_len=65536", "-timeout=20", "-print_final_stats=1", *extra]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


# ---------------------------------------------------------------------------------------------


def limit_memory(limit: int = MEMORY_LIMIT) -> None:
    """Cap this process's address space, so that an unbounded load fails fast."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def replay(paths: list[Path], views: bool = True) -> list[Crash]:
    """Check saved inputs; the loader is named by the file name (``snapshot-``/``pprof-``;
    an atheris artifact carries it in its first byte)."""
    found = []
    for path in paths:
        data = path.read_bytes()
        if path.name.startswith(("snapshot-", "pprof-")):
            kind = path.name.split("-", 1)[0]
        else:
            kind, data = KINDS[data[0] % 2], data[1:]
        try:
            check(kind, data, views)
        except Crash as crash:
            found.append(crash)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("structured", help="structure-aware fuzzing")
    s.add_argument("--seconds", type=float, default=60.0)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--crashes", type=Path, default=Path("fuzz/crashes"))
    a = sub.add_parser("atheris", help="coverage-guided fuzzing with atheris")
    a.add_argument("--seconds", type=int, default=60)
    a.add_argument("--corpus", type=Path, default=Path("fuzz/corpus"))
    a.add_argument("--crashes", type=Path, default=Path("fuzz/crashes"))
    a.add_argument("libfuzzer_args", nargs="*")
    d = sub.add_parser("seeds", help="write the seed files")
    d.add_argument("folder", type=Path)
    r = sub.add_parser("replay", help="check saved inputs")
    r.add_argument("files", type=Path, nargs="+")
    for p in (s, a, r):
        p.add_argument("--strict", action="store_true",
                       help="fail on the open findings listed in KNOWN too")
    args = parser.parse_args(argv)
    global STRICT
    STRICT = getattr(args, "strict", False)

    if args.command == "seeds":
        args.folder.mkdir(parents=True, exist_ok=True)
        for kind, data in seed_files():
            (args.folder / f"{kind}-{hashlib.sha1(data).hexdigest()[:16]}.bin").write_bytes(data)
        return 0
    if args.command == "replay":
        found = replay(args.files)
        for crash in found:
            print(crash)
        return 1 if found else 0
    # Imports done, seeds written: now cap the memory.
    seed_files()
    _views(Snapshot([], 1))
    limit_memory()
    if args.command == "atheris":
        run_atheris(args.seconds, args.corpus, args.crashes, args.libfuzzer_args)
        return 0
    started = time.monotonic()
    stats = run_structured(args.seconds, args.seed, crashes=args.crashes, stop_on_crash=False,
                           sampler=True)
    elapsed = time.monotonic() - started
    print(f"structured: {stats['inputs']} inputs in {elapsed:.0f} s, {stats['loaded']} loaded, "
          f"{len(stats['crashes'])} crashes (seed {args.seed}); known open findings: "
          f"{dict(KNOWN) or 'none'}")
    for crash in stats["crashes"][:20]:
        print("  ", crash)
    return 1 if stats["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
