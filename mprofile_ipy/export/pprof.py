"""Snapshots to and from pprof's gzipped ``profile.proto``, shaped like Go's heap profiles.

``write_pprof`` / ``to_profile`` turn a :class:`~mprofile_ipy.model.Snapshot` into a profile
with the sample types ``alloc_objects/count, alloc_space/bytes, inuse_objects/count,
inuse_space/bytes`` whose values are the snapshot's unbiased estimates, stacks leaf first.
``load_pprof`` reads such a file (or any pprof heap profile) back into a ``Snapshot`` whose
statistics match the values in the file; bad input raises :class:`PprofFormatError`.

How a snapshot is laid out (and why loading gives the same statistics back):

- One pprof sample per group of *sampled* allocations that share stack, thread, domain,
  allocator and size. Its labels: ``bytes`` (the size of each allocation, unit bytes, as Go
  writes it), ``samples`` (how many sampled allocations the group holds: the relative error
  of its estimate is about ``1/sqrt(samples)``), ``thread_id`` (and ``thread_name`` when the
  snapshot's meta knows it), ``domain`` (tracemalloc's domain number), ``allocator``
  (``raw``, ``mem``, ``obj``, ``numpy``, ``native``) and, when the stack was cut at
  ``max_frames``, ``total_nframe``.
- A snapshot with a process or task dimension (a merged one, :mod:`mprofile_ipy.processes`)
  is written part by part (``Snapshot.partition``), each sample labelled with ``task`` (the
  Dask task prefix that was running, absent outside tasks), ``process`` (the process's
  label), ``pid``, ``worker`` (a Dask worker's address) and ``process_kind`` (``kernel``,
  ``child``, ``worker``): ``go tool pprof -tagfocus=task=read_parquet`` or
  ``-tagfocus=worker=tcp://10.0.0.5:40331`` keeps that part, ``-tags`` lists the shares.
  Loading reads them back into the traces' ``label`` and ``process`` fields.
- ``period`` is the snapshot's ``sample_rate`` (1 when every allocation is traced). An
  allocation of ``s`` bytes stands for ``w = 1/(1-exp(-s/period))`` allocations, so the
  loader rebuilds ``samples`` raw traces of ``bytes`` bytes per pprof sample and the model
  gives them the very weights they had: the statistics of the loaded snapshot equal the
  original's. Profiles from other tools (no ``samples``/``bytes`` labels) are loaded as
  exact snapshots (``sample_rate=1``) whose traces add up to each sample's ``inuse_objects``
  and ``inuse_space`` values.
- Values are integers: each column is rounded on its running total, so every sum over the
  profile equals the rounded total of the snapshot (``sum(inuse_space) ==
  snapshot.total_size``) and each sample is within one unit of its unrounded estimate.
- ``alloc_objects``/``alloc_space`` hold the totals allocated since the profiler started,
  freed allocations included, per traceback (``Snapshot.allocated_statistics``). They sit on
  the first sample of their stack, or on a sample of their own (``inuse_*`` zero, no size
  labels) for stacks whose allocations were all freed. A snapshot without allocation totals
  gets ``alloc_* == inuse_*``, and a comment says so. Loading rebuilds the totals per
  traceback from the ``alloc_*`` values.
- Functions carry the display name and file (see ``frame_namer``), the first line, and as
  ``system_name`` the frame's own ``"filename:qualname"``, which differs from the name on
  purpose: pprof "demangles" functions whose two names are equal, stripping ``<...>`` as
  C++ template arguments (``<module>`` would show as nothing). One mapping, ``[python]``,
  says that symbols are present, so pprof does not try to symbolize.
"""

from __future__ import annotations

import gzip
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING, Any, Union

from .. import aggregate, estimate
from ..errors import MissingDependencyError, PprofFormatError
from ..model import Frame, Snapshot
from ..storage import (
    MAX_INFLATED_BYTES,
    MAX_SAMPLE_RATE,
    check_estimates,
    read_capped,
    write_atomically,
)

if TYPE_CHECKING:
    from . import profile_pb2

__all__ = [
    "PprofFormatError",
    "FrameNamer",
    "SAMPLE_TYPES",
    "to_profile",
    "write_pprof",
    "load_pprof",
]

PathOrFile = Union[str, "os.PathLike[str]", IO[bytes]]
# Maps a frame to (display file name, display function name), e.g. a notebook cell's temp
# file to "In [12]"; it may return a third item, the line number to show instead.
FrameNamer = Callable[["Frame"], tuple]

