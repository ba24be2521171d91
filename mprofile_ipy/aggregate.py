"""The one aggregation pass: traces -> per-traceback records -> groups, diffs, a call tree.

Every figure the package shows (``Snapshot.statistics``, ``compare_to``, pprof, reports,
DataFrames, charts) is read from the records built here; nothing else sums traces.

Invariants (read these first):

- **Frame order.** A raw frame is ``(filename, lineno[, name[, firstlineno]])``. Raw frames
  tuples (in traces and allocation totals) are *most recent first*, as tracemalloc's raw
  traces and pprof's ``location_id`` (leaf first). :class:`Traceback` stores and iterates
  its frames *oldest first* (tracemalloc's order since Python 3.7); ``Traceback[-1]`` is the
  innermost frame. :class:`Node` trees are root first (outermost caller at the top), the
  order of flame graphs.
- **Identity.** :class:`Frame` and :class:`Traceback` compare, hash and sort on
  ``(filename, lineno)`` only: frames that differ in ``name`` merge.
- **Units.** ``Totals.size`` is bytes, ``Totals.count`` allocations, ``Totals.samples`` the
  number of sampled allocations behind them; ``size_var`` is in bytes squared and
  ``count_var`` in allocations squared.
- **Estimated vs sampled.** A raw trace's ``size`` is the real size of one *sampled*
  allocation, never scaled. ``Totals.size``/``count`` are unbiased (Horvitz-Thompson)
  estimates: each sample adds ``size * w`` bytes and ``w`` allocations with
  ``w = estimate.weight(size, rate)``; their variances add ``estimate.size_variance`` and
  ``estimate.count_variance`` per sample. At ``sample_rate <= 1`` every weight is exactly 1,
  sizes and counts are ints and equal tracemalloc's, variances are 0.
- **Live vs allocated.** ``Record.live`` holds the allocations alive at snapshot time;
  ``Record.allocated`` everything allocated since the profiler started, freed allocations
  included (zero :class:`Totals` when the snapshot has no allocation totals).

The API: :func:`by_traceback` (one :class:`Record` per distinct traceback, cached on the
snapshot: the only pass over every trace), :func:`group` (by ``'traceback'``, ``'lineno'``,
``'filename'`` or ``'function'``, optionally cumulative), :func:`diff` (two snapshots,
:class:`DiffRecord` with the variance of each change), :func:`call_tree` (a :class:`Node`
tree) and :func:`sample_groups` (identical samples counted once, for exporters that keep
per-allocation labels such as pprof). This module imports only :mod:`estimate`.
"""

from __future__ import annotations

import linecache
import math
import os
import stat
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import total_ordering
from operator import itemgetter
from typing import Any, Protocol

from . import estimate

__all__ = [
    "KEY_TYPES",
    "DiffRecord",
    "Frame",
    "Node",
    "Record",
    "SampleGroup",
    "Totals",
    "Traceback",
    "by_traceback",
    "call_tree",
    "check_key_type",
    "diff",
    "frames_key",
    "group",
    "sample_groups",
    "source_line",
    "zero",
]

#: Key types of :func:`group` (tracemalloc's three, plus ``'function'``).
KEY_TYPES = ("traceback", "lineno", "filename", "function")

_UNKNOWN_FRAME = ("<unknown>", 0)
_get_frames = itemgetter(2)
_get_size = itemgetter(1)


# ---------------------------------------------------------------------------------------------
# Frames and tracebacks (the keys of records). ``mprofile_ipy.model`` re-exports both: they
# live here so that this module sits below the model (model -> aggregate -> estimate).


@total_ordering
class Frame:
    """One frame of a traceback: ``filename``, ``lineno`` and, when recorded, ``name``
    (the function's qualified name) and ``firstlineno`` (its first line).

    Equality, hashing and ordering use ``(filename, lineno)`` only, as tracemalloc's.
    """

    __slots__ = ("_frame", "_key")

    def __init__(self, frame: tuple) -> None:
        if isinstance(frame, Frame):
            frame = frame._frame
        elif isinstance(frame, list):
            frame = tuple(frame)
        if not isinstance(frame, tuple) or not 2 <= len(frame) <= 4:
            raise TypeError(
                "a raw frame is a tuple (filename, lineno[, name[, firstlineno]]), "
                f"not {frame!r}"
            )
        self._frame = frame
        self._key = frame[:2]

    @property
    def filename(self) -> str:
        return self._frame[0]

    @property
    def lineno(self) -> int:
        return self._frame[1]

    @property
    def name(self) -> str | None:
        """The function's qualified name, or None if the tracer did not record it."""
        return self._frame[2] if len(self._frame) > 2 else None

    @property
    def firstlineno(self) -> int | None:
        """The function's first line, or None if the tracer did not record it."""
        return self._frame[3] if len(self._frame) > 3 else None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return self._key == other._key

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return self._key < other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno}"

    def __repr__(self) -> str:
        text = f"<Frame filename={self.filename!r} lineno={self.lineno!r}"
        if self.name is not None:
            text += f" name={self.name!r}"
        return text + ">"


