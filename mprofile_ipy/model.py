"""The snapshot model: tracemalloc's classes, extended with sampling estimates.

``Snapshot``, ``Trace``, ``Traceback``, ``Frame``, ``Statistic``, ``StatisticDiff``,
``Filter`` and ``DomainFilter`` behave as :mod:`tracemalloc`'s do (constructors, attributes,
``str``/``repr``, ordering, grouping and filtering); a snapshot taken with ``sample_rate <= 1``
gives exactly tracemalloc's answers. With ``sample_rate > 1`` every figure is an unbiased
estimate that sums per-sample weights (:mod:`mprofile_ipy.estimate`). No dependency on the
sampler, IPython, pandas or numpy.

Invariants (the frame order, units and estimate rules are in :mod:`mprofile_ipy.aggregate`):

- A raw trace given to ``Snapshot`` is ``(domain, size, frames, total_nframe[, allocator[,
  thread_id[, label[, process]]]])``; it is normalised once, when the snapshot is built, to
  the 6-tuple ``(domain, size, frames, total_nframe, allocator, thread_id)`` (``allocator``
  MEM and ``thread_id`` 0 when absent), or, when any trace carries a label or a process, to
  the 8-tuple ``(..., thread_id, label, process)`` (0 when absent): ``Snapshot.raw_traces``
  and every consumer read that one shape (fields 0 to 5 are where they always are).
  ``snapshot.traces`` keeps the tuples as given (tracemalloc equality).
- ``label`` is the thread label the sampler recorded with the allocation (0: none; a Dask
  worker labels the thread that runs a task with its key prefix); ``meta["labels"]`` names
  them (``{"1": "read_parquet"}``). ``process`` is an index into ``meta["processes"]`` (a
  list of ``{"label", "kind", "pid", "address"}``, written by
  :func:`mprofile_ipy.processes.merge`): which process of a merged snapshot allocated it.
  Both are dimensions of the snapshot, not of a traceback: statistics merge them (as
  tracemalloc would), :meth:`Snapshot.split` and :meth:`Snapshot.partition` separate them,
  and files and pprof profiles keep them.
- ``size`` is the real size in bytes of one *sampled* allocation, never scaled.
- Raw ``frames`` are most recent first, as tracemalloc's; ``Traceback`` stores and iterates
  them oldest first. A raw frame is ``(filename, lineno[, name[, firstlineno]])``.
- ``Statistic.size``/``.count`` are rounded estimates (ints); ``.size_estimate`` and
  ``.count_estimate`` keep the unrounded floats.
- All summing is :mod:`mprofile_ipy.aggregate`'s: ``statistics()``, ``compare_to()`` and
  ``allocated_statistics()`` format its records (built once per snapshot and cached).
"""

from __future__ import annotations

import fnmatch
import os.path
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from enum import IntEnum
from itertools import accumulate
from typing import IO, Any

from . import aggregate, estimate
from .aggregate import Frame, Traceback, frames_key
from .units import format_size_tracemalloc as _format_size
from .units import parse_size

__all__ = [
    "NATIVE_DOMAIN",
    "NUMPY_DOMAIN",
    "Allocator",
    "BaseFilter",
    "DomainFilter",
    "Filter",
    "Frame",
    "Snapshot",
    "Statistic",
    "StatisticDiff",
    "Trace",
    "Traceback",
]

#: NumPy's own tracemalloc domain for array data (its ``NPY_TRACE_DOMAIN``).
NUMPY_DOMAIN = 389047
#: Domain of ``malloc``/``mmap`` memory seen by native mode ("nat" in ASCII).
NATIVE_DOMAIN = 0x6E6174

_UNKNOWN_FRAME = ("<unknown>", 0)


class Allocator(IntEnum):
    """Which allocator made an allocation (the fifth field of a raw trace)."""

    RAW = 0
    MEM = 1
    OBJ = 2
    NUMPY = 3
    NATIVE = 4


# ---------------------------------------------------------------------------------------------
# Frames and tracebacks


# Frame and Traceback live in ``aggregate`` (below this module) and are re-exported here,
# under this module's name, so that ``mprofile_ipy.model.Frame`` stays their public home
# (pickles of statistics written before the move load too).
Frame.__module__ = Traceback.__module__ = __name__


# ---------------------------------------------------------------------------------------------
# Traces


_PAD = {4: (int(Allocator.MEM), 0), 5: (0,), 6: (), 7: (0,), 8: ()}
_WIDE_PAD = {4: (int(Allocator.MEM), 0, 0, 0), 5: (0, 0, 0), 6: (0, 0), 7: (0,), 8: ()}
#: Index of the label and the process in a normalised 8-field raw trace.
LABEL_FIELD, PROCESS_FIELD = 6, 7


def _normalise(trace: tuple) -> tuple:
    """One raw trace as the 6-tuple ``(domain, size, frames, total_nframe, allocator,
    thread_id)``; 4- and 5-tuples get allocator MEM and thread 0. A trace with a label (7
    fields) becomes the 8-tuple with process 0."""
    return trace + _PAD[len(trace)] if len(trace) not in (6, 8) else trace


def _normalise_wide(trace: tuple) -> tuple:
    """One raw trace as the 8-tuple ``(..., thread_id, label, process)``."""
    return trace + _WIDE_PAD[len(trace)] if len(trace) != 8 else trace


def _check_traces(raw: list) -> set[int]:
    """The lengths of the raw traces; ``TypeError`` unless every item is a raw trace tuple
    of 4 to 8 fields."""
    lengths: set[int] = set()
    if all(issubclass(t, tuple) for t in set(map(type, raw))):
        lengths = set(map(len, raw))
        if lengths <= {4, 5, 6, 7, 8}:
            return lengths
    bad = next(t for t in raw if not isinstance(t, tuple) or not 4 <= len(t) <= 8)
    raise TypeError(
        "traces must be raw trace tuples (domain, size, frames, total_nframe"
        f"[, allocator[, thread_id[, label[, process]]]]), not {type(bad).__name__} "
        f"{bad!r:.80}"
    )