SAMPLE_TYPES: tuple[tuple[str, str], ...] = (
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
)
_ALLOC_OBJECTS, _ALLOC_SPACE, _INUSE_OBJECTS, _INUSE_SPACE = range(4)
_DEFAULT_SAMPLE_TYPE = "inuse_space"
_UNKNOWN_NAME = "<unknown>"
_NO_STACK_FRAME = ("<unknown>", 0, "<no Python frame>", 0)
_UNKNOWN_FRAME = ("<unknown>", 0)
_ALLOCATOR_NAMES = ("raw", "mem", "obj", "numpy", "native")
# load_pprof refuses profiles standing for more allocations than this in all. They are kept
# as counts, never as lists, so this only keeps the total a valid length (len(traces)).
MAX_LOADED_TRACES = 2**62
_INT32_MAX = 2**31 - 1
_MAPPING_ID = 1
_MAPPING_NAME = "[python]"
_DEFAULT_ALLOCATOR = 1  # MEM, as the model assumes for 4-tuple traces


# --------------------------------------------------------------------------- writing


def _pb2() -> Any:
    """The generated ``profile_pb2`` module, imported on first use: protobuf is needed only
    to write or read pprof files, and its absence is reported with what to install."""
    try:
        from . import profile_pb2
    except ImportError as exc:
        raise MissingDependencyError(
            "pprof export and import need the 'protobuf' package (4.21 or newer), which "
            "cannot be imported here: install it with  pip install 'protobuf>=4.21'"
        ) from exc
    return profile_pb2


def _utf8(text: str) -> str:
    """``text`` as valid UTF-8 for protobuf. File names that are not valid UTF-8 reach
    Python as lone surrogates (``surrogateescape``); their bytes are written as ``\\xNN``
    escapes, as Python shows them, instead of failing with ``UnicodeEncodeError``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


class _Strings:
    """pprof's string table: deduplicated, with the mandatory "" at index 0."""

    def __init__(self) -> None:
        self.table: list[str] = [""]
        self._index: dict[str, int] = {"": 0}

    def __call__(self, text: str) -> int:
        index = self._index.get(text)
        if index is None:
            index = self._index[text] = len(self.table)
            self.table.append(_utf8(text))
        return index


class _RunningRound:
    """Rounds a column of floats so that the integers add up to the rounded total.

    Integers stay exact (a loaded profile's ``2**63 - 1`` must not pass through a float)."""

    def __init__(self) -> None:
        self._total: float = 0
        self._emitted = 0

    def __call__(self, value: float) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 0.0 placeholders must not turn the column into floats
        self._total += value
        target = round(self._total)
        out = target - self._emitted
        self._emitted = target
        return out


def _identity_namer(frame: Frame) -> tuple[str, str]:
    return frame.filename, frame.name or _UNKNOWN_NAME