def frames_key(frames: tuple) -> tuple:
    """The ``(filename, lineno)`` pairs of raw frames: what traceback equality looks at."""
    return tuple([f[:2] for f in frames])


@total_ordering
class Traceback(Sequence):
    """Sequence of :class:`Frame`, oldest first (as tracemalloc's since Python 3.7).

    ``frames`` are raw frames *most recent first*, as in raw traces; ``total_nframe`` is the
    depth of the stack before truncation (None when unknown).
    """

    __slots__ = ("_frames", "_total_nframe", "_key")

    def __init__(self, frames: Sequence[tuple], total_nframe: int | None = None) -> None:
        Sequence.__init__(self)
        self._frames = tuple(
            f if type(f) is tuple else Frame(f)._frame for f in reversed(frames)
        )
        self._total_nframe = total_nframe
        self._key: tuple | None = None

    def _get_key(self) -> tuple:
        key = self._key
        if key is None:
            key = self._key = frames_key(self._frames)
        return key

    @property
    def raw_frames(self) -> tuple:
        """The raw frames, most recent first (the order of raw traces)."""
        return self._frames[::-1]

    @property
    def total_nframe(self) -> int | None:
        return self._total_nframe

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return tuple(Frame(frame) for frame in self._frames[index])
        return Frame(self._frames[index])

    def __iter__(self) -> Iterator[Frame]:
        return (Frame(frame) for frame in self._frames)

    def __contains__(self, frame: object) -> bool:
        return isinstance(frame, Frame) and frame._key in self._get_key()

    def __hash__(self) -> int:
        return hash(self._get_key())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Traceback):
            return NotImplemented
        return self._get_key() == other._get_key()

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Traceback):
            return NotImplemented
        return self._get_key() < other._get_key()

    def __str__(self) -> str:
        # tracemalloc shows the oldest frame (for 'lineno' statistics, the only one).
        return str(self[0]) if self._frames else "<no frames>"

    def __repr__(self) -> str:
        text = f"<Traceback {tuple(self)}"
        if self._total_nframe is None:
            return text + ">"
        return text + f" total_nframe={self._total_nframe}>"

    def format(self, limit: int | None = None, most_recent_first: bool = False) -> list[str]:
        """Lines as in a Python traceback: ``  File "a.py", line 5`` then the source line.

        ``limit > 0`` keeps the ``limit`` most recent frames, ``limit < 0`` the ``-limit``
        oldest ones; source lines come from :mod:`linecache` (so IPython cells work too).
        """
        if limit is not None:
            frames = self._frames[-limit:] if limit > 0 else self._frames[:limit]
        else:
            frames = self._frames
        if most_recent_first:
            frames = frames[::-1]
        lines = []
        for frame in frames:
            filename, lineno = frame[0], frame[1]
            lines.append(f'  File "{filename}", line {lineno}')
            line = source_line(filename, lineno)
            if line:
                lines.append(f"    {line}")
        return lines


def _may_read(filename: str) -> bool:
    """Whether :mod:`linecache` may look ``filename`` up: it knows IPython cells, but must
    never open anything other than a regular file (a snapshot from elsewhere may name
    ``/dev/zero`` or a FIFO, which ``linecache`` would read forever or block on)."""
    if filename in linecache.cache:
        return True
    try:
        return stat.S_ISREG(os.stat(filename).st_mode)
    except ValueError:  # NUL in the name
        return False
    except OSError:  # missing: linecache may still find it (module globals, sys.path)
        return True


