"""Safe, versioned snapshot files: gzip-compressed JSON, never pickle.

``save_snapshot`` writes everything a :class:`~mprofile_ipy.model.Snapshot` holds (traces,
traceback limit, sample rate, allocation totals, meta) with strings, frames and tracebacks
interned in tables; ``load_snapshot`` gives back an equal snapshot. A file that is empty,
truncated, corrupt, of another format or of a newer format version raises
:class:`SnapshotFormatError` naming the file and the problem; loading never runs code.

Layout (``version`` 2), one JSON object::

    {"format": "mprofile-ipy-snapshot", "version": 1,
     "traceback_limit": int, "sample_rate": int, "meta": {...},
     "strings": [str, ...],                       # file and function names
     "frames": [[file, lineno(, name(, firstlineno))], ...],   # file/name: string ids
     "tracebacks": [[frame id, ...], ...],        # raw order: most recent frame first
     "traces": {"domain": [...], "size": [...], "traceback": [...],
                "total_nframe": [...], "allocator": [...], "thread_id": [...]},
     "allocated": null | [[traceback id, total_nframe, count, size, ...], ...],
     "attributes": {name: JSON value, ...}}      # optional: set by the user on the snapshot

Trace columns are parallel lists; ``allocator``/``thread_id`` are absent when every trace
is a 4-tuple and hold ``null`` where a trace is shorter (4- or 5-tuples), so each raw trace
comes back with its own length. Version 2 adds an optional ``count`` column (how many
identical allocations each trace stands for, ``Snapshot(counts=...)``); version 1 files
load as before. Version 3 adds the optional ``label`` and ``process`` columns (the thread
label and the process index of each trace, ``null`` where a trace is shorter) and
allocation totals of 8 and 9 fields (their label and process); ``meta.labels`` names the
labels and ``meta.processes`` the processes. A file is written as version 3 only when it
uses them, so files without labels stay readable by older versions, and a file that has
them is never read by a version that would silently drop them. ``attributes`` (any
version) holds public attributes the user set on the snapshot (tracemalloc's pickled
snapshots keep them too); a reader that does not know the key ignores it.

Loading is bounded and complete. The file may inflate to at most ``MAX_INFLATED_BYTES``
and declare at most ``MAX_TRACES`` traces (``load_snapshot(max_bytes=, max_traces=)``
raise both); inflating is streamed, so a gzip bomb stops at the cap. Every field is
checked for its type and range (sizes, domains, thread ids, line numbers, sample rate,
known ``meta`` keys) and the estimates must fit in 64 bits, so a snapshot that loads
works in every statistic, view and export; anything else raises
:class:`SnapshotFormatError` naming the file and the field. File names that are not valid
UTF-8 (kept by Python as lone surrogates, ``surrogateescape``) are written as JSON
escapes and come back unchanged.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import secrets
import sys
import zlib
from collections.abc import Callable
from operator import itemgetter
from typing import IO, Any

from . import aggregate
from .errors import SnapshotFormatError
from .model import Snapshot

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "MAX_INFLATED_BYTES", "MAX_TRACES",
           "SnapshotFormatError", "load_snapshot", "read_capped", "save_snapshot",
           "write_atomically"]

FORMAT_NAME = "mprofile-ipy-snapshot"
FORMAT_VERSION = 3
#: A file may inflate to at most this many bytes (``max_bytes=`` raises it). About 30
#: bytes of JSON per trace: 256 MiB holds some 8 million traces.
MAX_INFLATED_BYTES = 256 * 1024**2
#: A file may declare at most this many traces (``max_traces=`` raises it); each costs
#: about 100 bytes of memory once loaded.
MAX_TRACES = 10_000_000
#: Largest sample rate a file may declare (the sampler's own limit).
MAX_SAMPLE_RATE = 2**62
_INT64_MAX = 2**63 - 1
_INT32_MAX = 2**31 - 1
_UINT32_MAX = 2**32 - 1
_FLOAT_MAX = sys.float_info.max  # JSON ints beyond it would overflow float sums
# Estimates that are floats must stay below this: sums of floats near 2**63 round up to
# 2**63, one past the largest int64 (found by fuzzing, in to_pprof's running rounding).
_FLOAT_ESTIMATE_MAX = 2.0**62

_GZIP_MAGIC = b"\x1f\x8b"


# ---------------------------------------------------------------------------------------------
# Writing


class _Tables:
    """Interning tables: strings, frames and tracebacks each get a small integer id."""

    def __init__(self) -> None:
        self.strings: dict[str, int] = {}
        self.frames: dict[tuple, int] = {}
        self.frame_rows: list[list] = []
        self.tracebacks: dict[tuple, int] = {}
        self.traceback_rows: list[list[int]] = []
        self.tb_by_id: dict[int, int] = {}  # id(frames object) -> traceback id
        self._keep_alive: list[tuple] = []  # frames objects whose id() is cached

    def string(self, text: Any) -> int | None:
        if text is None:
            return None
        if not isinstance(text, str):
            raise TypeError(f"frame file and function names must be str, not {text!r}")
        sid = self.strings.get(text)
        if sid is None:
            sid = self.strings[text] = len(self.strings)
        return sid

    def frame(self, frame: tuple) -> int:
        fid = self.frames.get(frame)
        if fid is None:
            if not isinstance(frame, tuple) or not 2 <= len(frame) <= 4:
                raise TypeError(f"a raw frame must be a 2- to 4-tuple, not {frame!r}")
            row: list[Any] = [self.string(frame[0]), frame[1]]
            if len(frame) > 2:
                row.append(self.string(frame[2]))
            if len(frame) > 3:
                row.append(frame[3])
            fid = self.frames[frame] = len(self.frame_rows)
            self.frame_rows.append(row)
        return fid

    def traceback(self, frames: tuple) -> int:
        tid = self.tb_by_id.get(id(frames))
        if tid is not None:
            return tid
        tid = self.tracebacks.get(frames)
        if tid is None:
            tid = self.tracebacks[frames] = len(self.traceback_rows)
            self.traceback_rows.append([self.frame(f) for f in frames])
        self.tb_by_id[id(frames)] = tid
        self._keep_alive.append(frames)
        return tid


def _encode(snapshot: Snapshot) -> dict[str, Any]:
    tables = _Tables()
    raw = snapshot.traces._traces  # as given: 4-, 5- or 6-tuples come back as they were
    lengths = set(map(len, raw))
    frames_col = list(map(itemgetter(2), raw))
    ids = list(map(id, frames_col))
    for frames in dict(zip(ids, frames_col, strict=True)).values():  # distinct objects only
        tables.traceback(frames)
    columns: dict[str, list] = {
        "domain": list(map(itemgetter(0), raw)),
        "size": list(map(itemgetter(1), raw)),
        "traceback": list(map(tables.tb_by_id.__getitem__, ids)),
        "total_nframe": list(map(itemgetter(3), raw)),
    }
    if lengths == {6}:
        columns["allocator"] = list(map(itemgetter(4), raw))
        columns["thread_id"] = list(map(itemgetter(5), raw))
    elif lengths - {4}:
        columns["allocator"] = [t[4] if len(t) > 4 else None for t in raw]
        columns["thread_id"] = [t[5] if len(t) > 5 else None for t in raw]
    if lengths == {8}:
        columns["label"] = list(map(itemgetter(6), raw))
        columns["process"] = list(map(itemgetter(7), raw))
    elif lengths and max(lengths) > 6:
        columns["label"] = [t[6] if len(t) > 6 else None for t in raw]
        columns["process"] = [t[7] if len(t) > 7 else None for t in raw]
    counts = snapshot.trace_counts
    if counts is not None:
        columns["count"] = list(counts)
    allocated = None
    if snapshot.allocated is not None:
        allocated = [[tables.traceback(entry[0]), *entry[1:]] for entry in snapshot.allocated]
    labelled = "label" in columns or any(len(row) > 7 for row in allocated or ())
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION if labelled else 2,
        "traceback_limit": snapshot.traceback_limit,
        "sample_rate": snapshot.sample_rate,
        # the label lists are copies of the label column, rebuilt when the file is loaded
        "meta": {k: v for k, v in snapshot.meta.items()
                 if k not in ("trace_labels", "allocated_labels")},
        "strings": list(tables.strings),
        "frames": tables.frame_rows,
        "tracebacks": tables.traceback_rows,
        "traces": columns,
        "allocated": allocated,
        **({"attributes": attributes} if (attributes := _user_attributes(snapshot)) else {}),
    }


#: Instance attributes a Snapshot sets itself; any other public one is the user's.
_OWN_ATTRIBUTES = frozenset({"traces", "traceback_limit", "meta"})


def _user_attributes(snapshot: Snapshot) -> dict[str, Any]:
    """Attributes the user set on the snapshot (``snapshot.note = "..."``): they are saved
    and set again by the loader, as tracemalloc's pickled snapshots keep them."""
    return {name: value for name, value in vars(snapshot).items()
            if not name.startswith("_") and name not in _OWN_ATTRIBUTES}