def _normalised_records(traces: list) -> list:
    """The traces in their one normalised shape (the list itself when already there)."""
    lengths = _check_traces(traces)
    if not lengths or max(lengths) <= 6:
        return traces if lengths <= {6} else list(map(_normalise, traces))
    return traces if lengths == {8} else list(map(_normalise_wide, traces))


class Trace:
    """One traced (exact mode) or sampled allocation still alive at snapshot time.

    ``size`` is the real size of this allocation; ``weight`` the number of allocations it
    stands for (1.0 in exact mode), ``estimated_size`` = ``size * weight`` the bytes.
    """

    __slots__ = ("_trace", "_sample_rate")

    def __init__(self, trace: tuple, sample_rate: int = 1) -> None:
        self._trace = _normalise(trace)
        self._sample_rate = sample_rate

    @property
    def domain(self) -> int:
        return self._trace[0]

    @property
    def size(self) -> int:
        return self._trace[1]

    @property
    def traceback(self) -> Traceback:
        return Traceback(self._trace[2], self._trace[3])

    @property
    def total_nframe(self) -> int:
        return self._trace[3]

    @property
    def allocator(self) -> int:
        """An :class:`Allocator` (a plain int for codes this version does not know)."""
        code = self._trace[4]
        try:
            return Allocator(code)
        except ValueError:
            return code

    @property
    def thread_id(self) -> int:
        return self._trace[5]

    @property
    def label(self) -> int:
        """The thread label recorded with the allocation (0: none); the snapshot's
        ``meta["labels"]`` names it (see :meth:`Snapshot.label_name`)."""
        return self._trace[6] if len(self._trace) > 6 else 0

    @property
    def process(self) -> int:
        """Which process of a merged snapshot made the allocation: an index into its
        ``meta["processes"]`` (0 for a snapshot of one process)."""
        return self._trace[7] if len(self._trace) > 7 else 0

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    @property
    def weight(self) -> float:
        return estimate.weight(self._trace[1], self._sample_rate)

    @property
    def estimated_size(self) -> float:
        return estimate.estimated_size(self._trace[1], self._sample_rate)

    @property
    def estimated_count(self) -> float:
        return self.weight

    def _key(self) -> tuple:
        t = self._trace
        return (t[0], t[1], frames_key(t[2]), t[3], t[4], t[5], self.label, self.process,
                self._sample_rate if self._sample_rate > 1 else 1)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Trace):
            return NotImplemented
        if self._trace == other._trace and self._sample_rate == other._sample_rate:
            return True
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        text = f"{self.traceback}: {_format_size(self.size, False)}"
        if self._sample_rate > 1:
            text += f" (weight {self.weight:.4g})"
        return text

    def __repr__(self) -> str:
        weight = f" weight={self.weight:.6g}," if self._sample_rate > 1 else ""
        return (f"<Trace domain={self.domain} size={_format_size(self.size, False)},{weight} "
                f"traceback={self.traceback!r}>")


def _check_counts(counts: list, n: int) -> list[int] | None:
    """Multiplicities of ``n`` raw traces: positive ints (None when all are 1)."""
    if len(counts) != n:
        raise ValueError(f"counts must hold one number per trace ({n}), not {len(counts)}")
    if set(map(type, counts)) - {int} or (counts and min(counts) < 1):
        raise ValueError("counts must be positive ints (how many allocations each trace is)")
    return None if not counts or max(counts) == 1 else counts


class _Repeated(Sequence):
    """``records[i]`` repeated ``counts[i]`` times, without building the long list."""

    def __init__(self, records: list[tuple], counts: list[int]) -> None:
        self._records = records
        self._counts = counts
        self._ends: list[int] | None = None

    def __len__(self) -> int:
        return sum(self._counts)

    def __iter__(self) -> Iterator[tuple]:
        for record, n in zip(self._records, self._counts, strict=True):
            for _ in range(n):
                yield record

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        total = len(self)
        if index < 0:
            index += total
        if not 0 <= index < total:
            raise IndexError("trace index out of range")
        if self._ends is None:
            self._ends = list(accumulate(self._counts))
        return self._records[bisect_right(self._ends, index)]


class _Traces(Sequence):
    """Read-only sequence of :class:`Trace`, built on access from the raw tuples.

    ``_traces`` are the tuples as given (what tracemalloc's ``_traces`` would hold),
    ``_records`` the same traces normalised (the very same list when all are 6-tuples),
    ``_counts`` how many identical allocations each stands for (None: one each).
    """

    _counts: list[int] | None = None  # instances pickled before counts existed

    def __init__(self, traces: list[tuple], sample_rate: int = 1,
                 records: list[tuple] | None = None, counts: list[int] | None = None) -> None:
        Sequence.__init__(self)
        self._traces = traces
        self._sample_rate = sample_rate
        if records is None:
            records = _normalised_records(traces)
        self._records = records
        self._counts = counts

    def _expanded(self) -> Sequence[tuple]:
        """The normalised traces, one per allocation (repeated lazily when counted)."""
        return self._records if self._counts is None else _Repeated(self._records, self._counts)

    def __len__(self) -> int:
        return len(self._traces) if self._counts is None else sum(self._counts)

    def __getitem__(self, index):  # type: ignore[override]
        rate = self._sample_rate
        if isinstance(index, slice):
            return tuple(Trace(trace, rate) for trace in self._expanded()[index])
        return Trace(self._expanded()[index], rate)

    def __iter__(self) -> Iterator[Trace]:
        rate = self._sample_rate
        return (Trace(trace, rate) for trace in self._expanded())

    def __contains__(self, trace: object) -> bool:
        if not isinstance(trace, Trace):
            return False
        if trace._sample_rate == self._sample_rate and trace._trace in self._records:
            return True
        return any(trace == other for other in self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Traces):
            return NotImplemented
        return (self._traces == other._traces and self._sample_rate == other._sample_rate
                and self._counts == other._counts)

    def __repr__(self) -> str:
        return f"<Traces len={len(self)}>"