def source_lines(filename: str) -> list[str]:
    """The lines of ``filename`` (``[]`` when unknown); see :func:`_may_read`."""
    try:
        return linecache.getlines(filename) if _may_read(filename) else []
    except (ValueError, OSError):
        return []


def source_line(filename: str, lineno: int) -> str:
    """Line ``lineno`` of ``filename`` (stripped), or "" when unknown; see :func:`_may_read`."""
    try:
        return linecache.getline(filename, lineno).strip() if _may_read(filename) else ""
    except (ValueError, OSError):
        return ""


# ---------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class Totals:
    """Estimated bytes and allocations of a set of samples, with their variances.

    ``exact`` is True when every allocation was traced (the variances are then 0 and the
    relative errors 0.0). ``a + b`` adds two disjoint sets of samples (sampled
    independently, so their variances add); ``Totals()`` is the neutral element.
    """

    size: float = 0
    count: float = 0
    samples: int = 0
    size_var: float = 0.0
    count_var: float = 0.0
    exact: bool = True

    def __add__(self, other: Totals) -> Totals:
        if not isinstance(other, Totals):
            return NotImplemented
        return Totals(self.size + other.size, self.count + other.count,
                      self.samples + other.samples, self.size_var + other.size_var,
                      self.count_var + other.count_var, self.exact and other.exact)

    @property
    def empty(self) -> bool:
        """True when nothing was counted (no sample, no bytes, no allocation)."""
        return not (self.samples or self.size or self.count)

    @property
    def relative_error(self) -> float:
        """Relative standard error of ``size``: 0.0 when exact; from the variance when
        ``size > 0``; ``1/sqrt(samples)`` (``inf`` without samples) for a zero size."""
        if self.exact:
            return 0.0
        if self.size > 0:
            return estimate.relative_error_from_variance(self.size_var, self.size)
        return estimate.relative_error(self.samples, False)

    @property
    def count_relative_error(self) -> float:
        """Relative standard error of ``count`` (same rules as :attr:`relative_error`)."""
        if self.exact:
            return 0.0
        if self.count > 0:
            return estimate.relative_error_from_variance(self.count_var, self.count)
        return estimate.relative_error(self.samples, False)

    @property
    def size_ci95(self) -> tuple[float, float]:
        """95% confidence interval of ``size`` (normal approximation, clipped at 0)."""
        return estimate.confidence_interval(self.size, self.relative_error)

    @property
    def count_ci95(self) -> tuple[float, float]:
        """95% confidence interval of ``count`` (normal approximation, clipped at 0)."""
        return estimate.confidence_interval(self.count, self.count_relative_error)


_ZERO_EXACT = Totals()
_ZERO_SAMPLED = Totals(exact=False)


def zero(exact: bool) -> Totals:
    """Empty totals of an exact or a sampled snapshot."""
    return _ZERO_EXACT if exact else _ZERO_SAMPLED


def _acc(t: Totals) -> list:
    """A mutable accumulator of ``Totals`` (building frozen values per addition is slow)."""
    return [t.size, t.count, t.samples, t.size_var, t.count_var, t.exact]


def _acc_add(acc: list, t: Totals) -> None:
    acc[0] += t.size
    acc[1] += t.count
    acc[2] += t.samples
    acc[3] += t.size_var
    acc[4] += t.count_var
    acc[5] = acc[5] and t.exact


def _totals(acc: list) -> Totals:
    return Totals(*acc)


@dataclass(frozen=True, slots=True, eq=False)
class Record:
    """The allocations of one traceback (from :func:`by_traceback`) or one group.

    ``key`` is a :class:`Traceback` (key type ``'traceback'``), a :class:`Frame`
    (``'lineno'``; ``'function'``, whose frame has the function's first line when known),
    or a file name (``'filename'``). ``traceback`` is a representative full traceback: the
    record's own, or for a group its heaviest member's. ``live`` are the allocations alive
    at snapshot time, ``allocated`` everything allocated since start (zero when unknown).
    ``members`` are the per-traceback records a group sums (empty for a per-traceback
    record); with ``cumulative=True`` a member whose traceback holds the key twice (a
    recursive call) counts twice in the totals but appears once in ``members``.
    """

    key: Any
    traceback: Traceback
    live: Totals
    allocated: Totals
    members: tuple[Record, ...] = ()

    def __repr__(self) -> str:
        return (f"<Record key={self.key!s} size={self.live.size:.6g} "
                f"count={self.live.count:.6g} samples={self.live.samples}>")