class _Builder:
    """Accumulates functions, locations and samples of one profile."""

    def __init__(self, frame_namer: FrameNamer | None) -> None:
        self.profile = _pb2().Profile()
        self.strings = _Strings()
        self._namer = frame_namer or _identity_namer
        self._functions: dict[tuple[str, str, str, int], int] = {}
        self._locations: dict[Any, int] = {}
        # id(frames) -> (frames, location ids); frames kept so that the id stays theirs.
        self._stacks: dict[int, tuple[tuple, list[int]]] = {}

    def _name(self, frame: Frame) -> tuple[str, str, int]:
        named = self._namer(frame)
        if not (
            isinstance(named, tuple)
            and len(named) in (2, 3)
            and isinstance(named[0], str)
            and isinstance(named[1], str)
            and (len(named) == 2 or isinstance(named[2], int))
        ):
            raise TypeError(
                "frame_namer must return (filename: str, function: str) or "
                f"(filename: str, function: str, lineno: int), got {named!r}"
            )
        lineno = named[2] if len(named) == 3 else frame.lineno
        return named[0], named[1] or _UNKNOWN_NAME, lineno

    def _function_id(self, name: str, system_name: str, filename: str, start_line: int) -> int:
        key = (name, system_name, filename, start_line)
        fid = self._functions.get(key)
        if fid is None:
            fid = self._functions[key] = len(self._functions) + 1
            self.profile.function.add(
                id=fid,
                name=self.strings(name),
                system_name=self.strings(system_name),
                filename=self.strings(filename),
                start_line=start_line,
            )
        return fid

    def _location_id(self, raw_frame: tuple) -> int:
        filename, lineno = raw_frame[0], raw_frame[1]
        raw_name = (raw_frame[2] if len(raw_frame) > 2 else None) or _UNKNOWN_NAME
        firstlineno = (raw_frame[3] if len(raw_frame) > 3 else None) or 0
        key = (filename, lineno, raw_name, firstlineno)
        lid = self._locations.get(key)
        if lid is None:
            display_file, name, display_line = self._name(Frame(raw_frame))
            # A display line number shifts the function's first line by as much.
            if firstlineno > 0:
                firstlineno = max(1, firstlineno + display_line - lineno)
            # system_name: the frame's own file and qualified name. It must differ from
            # name: pprof "demangles" functions whose two names are equal, which strips
            # <...> as C++ template arguments and turns "<module>" into "".
            system_name = f"{filename}:{raw_name}"
            fid = self._function_id(name, system_name, display_file, firstlineno)
            lid = self._locations[key] = len(self._locations) + 1
            location = self.profile.location.add(id=lid, mapping_id=_MAPPING_ID)
            location.line.add(function_id=fid, line=display_line)
        return lid

    def stack(self, frames: tuple) -> list[int]:
        """Location ids of raw frames (most recent first, which is pprof's leaf first)."""
        entry = self._stacks.get(id(frames))
        if entry is None or entry[0] is not frames:
            entry = self._stacks[id(frames)] = (
                frames,
                [self._location_id(frame) for frame in frames],
            )
        return entry[1]

    def num_label(self, sample: Any, key: str, num: int, unit: str = "") -> None:
        sample.label.add(key=self.strings(key), num=num, num_unit=self.strings(unit))

    def str_label(self, sample: Any, key: str, text: str) -> None:
        sample.label.add(key=self.strings(key), str=self.strings(text))


def _int64(value: int) -> int:
    """An unsigned 64-bit number (a thread id) as the int64 that pprof stores."""
    value %= 2**64
    return value - 2**64 if value >= 2**63 else value


def _allocator_name(code: int) -> str:
    if 0 <= code < len(_ALLOCATOR_NAMES):
        return _ALLOCATOR_NAMES[code]
    return str(code)


def _comments(snapshot: Snapshot, alloc_tracked: bool, samples: int) -> list[str]:
    meta = snapshot.meta or {}
    python = meta.get("python") or sys.version.split()[0]
    implementation = meta.get("implementation") or sys.implementation.name
    lines = [f"Python {python} ({implementation})"]
    if snapshot.is_exact:
        lines.append("mprofile-ipy: exact profile, every allocation traced (sample_rate=1)")
    else:
        lines.append(
            f"mprofile-ipy: sampling profile, sample_rate={snapshot.sample_rate} bytes; "
            "values are unbiased estimates"
        )
    settings = [f"max_frames={snapshot.traceback_limit}", f"live_samples={samples}"]
    if meta.get("seed") is not None:
        settings.append(f"seed={meta['seed']}")
    if meta.get("samples_total") is not None:
        settings.append(f"samples_total={meta['samples_total']}")
    lines.append("settings: " + ", ".join(settings))
    if alloc_tracked:
        lines.append("alloc_*: allocated since the profiler started, freed allocations included")
    else:
        lines.append("alloc_*: allocation totals were not tracked; alloc_* repeat inuse_*")
    return lines


def _as_snapshot(snapshot: Any) -> Snapshot:
    """``snapshot`` itself, or for a snapshot-like object (``traces`` of ``Trace``,
    ``sample_rate``, ``traceback_limit``, ``allocated``, ``meta``) an equal ``Snapshot``."""
    if isinstance(snapshot, Snapshot):
        return snapshot
    shared: dict[tuple, tuple] = {}  # one frames tuple per distinct stack, as the model has
    raw = []
    for t in snapshot.traces:
        frames = tuple(
            (f.filename, f.lineno, f.name, f.firstlineno) for f in reversed(t.traceback)
        )
        frames = shared.setdefault(frames, frames)
        raw.append((t.domain, t.size, frames, t.total_nframe, int(t.allocator), t.thread_id))
    return Snapshot(raw, getattr(snapshot, "traceback_limit", 1),
                    sample_rate=snapshot.sample_rate,
                    allocated=getattr(snapshot, "allocated", None),
                    meta=getattr(snapshot, "meta", None))