# ---------------------------------------------------------------------------------------------
# Statistics


class Statistic:
    """Memory of one group of allocations (a line, a file or a traceback).

    ``size`` and ``count`` are the estimated bytes and allocations rounded to ints (exact
    values when the snapshot is exact); ``size_estimate``/``count_estimate`` are unrounded.
    ``samples`` is how many sampled allocations back the group and ``relative_error`` the
    relative standard error of ``size`` (0.0 when exact; about ``1/sqrt(samples)`` for small
    allocations, 0 for allocations far larger than the sample rate).
    """

    __slots__ = ("traceback", "size", "count", "samples", "size_estimate", "count_estimate",
                 "relative_error", "is_exact")

    def __init__(
        self,
        traceback: Traceback,
        size: int,
        count: int,
        *,
        samples: int | None = None,
        size_estimate: float | None = None,
        count_estimate: float | None = None,
        relative_error: float | None = None,
        exact: bool = True,
    ) -> None:
        self.traceback = traceback
        self.size = size
        self.count = count
        self.samples = count if samples is None else samples
        self.size_estimate = float(size) if size_estimate is None else size_estimate
        self.count_estimate = float(count) if count_estimate is None else count_estimate
        if relative_error is None:
            relative_error = estimate.relative_error(self.samples, exact)
        self.relative_error = relative_error
        self.is_exact = exact

    def __hash__(self) -> int:
        return hash((self.traceback, self.size, self.count, self.samples))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Statistic):
            return NotImplemented
        return (self.traceback == other.traceback and self.size == other.size
                and self.count == other.count and self.samples == other.samples)

    def _uncertainty(self) -> str:
        return _uncertainty_text(self.samples, self.relative_error, self.is_exact)

    def __str__(self) -> str:
        text = (f"{self.traceback}: size={_format_size(self.size, False)}, "
                f"count={self.count:d}")
        if self.count:
            average = _average(self.size, self.count, self.size_estimate, self.count_estimate)
            text += f", average={_format_size(average, False)}"
        return text + self._uncertainty()

    def __repr__(self) -> str:
        text = f"<Statistic traceback={self.traceback!r} size={self.size:d} count={self.count:d}"
        if not self.is_exact:
            text += f" samples={self.samples:d}"
        return text + ">"

    def _sort_key(self) -> tuple:
        return (self.size_estimate, self.count_estimate, self.traceback)


class StatisticDiff:
    """Difference of one group between an old and a new snapshot.

    ``size``/``count`` are the new values, ``size_diff``/``count_diff`` the changes (rounded
    estimates; ``*_estimate`` attributes keep the floats). ``samples`` and
    ``relative_error`` describe the new ``size``.
    """

    __slots__ = ("traceback", "size", "size_diff", "count", "count_diff", "samples",
                 "size_estimate", "size_diff_estimate", "count_estimate",
                 "count_diff_estimate", "relative_error", "is_exact")

    def __init__(
        self,
        traceback: Traceback,
        size: int,
        size_diff: int,
        count: int,
        count_diff: int,
        *,
        samples: int | None = None,
        size_estimate: float | None = None,
        size_diff_estimate: float | None = None,
        count_estimate: float | None = None,
        count_diff_estimate: float | None = None,
        relative_error: float | None = None,
        exact: bool = True,
    ) -> None:
        self.traceback = traceback
        self.size = size
        self.size_diff = size_diff
        self.count = count
        self.count_diff = count_diff
        self.samples = count if samples is None else samples
        self.size_estimate = float(size) if size_estimate is None else size_estimate
        self.size_diff_estimate = (
            float(size_diff) if size_diff_estimate is None else size_diff_estimate
        )
        self.count_estimate = float(count) if count_estimate is None else count_estimate
        self.count_diff_estimate = (
            float(count_diff) if count_diff_estimate is None else count_diff_estimate
        )
        if relative_error is None:
            relative_error = estimate.relative_error(self.samples, exact) if self.size else 0.0
        self.relative_error = relative_error
        self.is_exact = exact

    def __hash__(self) -> int:
        return hash((self.traceback, self.size, self.size_diff, self.count, self.count_diff))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StatisticDiff):
            return NotImplemented
        return (self.traceback == other.traceback and self.size == other.size
                and self.size_diff == other.size_diff and self.count == other.count
                and self.count_diff == other.count_diff and self.samples == other.samples)

    def __str__(self) -> str:
        text = (f"{self.traceback}: size={_format_size(self.size, False)} "
                f"({_format_size(self.size_diff, True)}), "
                f"count={self.count:d} ({self.count_diff:+d})")
        if self.count:
            average = _average(self.size, self.count, self.size_estimate, self.count_estimate)
            text += f", average={_format_size(average, False)}"
        return text + _uncertainty_text(self.samples, self.relative_error, self.is_exact)

    def __repr__(self) -> str:
        text = (f"<StatisticDiff traceback={self.traceback!r} size={self.size:d} "
                f"({self.size_diff:+d}) count={self.count:d} ({self.count_diff:+d})")
        if not self.is_exact:
            text += f" samples={self.samples:d}"
        return text + ">"

    def _sort_key(self) -> tuple:
        return (abs(self.size_diff_estimate), self.size_estimate,
                abs(self.count_diff_estimate), self.count_estimate, self.traceback)