@dataclass(frozen=True, slots=True, eq=False)
class DiffRecord:
    """A group's live allocations in a ``new`` and an ``old`` snapshot, and the change.

    ``size_diff_var``/``count_diff_var`` are the variances of the changes. Samples with the
    same traceback, domain and size in both snapshots are taken to be the same allocations
    (they cancel out); the others add their variance terms. For independent snapshots this
    matches the sum of both variances; for snapshots of one run it is far tighter.
    """

    key: Any
    traceback: Traceback
    new: Totals
    old: Totals
    size_diff_var: float = 0.0
    count_diff_var: float = 0.0
    members: tuple[DiffRecord, ...] = ()

    @property
    def size_diff(self) -> float:
        return self.new.size - self.old.size

    @property
    def count_diff(self) -> float:
        return self.new.count - self.old.count

    @property
    def size_diff_std_error(self) -> float:
        return math.sqrt(self.size_diff_var)

    @property
    def count_diff_std_error(self) -> float:
        return math.sqrt(self.count_diff_var)

    def __repr__(self) -> str:
        return f"<DiffRecord key={self.key!s} size_diff={self.size_diff:+.6g}>"


@dataclass(frozen=True, slots=True, eq=False)
class Node:
    """A node of the call tree: ``frame`` (None at the root), ``total`` (inclusive:
    everything allocated under this call), ``own`` (allocated by this frame itself, the
    innermost frame of the traceback) and ``children``, root first, largest first."""

    frame: Frame | None
    total: Totals
    own: Totals
    children: tuple[Node, ...] = field(default=())

    def walk(self) -> Iterator[tuple[int, Node]]:
        """``(depth, node)`` pairs, depth first, parents before children."""
        stack: list[tuple[int, Node]] = [(0, self)]
        while stack:
            depth, node = stack.pop()
            yield depth, node
            stack.extend((depth + 1, child) for child in reversed(node.children))


@dataclass(frozen=True, slots=True)
class SampleGroup:
    """Identical sampled allocations counted once: same frames object, ``total_nframe``,
    domain, allocator, thread and size. ``n`` is how many samples; ``live`` their totals."""

    frames: tuple
    total_nframe: int
    domain: int
    allocator: int
    thread_id: int
    size: int
    n: int
    live: Totals


# ---------------------------------------------------------------------------------------------
# The pass over traces


class SnapshotLike(Protocol):
    """What the aggregation reads of a ``Snapshot`` (``mprofile_ipy.model``)."""

    @property
    def trace_records(self) -> Sequence[tuple]: ...  # normalised 6-tuples, each once
    @property
    def trace_counts(self) -> Sequence[int] | None: ...  # multiplicities (None: all 1)
    @property
    def allocated_records(self) -> Sequence[tuple] | None: ...  # normalised 7-tuples
    @property
    def sample_rate(self) -> int: ...


def by_traceback(snapshot: SnapshotLike) -> list[Record]:
    """One :class:`Record` per distinct traceback of ``snapshot`` (live and allocated).

    The only pass over every trace in the package: the result is cached on the snapshot
    (``snapshot._records``), so every statistic, view and export of a snapshot shares it.
    Order: tracebacks in order of first appearance (live traces, then allocation totals).
    """
    cached = getattr(snapshot, "_records", None)
    if cached is not None:
        return cached
    records = _by_traceback(snapshot.trace_records, snapshot.trace_counts,
                            snapshot.allocated_records, snapshot.sample_rate)
    try:
        snapshot._records = records  # type: ignore[attr-defined]
    except AttributeError:  # a read-only snapshot-like object: no cache
        pass
    return records