def _set_user_attributes(snapshot: Snapshot, attributes: Any, check: _Checker) -> None:
    """Set the saved user attributes on a loaded snapshot. Only plain public names that
    are not the class's own (a file must not replace ``statistics`` or ``traces``)."""
    if attributes is None:
        return
    if not isinstance(attributes, dict):
        raise check.error("'attributes' must be an object")
    for name, value in attributes.items():
        if (not name.isidentifier() or name.startswith("_") or name in _OWN_ATTRIBUTES
                or hasattr(Snapshot, name)):
            raise check.error(f"'attributes' may not set {_short(name)}: not a free "
                              "attribute name of a snapshot")
        setattr(snapshot, name, value)


def save_snapshot(snapshot: Snapshot, filename: str | os.PathLike | IO[bytes]) -> None:
    """Write ``snapshot`` to ``filename`` (a path or a binary file object).

    A path is written through a temporary file then renamed, so a crash never leaves a
    half-written snapshot under the final name. ``meta`` must be JSON-able (str keys;
    tuples come back as lists).
    """
    if not isinstance(snapshot, Snapshot):
        raise TypeError(f"expected a Snapshot, not {type(snapshot).__name__}")
    try:
        text = json.dumps(_encode(snapshot), separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"cannot save this snapshot: {exc} (meta must hold only JSON values: str keys, "
            "str, int, float, bool, None, lists and dicts; so must the attributes set on "
            "the snapshot)"
        ) from exc
    data = gzip.compress(text.encode("utf-8"), compresslevel=1, mtime=0)
    if hasattr(filename, "write"):
        filename.write(data)  # type: ignore[union-attr]
        return
    write_atomically(os.fspath(filename), data)  # type: ignore[arg-type]


