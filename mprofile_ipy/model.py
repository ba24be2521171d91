"""The snapshot model: tracemalloc's classes, extended with sampling estimates.

``Snapshot``, ``Trace``, ``Traceback``, ``Frame``, ``Statistic``, ``StatisticDiff``,
``Filter`` and ``DomainFilter`` behave as :mod:`tracemalloc`'s do (constructors, attributes,
``str``/``repr``, ordering, grouping and filtering); a snapshot taken with ``sample_rate <= 1``
gives exactly tracemalloc's answers. With ``sample_rate > 1`` every figure is an unbiased
estimate that sums per-sample weights (:mod:`mprofile_ipy.estimate`). No dependency on the
sampler, IPython, pandas or numpy.

Invariants:

- A raw trace is ``(domain, size, frames, total_nframe[, allocator[, thread_id]])``; ``size``
  is the real size in bytes of one *sampled* allocation, never scaled.
- Raw ``frames`` are most recent first, as tracemalloc's; ``Traceback`` stores and iterates
  them oldest first. A raw frame is ``(filename, lineno[, name[, firstlineno]])``.
- ``Frame`` and ``Traceback`` compare, hash and sort on ``(filename, lineno)`` only.
- ``Statistic.size``/``.count`` are rounded estimates (ints); ``.size_estimate`` and
  ``.count_estimate`` keep the unrounded floats.
- Objects are built only when looked at: ``statistics()`` sums raw tuples per distinct
  traceback object once (cached), then groups those few sums.
"""

from __future__ import annotations

import fnmatch
import linecache
import os.path
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from enum import IntEnum
from functools import total_ordering
from operator import itemgetter
from typing import IO, Any

from . import estimate
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

_KEY_TYPES = ("traceback", "filename", "lineno")
_get_size = itemgetter(1)
_get_frames = itemgetter(2)
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


def _frames_key(frames: tuple) -> tuple:
    """The ``(filename, lineno)`` pairs of raw frames: what equality looks at."""
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
            key = self._key = _frames_key(self._frames)
        return key

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
            line = linecache.getline(filename, lineno).strip()
            if line:
                lines.append(f"    {line}")
        return lines


# ---------------------------------------------------------------------------------------------
# Traces