def _average(size: int, count: int, size_estimate: float, count_estimate: float) -> float:
    """Average bytes per allocation, from the unrounded estimates when they are usable."""
    return size_estimate / count_estimate if count_estimate > 0 else size / count


def _uncertainty_text(samples: int, rel_error: float, exact: bool) -> str:
    """``", samples=12 (±29%)"`` for sampled statistics, nothing for exact ones."""
    if exact:
        return ""
    return f", samples={samples:d} (±{rel_error * 100:.0f}%)"


# ---------------------------------------------------------------------------------------------
# Filters


def _normalize_filename(filename: str) -> str:
    filename = os.path.normcase(filename)
    if filename.endswith(".pyc"):
        filename = filename[:-1]
    return filename


class BaseFilter:
    """Base of trace filters: ``inclusive`` says whether matching traces are kept."""

    def __init__(self, inclusive: bool) -> None:
        self.inclusive = inclusive

    def _match(self, trace: tuple) -> bool:
        """Whether the raw ``trace`` passes this filter (already inverted if exclusive)."""
        raise NotImplementedError


class Filter(BaseFilter):
    """Keep (``inclusive``) or drop traces by file name pattern, line and domain.

    ``filename_pattern`` is an :mod:`fnmatch` pattern (``.pyc`` read as ``.py``);
    ``lineno=None`` matches every line; ``all_frames`` checks every frame instead of only
    the most recent one; ``domain=None`` matches every domain. Same semantics as
    ``tracemalloc.Filter``.
    """

    def __init__(
        self,
        inclusive: bool,
        filename_pattern: str,
        lineno: int | None = None,
        all_frames: bool = False,
        domain: int | None = None,
    ) -> None:
        super().__init__(inclusive)
        if not isinstance(filename_pattern, str):
            raise TypeError(
                f"filename_pattern must be a str, not {type(filename_pattern).__name__}"
            )
        self._filename_pattern = _normalize_filename(filename_pattern)
        self.lineno = lineno
        self.all_frames = all_frames
        self.domain = domain
        self._matched: dict[str, bool] = {}

    @property
    def filename_pattern(self) -> str:
        return self._filename_pattern

    def __repr__(self) -> str:
        return (f"Filter({self.inclusive!r}, {self._filename_pattern!r}, lineno={self.lineno!r}, "
                f"all_frames={self.all_frames!r}, domain={self.domain!r})")

    def _match_filename(self, filename: str) -> bool:
        matched = self._matched.get(filename)
        if matched is None:
            if len(self._matched) > 100_000:
                self._matched.clear()
            matched = fnmatch.fnmatch(_normalize_filename(filename), self._filename_pattern)
            self._matched[filename] = matched
        return matched

    def _match_frame_impl(self, filename: str, lineno: int) -> bool:
        if not self._match_filename(filename):
            return False
        return self.lineno is None or lineno == self.lineno

    def _match_frame(self, filename: str, lineno: int) -> bool:
        return self._match_frame_impl(filename, lineno) ^ (not self.inclusive)

    def _match_traceback(self, frames: Sequence[tuple]) -> bool:
        """``frames`` are raw frames, most recent first."""
        if self.all_frames:
            if any(self._match_frame_impl(f[0], f[1]) for f in frames):
                return bool(self.inclusive)
            return not self.inclusive
        first = frames[0] if frames else _UNKNOWN_FRAME
        return self._match_frame(first[0], first[1])

    def _match(self, trace: tuple) -> bool:
        res = self._match_traceback(trace[2])
        if self.domain is not None:
            if self.inclusive:
                return res and trace[0] == self.domain
            return res or trace[0] != self.domain
        return res


class DomainFilter(BaseFilter):
    """Keep (``inclusive``) or drop the traces of one address-space ``domain``."""

    def __init__(self, inclusive: bool, domain: int) -> None:
        super().__init__(inclusive)
        self._domain = domain

    @property
    def domain(self) -> int:
        return self._domain

    def __repr__(self) -> str:
        return f"DomainFilter({self.inclusive!r}, {self._domain!r})"

    def _match(self, trace: tuple) -> bool:
        return (trace[0] == self._domain) ^ (not self.inclusive)


_PURE_MATCHES = (Filter._match, DomainFilter._match)


def _make_keep(filters: list[BaseFilter]):
    """tracemalloc's rule: pass any inclusive filter (if there are some) and all exclusive."""
    include = [f for f in filters if f.inclusive]
    exclude = [f for f in filters if not f.inclusive]

    def keep(trace: tuple) -> bool:
        if include and not any(f._match(trace) for f in include):
            return False
        return not (exclude and any(not f._match(trace) for f in exclude))

    return keep


# ---------------------------------------------------------------------------------------------
# Snapshot

_ALLOC_PAD = {4: (None, None, None), 5: (None, None), 6: (None,), 7: (), 8: (0,), 9: ()}
_ALLOC_WIDE_PAD = {4: (None, None, None, 0, 0), 5: (None, None, 0, 0), 6: (None, 0, 0),
                   7: (0, 0), 8: (0,), 9: ()}


def _normalise_allocated(entry: tuple) -> tuple:
    """An allocation total as the 7-tuple ``(frames, total_nframe, count, size, samples,
    size_variance, domain)``, None where the entry had no such field (the 9-tuple with
    ``label, process`` for an entry that has a label)."""
    return entry + _ALLOC_PAD[len(entry)] if len(entry) not in (7, 9) else entry