def write_atomically(path: str | os.PathLike, data: bytes | bytearray | memoryview, *,
                     mode: int = 0o666, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    The bytes go to a new, uniquely named file beside ``path`` (same folder, so the rename
    stays on one file system), which then replaces ``path`` with :func:`os.replace`. A
    failure (disk full, a signal, an exception) removes the temporary file and leaves
    ``path`` as it was. ``mode`` is the new file's permission bits before the umask
    (0o666: as a file opened normally; 0o600: private to the owner). ``fsync`` flushes the
    data to the disk before the rename, for files that must survive a machine crash.
    Every atomic write of the package (snapshots, pprof files, the flight recorder, child
    processes' snapshots and the start-up hook) goes through here.
    """
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    directory, base = os.path.split(os.path.abspath(path))
    # ".NAME.RANDOM.PID.tmp": hidden, unique, and the writer's pid where the clean-up of
    # old flight records (postmortem.cleanup) looks for it.
    tmp = os.path.join(directory, f".{base}.{secrets.token_hex(4)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            if fsync:
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---------------------------------------------------------------------------------------------
# Reading


def _describe(filename: Any) -> str:
    if hasattr(filename, "read"):
        name = getattr(filename, "name", None)
        return repr(name) if isinstance(name, (str, bytes)) else repr(filename)
    return repr(os.fspath(filename))


_CHUNK = 1 << 20


def _cap_text(limit: int) -> str:
    return f"{limit:,} bytes ({limit / 1024**2:.4g} MiB)"


def read_capped(source: Any, max_bytes: int, error: Callable[[str], Exception],
                *, what: str = "max_bytes") -> tuple[bytes, bool]:
    """The content of ``source`` (a path or a binary file object), inflated if gzipped,
    reading and inflating at most ``max_bytes`` bytes.

    Inflating is streamed chunk by chunk, so a gzip bomb costs ``max_bytes`` of memory at
    most before ``error`` (the caller's format error, naming the file) is raised with the
    cap and ``what`` raises it. Empty input, truncated or corrupt gzip data raise ``error``
    too; ``OSError`` if the file cannot be read. Concatenated gzip members are read as one
    stream (as :func:`gzip.decompress` does). Returns the bytes and whether they were
    gzipped.
    """
    if hasattr(source, "read"):
        data = source.read(max_bytes + 1)
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError("the file object must be opened in binary mode ('rb')")
        data = bytes(data)
    else:
        with open(source, "rb") as fp:
            data = fp.read(max_bytes + 1)
    too_big = (f"it holds more than {_cap_text(max_bytes)}, the cap on what a file may "
               f"hold or inflate to; if the file is genuine, pass a larger {what}=")
    if len(data) > max_bytes:
        raise error(too_big)
    if not data:
        raise error("the file is empty")
    if data[:2] != _GZIP_MAGIC:
        return data, False
    out = bytearray()
    pending = data
    while pending:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            while True:
                room = max_bytes - len(out) + 1
                out += inflater.decompress(pending, min(room, _CHUNK))
                if len(out) > max_bytes:
                    raise error(too_big)
                pending = inflater.unconsumed_tail
                if inflater.eof or not pending:
                    break
        except zlib.error as exc:
            raise error(f"the compressed (gzip) data is corrupt ({exc})") from exc
        if not inflater.eof:
            raise error("the file is truncated (the gzip data ends early)")
        pending = inflater.unused_data
        if pending and pending[:2] != _GZIP_MAGIC:
            if pending.strip(b"\0"):
                raise error("the file has trailing data after the compressed stream")
            break
    return bytes(out), True


def _plain_json(data: bytes, error: Any) -> bytes:
    if data.lstrip()[:1] == b"{":
        return data  # uncompressed JSON, e.g. unpacked by hand with gunzip
    if data[:1] == b"\x80":
        raise error(
            "it looks like a pickle (tracemalloc's Snapshot.dump format); pickles are "
            "never loaded because loading one can run code: load it with "
            "tracemalloc.Snapshot.load and convert it with Snapshot.from_tracemalloc"
        )
    raise error(f"not a gzip file (starts with {data[:8]!r})")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a snapshot may hold")


class _Checker:
    """Type and range checks that raise the loader's error naming the field."""

    def __init__(self, error: Callable[[str], Exception], prefix: str = "invalid content"
                 ) -> None:
        self.error = error
        self.prefix = prefix

    def int(self, value: Any, field: str, low: int, high: int, *, null: bool = False) -> Any:
        if value is None and null:
            return None
        if type(value) is not int or not low <= value <= high:  # type(): JSON true is no int
            raise self.error(f"{self.prefix}: {field} is out of range or not an integer "
                             f"(must be from {low} to {high}), got {_short(value)}")
        return value

    def number(self, value: Any, field: str, high: float, *, null: bool = False) -> Any:
        if value is None and null:
            return None
        if (type(value) not in (int, float) or not 0 <= value <= high
                or (type(value) is float and not math.isfinite(value))):
            raise self.error(f"{self.prefix}: {field} is out of range or not a number "
                             f"(must be from 0 to {high:.4g}), got {_short(value)}")
        return value

    def column(self, columns: dict, name: str, n: int | None, low: int, high: int,
               *, null: bool = False) -> list:
        values = columns.get(name)
        if not isinstance(values, list):
            raise self.error(f"traces column {name!r} is missing or not a list")
        if n is not None and len(values) != n:
            raise self.error("the trace columns have different lengths")
        allowed = {int, type(None)} if null else {int}
        if not set(map(type, values)) <= allowed:
            raise self.error(f"traces column {name!r} holds values that are not integers")
        present = [v for v in values if v is not None] if null else values
        if present and (min(present) < low or max(present) > high):
            negative = f": a negative {name}" if min(present) < 0 else ""
            raise self.error(f"traces column {name!r} holds a value out of range "
                             f"({low} to {high}){negative}")
        return values


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# Known meta keys: (kind, bound). Other keys may hold any JSON value.
_META_NUMBERS = {"started_at": 1e11, "taken_at": 1e11, "samples_total": _INT64_MAX,
                 "peak_bytes": _INT64_MAX, "allocated_bytes": _INT64_MAX,
                 "allocated_count": _INT64_MAX}
_META_INTS = {"seed": 2**64 - 1, "pid": _INT64_MAX, "sample_rate": MAX_SAMPLE_RATE,
              "max_frames": _INT32_MAX}
_META_STRINGS = ("python", "implementation", "source")
_META_BOOLS = ("foreign_hooks", "native")


def _check_meta(meta: Any, check: _Checker) -> dict:
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise check.error("'meta' must be an object")
    for key, high in _META_NUMBERS.items():
        check.number(meta.get(key), f"meta.{key}", high, null=True)
    for key, high in _META_INTS.items():
        check.int(meta.get(key), f"meta.{key}", 0, high, null=True)
    for key in _META_STRINGS:
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise check.error(f"meta.{key} must be a string")
    for key in _META_BOOLS:
        if meta.get(key) is not None and not isinstance(meta[key], bool):
            raise check.error(f"meta.{key} must be true or false")
    labels = meta.get("labels")
    if labels is not None and not (
        isinstance(labels, dict)
        and all(k.isdigit() and isinstance(v, str) for k, v in labels.items())
    ):
        raise check.error("meta.labels must be an object of label id -> name strings")
    processes = meta.get("processes")
    if processes is not None:
        if not isinstance(processes, list):
            raise check.error("meta.processes must be a list of processes")
        for i, proc in enumerate(processes):
            if not (isinstance(proc, dict) and isinstance(proc.get("label", ""), str)
                    and isinstance(proc.get("kind", ""), str)
                    and isinstance(proc.get("address", ""), str)):
                raise check.error(f"meta.processes[{i}] must be an object with string "
                                  "label, kind and address")
            check.int(proc.get("pid"), f"meta.processes[{i}].pid", 0, _INT64_MAX, null=True)
    threads = meta.get("threads")
    if threads is not None and not (
        isinstance(threads, dict) and all(isinstance(v, str) for v in threads.values())
    ):
        raise check.error("meta.threads must be an object of thread id -> name strings")
    return meta


def _decode(doc: Any, error: Any, max_traces: int) -> Snapshot:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise error(f"not an mprofile-ipy snapshot (format is {_short(found)}, "
                    f"expected {FORMAT_NAME!r})")
    version = doc.get("version")
    if type(version) is not int or version < 1:
        raise error(f"invalid format version {_short(version)}")
    if version > FORMAT_VERSION:
        raise error(
            f"written by a newer mprofile-ipy (format version {version}; this version reads "
            f"up to {FORMAT_VERSION}): upgrade mprofile-ipy to load it"
        )
    check = _Checker(error)
    try:
        strings = doc["strings"]
        if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
            raise error("'strings' must be a list of strings")

        def text(sid: Any, field: str, null: bool) -> str | None:
            if sid is None and null:
                return None
            check.int(sid, field, 0, len(strings) - 1)
            return strings[sid]

        frames = []
        rows = doc["frames"]
        if not isinstance(rows, list):
            raise error("'frames' must be a list")
        for row in rows:
            if not isinstance(row, list) or not 2 <= len(row) <= 4:
                raise error(f"invalid frame {_short(row)}")
            filename = text(row[0], "a frame's file name", False)
            if "\0" in filename:  # type: ignore[operator]
                raise error(f"invalid content: a frame's file name holds a NUL character "
                            f"({_short(filename)}), which no file name can")
            frame: tuple = (filename,
                            check.int(row[1], "a frame's line number", 0, _INT32_MAX))
            if len(row) > 2:
                frame += (text(row[2], "a frame's function name", True),)
            if len(row) > 3:
                frame += (check.int(row[3], "a frame's first line", 0, _INT32_MAX, null=True),)
            frames.append(frame)

        tracebacks = []
        rows = doc["tracebacks"]
        if not isinstance(rows, list):
            raise error("'tracebacks' must be a list")
        for row in rows:
            if not isinstance(row, list):
                raise error(f"invalid traceback {_short(row)}")
            if not set(map(type, row)) <= {int} or (
                row and (min(row) < 0 or max(row) >= len(frames))
            ):
                raise error(f"a traceback refers to a frame id out of range "
                            f"(0..{len(frames) - 1})")
            tracebacks.append(tuple([frames[i] for i in row]))

        columns = doc["traces"]
        if not isinstance(columns, dict):
            raise error("'traces' must be an object of columns")
        domain = check.column(columns, "domain", None, 0, 2**32 - 1)
        n = len(domain)
        if n > max_traces:
            raise error(f"it declares {n:,} traces, more than the cap of {max_traces:,}; "
                        "if the file is genuine, pass a larger max_traces=")
        size = check.column(columns, "size", n, 0, _INT64_MAX)
        tb_ids = check.column(columns, "traceback", n, 0, len(tracebacks) - 1)
        total = check.column(columns, "total_nframe", n, 0, _INT32_MAX, null=True)
        tb_col = list(map(tracebacks.__getitem__, tb_ids))
        if "allocator" in columns:
            allocator = check.column(columns, "allocator", n, 0, _INT32_MAX, null=True)
            thread = check.column(columns, "thread_id", n, 0, 2**64 - 1, null=True)
            rows = zip(domain, size, tb_col, total, allocator, thread, strict=True)
            if None in set(allocator) or None in set(thread):
                # null allocator: a 4-tuple; null thread_id only: a 5-tuple. A thread id
                # without an allocator is no trace this package writes.
                bad = next((i for i, (a, th) in enumerate(zip(allocator, thread, strict=True))
                            if a is None and th is not None), None)
                if bad is not None:
                    raise error(f"traces.allocator[{bad}] is null but traces.thread_id[{bad}] "
                                "is not")
                traces = [
                    (d, s, f, t, a, th) if th is not None
                    else (d, s, f, t) if a is None else (d, s, f, t, a)
                    for d, s, f, t, a, th in rows
                ]
            else:
                traces = list(rows)
        else:
            traces = list(zip(domain, size, tb_col, total, strict=True))
        if "label" in columns:
            traces = _with_labels(traces, columns, n, check, error)
        counts = None
        if "count" in columns:
            counts = check.column(columns, "count", n, 1, _INT64_MAX)
            if sum(counts) > _INT64_MAX:
                raise error("the trace counts add up to more than 2**63 - 1")

        allocated = None
        if doc.get("allocated") is not None:
            if not isinstance(doc["allocated"], list):
                raise error("'allocated' must be a list or null")
            allocated = []
            total_check = _Checker(error, "invalid allocation total")
            for row in doc["allocated"]:
                if not isinstance(row, list) or not 4 <= len(row) <= 9:
                    raise error(f"invalid allocation total {_short(row)}")
                check = total_check
                check.int(row[0], "an allocation total's traceback id", 0, len(tracebacks) - 1)
                check.int(row[1], "an allocation total's total_nframe", 0, _INT32_MAX,
                          null=True)
                check.number(row[2], "an allocation total's count", _INT64_MAX)
                check.number(row[3], "an allocation total's size", _INT64_MAX)
                if len(row) > 4:
                    check.int(row[4], "an allocation total's samples", 0, _INT64_MAX, null=True)
                if len(row) > 5:
                    check.number(row[5], "an allocation total's variance", _FLOAT_MAX,
                                 null=True)
                if len(row) > 6:
                    check.int(row[6], "an allocation total's domain", 0, 2**32 - 1, null=True)
                if len(row) > 7:
                    check.int(row[7], "an allocation total's label", 0, _UINT32_MAX)
                if len(row) > 8:
                    check.int(row[8], "an allocation total's process", 0, _UINT32_MAX)
                allocated.append((tracebacks[row[0]], *row[1:]))

        check = _Checker(error)
        meta = _check_meta(doc.get("meta"), check)
        limit = check.int(doc["traceback_limit"], "traceback_limit", 0, _INT32_MAX)
        rate = check.int(doc["sample_rate"], "sample_rate", 0, MAX_SAMPLE_RATE)
        snapshot = Snapshot(traces, limit, sample_rate=rate, allocated=allocated, meta=meta,
                            counts=counts)
        _set_user_attributes(snapshot, doc.get("attributes"), check)
    except KeyError as exc:
        raise error(f"the field {exc.args[0]!r} is missing") from exc
    except (TypeError, ValueError, IndexError) as exc:
        if isinstance(exc, SnapshotFormatError):
            raise
        raise error(f"invalid content ({exc})") from exc
    check_estimates(snapshot, error)
    return snapshot


def _with_labels(traces: list[tuple], columns: dict, n: int, check: _Checker,
                 error: Callable[[str], Exception]) -> list[tuple]:
    """The traces with their ``label`` (and ``process``) columns: a trace with a label has
    all six fields before it, and a process only after a label."""
    label = check.column(columns, "label", n, 0, _UINT32_MAX, null=True)
    process = check.column(columns, "process", n, 0, _UINT32_MAX, null=True)
    out = []
    for i, (trace, lab, proc) in enumerate(zip(traces, label, process, strict=True)):
        if lab is None:
            if proc is not None:
                raise error(f"traces.label[{i}] is null but traces.process[{i}] is not")
            out.append(trace)
        elif len(trace) != 6:
            raise error(f"traces.label[{i}] is set but the trace has no allocator or thread")
        else:
            out.append((*trace, lab) if proc is None else (*trace, lab, proc))
    return out


def check_estimates(snapshot: Snapshot, error: Callable[[str], Exception]) -> None:
    """Raise ``error`` unless every estimate of ``snapshot`` is finite and fits in a signed
    64-bit integer (pprof values, DataFrame columns): exact integers up to ``2**63 - 1``,
    floating-point estimates up to ``2**62`` (room for their rounding). Runs the
    aggregation, whose records the snapshot keeps: later statistics cost nothing more."""
    live = alloc = aggregate.Totals()
    for record in aggregate.by_traceback(snapshot):
        live = live + record.live
        alloc = alloc + record.allocated
    for what, totals in (("alive", live), ("allocated", alloc)):
        for name, value in (("bytes", totals.size), ("allocations", totals.count)):
            limit = _INT64_MAX if isinstance(value, int) else _FLOAT_ESTIMATE_MAX
            if not (math.isfinite(value) and value <= limit):
                raise error(f"the estimated {name} {what} ({value:.4g}) do not fit in 64 "
                            "bits: the sample rate or the sizes are out of range")


def load_snapshot(filename: str | os.PathLike | IO[bytes], *,
                  max_bytes: int = MAX_INFLATED_BYTES, max_traces: int = MAX_TRACES
                  ) -> Snapshot:
    """Read a snapshot written by :func:`save_snapshot` (a path or a binary file object).

    Raises :class:`SnapshotFormatError` (a ``ValueError``) for files that are empty,
    truncated, corrupt, not snapshots, written by a newer format version, hold a value out
    of its type or range, or exceed ``max_bytes`` (inflated) or ``max_traces`` (see the
    module doc); ``OSError`` if the file cannot be read at all.
    """
    where = _describe(filename)

    def error(problem: str) -> SnapshotFormatError:
        return SnapshotFormatError(f"cannot load snapshot {where}: {problem}")

    data, gzipped = read_capped(filename, max_bytes, error)
    if not gzipped:
        data = _plain_json(data, error)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error("the content is not UTF-8 text, so not a snapshot") from exc
    del data
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise error(f"the content is not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise error("the content is nested too deeply") from exc
    except MemoryError as exc:
        raise error(f"not enough memory to parse its {len(text):,} bytes of JSON") from exc
    del text
    return _decode(doc, error, max_traces)