def _epoch(value: Any) -> float | None:
    """A plausible Unix time in seconds (0 to 9e9, what int64 nanoseconds hold), or None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 9e9:
        return float(value)
    return None


def _time_fields(meta: dict[str, Any]) -> tuple[int, int]:
    started = _epoch(meta.get("started_at"))
    taken = _epoch(meta.get("taken_at"))
    if started is not None:
        end = taken if taken is not None and taken >= started else started
        return int(started * 1e9), int((end - started) * 1e9)
    if taken is not None:
        return int(taken * 1e9), 0
    return time.time_ns(), 0


def to_profile(
    snapshot: Snapshot,
    *,
    frame_namer: FrameNamer | None = None,
    comments: Iterable[str] = (),
) -> profile_pb2.Profile:
    """Build the pprof ``Profile`` message for ``snapshot`` (see the module docstring).

    ``frame_namer(frame)`` returns ``(display filename, display function)`` (optionally a
    third item, the display line number) for each frame; the default keeps the frame's own
    file name and qualified name. ``Function.system_name`` keeps the frame's own
    ``"filename:qualname"`` whatever the namer shows.
    ``comments`` are added after the ones describing the Python version and settings.
    """
    builder = _Builder(frame_namer)
    profile = builder.profile
    strings = builder.strings
    snapshot = _as_snapshot(snapshot)
    meta = snapshot.meta or {}
    threads = meta.get("threads")
    if not isinstance(threads, dict):
        threads = {}

    for type_name, unit in SAMPLE_TYPES:
        profile.sample_type.add(type=strings(type_name), unit=strings(unit))
    # One mapping that says the symbols are all there, so pprof does not try to symbolize.
    profile.mapping.add(
        id=_MAPPING_ID,
        filename=strings(_MAPPING_NAME),
        has_functions=True,
        has_filenames=True,
        has_line_numbers=True,
    )

    # One pprof sample per group of identical sampled allocations (same frames object,
    # labels and size), and the allocation totals per traceback: both from the aggregation,
    # per task and process when the snapshot has them (each part with its own labels).
    allocated = snapshot.allocated_records
    rounders = [_RunningRound() for _ in SAMPLE_TYPES]
    live_samples = 0
    if snapshot.has_dimensions or snapshot.processes:
        parts = [(_dimension_tags(snapshot, label, process), part) for (label, process), part
                 in snapshot.partition("label", "process").items()]
    else:
        parts = [([], snapshot)]
    for tags, part in parts:
        live_samples += _add_samples(builder, part, tags, threads, rounders,
                                     allocated is not None)

    profile.period_type.type = strings("space")
    profile.period_type.unit = strings("bytes")
    profile.period = max(1, int(snapshot.sample_rate))
    profile.default_sample_type = strings(_DEFAULT_SAMPLE_TYPE)
    profile.time_nanos, profile.duration_nanos = _time_fields(meta)
    for line in [*_comments(snapshot, allocated is not None, live_samples), *comments]:
        profile.comment.append(strings(line))
    profile.string_table.extend(strings.table)
    return profile


def _dimension_tags(snapshot: Snapshot, label: int, process: int) -> list[tuple[str, Any]]:
    """The pprof labels naming a part of a snapshot: ``task`` (the thread label's name, e.g.
    a Dask task prefix), ``process`` (its label), ``pid``, ``worker`` (a Dask worker's
    address) and ``process_kind``, each only where the snapshot knows it."""
    tags: list[tuple[str, Any]] = []
    if label:
        tags.append(("task", snapshot.label_name(label)))
    if snapshot.processes or process:
        info = snapshot.process_info(process)
        tags.append(("process", info["label"]))
        if info["pid"]:
            tags.append(("pid", info["pid"]))
        if info["address"]:
            tags.append(("worker", info["address"]))
        if info["kind"]:
            tags.append(("process_kind", info["kind"]))
    return tags


def _add_samples(builder: _Builder, snapshot: Snapshot, tags: list[tuple[str, Any]],
                 threads: dict, rounders: list[_RunningRound], alloc_tracked: bool) -> int:
    """Add the samples of ``snapshot`` (one part of the profile), each labelled with
    ``tags``; returns how many sampled allocations they hold."""
    profile = builder.profile
    alloc_of: dict[tuple, aggregate.Record] = {}
    keys_of: dict[int, tuple] = {}  # id(frames) -> key; frames stay alive in the snapshot

    def stack_key(frames: tuple) -> tuple:
        key = keys_of.get(id(frames))
        if key is None:
            key = keys_of[id(frames)] = aggregate.frames_key(frames or (_UNKNOWN_FRAME,))
        return key

    def label(sample: Any) -> None:
        for key, value in tags:
            if isinstance(value, str):
                builder.str_label(sample, key, value)
            else:
                builder.num_label(sample, key, value)

    if alloc_tracked:
        for record in aggregate.by_traceback(snapshot):
            if not record.allocated.empty:
                raw_frames = record.traceback.raw_frames  # a new tuple: not via stack_key
                alloc_of[aggregate.frames_key(raw_frames or (_UNKNOWN_FRAME,))] = record
    live_samples = 0
    for g in aggregate.sample_groups(snapshot):
        frames = g.frames
        count, space = g.live.count, g.live.size
        live_samples += g.n
        if not alloc_tracked:
            alloc = (count, space)
        else:
            record = alloc_of.pop(stack_key(frames), None)
            alloc = (record.allocated.count, record.allocated.size) if record else (0, 0)
        sample = profile.sample.add()
        sample.location_id.extend(builder.stack(frames))
        sample.value.extend(
            [
                rounders[_ALLOC_OBJECTS](alloc[0]),
                rounders[_ALLOC_SPACE](alloc[1]),
                rounders[_INUSE_OBJECTS](count),
                rounders[_INUSE_SPACE](space),
            ]
        )
        builder.num_label(sample, "bytes", g.size, "bytes")
        builder.num_label(sample, "samples", g.n, "count")
        builder.num_label(sample, "thread_id", _int64(g.thread_id))
        thread_name = threads.get(str(g.thread_id))
        if isinstance(thread_name, str) and thread_name:
            builder.str_label(sample, "thread_name", thread_name)
        builder.num_label(sample, "domain", _int64(g.domain))
        builder.str_label(sample, "allocator", _allocator_name(g.allocator))
        if g.total_nframe is not None and g.total_nframe != len(frames):
            builder.num_label(sample, "total_nframe", g.total_nframe)
        label(sample)

    # Allocation sites whose allocations were all freed: alloc_* only.
    for record in alloc_of.values():
        frames = record.traceback.raw_frames
        total_nframe = record.traceback.total_nframe
        count, space = record.allocated.count, record.allocated.size
        sample = profile.sample.add()
        sample.location_id.extend(builder.stack(frames))
        sample.value.extend(
            [
                rounders[_ALLOC_OBJECTS](count),
                rounders[_ALLOC_SPACE](space),
                rounders[_INUSE_OBJECTS](0.0),
                rounders[_INUSE_SPACE](0.0),
            ]
        )
        if total_nframe is not None and total_nframe != len(frames):
            builder.num_label(sample, "total_nframe", total_nframe)
        label(sample)
    return live_samples


def write_pprof(
    snapshot: Snapshot,
    path_or_file: PathOrFile,
    *,
    frame_namer: FrameNamer | None = None,
    comments: Iterable[str] = (),
) -> None:
    """Write ``snapshot`` as a gzipped pprof profile to a path or a binary file object.

    A path is written atomically (a temporary file in the same folder, then renamed), so a
    failed write leaves no partial file; an unwritable path raises an ``OSError`` whose
    message and ``filename`` name that path. ``frame_namer`` and ``comments`` are as in
    :func:`to_profile`. Open the result with ``go tool pprof FILE``.
    """
    data = gzip.compress(
        to_profile(snapshot, frame_namer=frame_namer, comments=comments).SerializeToString(),
        mtime=0,
    )
    if hasattr(path_or_file, "write"):
        path_or_file.write(data)  # type: ignore[union-attr]
        return
    if not isinstance(path_or_file, (str, os.PathLike)):
        raise TypeError(
            "path_or_file must be a path (str or os.PathLike) or a binary file object, "
            f"not {type(path_or_file).__name__}"
        )
    path = os.fspath(path_or_file)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    try:
        write_atomically(path, data)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OSError(exc.errno, f"cannot write pprof profile to {path!r}: {reason}", path) from exc


# --------------------------------------------------------------------------- reading


def _read_input(path_or_file: PathOrFile, max_bytes: int) -> tuple[bytes, str]:
    """The profile's bytes, inflated (streamed, at most ``max_bytes``), and its name."""
    if hasattr(path_or_file, "read"):
        name = str(getattr(path_or_file, "name", "<file object>"))
    elif isinstance(path_or_file, (str, os.PathLike)):
        name = os.fsdecode(os.fspath(path_or_file))
    else:
        raise TypeError(
            "path_or_file must be a path (str or os.PathLike) or a binary file object, "
            f"not {type(path_or_file).__name__}"
        )

    def error(problem: str) -> PprofFormatError:
        return PprofFormatError(f"{name}: {problem}")

    data, _ = read_capped(path_or_file if hasattr(path_or_file, "read") else name, max_bytes,
                          error)
    return data, name