def _normalised_allocated(entries: tuple) -> tuple:
    """Allocation totals in one shape: 7-tuples, or 9-tuples when any has a label."""
    if any(len(entry) > 7 for entry in entries):
        return tuple(entry + _ALLOC_WIDE_PAD[len(entry)] for entry in entries)
    return tuple(map(_normalise_allocated, entries))


def _field(record: tuple, index: int) -> int:
    return record[index] if len(record) > index else 0


class Snapshot:
    """Allocations alive at one moment: tracemalloc's ``Snapshot`` plus estimates.

    ``traces`` are raw traces (see the module doc); ``sample_rate`` the sampler's mean bytes
    between samples (int or size string; ``<= 1`` means exact). ``allocated`` holds totals
    since start per traceback, freed allocations included: raw tuples
    ``(frames, total_nframe, count_estimate, size_estimate[, samples[, size_variance[,
    domain[, label[, process]]]]])``; None when not tracked. ``meta`` is a JSON-able dict
    about the run.
    ``counts`` (optional) says how many identical sampled allocations each raw trace stands
    for, a multiplicity kept as a number (a pprof sample of 20 million allocations is one
    trace, not a list of 20 million); ``len(traces)`` and ``samples`` count them all.
    """

    def __init__(
        self,
        traces: Iterable[tuple],
        traceback_limit: int,
        *,
        sample_rate: int | str = 1,
        allocated: Iterable[tuple] | None = None,
        meta: dict[str, Any] | None = None,
        counts: Iterable[int] | None = None,
    ) -> None:
        raw = list(traces)
        if meta is not None and not isinstance(meta, dict):
            raise TypeError(f"meta must be a dict or None, not {type(meta).__name__}")
        if meta and ("trace_labels" in meta or "allocated_labels" in meta):
            raw, allocated, meta = _fold_labels(raw, allocated, meta)
        rate = parse_size(sample_rate)
        self._sample_rate = rate
        self.traces = _Traces(raw, rate,
                              counts=None if counts is None else _check_counts(list(counts),
                                                                               len(raw)))
        self.traceback_limit = traceback_limit
        alloc_records = None
        if allocated is not None:
            allocated = tuple(allocated)
            for entry in allocated:
                if not (isinstance(entry, tuple) and 4 <= len(entry) <= 9):
                    raise TypeError(
                        "allocated must hold tuples (frames, total_nframe, count_estimate, "
                        "size_estimate[, samples[, size_variance[, domain[, label[, "
                        f"process]]]]]), not {entry!r:.80}"
                    )
            alloc_records = _normalised_allocated(allocated)
        self._allocated: tuple | None = allocated
        self._alloc_records: tuple | None = alloc_records
        self.meta: dict[str, Any] = dict(meta) if meta else {}
        self._label_lists()
        self._records: list[aggregate.Record] | None = None  # aggregate.by_traceback's cache
        self._size_counts: dict | None = None  # aggregate.diff's cache

    @classmethod
    def from_tracemalloc(cls, snapshot: Any) -> Snapshot:
        """An exact snapshot with the traces of a ``tracemalloc.Snapshot``."""
        return cls(snapshot.traces._traces, snapshot.traceback_limit)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_records"] = state["_size_counts"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("_records", None)
        state.setdefault("_size_counts", None)
        state.pop("_trace_sums", None)  # caches of older versions
        state.pop("_alloc_sums", None)
        if "_alloc_records" not in state:
            allocated = state.get("_allocated")
            state["_alloc_records"] = (None if allocated is None
                                       else _normalised_allocated(allocated))
        self.__dict__.update(state)
        traces = self.traces
        if not hasattr(traces, "_records"):
            self.traces = _Traces(traces._traces, traces._sample_rate)

    def __repr__(self) -> str:
        mode = "exact" if self.is_exact else f"sample_rate={self._sample_rate}"
        return (f"<Snapshot traces={len(self.traces)} {mode} "
                f"traceback_limit={self.traceback_limit}>")

    # -- properties ---------------------------------------------------------------------------

    @property
    def raw_traces(self) -> Sequence[tuple]:
        """The raw traces, normalised: 6-tuples ``(domain, size, frames, total_nframe,
        allocator, thread_id)`` (``docs/architecture.md``), one per sampled allocation
        (repeated lazily for counted traces), for code that must not build a ``Trace`` per
        allocation. Read-only by convention; prefer :mod:`mprofile_ipy.aggregate`."""
        return self.traces._expanded()

    @property
    def trace_records(self) -> list[tuple]:
        """The normalised raw traces, each once; see :attr:`trace_counts`."""
        return self.traces._records

    @property
    def trace_counts(self) -> list[int] | None:
        """How many allocations each of :attr:`trace_records` stands for (None: one each)."""
        return self.traces._counts

    @property
    def sample_rate(self) -> int:
        """Mean bytes between samples; 0 or 1 when every allocation was traced."""
        return self._sample_rate

    @property
    def is_exact(self) -> bool:
        """True when every allocation was traced (weights are exactly 1)."""
        return self._sample_rate <= 1

    @property
    def allocated(self) -> tuple | None:
        """Raw allocation totals since start per traceback (as given), or None when not
        tracked."""
        return self._allocated

    @property
    def allocated_records(self) -> tuple | None:
        """The allocation totals normalised to 7-tuples ``(frames, total_nframe, count,
        size, samples, size_variance, domain)`` (None for a missing field; 9-tuples with
        ``label, process`` when some entry has them), or None."""
        return self._alloc_records

    @property
    def samples(self) -> int:
        """Number of sampled allocations alive (every allocation, when exact)."""
        return len(self.traces)

    @property
    def total_size(self) -> int:
        """Estimated bytes alive (exact when the snapshot is exact)."""
        return round(sum(r.live.size for r in self.records()))

    @property
    def total_count(self) -> int:
        """Estimated number of allocations alive (exact when the snapshot is exact)."""
        return round(sum(r.live.count for r in self.records()))

    def records(self) -> list[aggregate.Record]:
        """One :class:`~mprofile_ipy.aggregate.Record` per distinct traceback (cached):
        what every statistic, view and export of this snapshot is computed from."""
        return aggregate.by_traceback(self)

    # -- processes and labels -----------------------------------------------------------------

    def _label_lists(self) -> None:
        """Keep ``meta["trace_labels"]`` and ``meta["allocated_labels"]`` (the sampler's
        documented hand-off: one label per raw trace, one per allocation total) as copies of
        the traces' ``label`` fields, present only when some label is non-zero. Every
        snapshot made from this one (filters, parts, merges, files) gets them from its own
        traces, never a stale copy."""
        records = self.traces._records
        trace_labels = ([t[LABEL_FIELD] for t in records]
                        if records and len(records[0]) > 6 else [])
        alloc = self._alloc_records or ()
        alloc_labels = [e[7] for e in alloc] if alloc and len(alloc[0]) > 7 else []
        if any(trace_labels) or any(alloc_labels):
            self.meta["trace_labels"] = trace_labels or [0] * len(records)
            if self._alloc_records is not None:
                self.meta["allocated_labels"] = alloc_labels or [0] * len(alloc)

    @property
    def labels(self) -> dict[int, str]:
        """Names of the thread labels of this snapshot's traces (``meta["labels"]``; for a
        Dask worker, task key prefixes), by label id. Label 0 means "no label"."""
        table = self.meta.get("labels")
        if not isinstance(table, dict):
            return {}
        return {int(k): v for k, v in table.items()
                if isinstance(k, str) and k.isdigit() and isinstance(v, str)}

    def label_name(self, label: int) -> str:
        """The name of a label id: ``""`` for 0 (no label), ``"label N"`` when unnamed."""
        if not label:
            return ""
        return self.labels.get(label) or f"label {label}"

    @property
    def processes(self) -> list[dict[str, Any]]:
        """The processes a merged snapshot covers (``meta["processes"]``): one dict per
        process index, with ``label``, ``kind``, ``pid`` and ``address``. ``[]`` for the
        snapshot of one process."""
        table = self.meta.get("processes")
        return [dict(p) for p in table if isinstance(p, dict)] if isinstance(table, list) else []

    def process_info(self, index: int) -> dict[str, Any]:
        """The process of a process index (label, kind, pid, address), never failing:
        an index the table lacks is ``{"label": "process N", ...}``."""
        table = self.processes
        info = table[index] if 0 <= index < len(table) else {}
        return {"label": str(info.get("label") or f"process {index}"),
                "kind": str(info.get("kind") or ""), "pid": int(info.get("pid") or 0),
                "address": str(info.get("address") or "")}

    @property
    def has_dimensions(self) -> bool:
        """True when some trace or allocation total carries a label or a process index."""
        records = self.traces._records
        if records and len(records[0]) > 6 and any(
                t[LABEL_FIELD] or t[PROCESS_FIELD] for t in records):
            return True
        alloc = self._alloc_records
        return bool(alloc) and len(alloc[0]) > 7 and any(e[7] or e[8] for e in alloc)

    def partition(self, *fields: str) -> dict[tuple[int, ...], Snapshot]:
        """This snapshot cut along ``fields`` (``"label"``, ``"process"``, or both): one
        snapshot per distinct combination of ids, keyed by the tuple of ids, in order of
        first appearance. Each part keeps the traces as given, their counts, its share of
        the allocation totals and the meta, so every statistic of the parts adds up to the
        whole's. Exporters that keep per-sample labels (pprof) and views that group by
        process or task read this; it sums nothing."""
        index = {"label": (LABEL_FIELD, 7), "process": (PROCESS_FIELD, 8)}
        for name in fields:
            if name not in index:
                raise ValueError(f"cannot partition by {name!r}; use 'label' or 'process'")
        trace_at = [index[f][0] for f in fields]
        alloc_at = [index[f][1] for f in fields]
        given, records, counts = self.traces._traces, self.traces._records, self.traces._counts
        parts: dict[tuple[int, ...], tuple[list, list | None, list | None]] = {}
        for i, record in enumerate(records):
            key = tuple(_field(record, at) for at in trace_at)
            part = parts.get(key)
            if part is None:
                part = parts[key] = ([], None if counts is None else [],
                                     None if self._allocated is None else [])
            part[0].append(given[i])
            if counts is not None:
                part[1].append(counts[i])  # type: ignore[union-attr]
        if self._allocated is not None:
            for entry, norm in zip(self._allocated, self._alloc_records, strict=True):
                key = tuple(_field(norm, at) for at in alloc_at)
                part = parts.get(key)
                if part is None:
                    part = parts[key] = ([], None if counts is None else [], [])
                part[2].append(entry)  # type: ignore[union-attr]
        if not parts:
            parts[(0,) * len(fields)] = ([], None if counts is None else [],
                                         None if self._allocated is None else [])
        return {key: Snapshot(traces, self.traceback_limit, sample_rate=self._sample_rate,
                              allocated=allocated, meta=_own_meta(self.meta),
                              counts=part_counts or None)
                for key, (traces, part_counts, allocated) in parts.items()}

    def split(self, by: str) -> dict[str, Snapshot]:
        """One snapshot per process (``by="process"``, keyed by the process's label) or per
        task (``by="task"``: per thread label, keyed by its name, ``""`` for allocations
        made outside any task), largest first by memory still alive."""
        if by not in ("process", "task"):
            raise ValueError(f"split by 'process' or 'task', not {by!r}")
        field_name = "process" if by == "process" else "label"
        named: dict[str, list[Snapshot]] = {}
        for (key,), part in self.partition(field_name).items():
            name = (self.process_info(key)["label"] if by == "process"
                    else self.label_name(key))
            named.setdefault(name, []).append(part)
        out = {name: parts[0] if len(parts) == 1 else _concat(parts)
               for name, parts in named.items()}
        return dict(sorted(out.items(), key=lambda item: -item[1].total_size))

    # -- persistence and export ---------------------------------------------------------------

    def dump(self, filename: str | os.PathLike | IO[bytes]) -> None:
        """Write the snapshot to a file in mprofile-ipy's safe format (no pickle)."""
        from .storage import save_snapshot

        save_snapshot(self, filename)

    @staticmethod
    def load(filename: str | os.PathLike | IO[bytes]) -> Snapshot:
        """Read a snapshot written by :meth:`dump`; raises ``SnapshotFormatError``."""
        from .storage import load_snapshot

        return load_snapshot(filename)

    def to_pprof(self, path_or_file: Any, **kwargs: Any) -> Any:
        """Write a gzipped pprof heap profile (see ``mprofile_ipy.export.pprof``)."""
        from .export.pprof import write_pprof

        return write_pprof(self, path_or_file, **kwargs)

    def retainers(self, site: Any, **kwargs: Any) -> list[Any]:
        """Why the live sampled blocks of ``site`` are still alive: reference chains from
        names you know, and the command that frees each one.

        ``site`` is a :class:`Statistic` of this snapshot, a :class:`Traceback` or a
        ``(filename, lineno)`` pair; the blocks are the ones alive *now* (the profiler must
        be tracing). Keywords as :func:`mprofile_ipy.retainers.retainers_for_site`.
        """
        from .retainers import retainers_for_site

        return retainers_for_site(site, **kwargs)

    # -- filtering ----------------------------------------------------------------------------

    def filter_traces(self, filters: Iterable[BaseFilter]) -> Snapshot:
        """A new snapshot with the traces (and allocation totals) that pass ``filters``.

        tracemalloc's rule: a trace is kept if it matches at least one inclusive filter
        (when there are any) and no exclusive one. An empty list copies the snapshot.
        Allocation totals carry no domain unless given one: domain conditions drop them
        under inclusive filters and keep them under exclusive ones.
        """
        if not isinstance(filters, Iterable):
            raise TypeError(f"filters must be a list of filters, not {type(filters).__name__}")
        filters = list(filters)
        for trace_filter in filters:
            if not isinstance(trace_filter, BaseFilter):
                raise TypeError(
                    "filters must be Filter or DomainFilter instances, "
                    f"not {type(trace_filter).__name__}"
                )
        raw = self.traces._traces
        counts = self.traces._counts
        allocated = self._allocated
        if filters:
            keep = _make_keep(filters)
            pure = all(type(f)._match in _PURE_MATCHES for f in filters)
            if counts is None:
                raw = _filter_raw(raw, keep, pure)
            else:
                kept = [i for i, trace in enumerate(raw) if keep(trace)]
                raw, counts = [raw[i] for i in kept], [counts[i] for i in kept]
            if allocated is not None:
                allocated = tuple(
                    entry for entry, norm in zip(allocated, self._alloc_records, strict=True)
                    if keep((norm[6], round(norm[3]), norm[0], norm[1]))
                )
        else:
            raw = raw.copy()
        return Snapshot(raw, self.traceback_limit, sample_rate=self._sample_rate,
                        allocated=allocated, meta=_own_meta(self.meta), counts=counts)

    # -- grouping -----------------------------------------------------------------------------

    def _statistic(self, record: aggregate.Record, totals: aggregate.Totals,
                   key_type: str) -> Statistic:
        return Statistic(
            _statistic_traceback(record.key, key_type), round(totals.size),
            round(totals.count), samples=totals.samples,
            size_estimate=float(totals.size), count_estimate=float(totals.count),
            relative_error=totals.relative_error, exact=self.is_exact,
        )

    def _groups(self, key_type: str, cumulative: bool) -> list[aggregate.Record]:
        if key_type not in _KEY_TYPES:
            raise ValueError(
                f"unknown key_type: {key_type!r}; use 'lineno', 'filename' or 'traceback'"
            )
        aggregate.check_key_type(key_type, cumulative)
        return aggregate.group(self.records(), key_type, cumulative)

    def statistics(self, key_type: str, cumulative: bool = False) -> list[Statistic]:
        """Statistics of the live allocations grouped by ``key_type``, largest first.

        ``key_type`` is ``'lineno'`` (most recent frame), ``'filename'`` or ``'traceback'``.
        ``cumulative=True`` counts each trace under every frame of its traceback, as
        tracemalloc does (once per occurrence, so a recursive frame counts more than once).
        """
        stats = [self._statistic(r, r.live, key_type)
                 for r in self._groups(key_type, cumulative) if r.live.samples]
        stats.sort(reverse=True, key=Statistic._sort_key)
        return stats

    def allocated_statistics(self, key_type: str, cumulative: bool = False) -> list[Statistic]:
        """Like :meth:`statistics` for everything allocated since start, freed included.

        Needs allocation totals (``allocated`` is not None). Their ``samples`` and
        ``relative_error`` are exact when the totals carry sample counts and variances, else
        approximated from each entry's average size (see ``estimate.approx_variances``).
        """
        if self._allocated is None:
            raise ValueError(
                "this snapshot has no allocation totals (allocated=None): only snapshots "
                "taken by the sampler, or built with allocated=..., have them"
            )
        stats = [self._statistic(r, r.allocated, key_type)
                 for r in self._groups(key_type, cumulative) if not r.allocated.empty]
        stats.sort(reverse=True, key=Statistic._sort_key)
        return stats

    def compare_to(self, old_snapshot: Snapshot, key_type: str, cumulative: bool = False
                   ) -> list[StatisticDiff]:
        """Differences from ``old_snapshot`` grouped by ``key_type``, largest change first.

        Works across sample rates: both sides are unbiased estimates.
        """
        if not isinstance(old_snapshot, Snapshot):
            hint = ""
            if type(old_snapshot).__module__ == "tracemalloc":
                hint = "; convert it with Snapshot.from_tracemalloc()"
            raise TypeError(
                f"old_snapshot must be an mprofile_ipy Snapshot, not "
                f"{type(old_snapshot).__name__}{hint}"
            )
        self._groups(key_type, cumulative)  # tracemalloc's errors for bad key types
        exact = self.is_exact and old_snapshot.is_exact
        diffs = []
        for d in aggregate.diff(self, old_snapshot, key_type, cumulative, variances=False):
            new, old = d.new, d.old
            traceback = _statistic_traceback(d.key, key_type)
            if not new.samples:
                diffs.append(StatisticDiff(
                    traceback, 0, -round(old.size), 0, -round(old.count), samples=0,
                    size_estimate=0.0, size_diff_estimate=-float(old.size),
                    count_estimate=0.0, count_diff_estimate=-float(old.count),
                    relative_error=0.0, exact=exact,
                ))
                continue
            size, count = round(new.size), round(new.count)
            diffs.append(StatisticDiff(
                traceback, size, size - round(old.size), count, count - round(old.count),
                samples=new.samples, size_estimate=float(new.size),
                size_diff_estimate=float(new.size - old.size),
                count_estimate=float(new.count),
                count_diff_estimate=float(new.count - old.count),
                relative_error=new.relative_error, exact=exact,
            ))
        diffs.sort(reverse=True, key=StatisticDiff._sort_key)
        return diffs