def _live_sums(raw: Sequence[tuple], counts: Sequence[int] | None, rate: int) -> list[tuple]:
    """Sum raw traces per distinct frames tuple: ``(frames, total_nframe, size, count,
    samples, size_var, count_var)`` per frames object. ``counts`` are the multiplicities
    of the traces (None: one each); a counted trace costs the same as any other.

    Traces from the sampler (and from the loaders) share their frames objects, so they are
    keyed by identity, which costs no hashing of deep tuples; when most frames objects are
    distinct (hand-built traces), equal ones are first replaced by one of them (one hash
    per trace, as tracemalloc pays).
    """
    if not raw:
        return []
    frames_col = list(map(_get_frames, raw))
    keys: list[Any] = list(map(id, frames_col))
    distinct = Counter(keys)
    if len(distinct) > max(1000, len(raw) // 4):
        canonical: dict[tuple, tuple] = {}
        frames_col = [canonical.setdefault(frames, frames) for frames in frames_col]
        keys = list(map(id, frames_col))
        distinct = Counter(keys)
    first: dict[int, tuple] = {}
    for key, trace in zip(keys, raw, strict=True):
        if key not in first:
            first[key] = trace
    if counts is not None:
        return _counted_sums(raw, counts, keys, first, rate)
    samples = distinct
    sizes = map(_get_size, raw)
    if rate <= 1:
        size_sum = dict.fromkeys(samples, 0)
        for key, size in zip(keys, sizes, strict=True):
            size_sum[key] += size
        return [(first[k][2], first[k][3], size_sum[k], n, n, 0.0, 0.0)
                for k, n in samples.items()]
    size_sum = dict.fromkeys(samples, 0.0)
    count_sum = dict.fromkeys(samples, 0.0)
    svar_sum = dict.fromkeys(samples, 0.0)
    cvar_sum = dict.fromkeys(samples, 0.0)
    per_size: dict[int, tuple[float, float, float, float]] = {}
    for key, size in zip(keys, sizes, strict=True):
        terms = per_size.get(size)
        if terms is None:
            terms = per_size[size] = _terms(size, rate)
        size_sum[key] += terms[0]
        count_sum[key] += terms[1]
        svar_sum[key] += terms[2]
        cvar_sum[key] += terms[3]
    return [(first[k][2], first[k][3], size_sum[k], count_sum[k], n, svar_sum[k], cvar_sum[k])
            for k, n in samples.items()]


def _counted_sums(raw: Sequence[tuple], counts: Sequence[int], keys: list, first: dict,
                  rate: int) -> list[tuple]:
    """:func:`_live_sums` for traces with multiplicities (loaded pprof samples)."""
    sums: dict[int, list] = {k: [0, 0, 0, 0.0, 0.0] for k in first}
    exact = rate <= 1
    for key, trace, n in zip(keys, raw, counts, strict=True):
        entry = sums[key]
        size = trace[1]
        entry[2] += n
        if exact:
            entry[0] += n * size
            entry[1] += n
        else:
            terms = _terms(size, rate)
            entry[0] += n * terms[0]
            entry[1] += n * terms[1]
            entry[3] += n * terms[2]
            entry[4] += n * terms[3]
    return [(first[k][2], first[k][3], *sums[k]) for k in first]


def _terms(size: int, rate: int) -> tuple[float, float, float, float]:
    """One sample's bytes, count and their variance terms (see :mod:`estimate`)."""
    return (estimate.estimated_size(size, rate), estimate.estimated_count(size, rate),
            estimate.size_variance(size, rate), estimate.count_variance(size, rate))


def _allocated_totals(entry: tuple, rate: int) -> Totals:
    """Totals of one normalised allocation entry ``(frames, total_nframe, count, size,
    samples|None, size_var|None, domain|None)``; missing figures are approximated from the
    entry's average size (:func:`estimate.approx_variances`)."""
    _frames, _total, count, size, samples, size_var = entry[:6]
    if rate <= 1:
        return Totals(size, count, round(count), 0.0, 0.0, True)
    approx = None
    if samples is None:
        average = size / count if count > 0 else 0.0
        samples = max(1, round(count * estimate.sampling_probability(average, rate)))
    if size_var is None:
        approx = estimate.approx_variances(count, size, rate)
        size_var = approx[0]
    if approx is None:
        approx = estimate.approx_variances(count, size, rate)
    return Totals(size, count, samples, size_var, approx[1], False)


def _by_traceback(raw: Sequence[tuple], counts: Sequence[int] | None,
                  allocated: Sequence[tuple] | None, rate: int) -> list[Record]:
    exact = rate <= 1
    empty = zero(exact)
    # frames key -> [frames, total_nframe, live Totals, allocated Totals]
    merged: dict[tuple, list] = {}
    keys_of: dict[int, tuple] = {}

    def slot(frames: tuple, total_nframe: int | None) -> list:
        key = keys_of.get(id(frames))
        if key is None:
            key = frames_key(frames or (_UNKNOWN_FRAME,))
            keys_of[id(frames)] = key
        entry = merged.get(key)
        if entry is None:
            entry = merged[key] = [frames or (_UNKNOWN_FRAME,), total_nframe, empty, empty]
        return entry

    keep_alive = []  # frames whose id() is in keys_of stay alive while it is used
    for frames, total, size, count, n, svar, cvar in _live_sums(raw, counts, rate):
        keep_alive.append(frames)
        entry = slot(frames, total)
        entry[2] = entry[2] + Totals(size, count, n, svar, cvar, exact)
    for item in allocated or ():
        keep_alive.append(item[0])
        entry = slot(item[0], item[1])
        entry[3] = entry[3] + _allocated_totals(item, rate)
    records = []
    for frames, total, live, alloc in merged.values():
        traceback = Traceback(frames, total)
        records.append(Record(traceback, traceback, live, alloc))
    del keep_alive
    return records


def sample_groups(snapshot: SnapshotLike) -> list[SampleGroup]:
    """Identical samples of ``snapshot`` counted once, in order of first appearance.

    For exporters that keep per-allocation labels (pprof writes one sample per group with
    its size, thread, domain and allocator). Frames objects are compared by identity, as
    the sampler and the loaders share one per traceback.
    """
    rate = snapshot.sample_rate
    exact = rate <= 1
    counts: Counter[tuple] = Counter()
    frames_of: dict[int, tuple] = {}
    multiplicity = snapshot.trace_counts
    for i, trace in enumerate(snapshot.trace_records):
        frames = trace[2]
        frames_of[id(frames)] = frames
        counts[(id(frames), trace[3], trace[0], trace[4], trace[5], trace[1])] += (
            1 if multiplicity is None else multiplicity[i])
    out = []
    for (fid, total, domain, allocator, thread, size), n in counts.items():
        if exact:
            live = Totals(n * size, n, n, 0.0, 0.0, True)
        else:
            w = estimate.weight(size, rate)
            live = Totals(n * size * w, n * w, n, n * estimate.size_variance(size, rate),
                          n * estimate.count_variance(size, rate), False)
        out.append(SampleGroup(frames_of[fid], total, domain, allocator, thread, size, n, live))
    return out


# ---------------------------------------------------------------------------------------------
# Grouping


def check_key_type(key_type: str, cumulative: bool) -> None:
    """Raise ``ValueError`` for a key type :func:`group` does not know (tracemalloc's
    messages), or for ``cumulative`` with ``'traceback'``."""
    if key_type not in KEY_TYPES:
        raise ValueError(
            f"unknown key_type: {key_type!r}; use 'lineno', 'filename', 'function' "
            "or 'traceback'"
        )
    if cumulative and key_type == "traceback":
        raise ValueError(
            f"cumulative mode cannot be used with key type {key_type!r}; "
            "use 'lineno', 'filename' or 'function'"
        )


def _keys(frames: tuple, key_type: str, cumulative: bool) -> Iterator[tuple[Any, Any]]:
    """``(dict key, key value maker input)`` of a traceback's raw frames (oldest first
    in ``frames``, as ``Traceback._frames``); most recent first for cumulative modes."""
    if not frames:
        frames = (_UNKNOWN_FRAME,)
    chosen = reversed(frames) if cumulative else (frames[-1],)
    for frame in chosen:
        if key_type == "lineno":
            yield frame[:2], frame
        elif key_type == "filename":
            yield frame[0], frame[0]
        else:  # function
            name = frame[2] if len(frame) > 2 else None
            if name is None:
                yield (frame[0], None, frame[1]), frame
            else:
                yield (frame[0], name), frame


def _key_value(key_type: str, raw: Any) -> Any:
    if key_type == "filename":
        return raw
    if key_type == "lineno":
        return Frame(raw)
    name = raw[2] if len(raw) > 2 else None
    first = raw[3] if len(raw) > 3 else None
    if name is not None and first:
        return Frame((raw[0], first, name, first))
    return Frame(raw)


def _heaviest(members: Sequence[Any], weight) -> Any:
    best = members[0]
    best_weight = weight(best)
    for member in members[1:]:
        w = weight(member)
        if w > best_weight:
            best, best_weight = member, w
    return best


def _record_weight(record: Record) -> tuple[float, float]:
    return (record.live.size, record.allocated.size)


def group(records: Iterable[Record], key_type: str, cumulative: bool = False) -> list[Record]:
    """Group per-traceback ``records`` (from :func:`by_traceback`) by ``key_type``.

    ``'traceback'`` (full traceback), ``'lineno'`` (innermost frame), ``'filename'``,
    ``'function'`` (file and function name; frames without a name group by line).
    ``cumulative=True`` counts each record under every frame of its traceback, once per
    occurrence, as tracemalloc does. Largest live size first (then allocated size), ties in
    order of first appearance.
    """
    check_key_type(key_type, cumulative)
    acc: dict[Any, list] = {}  # dict key -> [key raw, live acc, allocated acc, members]
    for record in records:
        if key_type == "traceback":
            pairs: Iterable[tuple[Any, Any]] = ((record.key, record.key),)
        else:
            pairs = _keys(record.traceback._frames, key_type, cumulative)
        for dict_key, raw in pairs:
            entry = acc.get(dict_key)
            if entry is None:
                acc[dict_key] = [raw, _acc(record.live), _acc(record.allocated), [record]]
            else:
                _acc_add(entry[1], record.live)
                _acc_add(entry[2], record.allocated)
                if entry[3][-1] is not record:
                    entry[3].append(record)
    out = []
    for raw, live, alloc, members in acc.values():
        key = raw if key_type == "traceback" else _key_value(key_type, raw)
        out.append(Record(key, _heaviest(members, _record_weight).traceback, _totals(live),
                          _totals(alloc), tuple(members)))
    out.sort(key=_record_weight, reverse=True)
    return out


# ---------------------------------------------------------------------------------------------
# Differences


def _size_counts(snapshot: SnapshotLike) -> dict[tuple, Counter]:
    """Frames key -> Counter of (domain, size) of the live samples (cached per snapshot)."""
    cached = getattr(snapshot, "_size_counts", None)
    if cached is not None:
        return cached
    raw = snapshot.trace_records
    multiplicity = snapshot.trace_counts
    frames_of: dict[int, tuple] = {}
    by_id: dict[int, Counter] = {}
    if snapshot.sample_rate > 1:  # exact snapshots have no variance to compute
        frames_col = list(map(_get_frames, raw))
        ids = list(map(id, frames_col))
        frames_of = dict(zip(ids, frames_col, strict=True))
        triples: Counter = Counter()
        rows = zip(ids, map(itemgetter(0), raw), map(_get_size, raw), strict=True)
        if multiplicity is None:
            triples.update(rows)
        else:
            for row, n in zip(rows, multiplicity, strict=True):
                triples[row] += n
        for (fid, domain, size), n in triples.items():
            bag = by_id.get(fid)
            if bag is None:
                bag = by_id[fid] = Counter()
            bag[(domain, size)] = n
    out: dict[tuple, Counter] = {}
    for fid, bag in by_id.items():
        key = frames_key(frames_of[fid] or (_UNKNOWN_FRAME,))
        if key in out:
            out[key].update(bag)
        else:
            out[key] = bag
    try:
        snapshot._size_counts = out  # type: ignore[attr-defined]
    except AttributeError:
        pass
    return out


def _change_variances(new: Counter | None, new_rate: int, old: Counter | None,
                      old_rate: int, cache: dict) -> tuple[float, float]:
    """Variance of one traceback's change: the samples found in only one snapshot.
    ``cache`` maps (size, rate) to the variance terms of one sample."""
    size_var = count_var = 0.0
    for bag, other, rate in ((new, old, new_rate), (old, new, old_rate)):
        if not bag or rate <= 1:
            continue
        for (domain, size), n in bag.items():
            extra = n - (other.get((domain, size), 0) if other else 0)
            if extra > 0:
                terms = cache.get((size, rate))
                if terms is None:
                    terms = cache[(size, rate)] = (estimate.size_variance(size, rate),
                                                   estimate.count_variance(size, rate))
                size_var += extra * terms[0]
                count_var += extra * terms[1]
    return size_var, count_var


def diff(new: SnapshotLike, old: SnapshotLike, key_type: str,
         cumulative: bool = False, *, variances: bool = True) -> list[DiffRecord]:
    """Live allocations of ``new`` against ``old``, grouped by ``key_type``.

    Works across sample rates (both sides are unbiased estimates). Largest absolute size
    change first, then largest new size. See :class:`DiffRecord` for the variances;
    ``variances=False`` skips them (left 0.0), which saves a pass over the samples of both
    snapshots when only the estimates are wanted (``Snapshot.compare_to``).
    """
    check_key_type(key_type, cumulative)
    new_rate, old_rate = new.sample_rate, old.sample_rate
    new_counts: dict[tuple, Counter] = {}
    old_counts: dict[tuple, Counter] = {}
    if variances:
        new_counts, old_counts = _size_counts(new), _size_counts(old)
    cache: dict = {}
    new_by_key = {r.key: r for r in by_traceback(new) if r.live.samples}
    old_by_key = {r.key: r for r in by_traceback(old) if r.live.samples}
    new_zero, old_zero = zero(new_rate <= 1), zero(old_rate <= 1)
    per_tb: list[DiffRecord] = []
    for key in [*new_by_key, *(k for k in old_by_key if k not in new_by_key)]:
        a, b = new_by_key.get(key), old_by_key.get(key)
        svar = cvar = 0.0
        if variances:
            fkey = frames_key(key.raw_frames or (_UNKNOWN_FRAME,))
            svar, cvar = _change_variances(new_counts.get(fkey), new_rate,
                                           old_counts.get(fkey), old_rate, cache)
        per_tb.append(DiffRecord(key, (a or b).traceback,  # type: ignore[union-attr]
                                 a.live if a else new_zero, b.live if b else old_zero,
                                 svar, cvar))
    if key_type == "traceback":
        out = per_tb
    else:
        acc: dict[Any, list] = {}
        for d in per_tb:
            for dict_key, raw in _keys(d.traceback._frames, key_type, cumulative):
                entry = acc.get(dict_key)
                if entry is None:
                    acc[dict_key] = [raw, _acc(d.new), _acc(d.old), d.size_diff_var,
                                     d.count_diff_var, [d]]
                else:
                    _acc_add(entry[1], d.new)
                    _acc_add(entry[2], d.old)
                    entry[3] += d.size_diff_var
                    entry[4] += d.count_diff_var
                    if entry[5][-1] is not d:
                        entry[5].append(d)
        out = [
            DiffRecord(_key_value(key_type, raw),
                       _heaviest(members, lambda m: (m.new.size, m.old.size)).traceback,
                       _totals(n), _totals(o), sv, cv, tuple(members))
            for raw, n, o, sv, cv, members in acc.values()
        ]
    out.sort(key=lambda d: (abs(d.size_diff), d.new.size), reverse=True)
    return out


# ---------------------------------------------------------------------------------------------
# Call tree


def call_tree(records: Iterable[Record], which: str = "live") -> Node:
    """The call tree of per-traceback ``records``, root first (for flame graphs).

    ``which`` picks the ``'live'`` or the ``'allocated'`` totals. Children are keyed by
    :class:`Frame` (file and line) and sorted largest first; a node's ``total`` includes
    its children, its ``own`` is what tracebacks ending at it hold.
    """
    if which not in ("live", "allocated"):
        raise ValueError(f"which must be 'live' or 'allocated', not {which!r}")
    exact = True
    # mutable node: [frame raw, total, own, children dict]
    root: list = [None, Totals(), Totals(), {}]
    for record in records:
        totals = record.live if which == "live" else record.allocated
        exact = exact and totals.exact
        if totals.empty:
            continue
        node = root
        node[1] = node[1] + totals
        for frame in record.traceback._frames or (_UNKNOWN_FRAME,):
            child = node[3].get(frame[:2])
            if child is None:
                child = node[3][frame[:2]] = [frame, Totals(exact=totals.exact),
                                              Totals(exact=totals.exact), {}]
            child[1] = child[1] + totals
            node = child
        node[2] = node[2] + totals
    if not exact:
        root[1] = Totals(root[1].size, root[1].count, root[1].samples, root[1].size_var,
                         root[1].count_var, False)
        root[2] = zero(False)
    # Freeze bottom-up without recursion (tracebacks may be 1024 frames deep).
    order: list[list] = []
    stack = [root]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node[3].values())
    frozen: dict[int, Node] = {}
    for node in reversed(order):
        children = sorted((frozen.pop(id(c)) for c in node[3].values()),
                          key=lambda n: n.total.size, reverse=True)
        frozen[id(node)] = Node(Frame(node[0]) if node[0] is not None else None,
                                node[1], node[2], tuple(children))
    return frozen[id(root)]