def _parse(raw: bytes, name: str) -> Any:
    pb2 = _pb2()
    from google.protobuf.message import DecodeError

    if not raw:
        raise PprofFormatError(f"{name}: empty file, not a pprof profile")
    try:
        profile = pb2.Profile.FromString(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise PprofFormatError(
            f"{name}: not a pprof profile (gzipped or raw profile.proto): {exc}"
        ) from exc
    return profile


class _Reader:
    """Validated access to the parts of a parsed profile.

    ``max_frame_refs`` bounds the frames of all distinct stacks together: a location may
    hold many (inlined) lines and a sample may name it many times, so a small file could
    otherwise ask for billions of frame references."""

    def __init__(self, profile: Any, name: str, max_frame_refs: int) -> None:
        self.profile = profile
        self.name = name
        self.frame_refs = 0
        self.max_frame_refs = max_frame_refs
        table = list(profile.string_table)
        if not table or table[0] != "":
            raise self.error('string_table must start with "" (is this a pprof profile?)')
        self.table = table
        self.functions = {}
        for function in profile.function:
            filename = self.string(function.filename)
            if "\0" in filename:
                raise self.error(f"function.filename {filename!r} holds a NUL character, "
                                 "which no file name can")
            self.functions[function.id] = (
                self.string(function.name),
                filename,
                self.line_number(function.start_line, "function.start_line"),
            )
        self.locations: dict[int, tuple] = {}
        self._stacks: dict[tuple, tuple] = {}
        for location in profile.location:
            frames = []
            for line in location.line:  # inlined callees first, as raw frames are
                fname, filename, start = self.functions.get(
                    line.function_id, (_UNKNOWN_NAME, _UNKNOWN_NAME, 0)
                )
                frames.append((filename or _UNKNOWN_NAME,
                               self.line_number(line.line, "location.line.line"), fname, start))
            if not frames:
                frames.append((_UNKNOWN_NAME, 0, f"0x{location.address:x}", 0))
            self.locations[location.id] = tuple(frames)

    def error(self, message: str) -> PprofFormatError:
        return PprofFormatError(f"{self.name}: {message}")

    def line_number(self, value: int, field: str) -> int:
        if not 0 <= value <= _INT32_MAX:
            raise self.error(f"{field} {value} is out of range (0 to {_INT32_MAX})")
        return value

    def num(self, nums: dict[str, int], key: str, default: int, low: int, high: int) -> int:
        """A numeric label's value, checked against its range."""
        value = nums.get(key, default)
        if not low <= value <= high:
            raise self.error(f"label {key!r} = {value} is out of range ({low} to {high})")
        return value

    def string(self, index: int) -> str:
        if not 0 <= index < len(self.table):
            raise self.error(f"string index {index} out of range (table has {len(self.table)})")
        return self.table[index]

    def frames(self, sample: Any) -> tuple:
        """Raw frames of a sample, most recent first; one shared tuple per distinct stack."""
        ids = tuple(sample.location_id)
        frames = self._stacks.get(ids)
        if frames is None:
            out: list[tuple] = []
            for lid in ids:
                location = self.locations.get(lid)
                if location is None:
                    raise self.error(f"sample refers to missing location id {lid}")
                out.extend(location)
            self.frame_refs += len(out)
            if self.frame_refs > self.max_frame_refs:
                raise self.error(
                    f"its stacks hold more than {self.max_frame_refs:,} frames in all, far "
                    "more than the file's size can describe (locations named too many times)"
                )
            frames = self._stacks[ids] = tuple(out)
        return frames

    def labels(self, sample: Any) -> tuple[dict[str, int], dict[str, str]]:
        nums: dict[str, int] = {}
        strs: dict[str, str] = {}
        for label in sample.label:
            key = self.string(label.key)
            if label.str:
                strs[key] = self.string(label.str)
            else:
                nums[key] = label.num
        return nums, strs


def _split(count: int, space: int) -> list[tuple[int, int]]:
    """(size, how many) pairs of ``count`` allocations that add up to ``space`` bytes."""
    if count <= 0:
        return [(space, 1)] if space > 0 else []
    q, r = divmod(max(space, 0), count)
    return [(size, n) for size, n in ((q + 1, r), (q, count - r)) if n > 0]


def _allocator_code(name: str | None) -> int:
    if name is None:
        return _DEFAULT_ALLOCATOR
    if name in _ALLOCATOR_NAMES:
        return _ALLOCATOR_NAMES.index(name)
    try:
        code = int(name)
    except ValueError:
        return _DEFAULT_ALLOCATOR
    return code if 0 <= code <= _INT32_MAX else _DEFAULT_ALLOCATOR


def _ours(value: Any, nums: dict[str, int], rate: int, i_space: int, i_count: int | None) -> bool:
    """True if a sample is laid out as ``to_profile`` writes it.

    Live groups carry ``bytes`` and ``samples`` labels that match their ``inuse_*`` values
    (within the writer's rounding); the other samples hold ``alloc_*`` values only. A tool
    that merged samples (summing values, keeping labels) fails this check.
    """
    size, n = nums.get("bytes"), nums.get("samples")
    if size is None and n is None:
        return value[i_space] == 0 and (i_count is None or value[i_count] == 0)
    if size is None or n is None or size < 0 or n <= 0:
        return False
    weight = estimate.weight(size, rate)
    checks = [(value[i_space], n * size * weight)]
    if i_count is not None:
        checks.append((value[i_count], n * weight))
    return all(abs(got - want) <= 1.0 + 1e-9 * want for got, want in checks)


def load_pprof(path_or_file: PathOrFile, *, max_bytes: int = MAX_INFLATED_BYTES) -> Snapshot:
    """Read a pprof heap profile (gzipped or raw ``profile.proto``) into a ``Snapshot``.

    Files written by :func:`write_pprof` come back with the same sampled traces, sample rate
    and allocation totals, so ``statistics()`` and ``allocated_statistics()`` match the
    original within rounding. Other heap profiles (Go, ...) are loaded as exact snapshots
    whose statistics equal their ``inuse_objects``/``inuse_space`` values.

    Work and memory follow the file's content: a sample standing for many allocations
    becomes one trace with a count (``Snapshot.trace_counts``), never a list; the file may
    inflate to ``max_bytes`` at most (streamed). Everything is validated here (value
    ranges, labels, line numbers, string indexes, estimates that fit in 64 bits), so a
    loaded snapshot works in every statistic, view and export. Raises
    :class:`PprofFormatError` naming the file and the field for empty, corrupt, truncated,
    oversized or non-pprof input, negative values, and profiles without an ``inuse_space``
    sample type; ``MissingDependencyError`` without protobuf.
    """
    data, name = _read_input(path_or_file, max_bytes)
    profile = _parse(data, name)
    reader = _Reader(profile, name, max_frame_refs=16 * len(data) + 1_000_000)
    del data

    types = [reader.string(t.type) for t in profile.sample_type]
    if "inuse_space" not in types:
        shown = ", ".join(
            f"{reader.string(t.type)}/{reader.string(t.unit)}" for t in profile.sample_type
        )
        raise reader.error(
            "not a heap profile: it has no inuse_space sample type "
            f"(sample types: {shown or 'none'})"
        )
    i_space = types.index("inuse_space")
    i_count = types.index("inuse_objects") if "inuse_objects" in types else None
    i_alloc_count = types.index("alloc_objects") if "alloc_objects" in types else None
    i_alloc_space = types.index("alloc_space") if "alloc_space" in types else None
    used = [(i, types[i]) for i in (i_space, i_count, i_alloc_count, i_alloc_space)
            if i is not None]

    if profile.period > MAX_SAMPLE_RATE:
        raise reader.error(f"period {profile.period} is out of range (at most "
                           f"{MAX_SAMPLE_RATE}, the largest sample rate)")
    rate = profile.period if profile.period > 1 else 1
    samples = list(profile.sample)
    for sample in samples:
        if len(sample.value) != len(types):
            raise reader.error(
                f"a sample has {len(sample.value)} values for {len(types)} sample types"
            )
        for i, type_name in used:
            if sample.value[i] < 0:
                raise reader.error(f"a sample has a negative {type_name} value "
                                   f"({sample.value[i]}); heap profiles hold none")
    parsed = [(sample, reader.frames(sample), *reader.labels(sample)) for sample in samples]
    ours = all(_ours(s.value, nums, rate, i_space, i_count) for s, _, nums, _ in parsed)
    if not ours:
        rate = 1

    traces: list[tuple] = []
    counts: list[int] = []
    allocated: dict[tuple, list[int]] = {}
    threads: dict[str, str] = {}
    label_ids: dict[str, int] = {}  # task name -> label id
    process_ids: dict[tuple, int] = {}  # (label, kind, pid, address) -> process index
    has_alloc = i_alloc_count is not None and i_alloc_space is not None
    rebuilt = 0
    for sample, frames, nums, strs in parsed:
        if not frames or frames == (_NO_STACK_FRAME,):  # allocated with no Python stack
            frames, total_nframe = (_NO_STACK_FRAME,), 0
        else:
            total = reader.num(nums, "total_nframe", 0, 0, _INT32_MAX)
            total_nframe = max(total, len(frames))
        domain = reader.num(nums, "domain", 0, 0, 2**32 - 1)
        allocator = _allocator_code(strs.get("allocator"))
        thread_id = nums.get("thread_id", 0) % 2**64  # written as int64
        if "thread_name" in strs:
            threads[str(thread_id)] = strs["thread_name"]
        task = strs.get("task")
        label = label_ids.setdefault(task, len(label_ids) + 1) if task else 0
        process = 0
        if "process" in strs:
            who = (strs["process"], strs.get("process_kind", ""),
                   reader.num(nums, "pid", 0, 0, 2**63 - 1), strs.get("worker", ""))
            process = process_ids.setdefault(who, len(process_ids))
        if ours:
            pieces = [(nums["bytes"], nums["samples"])] if "samples" in nums else []
        else:
            count = sample.value[i_count] if i_count is not None else 0
            pieces = _split(count, sample.value[i_space])
        for size, n in pieces:
            rebuilt += n
            if rebuilt > MAX_LOADED_TRACES:
                raise reader.error(
                    f"too many allocations to rebuild (more than {MAX_LOADED_TRACES:,}); "
                    "is this a heap profile?"
                )
            traces.append((domain, size, frames, total_nframe, allocator, thread_id, label,
                           process))
            counts.append(n)
        if has_alloc:
            key = (frames, total_nframe, label, process)
            entry = allocated.setdefault(key, [0, 0])  # ints: 2**63 - 1 must stay exact
            entry[0] += sample.value[i_alloc_count]
            entry[1] += sample.value[i_alloc_space]

    meta: dict[str, Any] = {
        "source": "pprof",
        "comments": [reader.string(c) for c in profile.comment],
        "sample_rate": rate,
    }
    if profile.time_nanos > 0:
        meta["started_at"] = profile.time_nanos / 1e9
        end = profile.time_nanos + max(profile.duration_nanos, 0)
        meta["taken_at"] = min(end, 2**63 - 1) / 1e9
    if threads:
        meta["threads"] = threads
    if label_ids:
        meta["labels"] = {str(i): name for name, i in label_ids.items()}
    if process_ids:
        meta["processes"] = [{"label": who[0], "kind": who[1], "pid": who[2],
                              "address": who[3]} for who in process_ids]
    if not (label_ids or process_ids):  # the plain shape of a profile of one process
        traces = [t[:6] for t in traces]
    limit = max((len(t[2]) for t in traces), default=1)
    limit = max([limit, *(len(key[0]) for key in allocated)])
    snapshot = Snapshot(  # the checks above leave the model nothing to reject
        traces,
        limit,
        sample_rate=rate,
        allocated=(
            [(frames, total, count, space, None, None, None, label, process)
             if label_ids or process_ids else (frames, total, count, space)
             for (frames, total, label, process), (count, space) in allocated.items()
             if count or space]
            if has_alloc
            else None
        ),
        meta=meta,
        counts=counts,
    )
    check_estimates(snapshot, reader.error)
    return snapshot