_KEY_TYPES = ("traceback", "filename", "lineno")


def _fold_labels(raw: list[tuple], allocated: Iterable[tuple] | None, meta: dict
                 ) -> tuple[list[tuple], tuple | None, dict]:
    """The sampler's thread labels, handed over as lists parallel to the traces and the
    allocation totals (``meta["trace_labels"]``, ``meta["allocated_labels"]``), put where
    the model keeps them: each trace's and each total's ``label`` field. Traces that carry
    their labels already make the lists mere copies (dropped; the snapshot writes its own)."""
    meta = _own_meta(meta, derived=False)
    trace_labels = meta.get("trace_labels")
    alloc_labels = meta.get("allocated_labels")
    if any(len(t) > 6 for t in raw) or (
            allocated is not None and any(len(e) > 7 for e in allocated)):
        return raw, allocated, _own_meta(meta, derived=True)
    meta = _own_meta(meta, derived=True)
    if trace_labels is not None:
        if not isinstance(trace_labels, list) or len(trace_labels) != len(raw):
            raise ValueError("meta['trace_labels'] must hold one label per trace "
                             f"({len(raw)})")
        raw = [(*_normalise(t)[:6], label) for t, label in zip(raw, trace_labels, strict=True)]
    if allocated is not None:
        allocated = tuple(allocated)
        if alloc_labels is not None:
            if not isinstance(alloc_labels, list) or len(alloc_labels) != len(allocated):
                raise ValueError("meta['allocated_labels'] must hold one label per "
                                 f"allocation total ({len(allocated)})")
            allocated = tuple(
                (*_normalise_allocated(e)[:7], label)
                for e, label in zip(allocated, alloc_labels, strict=True))
    return raw, allocated, meta