class Trace:
    """One traced (exact mode) or sampled allocation still alive at snapshot time.

    ``size`` is the real size of this allocation; ``weight`` the number of allocations it
    stands for (1.0 in exact mode), ``estimated_size`` = ``size * weight`` the bytes.
    """

    __slots__ = ("_trace", "_sample_rate")

    def __init__(self, trace: tuple, sample_rate: int = 1) -> None:
        self._trace = trace
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
        code = self._trace[4] if len(self._trace) > 4 else Allocator.MEM
        try:
            return Allocator(code)
        except ValueError:
            return code

    @property
    def thread_id(self) -> int:
        return self._trace[5] if len(self._trace) > 5 else 0

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    @property
    def weight(self) -> float:
        return estimate.weight(self._trace[1], self._sample_rate)

    @property
    def estimated_size(self) -> float:
        return self._trace[1] * self.weight

    @property
    def estimated_count(self) -> float:
        return self.weight

    def _key(self) -> tuple:
        t = self._trace
        return (t[0], t[1], _frames_key(t[2]), t[3], int(self.allocator), self.thread_id,
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


class _Traces(Sequence):
    """Read-only sequence of :class:`Trace`, built on access from the raw tuples."""

    def __init__(self, traces: list[tuple], sample_rate: int = 1) -> None:
        Sequence.__init__(self)
        self._traces = traces
        self._sample_rate = sample_rate

    def __len__(self) -> int:
        return len(self._traces)

    def __getitem__(self, index):  # type: ignore[override]
        rate = self._sample_rate
        if isinstance(index, slice):
            return tuple(Trace(trace, rate) for trace in self._traces[index])
        return Trace(self._traces[index], rate)

    def __iter__(self) -> Iterator[Trace]:
        rate = self._sample_rate
        return (Trace(trace, rate) for trace in self._traces)

    def __contains__(self, trace: object) -> bool:
        if not isinstance(trace, Trace):
            return False
        if trace._sample_rate == self._sample_rate and trace._trace in self._traces:
            return True
        return any(trace == other for other in self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Traces):
            return NotImplemented
        return self._traces == other._traces and self._sample_rate == other._sample_rate

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

# Per distinct frames object: [frames, size_estimate, count_estimate, samples, size_variance].
_Sums = list


class Snapshot:
    """Allocations alive at one moment: tracemalloc's ``Snapshot`` plus estimates.

    ``traces`` are raw traces (see the module doc); ``sample_rate`` the sampler's mean bytes
    between samples (int or size string; ``<= 1`` means exact). ``allocated`` holds totals
    since start per traceback, freed allocations included: raw tuples
    ``(frames, total_nframe, count_estimate, size_estimate[, samples[, size_variance[,
    domain]]])``; None when not tracked. ``meta`` is a JSON-able dict about the run.
    """

    def __init__(
        self,
        traces: Iterable[tuple],
        traceback_limit: int,
        *,
        sample_rate: int | str = 1,
        allocated: Iterable[tuple] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        raw = list(traces)
        if raw and not (isinstance(raw[0], tuple) and 4 <= len(raw[0]) <= 6):
            raise TypeError(
                "traces must be raw trace tuples (domain, size, frames, total_nframe"
                f"[, allocator[, thread_id]]), not {type(raw[0]).__name__} {raw[0]!r:.80}"
            )
        rate = parse_size(sample_rate)
        self._sample_rate = rate
        self.traces = _Traces(raw, rate)
        self.traceback_limit = traceback_limit
        if allocated is not None:
            allocated = tuple(allocated)
            for entry in allocated[:1]:
                if not (isinstance(entry, tuple) and 4 <= len(entry) <= 7):
                    raise TypeError(
                        "allocated must hold tuples (frames, total_nframe, count_estimate, "
                        f"size_estimate[, samples[, size_variance[, domain]]]), not {entry!r:.80}"
                    )
        self._allocated: tuple | None = allocated
        if meta is not None and not isinstance(meta, dict):
            raise TypeError(f"meta must be a dict or None, not {type(meta).__name__}")
        self.meta: dict[str, Any] = dict(meta) if meta else {}
        self._trace_sums: list[_Sums] | None = None
        self._alloc_sums: list[_Sums] | None = None

    @classmethod
    def from_tracemalloc(cls, snapshot: Any) -> Snapshot:
        """An exact snapshot with the traces of a ``tracemalloc.Snapshot``."""
        return cls(snapshot.traces._traces, snapshot.traceback_limit)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_trace_sums"] = state["_alloc_sums"] = None
        return state

    def __repr__(self) -> str:
        mode = "exact" if self.is_exact else f"sample_rate={self._sample_rate}"
        return (f"<Snapshot traces={len(self.traces)} {mode} "
                f"traceback_limit={self.traceback_limit}>")

    # -- properties ---------------------------------------------------------------------------

    @property
    def raw_traces(self) -> Sequence[tuple]:
        """The raw trace tuples (``docs/architecture.md``), for exporters and storage that
        must not build a ``Trace`` per allocation. Read-only by convention."""
        return self.traces._traces

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
        """Raw allocation totals since start per traceback, or None when not tracked."""
        return self._allocated

    @property
    def samples(self) -> int:
        """Number of sampled allocations alive (every allocation, when exact)."""
        return len(self.raw_traces)

    @property
    def total_size(self) -> int:
        """Estimated bytes alive (exact when the snapshot is exact)."""
        return round(sum(s[1] for s in self._get_trace_sums()))

    @property
    def total_count(self) -> int:
        """Estimated number of allocations alive (exact when the snapshot is exact)."""
        return round(sum(s[2] for s in self._get_trace_sums()))

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
        allocated = self._allocated
        if filters:
            keep = _make_keep(filters)
            pure = all(type(f)._match in _PURE_MATCHES for f in filters)
            raw = _filter_raw(raw, keep, pure)
            if allocated is not None:
                allocated = tuple(
                    entry for entry in allocated
                    if keep((entry[6] if len(entry) > 6 else None, round(entry[3]),
                             entry[0], entry[1]))
                )
        else:
            raw = raw.copy()
        return Snapshot(raw, self.traceback_limit, sample_rate=self._sample_rate,
                        allocated=allocated, meta=self.meta)

    # -- grouping -----------------------------------------------------------------------------

    def _get_trace_sums(self) -> list[_Sums]:
        if self._trace_sums is None:
            self._trace_sums = _sum_traces(self.traces._traces, self._sample_rate)
        return self._trace_sums

    def _get_alloc_sums(self) -> list[_Sums]:
        if self._allocated is None:
            raise ValueError(
                "this snapshot has no allocation totals (allocated=None): only snapshots "
                "taken by the sampler, or built with allocated=..., have them"
            )
        if self._alloc_sums is None:
            self._alloc_sums = _sum_allocated(self._allocated, self._sample_rate)
        return self._alloc_sums

    def _group_by(self, key_type: str, cumulative: bool, allocated: bool = False
                  ) -> dict[Any, list]:
        """Group key -> [Traceback, size_est, count_est, samples, size_variance]."""
        if key_type not in _KEY_TYPES:
            raise ValueError(
                f"unknown key_type: {key_type!r}; use 'lineno', 'filename' or 'traceback'"
            )
        if cumulative and key_type == "traceback":
            raise ValueError(
                f"cumulative mode cannot be used with key type {key_type!r}; "
                "use 'lineno' or 'filename'"
            )
        sums = self._get_alloc_sums() if allocated else self._get_trace_sums()
        return _group(sums, key_type, cumulative)

    def _statistic(self, group: list, allocated: bool) -> Statistic:
        traceback, size, count, samples, variance = group
        exact = self.is_exact
        return Statistic(
            traceback, round(size), round(count),
            samples=samples, size_estimate=float(size), count_estimate=float(count),
            relative_error=self._rel_error(size, count, samples, variance, allocated),
            exact=exact,
        )

    def _rel_error(self, size: float, count: float, samples: int, variance: float | None,
                   allocated: bool) -> float:
        if self.is_exact:
            return 0.0
        if variance is None:  # allocation totals without a variance: approximate
            return estimate.group_relative_error(count, size, self._sample_rate)
        if size > 0:
            return estimate.relative_error_from_variance(variance, size)
        return estimate.relative_error(samples, False)

    def statistics(self, key_type: str, cumulative: bool = False) -> list[Statistic]:
        """Statistics of the live allocations grouped by ``key_type``, largest first.

        ``key_type`` is ``'lineno'`` (most recent frame), ``'filename'`` or ``'traceback'``.
        ``cumulative=True`` counts each trace under every frame of its traceback, as
        tracemalloc does (once per occurrence, so a recursive frame counts more than once).
        """
        groups = self._group_by(key_type, cumulative)
        stats = [self._statistic(group, False) for group in groups.values()]
        stats.sort(reverse=True, key=Statistic._sort_key)
        return stats

    def allocated_statistics(self, key_type: str, cumulative: bool = False) -> list[Statistic]:
        """Like :meth:`statistics` for everything allocated since start, freed included.

        Needs allocation totals (``allocated`` is not None). Their ``samples`` and
        ``relative_error`` are exact when the totals carry sample counts and variances, else
        approximated from each group's average size (see ``estimate.group_relative_error``).
        """
        groups = self._group_by(key_type, cumulative, allocated=True)
        stats = [self._statistic(group, True) for group in groups.values()]
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
        new_groups = self._group_by(key_type, cumulative)
        old_groups = old_snapshot._group_by(key_type, cumulative)
        exact = self.is_exact and old_snapshot.is_exact
        diffs = []
        for key, (traceback, size, count, samples, variance) in new_groups.items():
            old = old_groups.pop(key, None)
            old_size, old_count = (old[1], old[2]) if old is not None else (0, 0)
            new_size_int, new_count_int = round(size), round(count)
            diffs.append(StatisticDiff(
                traceback, new_size_int, new_size_int - round(old_size),
                new_count_int, new_count_int - round(old_count),
                samples=samples, size_estimate=float(size),
                size_diff_estimate=float(size - old_size), count_estimate=float(count),
                count_diff_estimate=float(count - old_count),
                relative_error=self._rel_error(size, count, samples, variance, False),
                exact=exact,
            ))
        for traceback, size, count, _samples, _variance in old_groups.values():
            diffs.append(StatisticDiff(
                traceback, 0, -round(size), 0, -round(count), samples=0,
                size_estimate=0.0, size_diff_estimate=-float(size), count_estimate=0.0,
                count_diff_estimate=-float(count), relative_error=0.0, exact=exact,
            ))
        diffs.sort(reverse=True, key=StatisticDiff._sort_key)
        return diffs


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


def _sum_traces(raw: list[tuple], sample_rate: int) -> list[_Sums]:
    """Sum raw traces per distinct frames tuple: the one pass over every trace.

    Each entry is ``[frames, size_estimate, count_estimate, samples, size_variance]``.
    Traces from the sampler (and from ``load``) share their frames objects, so they are
    keyed by identity, which costs no hashing of deep tuples; when most frames objects are
    distinct (hand-built traces), equal ones are first replaced by one of them (one hash
    per trace, as tracemalloc pays).
    Frames that differ only in ``name`` are merged later, by :func:`_group`.
    """
    if not raw:
        return []
    frames_col = list(map(_get_frames, raw))
    keys: list[Any] = list(map(id, frames_col))
    samples = Counter(keys)
    if len(samples) > max(1000, len(raw) // 4):
        canonical: dict[tuple, tuple] = {}
        frames_col = [canonical.setdefault(frames, frames) for frames in frames_col]
        keys = list(map(id, frames_col))
        samples = Counter(keys)
    frames_of = dict(zip(keys, frames_col, strict=True))
    sizes = map(_get_size, raw)
    if sample_rate <= 1:
        size_sum = dict.fromkeys(samples, 0)
        for key, size in zip(keys, sizes, strict=True):
            size_sum[key] += size
        return [[frames_of[k], size_sum[k], n, n, 0.0] for k, n in samples.items()]
    size_sum = dict.fromkeys(samples, 0.0)
    count_sum = dict.fromkeys(samples, 0.0)
    var_sum = dict.fromkeys(samples, 0.0)
    per_size: dict[int, tuple[float, float, float]] = {}
    for key, size in zip(keys, sizes, strict=True):
        terms = per_size.get(size)
        if terms is None:
            w = estimate.weight(size, sample_rate)
            terms = per_size[size] = (size * w, w, float(size) * size * w * (w - 1.0))
        size_sum[key] += terms[0]
        count_sum[key] += terms[1]
        var_sum[key] += terms[2]
    return [[frames_of[k], size_sum[k], count_sum[k], n, var_sum[k]]
            for k, n in samples.items()]


def _sum_allocated(allocated: tuple, sample_rate: int) -> list[_Sums]:
    """Allocation totals per distinct frames object, same layout as :func:`_sum_traces`.

    A missing sample count is estimated from the group's average size; a missing variance
    stays None (the relative error is then approximated from the totals).
    """
    sums: dict[int, _Sums] = {}
    for entry in allocated:
        frames, _total, count, size = entry[:4]
        if sample_rate <= 1:
            samples = round(count)
        elif len(entry) > 4 and entry[4] is not None:
            samples = entry[4]
        else:
            average = size / count if count > 0 else 0.0
            samples = max(1, round(count * estimate.sampling_probability(average, sample_rate)))
        variance = entry[5] if len(entry) > 5 else None
        if sample_rate <= 1:
            variance = 0.0
        old = sums.get(id(frames))
        if old is None:
            sums[id(frames)] = [frames, size, count, samples, variance]
        else:
            old[1] += size
            old[2] += count
            old[3] += samples
            old[4] = None if old[4] is None or variance is None else old[4] + variance
    return list(sums.values())


def _group(sums: Iterable[_Sums], key_type: str, cumulative: bool) -> dict[Any, list]:
    """Merge per-traceback sums into groups: key -> [Traceback, size, count, samples, var].

    Keys use ``(filename, lineno)`` only, so frames that differ in ``name`` merge, and the
    group's ``Traceback`` keeps the first frames seen.
    """
    groups: dict[Any, list] = {}

    def add(key: Any, make_frames, entry: _Sums) -> None:
        group = groups.get(key)
        if group is None:
            groups[key] = [make_frames, entry[1], entry[2], entry[3], entry[4]]
        else:
            group[1] += entry[1]
            group[2] += entry[2]
            group[3] += entry[3]
            group[4] = None if group[4] is None or entry[4] is None else group[4] + entry[4]

    for entry in sums:
        frames = entry[0] or (_UNKNOWN_FRAME,)
        if not cumulative:
            if key_type == "traceback":
                add(_frames_key(frames), frames, entry)
            elif key_type == "lineno":
                add(frames[0][:2], (frames[0],), entry)
            else:
                add(frames[0][0], ((frames[0][0], 0),), entry)
        elif key_type == "lineno":
            for frame in frames:
                add(frame[:2], (frame,), entry)
        else:
            for frame in frames:
                add(frame[0], ((frame[0], 0),), entry)
    for group in groups.values():
        group[0] = Traceback(group[0])
    return groups