_DERIVED_META = ("trace_labels", "allocated_labels")


def _own_meta(meta: dict, derived: bool = True) -> dict:
    """A copy of ``meta`` for another snapshot, without the label lists that describe only
    this snapshot's own traces (see :meth:`Snapshot._label_lists`)."""
    if not derived:
        return dict(meta)
    return {k: v for k, v in meta.items() if k not in _DERIVED_META}


def _concat(parts: list[Snapshot]) -> Snapshot:
    """Parts of one snapshot (same rate, limit and meta) put back together."""
    first = parts[0]
    traces = [t for p in parts for t in p.traces._traces]
    counted = any(p.trace_counts is not None for p in parts)
    counts = ([n for p in parts for n in (p.trace_counts or [1] * len(p.traces._traces))]
              if counted else None)
    allocated = (None if first.allocated is None
                 else [e for p in parts for e in (p.allocated or ())])
    return Snapshot(traces, first.traceback_limit, sample_rate=first.sample_rate,
                    allocated=allocated, meta=_own_meta(first.meta), counts=counts)


def _statistic_traceback(key: Any, key_type: str) -> Traceback:
    """The ``Statistic.traceback`` of a group key, as tracemalloc builds it: the frame for
    'lineno', ``(filename, 0)`` for 'filename', the frames (no total_nframe) for
    'traceback'."""
    if key_type == "lineno":
        return Traceback((key._frame,))
    if key_type == "filename":
        return Traceback(((key, 0),))
    return Traceback(key.raw_frames)


def _filter_raw(raw: list[tuple], keep, pure: bool) -> list[tuple]:
    """The raw traces that ``keep``; pure filters are decided once per (domain, traceback)."""
    if not pure:
        return [trace for trace in raw if keep(trace)]
    decided: dict[tuple[int, int], bool] = {}
    out = []
    append = out.append
    for trace in raw:
        key = (trace[0], id(trace[2]))
        verdict = decided.get(key)
        if verdict is None:
            verdict = decided[key] = keep(trace)
        if verdict:
            append(trace)
    return out
